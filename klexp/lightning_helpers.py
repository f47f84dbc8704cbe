"""Small pieces of Lightning plumbing shared by the KL terms and the tasks: when a training-step
metric is worth logging, and decisions that every DDP rank must take together."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


def logs_this_step(pl_module: pl.LightningModule) -> bool:
    """Whether a metric logged now with ``on_step=True`` reaches the loggers.

    Lightning writes training-step metrics only every ``trainer.log_every_n_steps`` steps and drops
    the others, while each ``self.log`` call costs ~0.1–0.5 ms, which dominates the step of a small
    network; so training-step metrics are logged only on the steps that are written (always outside
    training). Reads the logger connector's own decision (``should_update_logs``).
    """
    trainer = pl_module._trainer
    if trainer is None or not trainer.training:
        return True
    return bool(trainer._logger_connector.should_update_logs or trainer.fast_dev_run)


def mean_over_ranks(trainer: pl.Trainer | None, value: float) -> float:
    """``value`` averaged over the DDP ranks (itself in a single process)."""
    if trainer is None or trainer.world_size == 1:
        return value
    tensor = torch.tensor(value, device=trainer.strategy.root_device)
    return float(trainer.strategy.reduce(tensor, reduce_op="mean"))


def all_ranks_agree(trainer: pl.Trainer | None, flag: bool) -> bool:
    """True only when ``flag`` holds on every DDP rank, so all ranks act on it together (a rank
    that stopped alone would leave the others waiting in the next collective)."""
    if trainer is None or trainer.world_size == 1:
        return flag
    return bool(trainer.strategy.reduce_boolean_decision(flag, all=True))
