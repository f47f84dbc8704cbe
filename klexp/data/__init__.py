"""Data: in-memory image DataModules (digits, IDX files, synthetic) and their batching."""
