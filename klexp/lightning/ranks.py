"""Decisions and measurements that every DDP rank must share.

A stop, a NaN verdict or a controller's β taken on one rank alone would leave the others waiting
in the next collective, or training with another β: these helpers agree them through the
strategy's public collectives (``reduce``, ``reduce_boolean_decision``), as Lightning's own
``EarlyStopping`` does. In a single process they return their input.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch


def mean_over_ranks(trainer: pl.Trainer | None, value: float) -> float:
    """``value`` averaged over the DDP ranks."""
    if trainer is None or trainer.world_size == 1:
        return value
    tensor = torch.tensor(value, device=trainer.strategy.root_device)
    return float(trainer.strategy.reduce(tensor, reduce_op="mean"))


def all_ranks_agree(trainer: pl.Trainer | None, flag: bool) -> bool:
    """True only when ``flag`` holds on every rank."""
    if trainer is None or trainer.world_size == 1:
        return flag
    return bool(trainer.strategy.reduce_boolean_decision(flag, all=True))


def any_rank(trainer: pl.Trainer | None, flag: bool) -> bool:
    """True when ``flag`` holds on at least one rank."""
    if trainer is None or trainer.world_size == 1:
        return flag
    return bool(trainer.strategy.reduce_boolean_decision(flag, all=False))
