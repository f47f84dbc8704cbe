"""Early stop of an update phase at a target KL: a KL term that only measures."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor

from klexp.core.directions import Direction
from klexp.core.estimate import Estimator
from klexp.errors import require, require_in, require_positive
from klexp.lightning.logging import log_metrics, logs_now
from klexp.lightning.term import KLMeasure

Check = Literal["minibatch", "epoch"]


class TargetKL(KLMeasure):
    """Stop an update phase once the measured KL exceeds ``tolerance · target``.

    Conventions differ on where the line is and when it is checked:

    ================================  ===================  ===================================
    implementation                    stops when           checked
    ================================  ===================  ===================================
    Stable-Baselines3 ``PPO``         KL > 1.5 · target    before each minibatch step
    OpenAI Spinning Up ``ppo``        KL > 1.5 · target    before each policy step (full batch)
    CleanRL ``ppo.py``                KL > target          after each epoch
    klexp (default)                   KL > target          before each minibatch step
    ================================  ===================  ===================================

    ``tolerance=1.5`` gives the first two, ``check=epoch`` the third. A KL term that adds nothing:
    ``klexp.total_loss`` feeds it each minibatch's outputs alongside the loss terms, and it only
    measures (``p``, ``q``, direction, estimator as any term), logging ``kl/<name>/value`` (and
    ``weight`` and ``loss``, both 0, so that it lines up with the other terms). The task asks through
    its update phase (``klexp.lightning.phase.UpdatePhase.should_stop``) after each minibatch's
    loss (before its step) and after each epoch; the term answers at the granularity ``check``
    names, from the latest value it measured. Logged: ``kl/<name>/stopped`` (0 or 1) and, when
    it stopped, ``kl/<name>/stop_epoch`` and ``kl/<name>/stop_minibatch`` (0-based);
    ``kl/<name>/stops_total`` counts the phases stopped so far (checkpointed).

    Args:
        target: the KL (nats) the phase should not pass.
        check: ``minibatch`` or ``epoch``.
        tolerance: the phase stops above ``tolerance · target`` (≥ 1).
        estimator: ``k3`` by default with a shorthand ``direction``: the log-ratio estimator PPO
            implementations use (on the rollout's actions: ``OnSamples("actions", "k3",
            samples_from="old_policy")``).
        The others: ``KLMeasure``.
    """

    def __init__(
        self,
        name: str,
        p: str,
        q: str,
        target: float,
        check: Check = "minibatch",
        tolerance: float = 1.0,
        direction: Direction | str = "forward",
        reduction: Literal["mean", "sum"] = "mean",
        check_finite: bool = True,
        *,
        estimator: Estimator | str | None = None,
    ) -> None:
        if estimator is None and isinstance(direction, str):
            estimator = "k3"
        super().__init__(name, p, q, direction, weight=0.0, reduction=reduction,
                         check_finite=check_finite, estimator=estimator)
        require_positive("target", target)
        require_in("check", check, ("minibatch", "epoch"))
        require(isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool)
                and 1 <= tolerance < float("inf"), "tolerance", "a finite number ≥ 1", tolerance)
        self.target, self.check, self.tolerance = float(target), check, float(tolerance)
        self.latest: Tensor | None = None
        self.stop_point: tuple[int, int] | None = None
        self.stops_total = 0

    def take(self, outputs: Mapping[str, Any], stage: str, step: int) -> tuple[Tensor | None, Tensor]:
        """Measure ``outputs`` (no graph) and keep the value for ``exceeded``; gives nothing."""
        with torch.no_grad():
            measurement, value = self.measured(outputs)
        self.record(stage, measurement, value, value.new_zeros(()), 0.0)
        self.latest = value.detach()
        return None, self.latest

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "stops_total": self.stops_total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.stops_total = int(state_dict.get("stops_total", 0))

    def exceeded(self, boundary: Check) -> bool:
        """At a ``boundary`` of the granularity ``check``: has the latest measured KL passed
        ``tolerance · target``?"""
        return (boundary == self.check and self.latest is not None
                and float(self.latest) > self.tolerance * self.target)

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
        if logs_now(pl_module):
            log_metrics(pl_module, metrics)
        self.stop_point = None
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
