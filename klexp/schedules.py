"""Weights for KL terms: schedules of the training step and controllers driven by the measured KL.

Every object has ``value(step)``, ``update(measured_kl)``, ``state_dict()`` and
``load_state_dict()``. Schedules depend on the trainer's ``global_step`` only, so they resume
exactly from a checkpoint without state of their own; controllers carry their current β in
their state. ``step`` counts optimiser steps from 0.
"""

from __future__ import annotations

import math
from typing import Any

from klexp.errors import (
    require,
    require_non_negative,
    require_positive,
    require_positive_int,
)


class Schedule:
    """A weight that is a function of the training step; ``update`` does nothing."""

    def value(self, step: int) -> float:
        raise NotImplementedError

    def update(self, measured_kl: float) -> None:
        """Controllers adapt to the KL measured over the last update; schedules ignore it."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Schedules are stateless; controllers override this."""


class Constant(Schedule):
    """``β(t) = value``."""

    def __init__(self, value: float = 1.0) -> None:
        require_non_negative("value", value)
        self._value = float(value)

    def value(self, step: int) -> float:
        return self._value

    def __repr__(self) -> str:
        return f"Constant({self._value})"


class LinearWarmup(Schedule):
    """Linear annealing (Bowman et al. 2016, "Generating Sentences from a Continuous Space"):
    ``β(t) = start + (end − start) · clip((t − delay) / steps, 0, 1)``."""

    def __init__(self, steps: int, start: float = 0.0, end: float = 1.0, delay: int = 0) -> None:
        require_positive_int("steps", steps)
        require_non_negative("start", start)
        require_non_negative("end", end)
        require(isinstance(delay, int) and delay >= 0, "delay", "an integer ≥ 0", delay)
        self.steps, self.start, self.end, self.delay = steps, float(start), float(end), delay

    def value(self, step: int) -> float:
        progress = min(1.0, max(0.0, (step - self.delay) / self.steps))
        return self.start + (self.end - self.start) * progress


class Cyclical(Schedule):
    """Cyclical annealing (Fu et al. 2019, "Cyclical Annealing Schedule", eq. 5).

    With ``T = total_steps`` split into ``M = cycles`` cycles and ``t`` counted from 1 as in the
    paper: ``τ = mod(t − 1, ⌈T/M⌉) / (T/M)``; ``β = low + (high − low) · f(τ)`` with ``f(τ) = τ/R``
    while ``τ ≤ R`` and ``1`` after. Our ``step`` is ``t − 1``.
    """

    def __init__(
        self,
        total_steps: int,
        cycles: int = 4,
        ratio: float = 0.5,
        high: float = 1.0,
        low: float = 0.0,
    ) -> None:
        require_positive_int("total_steps", total_steps)
        require_positive_int("cycles", cycles)
        require(isinstance(ratio, (int, float)) and 0 < ratio <= 1, "ratio", "a number in (0, 1]",
                ratio)
        require_non_negative("high", high)
        require_non_negative("low", low)
        self.total_steps, self.cycles, self.ratio = total_steps, cycles, float(ratio)
        self.high, self.low = float(high), float(low)

    def value(self, step: int) -> float:
        cycle_length = self.total_steps / self.cycles
        tau = (step % math.ceil(cycle_length)) / cycle_length
        rise = tau / self.ratio if tau <= self.ratio else 1.0
        return self.low + (self.high - self.low) * rise


class AdaptiveBeta(Schedule):
    """Adaptive KL penalty coefficient (Schulman et al. 2017, "Proximal Policy Optimization
    Algorithms", sec. 4): after each update, with measured ``d``,
    ``d < target / tolerance → β ← β / factor``; ``d > target · tolerance → β ← β · factor``.
    The paper uses ``tolerance = 1.5`` and ``factor = 2``."""

    def __init__(
        self,
        target: float,
        initial: float = 1.0,
        tolerance: float = 1.5,
        factor: float = 2.0,
        min_value: float = 0.0,
        max_value: float = math.inf,
    ) -> None:
        require_positive("target", target)
        require_non_negative("initial", initial)
        require(isinstance(tolerance, (int, float)) and tolerance >= 1, "tolerance",
                "a number ≥ 1", tolerance)
        require(isinstance(factor, (int, float)) and factor > 1, "factor", "a number > 1", factor)
        require_non_negative("min_value", min_value)
        require(max_value >= min_value, "max_value", f"a number ≥ min_value ({min_value})",
                max_value)
        self.target, self.tolerance, self.factor = float(target), float(tolerance), float(factor)
        self.min_value, self.max_value = float(min_value), float(max_value)
        self.beta = float(initial)

    def value(self, step: int) -> float:
        return self.beta

    def update(self, measured_kl: float) -> None:
        if measured_kl < self.target / self.tolerance:
            self.beta /= self.factor
        elif measured_kl > self.target * self.tolerance:
            self.beta *= self.factor
        self.beta = min(self.max_value, max(self.min_value, self.beta))

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta = float(state["beta"])


class ProportionalController(Schedule):
    """Proportional control of β (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences", sec. 2.2): ``e = clip(KL / target − 1, −0.2, 0.2)``,
    ``β ← β · (1 + K_β · e)``. The paper fixes K_β = 0.1; as in its released code
    (openai/lm-human-preferences, ``AdaptiveKLController``) we take ``K_β = batch_size / horizon``,
    the share of the horizon one update covers."""

    def __init__(
        self,
        target: float,
        horizon: float,
        batch_size: int = 1,
        initial: float = 0.1,
        error_clip: float = 0.2,
    ) -> None:
        require_positive("target", target)
        require_positive("horizon", horizon)
        require_positive_int("batch_size", batch_size)
        require_non_negative("initial", initial)
        require_positive("error_clip", error_clip)
        self.target, self.horizon, self.batch_size = float(target), float(horizon), batch_size
        self.error_clip = float(error_clip)
        self.beta = float(initial)

    def value(self, step: int) -> float:
        return self.beta

    def update(self, measured_kl: float) -> None:
        if math.isnan(measured_kl):
            return  # clipping would read NaN as "far below target" (max(−0.2, nan) is −0.2)
        error = min(self.error_clip, max(-self.error_clip, measured_kl / self.target - 1.0))
        self.beta *= 1.0 + error * self.batch_size / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta = float(state["beta"])


def as_schedule(weight: float | Schedule) -> Schedule:
    """A plain number means a constant weight."""
    if isinstance(weight, Schedule):
        return weight
    require_non_negative("weight", weight)
    return Constant(float(weight))
