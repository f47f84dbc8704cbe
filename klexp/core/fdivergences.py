"""f-divergences and their variational (Fenchel) lower bounds, as pure functions.

``D_f(P ‖ Q) = E_{x~Q}[f(p(x)/q(x))]`` for a convex ``f``, in nats. ``D_f ≥ f(1)`` (Jensen), and
``f(1) = 0`` for every row but ``gan``'s (``−ln 4``), so the others are ≥ 0, 0 at P = Q. The rows
of ``F_DIVERGENCES`` are Table 2 of Nowozin, Cseke & Tomioka (2016), "f-GAN: Training Generative
Neural Samplers using Variational Divergence Minimization", with ``u = p/q``:

================  ==============================  ======================  ==========================
name              f(u)                            activation g_f(v)       conjugate f*(t)
================  ==============================  ======================  ==========================
kl                u log u                         v                       exp(t − 1)
reverse_kl        −log u                          −exp(−v)                −1 − log(−t)
pearson           (u − 1)²                        v                       t²/4 + t
neyman            (1 − u)²/u                      1 − exp(−v)             2 − 2√(1 − t)
hellinger         (√u − 1)²                       1 − exp(−v)             t/(1 − t)
js                u log u − (1 + u) log((1+u)/2)  log 2 − log(1 + e^−v)   −log(2 − exp t)
gan               u log u − (1 + u) log(1 + u)    −log(1 + e^−v)          −log(1 − exp t)
total_variation   ½ |u − 1|                       ½ tanh v                t  (|t| ≤ ½)
================  ==============================  ======================  ==========================

Conventions to keep in mind:

* ``kl`` is ``KL(P ‖ Q)`` and ``reverse_kl`` is ``KL(Q ‖ P)``; in a GAN, P is the data and Q the
  model, so the ``kl`` *divergence* covers the data's mass and ``reverse_kl`` seeks its modes. Which
  gradient a GAN's generator follows depends on its loss as well (``GENERATOR_GRADIENTS``): with
  the non-saturating loss, the ``kl`` row's generator follows ``∇KL(Q ‖ P)`` and seeks modes.
* The ``js`` row is f-GAN's: ``KL(P ‖ M) + KL(Q ‖ M)`` with ``M = (P + Q)/2``, **twice** the
  ½-weighted Jensen–Shannon divergence that ``klexp.core.js`` returns (so it lies in [0, 2 ln 2]).
  The ``gan`` row is ``2·JS − ln 4`` (Goodfellow et al. 2014), in [−ln 4, 0].
* Each row's *dual* ``f⋄(u) = u f(1/u)`` gives ``D_f(P ‖ Q) = D_{f⋄}(Q ‖ P)``; ``f⋄(0)`` is the
  slope ``lim_{u→∞} f(u)/u``, what P's mass where ``q = 0`` costs (``+∞`` for ``kl``, ln 2 for
  ``js``). Terms are evaluated at the ratio ≤ 1 of the two (``q f(p/q)`` or ``p f⋄(q/p)``), so
  nothing overflows and categorical pairs stay in log space.

The variational bound (f-GAN eq. 4): for any critic ``T`` with values in the domain of ``f*``,
``D_f(P ‖ Q) ≥ E_P[T] − E_Q[f*(T)]``, with equality at ``T* = f'(p/q)``. A network's raw output
``v`` is mapped into that domain by the row's activation, ``T = g_f(v)``; ``f*(g_f(v))`` has a
numerically stable closed form per row (e.g. ``softplus(v)`` for ``gan``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution

from klexp.core.categorical import Units, at_least_zero, check_logits, compute_dtype, to_units
from klexp.core.distributions import (
    MAX_ENUMERATED_OUTCOMES,
    check_compatible,
    enumerated_joint,
    expand_to,
    factor_dims,
    in_compute_dtype,
    joint_outcomes,
    log_prob,
    pair_logits,
    sum_rightmost,
)
from klexp.core.estimators import draw, score_function_surrogate
from klexp.errors import ConfigValueError, require_in, require_non_negative, require_positive_int

LN2 = math.log(2.0)
_INF = float("inf")

FDivergenceName = Literal["kl", "reverse_kl", "pearson", "neyman", "hellinger", "js", "gan",
                          "total_variation"]
GeneratorLoss = Literal["minimax", "non_saturating"]
GENERATOR_LOSSES: tuple[str, ...] = ("minimax", "non_saturating")

Elementwise = Callable[[Tensor], Tensor]

#: The rows whose divergence of independent factors is the sum of the factors' divergences
#: (``log`` of a product is a sum); every other row's is not (three Bernoulli factors p = 1,
#: q = 0: total variation 1, not 3).
ADDITIVE_OVER_FACTORS = frozenset({"kl", "reverse_kl"})


@dataclass(frozen=True)
class FDivergence:
    """One row of f-GAN's Table 2.

    Attributes:
        name: the row's key in ``F_DIVERGENCES``.
        f_below_one: ``l ↦ f(exp l)`` for ``l ∈ (−∞, 0]``, i.e. ``f`` on ratios in ``(0, 1]``, from the
            log-ratio (stable where ``u = exp l`` underflows).
        f_at_zero: ``f(0) = lim_{u→0} f(u)``.
        dual: the name of the row whose ``f`` is ``u f(1/u)``.
        activation: ``g_f``, from the reals onto the domain of ``f*``.
        conjugate: ``f*(t) = sup_u (t u − f(u))`` on its domain.
        conjugate_of_activation: ``f*(g_f(v))`` in a numerically stable closed form.
        derivative: ``f'(u)``; ``T* = f'(p/q)`` is the optimal critic.
        weighted_below_one: ``(l, log w) ↦ w · f(exp l)`` for a row whose ``f`` grows too fast
            near 0 for the product to be formed outside log space (neyman's ``1/u``: a weight
            that underflows times an ``f`` that overflows); None: ``exp(log w) · f_below_one(l)``.
    """

    name: str
    f_below_one: Elementwise
    f_at_zero: float
    dual: str
    activation: Elementwise
    conjugate: Elementwise
    conjugate_of_activation: Elementwise
    derivative: Elementwise
    weighted_below_one: Callable[[Tensor, Tensor], Tensor] | None = None

    def f_of_log_ratio(self, log_u: Tensor) -> Tensor:
        """``f(u)`` from ``log u`` for any ``log u ∈ [−∞, +∞]``: ``f_below_one`` for ``u ≤ 1`` and
        ``u f⋄(1/u)`` above, so only ratios ≤ 1 are ever exponentiated inside ``f``."""
        zero = torch.zeros((), dtype=log_u.dtype, device=log_u.device)
        below = log_u <= 0
        # each branch sees its own inputs only (0 elsewhere), so neither can overflow where the
        # other is chosen and send a NaN through torch.where's backward
        inside = _weighted_f_at(self, torch.where(below, log_u, zero), zero)
        above = _weighted_f_at(F_DIVERGENCES[self.dual], torch.where(below, zero, -log_u),
                               torch.where(below, zero, log_u))
        return torch.where(below, inside, above)

    def f(self, u: Tensor) -> Tensor:
        """``f(u)`` for ``u ≥ 0``."""
        return self.f_of_log_ratio(u.log())

    def bound(self, critic_on_p: Tensor, critic_on_q: Tensor) -> Tensor:
        """``E_P[T] − E_Q[f*(T)]`` from critic values ``T`` on samples of P and of Q (mean over
        the first axis): a lower bound on ``D_f(P ‖ Q)`` for every critic, tight at
        ``T = f'(p/q)``."""
        return critic_on_p.mean(0) - self.conjugate(critic_on_q).mean(0)

    def bound_from_outputs(self, v_p: Tensor, v_q: Tensor) -> Tensor:
        """``bound`` for a network's raw outputs ``v`` (``T = g_f(v)``), in the stable form
        ``E_P[g_f(v)] − E_Q[f*(g_f(v))]``."""
        return self.activation(v_p).mean(0) - self.conjugate_of_activation(v_q).mean(0)


