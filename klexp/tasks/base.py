"""What klexp's tasks share that is not about KL: optimisers and learning-rate schedules from the
config, facts about the data, classification metrics that resume exactly, and a cheaper hook
dispatch.

A task reaches its KL terms exactly as a user's module does (``klexp.lightning.loss``): its steps
return ``{"loss": ..., <named outputs>}`` and the trainer's terms add themselves to the loss.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from klexp.errors import KlexpError
from klexp.lightning.internals import FastHookName, trainer_of

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]

# Arguments of torch's LR schedulers that mean "length of training"; filled from the trainer.
_TRAINING_LENGTH_ARGS = ("total_steps", "T_max", "total_iters")


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Accuracy and expected calibration error (15 bins) under ``<prefix>acc``, ``<prefix>ece``,
    with their states in the module's ``state_dict``: a run resumed mid-epoch (from a checkpoint
    of a step) then ends the epoch with the metrics of every batch of it, not only of those since
    the resume (torchmetrics keeps its states out of checkpoints by default)."""
    metrics = MetricCollection({"acc": MulticlassAccuracy(num_classes, average="micro"),
                                "ece": MulticlassCalibrationError(num_classes, n_bins=15)},
                               prefix=prefix)
    metrics.persistent(True)
    return metrics


class Task(FastHookName, pl.LightningModule):
    """Base LightningModule of klexp's tasks.

    Args:
        optimizer: a factory taking the parameters (Hydra ``_partial_: true``); Adam(1e-3) if None.
        lr_scheduler: a factory taking the optimizer; its training-length argument
            (``total_steps``, ``T_max`` or ``total_iters``) is filled from the trainer when unset.
    """

    def __init__(
        self,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self._datamodule_before_fit: pl.LightningDataModule | None = None

    def configure_model_for(self, datamodule: pl.LightningDataModule | None) -> None:
        """Build what ``configure_model`` builds (the network, the env, a frozen teacher or
        reference) with the data facts read from ``datamodule`` instead of the trainer's: klexp's
        check before a run (``klexp.app.preflight``) calls it on a copy of the task, before any
        trainer exists."""
        self._datamodule_before_fit = datamodule
        try:
            self.configure_model()
        finally:
            self._datamodule_before_fit = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A metric state kept as a list of tensors (a calibration error's confidences) is saved
        as their concatenation: a checkpoint's ``state_dict`` holds tensors only."""
        state = checkpoint.get("state_dict") or {}
        for key, value in state.items():
            if isinstance(value, list):
                state[key] = torch.cat(value) if value else torch.empty(0)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The list states ``on_save_checkpoint`` concatenated become lists again (of one tensor,
        which the metric computes with as it would with the original list); a checkpoint written
        before metric states were checkpointed lacks them, and the metrics start from their empty
        states, as they then did, instead of the load failing."""
        state = checkpoint.get("state_dict")
        if state is None:
            return
        for prefix, module in self.named_modules():
            if isinstance(module, Metric):
                for key, value in module.state_dict(prefix=f"{prefix}.").items():
                    if key not in state:
                        state[key] = value
                    elif isinstance(value, list) and isinstance(state[key], torch.Tensor):
                        state[key] = [state[key]] if state[key].numel() else []

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory or (lambda params: torch.optim.Adam(params, lr=1e-3))
        optimizer = factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, **self._training_length(self.scheduler_factory))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _training_length(self, factory: SchedulerFactory) -> dict[str, int]:
        target = getattr(factory, "func", factory)
        bound = getattr(factory, "keywords", {})
        parameters = inspect.signature(target).parameters
        missing = [a for a in _TRAINING_LENGTH_ARGS if a in parameters and a not in bound]
        return {name: int(self.trainer.estimated_stepping_batches) for name in missing}

    def tensorboard_writer(self) -> Any:
        """The ``SummaryWriter`` of the run's TensorBoard logger, or None when it has none (images,
        histograms and figures go straight to it)."""
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    def current_datamodule(self) -> pl.LightningDataModule | None:
        """The DataModule the task is built for: the trainer's, or the one given to
        ``configure_model_for`` before the trainer exists."""
        trainer = trainer_of(self)
        if trainer is not None:
            return getattr(trainer, "datamodule", None)
        return self._datamodule_before_fit

    def data_fact(self, name: str) -> Any:
        """A fact the DataModule states (``input_size``, ``num_classes``, ``num_train``…)."""
        datamodule = self.current_datamodule()
        if datamodule is None or not hasattr(datamodule, name):
            given = f"; {type(datamodule).__name__} does not" if datamodule is not None else ""
            raise KlexpError(f"data: {type(self).__name__} needs a DataModule that provides {name!r}{given}")
        return getattr(datamodule, name)


class OneStepTask(Task):
    """A task whose training, validation and test steps are its one ``step``, which returns the
    task's own loss and the outputs for its terms (the stage it is in from the trainer)."""

    def step(self, batch: Any, stage: str | None = None) -> dict[str, Any]:
        """``{"loss": <the task's own loss>, <named outputs>}`` for ``batch`` in ``stage`` (by
        default where the trainer is)."""
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return self.step(batch)

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return self.step(batch)

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return self.step(batch)
