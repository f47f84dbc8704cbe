"""TAID's interpolation parameter ``t`` as a controller (Shing et al. 2025, "TAID: Temporally
Adaptive Interpolated Distillation for Efficient Knowledge Transfer in Language Models", ICLR,
Algorithm 1 and the authors' released code, SakanaAI/TAID).

``t`` starts at ``t_start`` (0.4) and never falls below a linear ramp to ``t_end`` (1) over the
run; it moves faster while the objective ``J`` is falling quickly. After each training step, with
``J_n`` the objective measured on it::

    δ_n = (J_{n−1} − J_n) / (J_{n−1} + ε)          relative improvement
    m_n = β m_{n−1} + (1 − β) δ_n                   its momentum (β = 0.99)
    t_{n+1} = min(t_end, max(t_start + (t_end − t_start)·n/N, t_n + α·σ(m_n)·(1 − t_n)))

with ``α = 5e-4``, ``N`` the run's training steps and ``n`` counted from 0; the first step only
records ``J_0``. The released code measures ``J`` as the
cross-entropy ``−Σ p_t log S``; klexp passes the value its term measures, ``KL(p_t ‖ S)``.
"""

from __future__ import annotations

import math
from typing import Any

from klexp.core.controllers import Controller
from klexp.errors import require, require_positive_int, require_unit_interval

_EPS = 1e-15


class TaidSchedule(Controller):
    """``t`` of TAID (see the module docstring); ``value()`` is the current ``t`` and
    ``update(measured)`` takes the objective of one training step. A controller like klexp's
    others: its whole state travels in the term's checkpoint, so a resumed run continues."""

    adapt_to = "batch"

    def __init__(self, total_steps: int, t_start: float = 0.4, t_end: float = 1.0,
                 alpha: float = 5e-4, momentum: float = 0.99) -> None:
        require_positive_int("total_steps", total_steps)
        require_unit_interval("t_start", t_start)
        require(isinstance(t_end, (int, float)) and t_start < t_end <= 1, "t_end",
                f"a number in (t_start={t_start}, 1]", t_end)
        require_unit_interval("alpha", alpha, closed_right=True)
        require_unit_interval("momentum", momentum)
        self.total_steps, self.t_start, self.t_end = total_steps, float(t_start), float(t_end)
        self.alpha, self.momentum = float(alpha), float(momentum)
        self.beta = self.t_start  # Controller's name for the value it steers
        self.steps, self.previous, self.average_change = 0, math.inf, 0.0

    def update(self, measured_kl: float) -> None:
        if math.isnan(measured_kl):
            return
        self.steps += 1
        if math.isinf(self.previous):
            self.previous = measured_kl
            return
        change = (self.previous - measured_kl) / (self.previous + _EPS)
        self.average_change = self.momentum * self.average_change + (1 - self.momentum) * change
        ramp = self.t_start + (self.t_end - self.t_start) * min(1.0, (self.steps - 1) / self.total_steps)
        step = self.alpha / (1 + math.exp(-self.average_change)) * (1 - self.beta)
        self.beta = min(self.t_end, max(ramp, self.beta + step))
        self.previous = measured_kl

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta, "steps": self.steps, "previous": self.previous,
                "average_change": self.average_change}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta, self.steps = float(state["beta"]), int(state["steps"])
        self.previous, self.average_change = float(state["previous"]), float(state["average_change"])

    def __repr__(self) -> str:
        return f"TaidSchedule(t={self.beta:.4g}, step {self.steps}/{self.total_steps})"