def _weighted_f_at(row: FDivergence, log_u: Tensor, log_weight: Tensor) -> Tensor:
    """``w · f(exp l)`` for ``l ≤ 0`` or ``l = −∞`` (then ``w · f(0)``), with a finite gradient
    wherever the value is finite."""
    zero = torch.zeros((), dtype=log_u.dtype, device=log_u.device)
    at_zero = log_u == -_INF
    safe = torch.where(at_zero, zero, log_u)
    if row.weighted_below_one is not None:
        inside = row.weighted_below_one(safe, log_weight)
    else:
        inside = log_weight.exp() * row.f_below_one(safe)
    at_zero_value = torch.where(at_zero, log_weight, zero).exp() * row.f_at_zero
    return torch.where(at_zero, at_zero_value, inside)


def _xlogx_of_log(log_u: Tensor) -> Tensor:
    return log_u.exp() * log_u


F_DIVERGENCES: dict[str, FDivergence] = {
    row.name: row
    for row in (
        FDivergence(
            name="kl", f_below_one=_xlogx_of_log, f_at_zero=0.0, dual="reverse_kl",
            activation=lambda v: v,
            conjugate=lambda t: torch.exp(t - 1),
            conjugate_of_activation=lambda v: torch.exp(v - 1),
            derivative=lambda u: 1 + u.log(),
        ),
        FDivergence(
            name="reverse_kl", f_below_one=lambda log_u: -log_u, f_at_zero=_INF, dual="kl",
            activation=lambda v: -torch.exp(-v),
            conjugate=lambda t: -1 - torch.log(-t),
            conjugate_of_activation=lambda v: v - 1,
            derivative=lambda u: -1 / u,
        ),
        FDivergence(
            name="pearson", f_below_one=lambda log_u: torch.expm1(log_u).square(), f_at_zero=1.0,
            dual="neyman",
            activation=lambda v: v,
            conjugate=lambda t: t.square() / 4 + t,
            conjugate_of_activation=lambda v: v.square() / 4 + v,
            derivative=lambda u: 2 * (u - 1),
        ),
        FDivergence(
            name="neyman", f_below_one=lambda log_u: torch.expm1(log_u).square() * torch.exp(-log_u),
            f_at_zero=_INF, dual="pearson",
            weighted_below_one=lambda log_u, log_w: torch.expm1(log_u).square() * torch.exp(log_w - log_u),
            activation=lambda v: -torch.expm1(-v),
            conjugate=lambda t: 2 - 2 * torch.sqrt(1 - t),
            conjugate_of_activation=lambda v: -2 * torch.expm1(-v / 2),
            derivative=lambda u: 1 - u.square().reciprocal(),
        ),
        FDivergence(
            name="hellinger", f_below_one=lambda log_u: torch.expm1(log_u / 2).square(),
            f_at_zero=1.0, dual="hellinger",
            activation=lambda v: -torch.expm1(-v),
            conjugate=lambda t: t / (1 - t),
            conjugate_of_activation=torch.expm1,
            derivative=lambda u: 1 - u.rsqrt(),
        ),
        FDivergence(
            name="js",
            f_below_one=lambda log_u: _xlogx_of_log(log_u) - (1 + log_u.exp()) * (F.softplus(log_u) - LN2),
            f_at_zero=LN2, dual="js",
            activation=lambda v: LN2 - F.softplus(-v),
            conjugate=lambda t: -torch.log(2 - torch.exp(t)),
            conjugate_of_activation=lambda v: F.softplus(v) - LN2,
            derivative=lambda u: torch.log(2 * u / (1 + u)),
        ),
        FDivergence(
            name="gan",
            f_below_one=lambda log_u: _xlogx_of_log(log_u) - (1 + log_u.exp()) * F.softplus(log_u),
            f_at_zero=0.0, dual="gan",
            activation=lambda v: -F.softplus(-v),
            conjugate=lambda t: -torch.log(-torch.expm1(t)),
            conjugate_of_activation=F.softplus,
            derivative=lambda u: torch.log(u / (1 + u)),
        ),
        FDivergence(
            name="total_variation", f_below_one=lambda log_u: -0.5 * torch.expm1(log_u),
            f_at_zero=0.5, dual="total_variation",
            activation=lambda v: 0.5 * torch.tanh(v),
            conjugate=lambda t: t,
            conjugate_of_activation=lambda v: 0.5 * torch.tanh(v),
            derivative=lambda u: 0.5 * torch.sign(u - 1),
        ),
    )
}


