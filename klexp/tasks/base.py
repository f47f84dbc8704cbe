"""The common shape of every klexp task: its own loss plus the KL terms the trainer holds.

A task implements ``step(batch, stage) -> (task_loss, outputs)``; ``outputs`` maps names to the
distributions and tensors KL terms may read. The total loss is ``task_loss + Σ term(outputs)``
over the trainer's ``KLTerm`` callbacks, so no task names a particular KL term.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import Tensor

from klexp.errors import KlexpError, NonFiniteError
from klexp.lightning_helpers import logs_this_step, write_step_scalars
from klexp.terms import KLTerm, kl_terms_of

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]

# Arguments of torch's LR schedulers that mean "length of training"; filled from the trainer.
_TRAINING_LENGTH_ARGS = ("total_steps", "T_max", "total_iters")


class KLTask(pl.LightningModule):
    """Base LightningModule: ``loss = task_loss + Σ_terms weight · D(p ‖ q)``.

    Args:
        optimizer: a factory taking the parameters (Hydra ``_partial_: true``); Adam(1e-3) if None.
        lr_scheduler: a factory taking the optimizer; its training-length argument
            (``total_steps``, ``T_max`` or ``total_iters``) is filled from the trainer when unset.
    """

    #: Names of the outputs ``step`` returns; KL terms are checked against them before training.
    output_names: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets ``_current_fx_name`` around every hook call, ~40 times a training step;
        # nn.Module's __setattr__ first checks for parameters, modules and buffers, which a hook's
        # name never is. Skipping those checks saves ~10 % of a small network's step (should
        # Lightning rename the attribute, only the speed-up is lost).
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ------------------------------------------------------------------ what tasks implement

    def step(self, batch: Any, stage: str) -> tuple[Tensor, Mapping[str, Any]]:
        """The task's own loss on ``batch`` and its outputs for the KL terms."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the loss

    @property
    def kl_terms(self) -> list[KLTerm]:
        return kl_terms_of(self.trainer)

    def total_loss(self, task_loss: Tensor, outputs: Mapping[str, Any], stage: str) -> Tensor:
        """``task_loss + Σ term(outputs)``, checked to be finite."""
        loss = task_loss
        for term in self.kl_terms:
            loss = loss + term(outputs, stage, self.global_step)
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteError(
                f"the {stage} loss is {value} at step {self.global_step} (task loss {task_loss.item()})"
            )
        return loss

    def _shared_step(self, batch: Any, stage: str) -> Tensor:
        task_loss, outputs = self.step(batch, stage)
        loss = self.total_loss(task_loss, outputs, stage)
        if stage != "train":
            self.log_dict({f"{stage}/loss/task": task_loss.detach(), f"{stage}/loss/total": loss.detach()},
                          on_step=False, on_epoch=True, batch_size=_batch_size(batch), sync_dist=True)
        elif logs_this_step(self):
            write_step_scalars(self, {"loss/task": task_loss.detach(), "loss/total": loss.detach()})
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    # ------------------------------------------------------------------ optimisation

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

    # ------------------------------------------------------------------ data facts

    def data_fact(self, name: str) -> Any:
        """A fact the DataModule states (``input_size``, ``num_classes``, ``num_train``…)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is None or not hasattr(datamodule, name):
            raise KlexpError(f"{type(self).__name__} needs a DataModule that provides {name!r}")
        return getattr(datamodule, name)


def _batch_size(batch: Any) -> int:
    if isinstance(batch, Tensor):
        return len(batch)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return len(batch[0])
    return 1
