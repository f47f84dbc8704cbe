"""The KL terms: Lightning callbacks that measure ``D(p ‖ q)`` on each step's outputs. ``KLTerm``
adds ``weight(t) · shaping(D)`` to the loss; ``KLPenalty`` gives an RL task ``weight(t) · D`` per
step to subtract from its rewards; ``klexp.lightning.target_kl.TargetKL`` stops an update phase.

``p`` and ``q`` name two distributions among a step's outputs (``klexp.lightning.loss`` says how
outputs reach the term); ``D`` is the divergence of ``direction`` computed with ``estimator``
(``klexp.core.measure``); the weight is ``weight`` times a schedule of the step or a controller
driven by the measured KL; a shaping (free bits, capacity, per-example share), given in place of
the direction it holds, may change what is weighted. The term keeps per-batch tallies on the
device and logs them under ``kl/<name>/...`` on the training steps Lightning writes, and as epoch
means under ``val/kl/<name>/...`` and ``test/kl/<name>/...``; it updates its controller once per
training step and saves the controller's state in checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, Unpack

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.distributions import Distribution

from klexp.core.controllers import Controller
from klexp.core.directions import Direction, as_direction
from klexp.core.estimate import Estimator, MonteCarlo
from klexp.core.measure import Measurement, PerDim, measure
from klexp.core.schedules import Constant, Schedule
from klexp.core.shaping import Shaping
from klexp.core.torch_internals import state_of
from klexp.errors import (
    ConfigValueError,
    TermTypeError,
    require,
    require_finite_non_negative,
    require_in,
)
from klexp.lightning.logging import log_metrics, logs_now, step_metrics_written
from klexp.lightning.loss import LossTerm, RewardTerm, Term
from klexp.lightning.ranks import mean_over_ranks

REDUCTIONS: tuple[str, ...] = ("mean", "sum")
STAGES: tuple[str, ...] = ("train", "val", "test")


@dataclass
class _Tally:
    """What a term measured over the calls of one batch: each call's tensors, left on the device
    and combined only when they are logged or a controller reads them (most training steps are
    neither), in float64 where the device has it so that a mean over many calls loses no digits."""

    values: list[Tensor] = field(default_factory=list)
    losses: list[Tensor] = field(default_factory=list)
    stds: list[Tensor] = field(default_factory=list)
    dims: list[Tensor] = field(default_factory=list)
    # the weight the losses used: by the batch-end hook Lightning has already advanced global_step
    weight: float | None = None
    # batch elements behind each value: the weight of this batch in an epoch mean across ranks
    elements: int = 1
    phase: dict[str, Tensor] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return len(self.values)

    def add(self, value: Tensor, loss: Tensor, std: Tensor | None, dims: Tensor | None,
            weight: float, elements: int) -> None:
        self.values.append(value)
        self.losses.append(loss)
        if std is not None:
            self.stds.append(std)
        if dims is not None:
            self.dims.append(dims)
        self.weight, self.elements = weight, elements

    @staticmethod
    def mean(tensors: list[Tensor]) -> Tensor:
        """The mean over calls of ``tensors`` (one per call), in the wide dtype."""
        wide = torch.float32 if tensors[0].device.type == "mps" else torch.float64
        if len(tensors) == 1:
            return tensors[0].to(wide)
        return torch.stack(tensors).to(wide).sum(0) / len(tensors)

    @staticmethod
    def max(tensors: list[Tensor]) -> Tensor:
        wide = torch.float32 if tensors[0].device.type == "mps" else torch.float64
        return torch.stack(tensors).max().to(wide)


class MeasureOptions(TypedDict, total=False):
    """``KLMeasure``'s arguments after ``direction``, for the types that add their own."""

    weight: float
    schedule: Schedule | Controller | None
    reduction: Literal["mean", "sum"]
    check_finite: bool
    estimator: Estimator | str | None
    log_dims: bool | None