def f_divergence_row(divergence: str | FDivergence) -> FDivergence:
    """The table row for a name (or the row itself)."""
    if isinstance(divergence, FDivergence):
        return divergence
    require_in("divergence", divergence, tuple(F_DIVERGENCES))
    return F_DIVERGENCES[divergence]


# --------------------------------------------------------------------------------------------
# Values of D_f
# --------------------------------------------------------------------------------------------


def categorical_f_divergence(p_logits: Tensor, q_logits: Tensor, divergence: str | FDivergence,
                             *, units: Units = "nats") -> Tensor:
    """``D_f(P ‖ Q) = Σ_k q_k f(p_k/q_k)`` over the last axis, from (unnormalised) logits.

    Each class contributes at the ratio ≤ 1: ``q f(p/q)`` where ``p ≤ q`` and ``p f⋄(q/p)``
    otherwise, both from log-probabilities, with ``0 · f(0/0) = 0`` and ``q = 0 < p`` costing
    ``p f⋄(0)`` (``+∞`` for ``kl``). ``−inf`` logits mean probability 0.
    """
    row = f_divergence_row(divergence)
    check_logits(p_logits, q_logits)
    dtype = compute_dtype(p_logits.dtype, q_logits.dtype)
    log_p, log_q = torch.broadcast_tensors(torch.log_softmax(p_logits.to(dtype), -1),
                                           torch.log_softmax(q_logits.to(dtype), -1))
    zero = torch.zeros((), dtype=log_p.dtype, device=log_p.device)
    both_zero = (log_p == -_INF) & (log_q == -_INF)
    p_smaller = log_p <= log_q
    gap = torch.where(both_zero, zero, -(log_p - log_q).abs())  # log of the ratio ≤ 1
    # q f(p/q) where p ≤ q, p f⋄(q/p) elsewhere; each branch is fed 0 where the other is chosen
    terms = torch.where(
        p_smaller,
        _weighted_f_at(row, torch.where(p_smaller, gap, zero), torch.where(p_smaller, log_q, zero)),
        _weighted_f_at(F_DIVERGENCES[row.dual], torch.where(p_smaller, zero, gap),
                       torch.where(p_smaller, zero, log_p)),
    )
    value = terms.sum(-1)
    # Jensen: D_f ≥ f(1) (0 for every row but gan's −ln 4); rounding may dip below it
    f_at_one = row.f_below_one(torch.zeros((), dtype=value.dtype, device=value.device))
    return to_units(f_at_one + at_least_zero(value - f_at_one), units)


