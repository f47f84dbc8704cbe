"""Every place klexp reads or writes Lightning's private state, in one module.

Lightning's public API does not say whether the metrics of the current training step will be
written, at which step its loggers write them, or lets a callback publish scalars it wrote itself;
klexp needs all three to log a training step cheaply (``klexp.lightning.logging``). A small
network's step also pays for ``nn.Module.__setattr__`` each time Lightning records which hook it is
in. Each such touch is a function here, and ``tests/test_lightning_internals.py`` runs every one of
them against the installed Lightning, so an upgrade that moves an attribute fails there, naming it,
instead of somewhere in a training run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from torch import Tensor

#: The private state read or written below, as ``(owner, path)``; the pin test walks each one.
PRIVATE_STATE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("LightningModule", ("_trainer",)),
    ("LightningModule", ("_current_fx_name",)),
    ("Trainer", ("_logger_connector", "should_update_logs")),
    ("Trainer", ("fit_loop", "_should_accumulate")),
    ("Trainer", ("fit_loop", "epoch_loop", "_batches_that_stepped")),
    ("checkpoint", ("loops", "fit_loop", "epoch_loop.state_dict", "_batches_that_stepped")),
    ("checkpoint", ("loops", "fit_loop", "epoch_loop.batch_progress", "current", "ready")),
    ("Trainer", ("fit_loop", "epoch_loop", "_should_check_val_fx")),
    ("Trainer", ("fit_loop", "_data_fetcher")),
    ("Trainer", ("fit_loop", "resumed_on_epoch_end")),
    ("Trainer", ("fit_loop", "restarted_on_epoch_end")),
)


def trainer_of(module: pl.LightningModule) -> pl.Trainer | None:
    """The trainer a module is attached to, or None (``module.trainer`` raises without one)."""
    return module._trainer


def should_update_logs(trainer: pl.Trainer) -> bool:
    """Whether Lightning writes this training step's metrics (every ``log_every_n_steps``)."""
    return bool(trainer._logger_connector.should_update_logs)


def is_accumulating(trainer: pl.Trainer) -> bool:
    """Whether this batch only accumulates gradients (no optimiser step follows it)."""
    return trainer.accumulate_grad_batches > 1 and trainer.fit_loop._should_accumulate()


def logging_step(trainer: pl.Trainer) -> int:
    """The step Lightning's loggers write at: the number of batches that stepped (under manual
    optimisation ``global_step`` counts optimiser steps instead)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def validation_follows(trainer: pl.Trainer) -> bool:
    """Called in ``on_train_batch_end``: whether Lightning validates right after this batch. Its
    own test, so that ``val_check_interval``, ``check_val_every_n_epoch`` and early stops agree."""
    loop = trainer.fit_loop
    return loop._data_fetcher is not None and bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))


def resumes_after_epoch_end(trainer: pl.Trainer) -> bool:
    """Called in ``on_train_start`` of a resumed fit: whether the checkpoint was written after an
    epoch had ended, so that the training iterator created before this hook serves the next epoch
    (otherwise a new one is created after it, or the resume is mid-epoch)."""
    loop = trainer.fit_loop
    return bool(loop.resumed_on_epoch_end or loop.restarted_on_epoch_end)


def publish(trainer: pl.Trainer, metrics: Mapping[str, Tensor]) -> None:
    """Make metrics written straight to the loggers visible where ``self.log``'s land:
    ``trainer.callback_metrics`` (read by callbacks such as ``ModelCheckpoint``) and
    ``trainer.logged_metrics``. Both properties return the logger connector's own dictionaries."""
    trainer.callback_metrics.update(metrics)
    trainer.logged_metrics.update(metrics)


def checkpoint_logging_step(checkpoint: Mapping[str, Any]) -> int | None:
    """The logging step a Lightning checkpoint was saved at (see ``logging_step``), or None when
    the checkpoint does not record it. A checkpoint saved in ``on_train_batch_end`` was written
    before Lightning counted that batch (it adds it on restore)."""
    try:
        loop = checkpoint["loops"]["fit_loop"]
        stepped = int(loop["epoch_loop.state_dict"]["_batches_that_stepped"])
        progress = loop["epoch_loop.batch_progress"]["current"]
    except (KeyError, TypeError):
        return None
    return stepped + int(progress["completed"] < progress["ready"])


class FastHookName:
    """A ``LightningModule`` mixin: Lightning sets ``_current_fx_name`` around every hook call,
    ~40 times a training step, and ``nn.Module.__setattr__`` first looks for parameters, modules
    and buffers of that name, which a hook's name never is. Skipping the look-up saves ~10 % of a
    small network's step; should Lightning rename the attribute, only the speed-up is lost."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)
