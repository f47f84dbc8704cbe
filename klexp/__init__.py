"""klexp: KL divergence as a first-class, configurable part of PyTorch Lightning training."""

__version__ = "0.1.0"