def f_divergence(p: Distribution, q: Distribution, divergence: str | FDivergence, *,
                 num_samples: int = 1024, monte_carlo: bool = False,
                 units: Units = "nats") -> Tensor:
    """``D_f(P ‖ Q)``, one value per batch element.

    * Categorical and Bernoulli pairs: exact (``categorical_f_divergence``).
    * ``Independent`` products of such factors: the two KL rows exactly, as the sum over factors
      (the only rows that split over independent factors); every other row exactly on the joint
      distribution, by enumerating its ``classes ** event_size`` outcomes, up to
      ``MAX_ENUMERATED_OUTCOMES``. Beyond that a ``ConfigValueError`` says so, unless
      ``monte_carlo`` asks for the estimate below.
    * Every other pair: a Monte-Carlo estimate from the densities, ``mean_i f(p(x_i)/q(x_i))``
      over ``num_samples`` draws ``x_i ~ Q`` per batch element, plus ``f⋄(0) · P(q = 0)``
      estimated from as many draws of P — the part of P that Q cannot see (``+∞`` for ``kl`` as
      soon as one draw of P falls where ``q = 0``). Its gradient is that of the divergence in
      expectation: through the draws where they are reparameterised, else by the score function
      (``klexp.core.estimators.score_function_surrogate``, as ``kl_samples`` does).

    For KL between distributions torch has a closed form for, prefer ``klexp.core.kl``.
    """
    row = f_divergence_row(divergence)
    batch_shape = check_compatible(p, q)
    logits = pair_logits(p, q)
    if logits is not None:
        p_logits, q_logits = logits
        dims = factor_dims(p)
        if dims == 0 or row.name in ADDITIVE_OVER_FACTORS:
            value = categorical_f_divergence(p_logits, q_logits, row)
            return to_units(sum_rightmost(value, dims), units)
        joint = enumerated_joint(p, p_logits, q_logits)
        if joint is not None:
            return to_units(categorical_f_divergence(*joint, row), units)
        if not monte_carlo:
            raise ConfigValueError(
                "monte_carlo", f"the {row.name!r} divergence of independent discrete factors is not "
                f"their sum and needs the joint distribution, whose {joint_outcomes(p, q_logits)} "
                "outcomes exceed the "
                f"{MAX_ENUMERATED_OUTCOMES} enumerated exactly; pass monte_carlo=True for an estimate")
    require_positive_int("num_samples", num_samples)
    p, q = (expand_to(d, batch_shape) for d in in_compute_dtype(p, q))
    x = draw(q, num_samples)
    log_q = log_prob(q, x)
    terms = row.f_of_log_ratio(log_prob(p, x) - log_q)
    value = score_function_surrogate(terms, log_q, x).mean(0)
    slope_at_infinity = F_DIVERGENCES[row.dual].f_at_zero
    if slope_at_infinity != 0:
        y = draw(p, num_samples)
        unseen = log_prob(q, y) == -_INF
        cost = torch.zeros(unseen.shape, dtype=value.dtype, device=value.device).masked_fill(
            unseen, slope_at_infinity)
        value = value + score_function_surrogate(cost, log_prob(p, y), y).mean(0)
    return to_units(value, units)


