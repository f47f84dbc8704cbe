"""Controllers: a KL term's weight β steered by the KL it measures.

A controller is stateful: ``value()`` is the current β, ``update(measured_kl)`` adapts it once per
training step (or once per update phase of a task that has phases, such as PPO), and its state
travels in the term's checkpoint state so a resumed run continues with the β it had reached.
``adapt_to`` says which measurement drives it: ``batch`` — the mean of the values the term measured
during the step; ``after_update`` — the value measured on the whole batch once an update phase is
over (the PPO paper's rule); ``rollout`` — the value measured on the whole batch before the phase's
first step, i.e. of the policy that collected the data (Ziegler et al. 2019's released code).
Tasks without phases always give the batch mean.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Literal

from klexp.errors import (
    require,
    require_finite_non_negative,
    require_finite_positive,
    require_in,
    require_positive,
    require_positive_int,
)

AdaptTo = Literal["batch", "after_update", "rollout"]
ADAPT_TO: tuple[str, ...] = ("batch", "after_update", "rollout")


class Controller(ABC):
    """A weight that adapts to the measured KL."""

    beta: float
    adapt_to: AdaptTo

    def value(self) -> float:
        """The current β."""
        return self.beta

    @abstractmethod
    def update(self, measured_kl: float) -> None:
        """Adapt β to ``measured_kl`` (nats)."""

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta = float(state["beta"])


class AdaptiveBeta(Controller):
    """Adaptive KL penalty coefficient (Schulman et al. 2017, "Proximal Policy Optimization
    Algorithms", sec. 4): after each update, with measured ``d``,
    ``d < target / tolerance → β ← β / factor``; ``d > target · tolerance → β ← β · factor``.
    The paper uses ``tolerance = 1.5`` and ``factor = 2``; β stays within ``[min_value, max_value]``:
    the floor is positive, since halving without one reaches exactly 0 after ~1,075 quiet phases
    (float64 underflow), from where doubling can never bring β back.
    ``adapt_to`` (see the module docstring) is ``after_update`` as in the paper."""

    def __init__(
        self,
        target: float,
        initial: float = 1.0,
        tolerance: float = 1.5,
        factor: float = 2.0,
        min_value: float = 1e-6,
        max_value: float = 1e6,
        adapt_to: AdaptTo = "after_update",
    ) -> None:
        require_finite_positive("target", target)
        require_finite_non_negative("initial", initial)
        require(isinstance(tolerance, (int, float)) and tolerance >= 1, "tolerance",
                "a number ≥ 1", tolerance)
        require(isinstance(factor, (int, float)) and factor > 1, "factor", "a number > 1", factor)
        require_finite_positive("min_value", min_value)
        require(isinstance(max_value, (int, float)) and max_value >= min_value, "max_value",
                f"a number ≥ min_value ({min_value})", max_value)
        self.target, self.tolerance, self.factor = float(target), float(tolerance), float(factor)
        require_in("adapt_to", adapt_to, ADAPT_TO)
        self.min_value, self.max_value = float(min_value), float(max_value)
        self.beta, self.adapt_to = float(initial), adapt_to

    def update(self, measured_kl: float) -> None:
        if measured_kl < self.target / self.tolerance:
            self.beta /= self.factor
        elif measured_kl > self.target * self.tolerance:
            self.beta *= self.factor
        self.beta = min(self.max_value, max(self.min_value, self.beta))


class ProportionalController(Controller):
    """Proportional control of β (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences", sec. 2.2): ``e = clip(KL / target − 1, −0.2, 0.2)``,
    ``β ← β · (1 + K_β · e)``. The paper fixes K_β = 0.1; as in its released code
    (openai/lm-human-preferences, ``AdaptiveKLController``) we take ``K_β = batch_size / horizon``,
    the share of the horizon one update covers. ``adapt_to``: ``after_update`` (klexp's default,
    the KL the update produced) or ``rollout`` (the released code's choice: the KL of the policy
    that collected the batch, measured before the update); see the module docstring."""

    def __init__(
        self,
        target: float,
        horizon: float,
        batch_size: int = 1,
        initial: float = 0.1,
        error_clip: float = 0.2,
        adapt_to: AdaptTo = "after_update",
    ) -> None:
        require_finite_positive("target", target)
        require_finite_positive("horizon", horizon)
        require_positive_int("batch_size", batch_size)
        require_finite_non_negative("initial", initial)
        require_positive("error_clip", error_clip)
        self.target, self.horizon, self.batch_size = float(target), float(horizon), batch_size
        require_in("adapt_to", adapt_to, ADAPT_TO)
        self.error_clip = float(error_clip)
        self.beta, self.adapt_to = float(initial), adapt_to

    def update(self, measured_kl: float) -> None:
        if math.isnan(measured_kl):
            return  # clipping would read NaN as "far below target" (max(−0.2, nan) is −0.2)
        error = min(self.error_clip, max(-self.error_clip, measured_kl / self.target - 1.0))
        self.beta *= 1.0 + error * self.batch_size / self.horizon