class KLMeasure(Term):
    """What every KL term shares: it measures ``D``, the divergence ``direction`` between two of a
    step's outputs, ``p`` and ``q``, keeps per-batch tallies and logs them, measures itself around a
    task's update phases, and saves its controller in checkpoints. What is done with ``D`` is its
    type's: ``KLTerm`` adds it to the loss, ``KLPenalty`` subtracts it from an RL task's rewards,
    ``TargetKL`` stops an update phase.

    Args:
        name: the term's name in logs and checkpoints.
        p, q: names of two distributions among the step's outputs.
        direction: ``klexp.core.directions``: ``Forward(estimator, log_dims)`` → ``KL(p ‖ q)``,
            ``Reverse(estimator, log_dims)`` → ``KL(q ‖ p)`` (Monte-Carlo draws then come from
            ``q``), ``JensenShannon()`` (no estimator: it has no ``k``); or the shorthand
            ``forward`` | ``reverse`` | ``js``, with ``estimator`` and ``log_dims`` beside it.
        weight: β, a finite number ≥ 0: the term's scale.
        schedule: a schedule (``klexp.core.schedules``) or a controller
            (``klexp.core.controllers``); the effective weight is ``weight · schedule`` (constant
            ``weight`` when None).
        reduction: how the values of a batch combine: ``mean`` or ``sum``.
        check_finite: stop training with ``NonFiniteError`` naming the term when its value is NaN
            or infinite.
        estimator: with a shorthand ``direction``, its estimator (``klexp.core.estimate``):
            ``ClosedForm()``, ``MonteCarlo(k, num_samples)`` or ``OnSamples(samples, k,
            samples_from, importance_weight)``, or the shorthand ``analytic`` | ``k1`` | ``k2`` |
            ``k3``; the closed form when None.
        log_dims: with a shorthand KL ``direction``, also log the batch-mean KL of each event
            dimension as ``kl/<name>/dim_<i>``.
    """

    label = "KL term"

    def __init__(
        self,
        name: str,
        p: str,
        q: str,
        direction: Direction | str = "forward",
        weight: float = 1.0,
        schedule: Schedule | Controller | None = None,
        reduction: Literal["mean", "sum"] = "mean",
        check_finite: bool = True,
        *,
        estimator: Estimator | str | None = None,
        log_dims: bool | None = None,
    ) -> None:
        super().__init__()
        require(isinstance(name, str) and name.isidentifier(), "name",
                "an identifier (letters, digits, _)", name)
        for key, value in (("p", p), ("q", q)):
            require(isinstance(value, str) and value != "", key, "the name of an output", value)
        self.direction = as_direction(direction, estimator, log_dims)
        self.check_estimator(self.direction.estimator)
        require_finite_non_negative("weight", weight)
        require(schedule is None or isinstance(schedule, (Schedule, Controller)), "schedule",
                "a schedule or a controller", schedule)
        require_in("reduction", reduction, REDUCTIONS)
        self.name, self.p, self.q = name, p, q
        self.weight = float(weight)
        self.schedule: Schedule | Controller = schedule if schedule is not None else Constant(1.0)
        self.reduction, self.check_finite = reduction, check_finite
        self.shaping: Shaping | None = None
        self._tallies = {stage: _Tally() for stage in STAGES}
        self._state_key = self._generate_state_key(name=name)
        self._batch_elements = 1
        self._trainer: pl.Trainer | None = None

    @property
    def estimator(self) -> Estimator:
        """The direction's estimator (a Jensen–Shannon term's is its own closed form)."""
        return self.direction.estimator

    @property
    def log_dims(self) -> bool:
        return self.direction.log_dims

    def check_estimator(self, estimator: Estimator) -> None:
        """Raise ``ConfigValueError`` naming ``estimator`` if this type of term cannot use it."""
        return None

    # ---------------------------------------------------------------- Lightning plumbing

    @property
    def state_key(self) -> str:
        # Lightning reads it on every hook call (to name the profiled action): build it once
        return self._state_key

    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.controller.state_dict()} if self.controller is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.controller is not None and "schedule" in state_dict:
            self.controller.load_state_dict(state_dict["schedule"])

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        super().setup(trainer, pl_module, stage)

    @property
    def controller(self) -> Controller | None:
        return self.schedule if isinstance(self.schedule, Controller) else None

    # ---------------------------------------------------------------- what the term reads

    @property
    def sampled(self) -> str:
        """The output whose distribution Monte-Carlo estimators sample."""
        return self.direction.sampled(self.p, self.q)

    @property
    def monte_carlo(self) -> bool:
        return self.estimator.monte_carlo

    def reads(self) -> tuple[str, ...]:
        names = [self.p, self.q, *self.estimator.reads(self.sampled)]
        if self.shaping is not None:
            names += self.shaping.reads()
        return tuple(dict.fromkeys(names))

    # ---------------------------------------------------------------- the computation

    def current_weight(self, step: int) -> float:
        if isinstance(self.schedule, Controller):
            return self.weight * self.schedule.value()
        return self.weight * self.schedule.value(step)

    def measured(self, outputs: Mapping[str, Any]) -> tuple[Measurement, Tensor]:
        """The measuring core every term's entry point starts from: what the term measures on
        ``outputs`` and its batch reduction ``D``."""
        measurement = self.measure(outputs)
        return measurement, self.reduce(measurement.elementwise)

    def record(self, stage: str, measurement: Measurement, value: Tensor, loss: Tensor,
               weight: float) -> None:
        """Tally what one call measured, for the logs and the controller: the spread and the
        per-dimension values only on the steps whose metrics are written (they cost a small
        network's step more than its KL)."""
        logged = stage != "train" or self._trainer is None or step_metrics_written(self._trainer)
        std = None
        if logged and measurement.per_sample is not None and measurement.per_sample.numel() > 1:
            std = measurement.per_sample.detach().std()
        dims = measurement.per_dim.detach() if self.log_dims and logged else None
        self._tallies[stage].add(value.detach(), loss.detach(), std, dims, weight, self._batch_elements)

    def measure(self, outputs: Mapping[str, Any], per_dim: PerDim | Literal["auto"] = "auto") -> Measurement:
        """What the term measures on ``outputs`` (``klexp.core.measure``), without weighting."""
        if per_dim == "auto":
            per_dim = ("estimate" if self.shaping is not None and self.shaping.needs_dims
                       else "report" if self.log_dims else None)
        p, q = self._distribution(outputs, "p", self.p), self._distribution(outputs, "q", self.q)
        how = self.estimator.arguments(outputs, self.sampled,
                                       lambda role, key: self._distribution(outputs, role, key))
        try:
            measurement = measure(p, q, direction=self.direction.name, per_dim=per_dim, **how)
        except ValueError as error:
            key = "shaping" if per_dim == "estimate" else "log_dims" if per_dim else "p"
            raise ConfigValueError(key, f"KL term '{self.name}': {error}") from None
        except NotImplementedError as error:
            raise ConfigValueError("estimator", f"KL term '{self.name}': {error}") from None
        self._batch_elements = max(1, measurement.elementwise.numel())
        return measurement

    def reduce(self, elementwise: Tensor) -> Tensor:
        return elementwise.mean() if self.reduction == "mean" else elementwise.sum()

    def _batch_scale(self) -> float:
        return 1.0 if self.reduction == "mean" else float(self._batch_elements)

    def _distribution(self, outputs: Mapping[str, Any], role: str, key: str) -> Distribution:
        d = outputs[key]
        if not isinstance(d, Distribution):
            raise ConfigValueError(role, f"KL term '{self.name}' needs a distribution in output "
                                   f"{key!r}, got {type(d).__name__}")
        return d

    def describe(self, outputs: Mapping[str, Any]) -> str:
        parts = []
        for role in ("p", "q"):
            d = outputs.get(getattr(self, role))
            params = [v for v in state_of(d).values() if isinstance(v, Tensor)] if d is not None else []
            stats = ", ".join(
                f"nan={int(t.isnan().sum())} inf={int(t.isinf().sum())} "
                f"min={t.nan_to_num().min().item():.3g} max={t.nan_to_num().max().item():.3g}"
                for t in params[:1]
            )
            parts.append(f"{role}={getattr(self, role)} ({type(d).__name__}: {stats})")
        return "; ".join(parts)

    # ---------------------------------------------------------------- update phases

    def measure_phase(self, point: Literal["rollout", "after_update"],
                      outputs: Mapping[str, Any]) -> None:
        """Measure the reduced divergence on a whole batch at a point of a task's update phase
        (``klexp.lightning.phase``): ``rollout`` before its first step, ``after_update`` once it
        is over. Logged as ``kl/<name>/value_<point>``; a controller whose ``adapt_to`` names the
        point adapts to it. Measured before the phase only for such a controller, so that a
        Monte-Carlo term's draws leave the random stream of other runs unchanged."""
        if point == "rollout" and (self.controller is None or self.controller.adapt_to != "rollout"):
            return
        with torch.no_grad():
            value = self.reduce(self.measure(outputs).elementwise)
        self._tallies["train"].phase[point] = value

    # ---------------------------------------------------------------- logging and control

    def _flush(self, stage: str, pl_module: pl.LightningModule, step: int) -> None:
        tally = self._tallies[stage]
        if tally.calls == 0:
            return
        self._tallies[stage] = _Tally()
        if stage != "train":
            log_metrics(pl_module, self._metrics(tally, f"{stage}/kl/{self.name}", step),
                        batch_size=tally.elements, stage=stage)
            return
        if logs_now(pl_module):
            metrics = self._metrics(tally, f"kl/{self.name}", step)
            metrics.update({f"kl/{self.name}/value_{point}": value
                            for point, value in tally.phase.items()})
            log_metrics(pl_module, metrics, stage="train")
        controller = self.controller
        if controller is not None:
            measured = tally.phase.get(controller.adapt_to)
            if measured is None:
                measured = tally.mean(tally.values)
            controller.update(mean_over_ranks(self._trainer, float(measured)))

    def _metrics(self, tally: _Tally, prefix: str, step: int) -> dict[str, Tensor | float]:
        metrics: dict[str, Tensor | float] = {
            f"{prefix}/value": tally.mean(tally.values),
            f"{prefix}/weight": self.current_weight(step) if tally.weight is None else tally.weight,
            f"{prefix}/loss": tally.mean(tally.losses),
        }
        if self.monte_carlo:
            metrics[f"{prefix}/std"] = tally.mean(tally.stds) if tally.stds else 0.0
        if tally.calls > 1:
            metrics[f"{prefix}/value_max"] = tally.max(tally.values)
        if tally.dims:
            metrics.update({f"{prefix}/dim_{i}": v for i, v in enumerate(tally.mean(tally.dims))})
        return metrics

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self._flush("train", pl_module, trainer.global_step)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._flush("val", pl_module, trainer.global_step)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                          outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._flush("test", pl_module, trainer.global_step)

    def __repr__(self) -> str:
        shaping = "" if self.shaping is None else f", shaping={self.shaping!r}"
        return (f"{type(self).__name__}(name={self.name!r}, {self.direction} D({self.p} ‖ {self.q}), "
                f"estimator={self.estimator}, weight={self.weight}, schedule={self.schedule!r}{shaping})")


