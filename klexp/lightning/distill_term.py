"""The distillation term: a loss term that adds ``weight · reduce(objective(T, S))`` over a batch
of sequences to the loss, where the objective is a token-level distillation objective named by
its type (``klexp.core.distill_objectives``: ``ForwardKL``, ``ReverseKL``, ``GeneralisedJS``,
``SkewKL``, ``TAID``, ``TopK``, ``SampledReverseKL``) and the reduction an explicit choice
(``klexp.core.reduction``: ``token`` or ``sequence``, invariant under gradient accumulation).

It reads, among a step's outputs, the teacher's and the student's next-token distributions at
every position (``Categorical`` with batch shape ``(N, L)``, or their logits ``(N, L, V)``), the
tokens ``(N, L)`` they were computed on and, optionally, the mask of real tokens. Logged as a KL
term is: ``kl/<name>/{value,weight,loss}`` on the training steps Lightning writes (plus what the
objective reports, e.g. TAID's ``kl/<name>/t``), ``val/kl/<name>/…`` and ``test/kl/<name>/…`` as
epoch means. An objective's controller (TAID's ``t``) is updated once per optimiser step with the
value measured on it and saved in checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.distributions import Categorical

from klexp.core.distill_objectives import TokenObjective
from klexp.core.reduction import REDUCTIONS, Reduction, reduce_tokens
from klexp.core.schedules import Constant, Schedule
from klexp.errors import ConfigValueError, require, require_finite_non_negative, require_in
from klexp.lightning.internals import is_accumulating
from klexp.lightning.logging import log_metrics, logs_now
from klexp.lightning.loss import LossTerm


class DistillTerm(LossTerm):
    """``weight · schedule(t) · reduce(objective(teacher, student))`` added to the loss.

    Args:
        name: the term's name in logs and checkpoints.
        objective: a ``klexp.core.distill_objectives.TokenObjective``; its type names the
            direction.
        teacher, student: names of the outputs holding the next-token distributions.
        tokens: name of the output holding the tokens ``(N, L)``.
        mask: name of an output holding the mask of real tokens ``(N, L)``, or None (all real).
        reduction: ``token`` or ``sequence`` (``klexp.core.reduction``).
        weight: a finite number ≥ 0.
        schedule: a ``klexp.Schedule`` of the step multiplying ``weight`` (constant if None).
        check_finite: stop training naming the term when its value is NaN or infinite.
    """

    label = "distillation term"

    def __init__(self, name: str, objective: TokenObjective, teacher: str = "teacher",
                 student: str = "student", tokens: str = "tokens", mask: str | None = None,
                 reduction: Reduction = "token", weight: float = 1.0,
                 schedule: Schedule | None = None, check_finite: bool = True) -> None:
        super().__init__()
        require(isinstance(name, str) and name.isidentifier(), "name",
                "an identifier (letters, digits, _)", name)
        require(isinstance(objective, TokenObjective), "objective",
                "a token objective (klexp.ForwardKL, klexp.ReverseKL, …)", objective)
        for key, value in (("teacher", teacher), ("student", student), ("tokens", tokens)):
            require(isinstance(value, str) and value != "", key, "the name of an output", value)
        require(mask is None or (isinstance(mask, str) and mask != ""), "mask",
                "the name of an output, or null", mask)
        require_in("reduction", reduction, REDUCTIONS)
        require_finite_non_negative("weight", weight)
        require(schedule is None or isinstance(schedule, Schedule), "schedule", "a schedule", schedule)
        self.name, self.objective = name, objective
        self.teacher, self.student, self.tokens, self.mask = teacher, student, tokens, mask
        self.reduction, self.weight = reduction, float(weight)
        self.schedule: Schedule = schedule if schedule is not None else Constant(1.0)
        self.check_finite = check_finite
        self._module: pl.LightningModule | None = None
        self._measured: list[Tensor] = []
        self._state_key = self._generate_state_key(name=name)

    @property
    def state_key(self) -> str:
        return self._state_key

    @property
    def needs_student_samples(self) -> bool:
        """Whether the tokens must be the student's own samples (a task checks it at start-up)."""
        return self.objective.needs_student_samples

    def reads(self) -> tuple[str, ...]:
        names = [self.teacher, self.student, self.tokens]
        return tuple(names if self.mask is None else [*names, self.mask])

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._module = pl_module
        super().setup(trainer, pl_module, stage)

    def current_weight(self, step: int) -> float:
        return self.weight * self.schedule.value(step)

    def per_token(self, outputs: Mapping[str, Any]) -> Tensor:
        """The objective's values ``(N, L)`` on ``outputs``, unreduced."""
        teacher, student = (self._logits(outputs, role) for role in ("teacher", "student"))
        mask = outputs[self.mask] if self.mask is not None else None
        return self.objective(teacher, student, outputs[self.tokens], mask)

    def contribute(self, outputs: Mapping[str, Any], stage: str, step: int) -> tuple[Tensor, Tensor]:
        weight = self.current_weight(step)
        mask = outputs[self.mask] if self.mask is not None else None
        with torch.set_grad_enabled(torch.is_grad_enabled() and weight != 0):
            value = reduce_tokens(self.per_token(outputs), mask, self.reduction)
            loss = weight * value
        value = value.detach()
        if stage == "train":
            self._measured.append(value)
        module = self._module
        if module is not None and (stage != "train" or logs_now(module)):
            prefix = f"kl/{self.name}" if stage == "train" else f"{stage}/kl/{self.name}"
            metrics = {f"{prefix}/value": value, f"{prefix}/weight": weight,
                       f"{prefix}/loss": loss.detach(),
                       **{f"{prefix}/{k}": v for k, v in self.objective.scalars().items()}}
            log_metrics(module, metrics, stage=stage, batch_size=len(outputs[self.tokens]))
        return loss, value

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        controller = self.objective.schedule
        if controller is None or is_accumulating(trainer) or not self._measured:
            return
        controller.update(float(torch.stack(self._measured).double().mean()))
        self._measured = []

    def state_dict(self) -> dict[str, Any]:
        controller = self.objective.schedule
        return {"objective": controller.state_dict()} if controller is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        controller = self.objective.schedule
        if controller is not None and "objective" in state_dict:
            controller.load_state_dict(state_dict["objective"])

    def _logits(self, outputs: Mapping[str, Any], role: str) -> Tensor:
        key = getattr(self, role)
        value = outputs[key]
        if isinstance(value, Categorical):
            return value.logits
        if isinstance(value, Tensor) and value.is_floating_point():
            return value
        raise ConfigValueError(role, f"{self.label} '{self.name}' needs a Categorical or logits in "
                               f"output {key!r}, got {type(value).__name__}")

    def describe(self, outputs: Mapping[str, Any]) -> str:
        parts = []
        for role in ("teacher", "student"):
            logits = self._logits(outputs, role).detach()
            parts.append(f"{role}={getattr(self, role)} (nan={int(logits.isnan().sum())}, "
                         f"min={logits.nan_to_num().min().item():.3g}, "
                         f"max={logits.nan_to_num().max().item():.3g})")
        return "; ".join(parts)

    def __repr__(self) -> str:
        return (f"DistillTerm(name={self.name!r}, {self.objective!r}, reduction={self.reduction}, "
                f"weight={self.weight})")
