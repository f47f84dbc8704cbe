"""KL terms: Lightning callbacks that add a weighted divergence between two task outputs to the loss.

A task's ``step`` returns a mapping of named outputs (distributions, tensors, numbers). Each
``KLTerm`` the trainer holds reads two of them, ``p`` and ``q``, computes a divergence in the chosen
direction with the chosen estimator, weights it by its schedule or controller, and returns its loss
to the task. It keeps per-batch tallies and logs them under ``kl/<name>/...`` on the training steps
Lightning writes (every ``log_every_n_steps``; see ``logs_this_step``) and as epoch means under
``val/kl/<name>/...`` and ``test/kl/<name>/...``, updates its controller from the
KL it measured, and saves the controller's state in checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent

from klexp import divergences
from klexp.errors import (
    ConfigValueError,
    NonFiniteError,
    require,
    require_in,
    require_non_negative,
    require_positive,
    require_positive_int,
)
from klexp.lightning_helpers import (
    all_ranks_agree,
    logs_this_step,
    mean_over_ranks,
    step_metrics_written,
    write_step_scalars,
)
from klexp.schedules import Constant, Schedule, as_schedule

Direction = Literal["forward", "reverse", "js"]
DIRECTIONS: tuple[str, ...] = ("forward", "reverse", "js")
REDUCTIONS: tuple[str, ...] = ("mean", "sum")
STAGES: tuple[str, ...] = ("train", "val", "test")


@dataclass
class _Tally:
    """Running sums of what a term measured over the calls of one batch."""

    calls: int = 0
    std_calls: int = 0
    # batch elements behind each value: the weight of this batch in an epoch mean across ranks
    elements: int = 1
    value: float = 0.0
    value_max: float = -math.inf
    loss: float = 0.0
    std: float = 0.0
    dims: Tensor | None = None
    # The weight the losses used: by the batch-end hook Lightning has already advanced global_step.
    weight: float | None = None

    def add(self, value: float, loss: float, std: float | None, dims: Tensor | None,
            weight: float | None = None, elements: int = 1) -> None:
        self.calls += 1
        self.weight, self.elements = weight, elements
        self.value += value
        self.value_max = max(self.value_max, value)
        self.loss += loss
        if std is not None:
            self.std += std
            self.std_calls += 1
        if dims is not None:
            self.dims = dims if self.dims is None else self.dims + dims


class KLTerm(pl.Callback):
    """``weight(t) · D(p ‖ q)`` added to the task loss, where D is chosen by ``direction``:
    ``forward`` → ``KL(p ‖ q)``, ``reverse`` → ``KL(q ‖ p)``, ``js`` → Jensen–Shannon.

    Args:
        name: the term's name in logs and checkpoints.
        p, q: names of two distributions among the task's outputs.
        direction: ``forward`` | ``reverse`` | ``js``.
        estimator: ``analytic`` (closed form) or a Monte-Carlo estimator ``k1`` | ``k2`` | ``k3``.
        weight: β, a number ≥ 0: the term's scale.
        schedule: a schedule or controller from ``klexp.schedules``; the effective weight at step
            t is ``weight · schedule.value(t)`` (constant ``weight`` when None).
        num_samples: Monte-Carlo samples per batch element.
        samples: name of an output holding draws from the sampled distribution (e.g. the actions
            of a rollout); Monte-Carlo estimators then use them instead of drawing afresh.
        free_bits: per-dimension floor λ (Kingma et al. 2016): each event dimension contributes
            ``max(λ, batch-mean KL_i)``, with no gradient while below λ.
        capacity: target capacity ``C(t)`` (a number or schedule; Burgess et al. 2018): the loss
            becomes ``weight · |KL − C(t)|``.
        divide_by: name of a numeric output the divergence is divided by before weighting (the
            training-set size N turns KL(q(w) ‖ p(w)) into its per-example share).
        reduction: how values of a batch combine: ``mean`` or ``sum``.
        log_dims: also log the batch-mean KL of each event dimension as ``kl/<name>/dim_<i>``.
        check_finite: raise ``NonFiniteError`` naming the term when its value is NaN or infinite.
    """

    def __init__(
        self,
        name: str,
        p: str,
        q: str,
        direction: Direction = "forward",
        estimator: divergences.Estimator = "analytic",
        weight: float = 1.0,
        schedule: Schedule | None = None,
        num_samples: int = 1,
        samples: str | None = None,
        free_bits: float | None = None,
        capacity: float | Schedule | None = None,
        divide_by: str | None = None,
        reduction: Literal["mean", "sum"] = "mean",
        log_dims: bool = False,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        require(isinstance(name, str) and name.isidentifier(), "name",
                "an identifier (letters, digits, _)", name)
        require(isinstance(p, str) and p != "", "p", "the name of a task output", p)
        require(isinstance(q, str) and q != "", "q", "the name of a task output", q)
        require_in("direction", direction, DIRECTIONS)
        require_in("estimator", estimator, divergences.ESTIMATORS)
        require_positive_int("num_samples", num_samples)
        require_in("reduction", reduction, REDUCTIONS)
        if free_bits is not None:
            require_non_negative("free_bits", free_bits)
        if direction == "js" and estimator != "analytic":
            raise ConfigValueError("estimator", "Jensen–Shannon has no k1/k2/k3 estimator; "
                                   f"use estimator=analytic, got {estimator!r}")
        if free_bits is not None and capacity is not None:
            raise ConfigValueError("capacity", "free_bits and capacity are alternatives; set one")
        if samples is not None and direction != "forward":
            raise ConfigValueError("samples", "draws given in an output come from p, so they serve "
                                   "only direction=forward (reverse would treat them as draws from q)")
        if samples is not None and num_samples != 1:
            raise ConfigValueError("num_samples", "with samples given in an output, their own count is "
                                   f"used; leave num_samples at 1, got {num_samples}")
        if direction == "js" and (free_bits is not None or log_dims):
            raise ConfigValueError("direction", "Jensen–Shannon does not split over dimensions; "
                                   "free_bits and log_dims need direction forward or reverse")
        self.name, self.p, self.q = name, p, q
        self.direction, self.estimator = direction, estimator
        require_non_negative("weight", weight)
        self.weight = float(weight)
        self.schedule = schedule if schedule is not None else Constant(1.0)
        self.capacity = None if capacity is None else _as_capacity(capacity)
        self.num_samples, self.samples = num_samples, samples
        self.free_bits, self.divide_by, self.reduction = free_bits, divide_by, reduction
        self.log_dims, self.check_finite = log_dims, check_finite
        self._tallies = {stage: _Tally() for stage in STAGES}
        self._state_key = self._generate_state_key(name=name)
        self._batch_elements = 1
        self._trainer: pl.Trainer | None = None
        self._after_update: float | None = None

    # ---------------------------------------------------------------- Lightning plumbing

    @property
    def state_key(self) -> str:
        # Lightning reads it on every hook call (to name the profiled action): build it once
        return self._state_key

    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state_dict["schedule"])

    def check_outputs(self, output_names: frozenset[str] | set[str], task_name: str) -> None:
        """Raise ``ConfigValueError`` if the term reads an output the task does not produce."""
        for role in ("p", "q", "samples", "divide_by"):
            key = getattr(self, role)
            if key is not None and key not in output_names:
                raise ConfigValueError(
                    role, f"KL term '{self.name}' reads output {key!r}, which {task_name} does not "
                    f"produce; its outputs are: {', '.join(sorted(output_names))}"
                )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        names = getattr(pl_module, "output_names", None)
        if names is not None:
            self.check_outputs(names, type(pl_module).__name__)

    # ---------------------------------------------------------------- the computation

    @property
    def per_dimension(self) -> bool:
        return self.free_bits is not None or self.log_dims

    def current_weight(self, step: int) -> float:
        return self.weight * self.schedule.value(step)

    def __call__(self, outputs: Mapping[str, Any], stage: str, step: int) -> Tensor:
        """The term's loss on one batch, ``weight · shaped(D) / divide_by``; records what it
        measured for logging. At weight 0 the term only measures (no graph is built)."""
        weight = self.current_weight(step)
        logged = self._logged(stage)
        with torch.set_grad_enabled(torch.is_grad_enabled() and weight != 0):
            value, per_dim, per_sample = self.measure(outputs, dims=self.log_dims and logged)
            if self.free_bits is not None:
                shaped = per_dim.clamp(min=self.free_bits).sum() * self._batch_scale()
            elif self.capacity is not None:
                shaped = (value - self.capacity.value(step)).abs()
            else:
                shaped = value
            if weight == 0:
                loss = value.new_zeros(())
            else:  # at weight 1 a small network's step is spared a multiply and its backward
                loss = shaped if weight == 1 else weight * shaped
                if self.divide_by is not None:
                    loss = loss / float(outputs[self.divide_by])

        measured = value.detach().item()
        if self.check_finite and not all_ranks_agree(self._trainer, math.isfinite(measured)):
            raise NonFiniteError(
                f"KL term '{self.name}' is {measured} at step {step} ({stage}); "
                f"{self._describe(outputs)}" if not math.isfinite(measured) else
                f"KL term '{self.name}' turned non-finite on another rank at step {step} ({stage})"
            )
        std = None
        if logged and per_sample is not None and per_sample.numel() > 1:
            std = per_sample.detach().std().item()
        dims = per_dim.detach() if self.log_dims and logged else None
        self._tallies[stage].add(measured, loss.detach().item(), std, dims, weight,
                                 self._batch_elements)
        return loss

    def _logged(self, stage: str) -> bool:
        """Whether what this batch measures reaches the logs: always in evaluation, on the steps
        Lightning writes in training. Per-dimension and spread statistics cost a training step of
        a small network more than its KL does, so they are computed only then."""
        return stage != "train" or self._trainer is None or step_metrics_written(self._trainer)

    def measure(self, outputs: Mapping[str, Any],
                dims: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The reduced divergence; its batch-mean per event dimension (with free bits, or when
        ``dims`` asks for it, else None); and, for Monte-Carlo estimators, the per-sample
        estimates of each element's divergence."""
        p, q = self._distribution(outputs, "p"), self._distribution(outputs, "q")
        if self.direction == "reverse":
            p, q = q, p
        event_dims = self._event_dims(p, q) if self.per_dimension else 0
        per_dim = None
        if event_dims and (self.free_bits is not None or self.estimator == "analytic"):
            # Free bits floor each dimension's KL, so the estimate itself is made per dimension;
            # a closed-form KL of Independent distributions is the sum of its dimensions' KLs.
            elementwise, per_sample = self._elementwise(p.base_dist, q.base_dist, outputs)
            if self.free_bits is not None or dims:
                per_dim = _batch_mean_per_dim(elementwise, event_dims)
            elementwise = elementwise.flatten(-event_dims).sum(-1)
            if per_sample is not None:
                per_sample = per_sample.flatten(-event_dims).sum(-1)
        else:
            # Monte-Carlo estimates use the joint log-ratio: a sum of per-dimension estimates
            # has a far larger variance (k2, k3); per-dimension values are only for the logs
            elementwise, per_sample = self._elementwise(p, q, outputs)
            if event_dims and dims:
                # on the logged steps only: drawn aside, so how often a run logs leaves its
                # random stream (and so its training) unchanged
                with torch.no_grad(), _random_stream_aside(elementwise.device):
                    per_dim = _batch_mean_per_dim(
                        self._elementwise(p.base_dist, q.base_dist, outputs)[0], event_dims)
        self._batch_elements = max(1, elementwise.numel())
        value = elementwise.mean() if self.reduction == "mean" else elementwise.sum()
        return value, per_dim, per_sample

    def _elementwise(self, p: Distribution, q: Distribution,
                     outputs: Mapping[str, Any]) -> tuple[Tensor, Tensor | None]:
        """D(p ‖ q) per batch element, and the per-sample terms of a Monte-Carlo estimator."""
        if self.direction == "js":
            return divergences.js(p, q, num_samples=max(self.num_samples, 256)), None
        if self.estimator == "analytic":
            return divergences.kl(p, q), None
        samples = outputs[self.samples] if self.samples is not None else None
        per_sample = divergences.kl_samples(
            p, q, estimator=self.estimator, num_samples=self.num_samples, samples=samples
        )
        return per_sample.mean(0), per_sample

    def after_update(self, outputs: Mapping[str, Any]) -> float:
        """Measure the divergence on ``outputs`` once a task's update phase is over (call it under
        ``torch.no_grad()``; no loss, no tally). It is logged as ``kl/<name>/value_after_update``
        and the controller adapts to it instead of the mean over the batch's calls: the PPO paper's
        adaptive β (Schulman et al. 2017, sec. 4) computes ``d = Ê[KL[π_old, π_θ]]`` after the
        epochs of minibatch updates, when it is largest."""
        self._after_update = float(self.measure(outputs)[0])
        return self._after_update

    def _batch_scale(self) -> float:
        return 1.0 if self.reduction == "mean" else float(self._batch_elements)

    def _event_dims(self, p: Distribution, q: Distribution) -> int:
        dims = {d.reinterpreted_batch_ndims if isinstance(d, Independent) else 0 for d in (p, q)}
        if dims == {0} or len(dims) != 1:
            raise ConfigValueError(
                "free_bits" if self.free_bits is not None else "log_dims",
                f"KL term '{self.name}' needs p and q to be Independent distributions with the "
                f"same event dimensions to split the KL per dimension; got {type(p).__name__} "
                f"and {type(q).__name__}",
            )
        return dims.pop()

    def _distribution(self, outputs: Mapping[str, Any], role: str) -> Distribution:
        key = getattr(self, role)
        try:
            d = outputs[key]
        except KeyError:
            raise ConfigValueError(
                role, f"KL term '{self.name}' reads output {key!r}, which the task does not "
                f"produce; its outputs are: {', '.join(sorted(outputs))}"
            ) from None
        if not isinstance(d, Distribution):
            raise ConfigValueError(
                role, f"KL term '{self.name}' needs a distribution in output {key!r}, "
                f"got {type(d).__name__}"
            )
        return d

    def _describe(self, outputs: Mapping[str, Any]) -> str:
        parts = []
        for role in ("p", "q"):
            d = outputs.get(getattr(self, role))
            params = [v for v in vars(d).values() if isinstance(v, Tensor)] if d is not None else []
            stats = ", ".join(
                f"nan={int(t.isnan().sum())} inf={int(t.isinf().sum())} "
                f"min={t.nan_to_num().min().item():.3g} max={t.nan_to_num().max().item():.3g}"
                for t in params[:1]
            )
            parts.append(f"{role}={getattr(self, role)} ({type(d).__name__}: {stats})")
        return "; ".join(parts)

    # ---------------------------------------------------------------- logging and control

    def _flush(self, stage: str, pl_module: pl.LightningModule, step: int) -> None:
        tally = self._tallies[stage]
        if tally.calls == 0:
            return
        self._tallies[stage] = _Tally()
        if stage != "train":
            pl_module.log_dict(self._metrics(tally, f"{stage}/kl/{self.name}", step), on_step=False,
                               on_epoch=True, sync_dist=True, batch_size=tally.elements)
            return
        after_update, self._after_update = self._after_update, None
        if logs_this_step(pl_module):
            metrics = self._metrics(tally, f"kl/{self.name}", step)
            if after_update is not None:
                metrics[f"kl/{self.name}/value_after_update"] = after_update
            write_step_scalars(pl_module, metrics)
        measured = after_update if after_update is not None else tally.value / tally.calls
        if type(self.schedule).update is not Schedule.update:  # a controller: rank-mean KL
            self.schedule.update(mean_over_ranks(self._trainer or pl_module._trainer, measured))

    def _metrics(self, tally: _Tally, prefix: str, step: int) -> dict[str, float]:
        calls = tally.calls
        metrics = {
            f"{prefix}/value": tally.value / calls,
            f"{prefix}/weight": self.current_weight(step) if tally.weight is None else tally.weight,
            f"{prefix}/loss": tally.loss / calls,
        }
        if self.estimator != "analytic":
            metrics[f"{prefix}/std"] = tally.std / max(1, tally.std_calls)
        if calls > 1:
            metrics[f"{prefix}/value_max"] = tally.value_max
        if tally.dims is not None:
            metrics.update({f"{prefix}/dim_{i}": v for i, v in enumerate((tally.dims / calls).tolist())})
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
        return (f"KLTerm(name={self.name!r}, {self.direction} D({self.p} ‖ {self.q}), "
                f"estimator={self.estimator}, weight={self.weight}, schedule={self.schedule!r})")


