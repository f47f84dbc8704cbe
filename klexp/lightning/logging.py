"""One way to log a metric from anywhere in a step: the split between training and evaluation.

* Training steps: a metric is worth computing only on the steps Lightning writes (every
  ``trainer.log_every_n_steps``, and under gradient accumulation only on the batch that steps);
  ``logs_now`` says whether this is one. ``log_metrics`` then writes the scalars straight to the
  run's loggers at Lightning's own step, as its ``LearningRateMonitor`` does, averaged over the
  DDP ranks in one collective, with one device-to-host copy for all of them.
* Validation and test: ``log_metrics`` hands the values to ``LightningModule.log_dict`` as epoch
  means (``on_epoch=True``, ``sync_dist=True``), weighted by ``batch_size``.

The x-axis of training scalars is Lightning's logging step, unless the module defines
``log_step()`` (``klexp.HasLogStep``): then every scalar klexp writes (KL terms included,
validation and test too) goes at the step it returns — an RL task's environment steps, so that
curves of runs with different numbers of environments line up, and a run has one x-axis.
Validation and test values reach that step through Lightning's own ``step`` metric (a logged
``step`` is the x-axis of the values logged with it), and such a run writes no ``epoch``
scalar (Lightning adds one only to values logged without a ``step``). Such a module saves the
next step it will log at under ``LOG_STEP_KEY`` in its checkpoints, which a resumed run's
TensorBoard logger purges from.

Why not ``self.log`` in training: in Lightning 2.6 each call costs ~0.2 ms (it moves and
deep-copies its bookkeeping every time), more than a small network's KL term. Scalars written here
still reach ``trainer.callback_metrics`` and ``trainer.logged_metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import RunningStage
from torch import Tensor

from klexp.lightning.contract import module_log_step
from klexp.lightning.internals import (
    is_accumulating,
    logging_step,
    publish,
    should_update_logs,
    trainer_of,
)

#: the checkpoint key under which a module with its own ``log_step`` saves the next step it logs at
LOG_STEP_KEY = "klexp_log_step"
Stage = Literal["train", "val", "test", "predict"]
_STAGES: dict[RunningStage, Stage] = {
    RunningStage.TRAINING: "train",
    RunningStage.VALIDATING: "val",
    RunningStage.SANITY_CHECKING: "val",
    RunningStage.TESTING: "test",
    RunningStage.PREDICTING: "predict",
}


def current_stage(module: pl.LightningModule) -> Stage:
    """``train``, ``val`` (sanity checks included), ``test`` or ``predict``: where the trainer is
    now (``train`` for a module attached to no trainer)."""
    trainer = trainer_of(module)
    if trainer is None or trainer.state.stage is None:
        return "train"
    return _STAGES[trainer.state.stage]


def logs_now(module: pl.LightningModule) -> bool:
    """Whether a metric measured now reaches the loggers: always outside training; in training on
    the steps Lightning writes. A module attached to no trainer always logs."""
    trainer = trainer_of(module)
    return trainer is None or step_metrics_written(trainer)


def step_metrics_written(trainer: pl.Trainer) -> bool:
    """``logs_now`` for a trainer: outside training always; in training every
    ``trainer.log_every_n_steps`` (and every step under ``fast_dev_run``), and under gradient
    accumulation only on the batch that steps, as Lightning's own step metrics."""
    # ``trainer.training`` compares through a slow string-enum ``__eq__``; stages are singletons
    if trainer.state.stage is not RunningStage.TRAINING:
        return True
    if is_accumulating(trainer):
        return False
    return should_update_logs(trainer) or bool(trainer.fast_dev_run)


def log_metrics(module: pl.LightningModule, metrics: Mapping[str, Tensor | float], *,
                batch_size: int | None = None, stage: Stage | None = None) -> None:
    """Log scalars where they belong for ``stage`` (by default where the trainer is; see the
    module docstring). In training, call it on the steps ``logs_now`` admits; every DDP rank
    must call it."""
    if not metrics:
        return
    if (stage or current_stage(module)) == "train":
        write_step_scalars(module, metrics)
        return
    values = dict(metrics)
    step = module_log_step(module)
    if step is not None:
        # float64: Lightning reads the x-axis back with int(), and float32 would round env steps
        # above 2**24 (a tensor keeps its dtype through self.log; MPS has no float64)
        wide = torch.float32 if module.device.type == "mps" else torch.float64
        values["step"] = torch.tensor(float(step), dtype=wide, device=module.device)
    module.log_dict(values, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True)


def write_step_scalars(module: pl.LightningModule, scalars: Mapping[str, Tensor | float]) -> None:
    """Write training-step scalars to the run's loggers as Lightning writes its own step metrics
    (at its logging step, with ``epoch``, then ``logger.save()``; at the module's own step,
    without ``epoch``, when it has one); under DDP averaged over the
    ranks first (one collective). Without a trainer the scalars go to ``module.log_dict``."""
    trainer = trainer_of(module)
    if trainer is None:
        module.log_dict(dict(scalars))
        return
    device = trainer.strategy.root_device
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device).reshape(())
                           for v in scalars.values()])
    if trainer.world_size > 1:
        stacked = trainer.strategy.reduce(stacked, reduce_op="mean")
    values = dict(zip(scalars, stacked.tolist(), strict=True))  # the one device-to-host copy
    step = module_log_step(module)
    written = values if step is not None else {**values, "epoch": trainer.current_epoch}
    for logger in trainer.loggers:
        logger.log_metrics(written, step=logging_step(trainer) if step is None else step)
        logger.save()
    publish(trainer, {name: torch.tensor(value) for name, value in values.items()})
