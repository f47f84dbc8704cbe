"""The application: the ``klexp`` command, the runner, config checks, stages, resume and rerun."""
