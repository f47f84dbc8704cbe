"""Schedules: a KL term's weight as a function of the training step.

A schedule's ``value(step)`` depends on the trainer's ``global_step`` only, so it resumes exactly
from a checkpoint without state of its own. ``step`` counts optimiser steps from 0. Weights that
adapt to the measured KL are controllers (``klexp.core.controllers``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

from klexp.errors import (
    require,
    require_finite_non_negative,
    require_positive_int,
)


class Schedule(ABC):
    """A weight that is a function of the training step."""

    @abstractmethod
    def value(self, step: int) -> float:
        """The weight at optimiser step ``step`` (counted from 0)."""


class Constant(Schedule):
    """``β(t) = value``."""

    def __init__(self, value: float = 1.0) -> None:
        require_finite_non_negative("value", value)
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
        require_finite_non_negative("start", start)
        require_finite_non_negative("end", end)
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
        require_finite_non_negative("high", high)
        require_finite_non_negative("low", low)
        self.total_steps, self.cycles, self.ratio = total_steps, cycles, float(ratio)
        self.high, self.low = float(high), float(low)

    def value(self, step: int) -> float:
        cycle_length = self.total_steps / self.cycles
        tau = (step % math.ceil(cycle_length)) / cycle_length
        rise = tau / self.ratio if tau <= self.ratio else 1.0
        return self.low + (self.high - self.low) * rise


def as_schedule(value: float | Schedule, key: str = "value") -> Schedule:
    """A plain number means a constant; ``key`` names the argument in errors."""
    if isinstance(value, Schedule):
        return value
    require_finite_non_negative(key, value)
    return Constant(float(value))