# --------------------------------------------------------------------------------------------
# Variational lower bounds on KL(P ‖ Q) from critic values on samples of P and Q
# --------------------------------------------------------------------------------------------


def donsker_varadhan_bound(critic_on_p: Tensor, critic_on_q: Tensor) -> Tensor:
    """Donsker–Varadhan: ``KL(P ‖ Q) ≥ E_P[T] − log E_Q[e^T]`` (nats), with ``log E_Q[e^T]`` as
    ``logsumexp − log n`` over the first axis; tight at ``T = log(p/q) + c`` for any constant c.
    The sample version is biased (the log of a mean), as used in MINE (Belghazi et al. 2018)."""
    n = critic_on_q.shape[0]
    return critic_on_p.mean(0) - (torch.logsumexp(critic_on_q, 0) - math.log(n))


def nwj_bound(critic_on_p: Tensor, critic_on_q: Tensor) -> Tensor:
    """Nguyen, Wainwright & Jordan (2010): ``KL(P ‖ Q) ≥ E_P[T] − E_Q[e^{T−1}]`` (nats) — the
    ``kl`` row's Fenchel bound; tight at ``T = 1 + log(p/q)``; never above Donsker–Varadhan's for
    the same T (``log x ≤ x/e``)."""
    return F_DIVERGENCES["kl"].bound(critic_on_p, critic_on_q)


# --------------------------------------------------------------------------------------------
# The f-GAN objective: what a critic maximises and a generator minimises
# --------------------------------------------------------------------------------------------

#: The divergence whose gradient the generator follows in expectation, at the optimal critic
#: ``T* = f'(p/q)`` (P the data, Q the generator, ``u = p/q``), for each row and generator loss.
#: ``∇D_f(P ‖ Q) = −E_Q[∇log q · f*(f'(u))]`` (from ``f*(f'(u)) = u f'(u) − f(u)``), so the minimax
#: loss ``−E_Q[f*(T)]`` follows the row's own divergence, always; the non-saturating ``−E_Q[T]``
#: follows ``−E_Q[∇log q · f'(u)]``, which is another divergence's gradient for every row but
#: total variation's (e.g. ``kl``: ``f'(u) = 1 + log p − log q``, the gradient of ``KL(Q ‖ P)``;
#: ``gan``: Arjovsky & Bottou 2017's ``KL(Q ‖ P) − 2·JS``). χ² is Pearson's,
#: ``χ²(A ‖ B) = E_B[(a/b − 1)²]``; ``JS`` is the ½-weighted Jensen–Shannon divergence.
GENERATOR_GRADIENTS: dict[tuple[str, str], str] = {
    ("kl", "minimax"): "KL(P ‖ Q)",
    ("kl", "non_saturating"): "KL(Q ‖ P)",
    ("reverse_kl", "minimax"): "KL(Q ‖ P)",
    ("reverse_kl", "non_saturating"): "½·χ²(Q ‖ P)",
    ("pearson", "minimax"): "χ²(P ‖ Q)",
    ("pearson", "non_saturating"): "2·KL(P ‖ Q)",
    ("neyman", "minimax"): "χ²(Q ‖ P)",
    ("neyman", "non_saturating"): "⅓·E_Q[(q/p)²]",
    ("hellinger", "minimax"): "H²(P, Q)",
    ("hellinger", "non_saturating"): "⅔·E_Q[(q/p)^½]",
    ("js", "minimax"): "2·JS(P, Q)",
    ("js", "non_saturating"): "KL(Q ‖ P) − 2·JS(P, Q)",
    ("gan", "minimax"): "2·JS(P, Q)",
    ("gan", "non_saturating"): "KL(Q ‖ P) − 2·JS(P, Q)",
    ("total_variation", "minimax"): "TV(P, Q)",
    ("total_variation", "non_saturating"): "TV(P, Q)",
}