class KLTerm(KLMeasure, LossTerm):
    """``weight · schedule(t) · shaping(D)`` added to the loss (``KLMeasure`` says what ``D`` is).

    Args:
        direction: as ``KLMeasure``'s, or a shaping that holds it (``klexp.core.shaping``:
            ``FreeBits(λ, of=Forward())``, ``Capacity(C, of=…)``, ``PerExample(count, of=…)``): the
            term then weights the shaped divergence instead of ``D``.
        The others: ``KLMeasure`` (after ``direction``, by keyword: ``MeasureOptions``).
    """

    def __init__(self, name: str, p: str, q: str, direction: Direction | Shaping | str = "forward",
                 **options: Unpack[MeasureOptions]) -> None:
        shaping = direction if isinstance(direction, Shaping) else None
        super().__init__(name, p, q, direction if shaping is None else shaping.of, **options)
        self.shaping = shaping

    def contribute(self, outputs: Mapping[str, Any], stage: str, step: int) -> tuple[Tensor, Tensor]:
        """The term's loss on one batch, ``weight · shaping(D)``, and ``D``; records what it measured
        for logging. At weight 0 the term only measures (no graph is built)."""
        weight = self.current_weight(step)
        with torch.set_grad_enabled(torch.is_grad_enabled() and weight != 0):
            measurement, value = self.measured(outputs)
            shaped = value if self.shaping is None else self.shaping(
                value, measurement, step=step, outputs=outputs, batch_scale=self._batch_scale())
            if weight == 0:
                loss = value.new_zeros(())
            elif weight == 1:  # a small network's step is spared a multiply and its backward
                loss = shaped
            else:
                loss = weight * shaped
        self.record(stage, measurement, value, loss, weight)
        return loss, value.detach()