def _batch_mean_per_dim(elementwise: Tensor, event_dims: int) -> Tensor:
    """Per-dimension values ``(*batch, *event)`` → their batch mean over flattened event dims."""
    flat = elementwise.flatten(-event_dims)
    return flat.reshape(-1, flat.shape[-1]).mean(0)


def _random_stream_aside(device: torch.device) -> Any:
    """Draws inside leave the global generator of ``device`` (and the CPU's) where they found it."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device], device_type=device.type)


def _as_capacity(capacity: float | Schedule) -> Schedule:
    if isinstance(capacity, Schedule):
        return capacity
    require_positive("capacity", capacity)
    return as_schedule(capacity)


def kl_terms_of(trainer: pl.Trainer) -> list[KLTerm]:
    """The KL terms among a trainer's callbacks, in config order."""
    return [callback for callback in trainer.callbacks if isinstance(callback, KLTerm)]


class TargetKL(KLTerm):
    """Early stop of an update phase once the measured KL exceeds ``target`` (the ``target_kl`` of
    OpenAI Spinning Up's and Stable-Baselines3's PPO, and of CleanRL's ``ppo.py``).

    A KL term, so it is configured like any other (``p``, ``q``, direction, estimator, ``samples``)
    and logs ``kl/<name>/value``; its weight is 0 by default, so it only measures. The task asks
    ``exceeded(boundary)`` after each minibatch's loss (before its step) and after each epoch; the
    term answers at the granularity ``check`` names, comparing the latest value it measured (that
    minibatch's) with ``target``. The task decides (under DDP: when any rank's term says so) and
    reports the stop with ``stopped_at``, logged as ``kl/<name>/stopped`` (0 or 1), and when it
    stopped ``kl/<name>/stop_epoch`` and ``kl/<name>/stop_minibatch`` (0-based);
    ``kl/<name>/stops_total`` counts the update phases stopped so far.

    Args:
        target: the KL (nats) above which the update phase stops.
        check: ``minibatch`` (stop before stepping on a minibatch whose KL is too large) or
            ``epoch`` (finish the epoch, then stop).
        estimator: ``k3`` by default: the log-ratio estimator PPO implementations use.
    """

    def __init__(
        self,
        name: str,
        p: str,
        q: str,
        target: float,
        check: Literal["minibatch", "epoch"] = "minibatch",
        estimator: divergences.Estimator = "k3",
        weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, p, q, estimator=estimator, weight=weight, **kwargs)
        require_positive("target", target)
        require_in("check", check, ("minibatch", "epoch"))
        self.target, self.check = float(target), check
        self.latest = 0.0
        self.stop_point: tuple[int, int] | None = None
        self.stops_total = 0

    def measure(self, outputs: Mapping[str, Any],
                dims: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        value, per_dim, per_sample = super().measure(outputs, dims)
        self.latest = float(value.detach())
        return value, per_dim, per_sample

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "stops_total": self.stops_total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.stops_total = int(state_dict.get("stops_total", 0))

    def exceeded(self, boundary: Literal["minibatch", "epoch"]) -> bool:
        """At a ``boundary`` of the granularity ``check``: has the latest measured KL passed the
        target?"""
        return boundary == self.check and self.latest > self.target

    def stopped_at(self, epoch: int, minibatch: int) -> None:
        """The task stopped the update phase at this epoch and minibatch (0-based)."""
        self.stop_point = (epoch, minibatch)
        self.stops_total += 1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        prefix = f"kl/{self.name}"
        metrics = {f"{prefix}/stopped": float(self.stop_point is not None),
                   f"{prefix}/stops_total": float(self.stops_total)}
        if self.stop_point is not None:
            metrics[f"{prefix}/stop_epoch"] = float(self.stop_point[0])
            metrics[f"{prefix}/stop_minibatch"] = float(self.stop_point[1])
        if logs_this_step(pl_module):
            write_step_scalars(pl_module, metrics)
        self.stop_point = None
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