class VariationalFDivergence:
    """Train a generator Q against data P on ``D_f(P ‖ Q)`` through a critic (f-GAN).

    The critic maximises ``F(v) = E_P[g_f(v)] − E_Q[f*(g_f(v))]`` (a lower bound on
    ``D_f(P ‖ Q)``, nats); the generator minimises either F's own term ``−E_Q[f*(g_f(v))]``
    (``minimax``; for ``gan`` the saturating ``E_Q[log(1 − D)]``) or ``−E_Q[g_f(v)]``
    (``non_saturating``, f-GAN sec. 3.2; for ``gan`` Goodfellow's ``−E_Q[log D]``). At the optimal
    critic, ``minimax`` follows the gradient of ``D_f(P ‖ Q)`` itself and ``non_saturating``
    that of another divergence (``generator_follows``, from ``GENERATOR_GRADIENTS``): for ``kl``,
    ``KL(Q ‖ P)`` — mode seeking, not the mass covering of ``KL(P ‖ Q)``.

    Args:
        divergence: a row of ``F_DIVERGENCES``.
        generator_loss: ``minimax`` or ``non_saturating``.
        critic_steps: critic updates per generator update (f-GAN's single-step algorithm: 1).
        penalty_weight: λ of an optional gradient penalty on the critic (0: none).
    """

    def __init__(self, divergence: FDivergenceName = "js",
                 generator_loss: GeneratorLoss = "non_saturating", critic_steps: int = 1,
                 penalty_weight: float = 0.0) -> None:
        require_in("generator_loss", generator_loss, GENERATOR_LOSSES)
        require_positive_int("critic_steps", critic_steps)
        require_non_negative("penalty_weight", penalty_weight)
        self.row = f_divergence_row(divergence)
        self.name = self.row.name
        self.generator_loss_kind = generator_loss
        self.critic_steps = critic_steps
        self.penalty_weight = float(penalty_weight)

    @property
    def generator_follows(self) -> str | None:
        """The divergence whose gradient the generator follows at the optimal critic
        (``GENERATOR_GRADIENTS``; None for a row outside f-GAN's table)."""
        return GENERATOR_GRADIENTS.get((self.name, self.generator_loss_kind))

    def critic_objective(self, v_real: Tensor, v_fake: Tensor) -> Tensor:
        """``E_P[g_f(v)] − E_Q[f*(g_f(v))]`` on critic outputs for data and generated samples
        (means over all their elements)."""
        return self.row.activation(v_real).mean() - self.row.conjugate_of_activation(v_fake).mean()

    def generator_loss(self, v_fake: Tensor) -> Tensor:
        """``−E_Q[f*(g_f(v))]`` (minimax) or ``−E_Q[g_f(v)]`` (non-saturating)."""
        if self.generator_loss_kind == "minimax":
            return -self.row.conjugate_of_activation(v_fake).mean()
        return -self.row.activation(v_fake).mean()

    def __repr__(self) -> str:
        return (f"VariationalFDivergence({self.name!r}, generator_loss={self.generator_loss_kind!r}, "
                f"critic_steps={self.critic_steps}, penalty_weight={self.penalty_weight})")