class KLPenalty(KLMeasure, RewardTerm):
    """``weight · schedule(t) · D`` per batch element, which an RL task subtracts from the rewards
    of the steps it describes (``klexp.reward_penalty``: ``r_t ← r_t − β·k(s_t, a_t)``) before
    computing advantages; no gradient flows through it. Its estimator is the closed form or one
    on the actions the rollout took (``OnSamples``): on fresh draws a ``k`` does not depend on the
    action, and the policy gradient misses its part at each state (docs/ppo.md, KL placement).
    Arguments as ``KLMeasure``."""

    def _generate_state_key(self, **kwargs: Any) -> str:
        # the key a reward-placed KLTerm saved its controller under: its checkpoints resume here
        return KLTerm.__qualname__ + repr(kwargs)

    def check_estimator(self, estimator: Estimator) -> None:
        if isinstance(estimator, MonteCarlo):
            raise ConfigValueError("estimator", f"a {estimator.name} penalty in the reward must be taken "
                                   "on the actions the rollout took (samples: the output holding them): "
                                   "on fresh draws it does not depend on the action, and the policy "
                                   "gradient misses its part at each state (docs/ppo.md, KL placement); "
                                   "or use estimator=analytic")

    def penalty(self, outputs: Mapping[str, Any], stage: str, step: int) -> tuple[Tensor, Tensor]:
        """``weight · D`` per batch element (no gradient) and the reduced ``D``; records what it
        measured for logging."""
        weight = self.current_weight(step)
        with torch.no_grad():
            measurement, value = self.measured(outputs)
            penalty = weight * measurement.elementwise
        self.record(stage, measurement, value, self.reduce(penalty), weight)
        return penalty, value


def kl_measures(terms: Sequence[Term], reader: str) -> list[KLMeasure]:
    """``terms``, each a KL term (of any type), for ``reader`` (a task's name) that reads their
    distributions and estimators; else ``TermTypeError`` naming the first that is not."""
    measures = []
    for term in terms:
        if not isinstance(term, KLMeasure):
            raise TermTypeError(f"kl.{term.name}: {reader} reads KL terms (klexp.KLTerm, "
                                f"klexp.KLPenalty, klexp.TargetKL), got a {type(term).__name__}")
        measures.append(term)
    return measures


def kl_terms_of(trainer: pl.Trainer | None) -> list[KLMeasure]:
    """The KL terms (of every type) among a trainer's callbacks, in config order."""
    if trainer is None:
        return []
    return [callback for callback in trainer.callbacks if isinstance(callback, KLMeasure)]

