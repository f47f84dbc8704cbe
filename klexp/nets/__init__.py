"""Networks shared by the tasks: MLPs, mean-field Bayesian layers, frozen networks read from checkpoints."""
