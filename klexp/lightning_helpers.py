"""Small pieces of Lightning plumbing shared by the KL terms and the tasks: when a training-step
metric is worth computing and how it reaches the loggers cheaply, decisions that every DDP rank
must take together, and a profiler that costs nothing when nobody profiles."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.profilers import PassThroughProfiler
from pytorch_lightning.trainer.states import RunningStage
from torch import Tensor


def logs_this_step(pl_module: pl.LightningModule) -> bool:
    """Whether a metric measured now reaches the loggers (see ``step_metrics_written``); a
    module attached to no trainer always logs."""
    trainer = pl_module._trainer
    return trainer is None or step_metrics_written(trainer)


def step_metrics_written(trainer: pl.Trainer) -> bool:
    """Whether this step's metrics reach the loggers: outside training always; in training on the
    steps Lightning writes, every ``trainer.log_every_n_steps`` (the logger connector's own
    ``should_update_logs``), and under gradient accumulation only on the batch that steps, as
    Lightning's own step metrics. Training-step diagnostics are computed only then."""
    # ``trainer.training`` compares through a slow string-enum ``__eq__``; stages are singletons
    if trainer.state.stage is not RunningStage.TRAINING:
        return True
    if trainer.accumulate_grad_batches > 1 and trainer.fit_loop._should_accumulate():
        return False
    return bool(trainer._logger_connector.should_update_logs or trainer.fast_dev_run)


def write_step_scalars(pl_module: pl.LightningModule, scalars: Mapping[str, Tensor | float]) -> None:
    """Write training-step scalars straight to the run's loggers as Lightning writes its own step
    metrics (at ``_batches_that_stepped``, with ``epoch``, then ``logger.save()``), the way its
    ``LearningRateMonitor`` does; call it on the steps ``logs_this_step`` admits. Under DDP the
    values are first averaged over the ranks (one collective per call; every rank must call).
    They join ``trainer.callback_metrics`` and ``trainer.logged_metrics`` as float32 scalars.

    Why not ``self.log``: in Lightning 2.6 each call costs ~0.2 ms (it moves and deep-copies its
    bookkeeping every time), so the ~16 scalars of a VAE step cost more than the step's KL term.
    Without a trainer (a module used on its own) the scalars go to ``pl_module.log_dict``.
    """
    trainer = pl_module._trainer
    if trainer is None:
        pl_module.log_dict(dict(scalars))
        return
    device = trainer.strategy.root_device
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device).reshape(())
                           for v in scalars.values()])
    if trainer.world_size > 1:
        stacked = trainer.strategy.reduce(stacked, reduce_op="mean")
    metrics = dict(zip(scalars, stacked.tolist(), strict=True))  # one device sync
    step = trainer.fit_loop.epoch_loop._batches_that_stepped
    for logger in trainer.loggers:
        logger.log_metrics({**metrics, "epoch": trainer.current_epoch}, step=step)
        logger.save()
    as_tensors = {name: torch.tensor(value) for name, value in metrics.items()}
    trainer.callback_metrics.update(as_tensors)
    trainer.logged_metrics.update(as_tensors)


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


class NoProfiler(PassThroughProfiler):
    """Lightning's default profiler (it records nothing), without its cost: ``profile`` is a
    generator-based context manager entered around each of ~50 hook calls a training step, ~3 % of
    a small network's step; this one hands out one reusable empty context. A profiler the user
    chooses (``trainer.profiler=simple``) replaces it."""

    _nothing = nullcontext()

    def profile(self, action_name: str) -> Any:
        return self._nothing
