"""The token-level distillation objectives as small objects a config names: each knows its
direction by its type (never by a β endpoint), computes per-token values from the teacher's and
the student's logits ``(N, L, V)`` and the tokens ``(N, L)``, and says whether those tokens must
be the student's own samples. The formulas are the functions of ``klexp.core.distill``.

A term (``klexp.DistillTerm``) reduces the per-token values (``klexp.core.reduction``), weights
them and adds them to the loss; a user's own module may call an objective directly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Literal

from torch import Tensor

from klexp.core import distill
from klexp.core.controllers import Controller
from klexp.core.estimators import MONTE_CARLO_ESTIMATORS, EstimatorName
from klexp.core.taid import TaidSchedule
from klexp.errors import ConfigValueError, require, require_in, require_positive_int

Convention = Literal["continuous", "gkd"]


class TokenObjective(ABC):
    """A per-token distillation objective."""

    #: the tokens must be drawn from the student itself (on-policy), as sampled estimators need
    needs_student_samples: bool = False

    @abstractmethod
    def __call__(self, teacher: Tensor, student: Tensor, tokens: Tensor,
                 mask: Tensor | None = None) -> Tensor:
        """Per-token values ``(N, L)`` from logits ``(N, L, V)``, the tokens ``(N, L)`` and the
        mask of real tokens (None: all are real)."""

    @property
    def schedule(self) -> Controller | None:
        """A controller the objective follows (updated with the measured value), if any."""
        return None

    def scalars(self) -> dict[str, float]:
        """What the objective logs besides its value (e.g. TAID's ``t``)."""
        return {}


class _PerTokenKL(TokenObjective):
    """A KL per token given by one function of the teacher's and the student's logits."""

    kl: ClassVar[Callable[[Tensor, Tensor], Tensor]]

    def __call__(self, teacher: Tensor, student: Tensor, tokens: Tensor,
                 mask: Tensor | None = None) -> Tensor:
        return self.kl(teacher, student)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ForwardKL(_PerTokenKL):
    """``KL(T ‖ S)`` per token (``klexp.core.distill.forward_kl``): mass covering."""

    kl = staticmethod(distill.forward_kl)


class ReverseKL(_PerTokenKL):
    """``KL(S ‖ T)`` per token (``klexp.core.distill.reverse_kl``): mode seeking."""

    kl = staticmethod(distill.reverse_kl)


class GeneralisedJS(TokenObjective):
    """The generalised Jensen–Shannon divergence ``β KL(T ‖ M) + (1−β) KL(S ‖ M)``,
    ``M = βT + (1−β)S``, for ``0 < β < 1``: ``convention="gkd"`` as GKD writes it
    (``gkd_generalised_jsd``, tending to 0 at both ends), ``"continuous"`` divided by
    ``β(1−β)`` (``generalised_jsd``, tending to the KLs). β = 0 and β = 1 are refused: they are
    ``ForwardKL`` and ``ReverseKL``, named as such."""

    def __init__(self, beta: float = 0.5, convention: Convention = "continuous") -> None:
        require(isinstance(beta, (int, float)) and 0 < beta < 1, "beta",
                "a number in (0, 1) (β = 0 and 1 are ForwardKL and ReverseKL)", beta)
        require_in("convention", convention, ("continuous", "gkd"))
        self.beta, self.convention = float(beta), convention

    def __call__(self, teacher: Tensor, student: Tensor, tokens: Tensor,
                 mask: Tensor | None = None) -> Tensor:
        if self.convention == "gkd":
            return distill.gkd_generalised_jsd(teacher, student, self.beta)
        return distill.generalised_jsd(teacher, student, self.beta)

    def __repr__(self) -> str:
        return f"GeneralisedJS(beta={self.beta}, convention={self.convention!r})"


class SkewKL(TokenObjective):
    """DistiLLM's α-skew KL (``klexp.core.distill.skew_kl``): ``direction="forward"`` is
    ``KL(T ‖ αT + (1−α)S)``, ``"reverse"`` is ``KL(S ‖ αS + (1−α)T)``; α = 0.1 as in the paper."""

    def __init__(self, direction: Literal["forward", "reverse"] = "forward", alpha: float = 0.1) -> None:
        require_in("direction", direction, ("forward", "reverse"))
        require(isinstance(alpha, (int, float)) and 0 < alpha < 1, "alpha", "a number in (0, 1)", alpha)
        self.direction, self.alpha = direction, float(alpha)

    def __call__(self, teacher: Tensor, student: Tensor, tokens: Tensor,
                 mask: Tensor | None = None) -> Tensor:
        if self.direction == "forward":
            return distill.skew_kl(teacher, student, self.alpha)
        return distill.skew_kl(student, teacher, self.alpha)

    def __repr__(self) -> str:
        return f"SkewKL(direction={self.direction!r}, alpha={self.alpha})"


class TAID(TokenObjective):
    """TAID: ``KL(p_t ‖ S)`` to the interpolated teacher (``klexp.core.distill.taid_kl``), with
    ``t`` from a ``TaidSchedule`` the term updates with the value it measures each step."""

    def __init__(self, schedule: TaidSchedule) -> None:
        require(isinstance(schedule, TaidSchedule), "schedule", "a TaidSchedule", schedule)
        self._schedule = schedule

    @property
    def schedule(self) -> TaidSchedule:
        return self._schedule

    def __call__(self, teacher: Tensor, student: Tensor, tokens: Tensor,
                 mask: Tensor | None = None) -> Tensor:
        return distill.taid_kl(teacher, student, self._schedule.value())

    def scalars(self) -> dict[str, float]:
        return {"t": self._schedule.value()}

    def __repr__(self) -> str:
        return f"TAID({self._schedule!r})"


class TopK(TokenObjective):
    """The teacher's top ``k`` tokens only: ``tail=True`` keeps the rest as one bucket
    (``top_k_tail_kl``, a divergence ≤ the full forward KL), ``tail=False`` drops it
    (``top_k_truncated_kl``, not a divergence: it goes negative)."""

    def __init__(self, k: int, tail: bool = True) -> None:
        require_positive_int("k", k)
        self.k, self.tail = k, bool(tail)

    def __call__(self, teacher: Tensor, student: Tensor, tokens: Tensor,
                 mask: Tensor | None = None) -> Tensor:
        if self.k > teacher.shape[-1]:
            raise ConfigValueError("k", f"at most the vocabulary ({teacher.shape[-1]}), got {self.k}")
        if self.tail:
            return distill.top_k_tail_kl(teacher, student, self.k)
        return distill.top_k_truncated_kl(teacher, student, self.k)

    def __repr__(self) -> str:
        return f"TopK(k={self.k}, tail={self.tail})"


class SampledReverseKL(TokenObjective):
    """``KL(S ‖ T)`` estimated at the student's own sampled tokens by ``k1``/``k2``/``k3``
    (``klexp.core.distill.sampled_kl_terms``), back-propagated as a ``loss`` or used as a
    per-token ``reward`` (``reward_surrogate``: REINFORCE with the return to go). The tokens
    must be the student's samples: a term refuses this objective on other sequences."""

    needs_student_samples = True

    def __init__(self, estimator: EstimatorName = "k1",
                 placement: Literal["loss", "reward"] = "reward") -> None:
        require_in("estimator", estimator, MONTE_CARLO_ESTIMATORS)
        require_in("placement", placement, ("loss", "reward"))
        self.estimator, self.placement = estimator, placement

    def __call__(self, teacher: Tensor, student: Tensor, tokens: Tensor,
                 mask: Tensor | None = None) -> Tensor:
        index = tokens.unsqueeze(-1)
        log_s = student.log_softmax(-1).gather(-1, index).squeeze(-1)
        log_t = teacher.log_softmax(-1).gather(-1, index).squeeze(-1)
        terms = distill.sampled_kl_terms(log_s, log_t, self.estimator)
        if self.placement == "reward":
            return distill.reward_surrogate(terms, log_s, mask)
        return terms

    def __repr__(self) -> str:
        return f"SampledReverseKL(estimator={self.estimator!r}, placement={self.placement!r})"
