"""The KL core: divergences between probability distributions, as pure functions.

Every function returns one value per batch element (the distributions' broadcast batch shape), in
nats unless ``units="bits"``. Nothing here knows about Lightning or Hydra.

Conventions
-----------
``kl(p, q)`` is ``D_KL(P ‖ Q) = E_{x~P}[log P(x) − log Q(x)]``: the cost of using ``Q`` where ``P``
is true. Monte-Carlo estimators sample ``x ~ P`` and use the log-ratio ``log r = log Q(x) − log P(x)``
(Schulman, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html):

* ``k1 = −log r``            unbiased, high variance, can be negative;
* ``k2 = ½ (log r)²``        biased, low variance, never negative;
* ``k3 = (r − 1) − log r``   unbiased, low variance, never negative.

Categorical pairs are computed in log space from logits (``categorical_kl``), not through
``torch.distributions.kl_divergence``: the latter turns ``inf`` once float32 logits reach a scale
of ~100 (probabilities underflow to 0 and its ``q.probs == 0 → inf`` rule fires). Every other pair
uses the closed form torch registers.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    Normal,
    kl_divergence,
)

Units = Literal["nats", "bits"]
Estimator = Literal["analytic", "k1", "k2", "k3"]
ESTIMATORS: tuple[str, ...] = ("analytic", "k1", "k2", "k3")
MONTE_CARLO_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
UNITS: tuple[str, ...] = ("nats", "bits")

_INF = float("inf")


def to_units(value: Tensor, units: Units) -> Tensor:
    """Convert a value in nats to ``units``: bits = nats / ln 2."""
    if units == "nats":
        return value
    if units == "bits":
        return value / math.log(2.0)
    raise ValueError(f"units must be one of {UNITS}, got {units!r}")


def _at_least_zero(divergence: Tensor) -> Tensor:
    """A divergence is ≥ 0, but rounding leaves values down to −1e-16 (float64) or −4e-7 (float32)
    for nearly equal distributions: raise those to 0. Only the values change; the gradient stays
    that of the unclamped divergence (a clamp would zero it, and with it the Hessian that
    natural-gradient methods take at P = Q). NaN and +inf pass through."""
    # value: d + max(−d, 0) = max(d, 0) exactly; the added part is a constant to autograd
    return divergence + divergence.detach().neg().clamp_min_(0)


# --------------------------------------------------------------------------------------------
# Tensor helpers for the hot path: categorical distributions given by logits.
# --------------------------------------------------------------------------------------------


def _check_logits(p_logits: Tensor, q_logits: Tensor) -> None:
    if p_logits.shape[-1:] != q_logits.shape[-1:]:
        raise ValueError(
            "categorical distributions need the same number of classes: "
            f"p has shape {tuple(p_logits.shape)}, q has shape {tuple(q_logits.shape)}"
        )
    try:
        torch.broadcast_shapes(p_logits.shape, q_logits.shape)
    except RuntimeError:
        raise ValueError(
            "batch shapes do not broadcast: "
            f"p has shape {tuple(p_logits.shape)}, q has shape {tuple(q_logits.shape)}"
        ) from None


class _LogRatio(torch.autograd.Function):
    """``log p − log q`` with ``0·log 0 = 0`` applied, for a caller that multiplies it by ``p``.

    ``log p = −inf`` makes the difference ``−inf`` (or NaN when ``log q = −inf`` too): both are
    terms with ``p = 0`` and contribute 0. ``+inf`` (``q = 0`` where ``p > 0``) is kept, so the KL is
    ``+inf``. The derivative is that of ``log p − log q``: every replaced entry is multiplied by
    ``p = 0``, so its incoming gradient is already 0. Writing it by hand spares ``nan_to_num``'s
    backward, an ``isfinite`` mask that made ``categorical_kl``'s backward 1.5× ``F.kl_div``'s;
    the masking happens in place on the difference, a fresh tensor, saving one more pass.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(log_p: Tensor, log_q: Tensor) -> Tensor:
        return (log_p - log_q).nan_to_num_(nan=0.0, posinf=_INF, neginf=0.0)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        return grad, -grad

    @staticmethod
    def jvp(ctx: Any, tangent_p: Tensor, tangent_q: Tensor) -> Tensor:
        return tangent_p - tangent_q


def _log_ratio(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``log p − log q``, 0 wherever ``p = 0``; only for products with ``p`` (see ``_LogRatio``)."""
    return _LogRatio.apply(log_p, log_q)


def categorical_kl(p_logits: Tensor, q_logits: Tensor, *, units: Units = "nats") -> Tensor:
    """``KL(P ‖ Q) = Σ_k p_k (log p_k − log q_k)`` over the last axis, from (unnormalised) logits.

    Log-probabilities are accepted too (they are logits). ``−inf`` logits mean probability 0.
    """
    _check_logits(p_logits, q_logits)
    log_p = torch.log_softmax(p_logits, dim=-1)
    log_q = torch.log_softmax(q_logits, dim=-1)
    # softmax(x) is cheaper than exp(log_softmax(x)).
    value = torch.linalg.vecdot(torch.softmax(p_logits, dim=-1), _log_ratio(log_p, log_q))
    # A NaN (or +inf) among q's logits makes the whole row of log q NaN, which the 0·log 0 rule
    # would turn into a finite KL: keep it NaN, so a diverged model cannot pass unnoticed.
    value = torch.where(log_q[..., 0].isnan(), torch.nan, value)
    return to_units(_at_least_zero(value), units)


def categorical_entropy(logits: Tensor, *, units: Units = "nats") -> Tensor:
    """``H(P) = −Σ_k p_k log p_k`` over the last axis, from logits."""
    log_p = torch.log_softmax(logits, dim=-1)
    value = -torch.linalg.vecdot(log_p.exp(), log_p.nan_to_num(neginf=0.0))
    return to_units(value, units)


def categorical_cross_entropy(p_logits: Tensor, q_logits: Tensor, *, units: Units = "nats") -> Tensor:
    """``H(P, Q) = −Σ_k p_k log q_k`` over the last axis, from logits (``= H(P) + KL(P ‖ Q)``)."""
    _check_logits(p_logits, q_logits)
    log_p = torch.log_softmax(p_logits, dim=-1)
    log_q = torch.log_softmax(q_logits, dim=-1)
    p = log_p.exp()
    # A class with p = 0 contributes nothing even where log q = −inf.
    log_q = torch.where(p > 0, log_q, torch.zeros((), dtype=log_q.dtype))
    value = -torch.linalg.vecdot(p, log_q)
    return to_units(value, units)


def categorical_js(p_logits: Tensor, q_logits: Tensor, *, units: Units = "nats") -> Tensor:
    """Jensen–Shannon divergence ``½ KL(P ‖ M) + ½ KL(Q ‖ M)``, ``M = (P + Q)/2``, from logits.

    Symmetric, ``0 ≤ JS ≤ ln 2`` nats; the mixture is formed in log space.
    """
    _check_logits(p_logits, q_logits)
    log_p = torch.log_softmax(p_logits, dim=-1)
    log_q = torch.log_softmax(q_logits, dim=-1)
    log_p, log_q = torch.broadcast_tensors(log_p, log_q)
    # logaddexp(−inf, −inf) has a NaN gradient; a finite floor keeps it finite where p = q = 0
    # (those terms are 0 either way) and leaves log m exact wherever p or q is positive.
    floor = torch.finfo(log_p.dtype).min
    log_m = torch.logaddexp(log_p.clamp_min(floor), log_q.clamp_min(floor)) - math.log(2.0)
    value = 0.5 * (
        torch.linalg.vecdot(log_p.exp(), _log_ratio(log_p, log_m))
        + torch.linalg.vecdot(log_q.exp(), _log_ratio(log_q, log_m))
    )
    return to_units(_at_least_zero(value), units)


def monte_carlo_terms(log_ratio: Tensor, estimator: Estimator) -> Tensor:
    """Per-sample KL estimates from ``log r = log q(x) − log p(x)`` with ``x ~ p``.

    ``k1 = −log r``, ``k2 = ½ (log r)²``, ``k3 = (r − 1) − log r`` (Schulman 2020). Their mean over
    samples estimates ``KL(p ‖ q)``; k1 and k3 are unbiased, k2 and k3 are never negative.
    """
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        # expm1 keeps k3 accurate (and ≥ 0) when r ≈ 1, where (r − 1) − log r cancels.
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"estimator must be one of {MONTE_CARLO_ESTIMATORS}, got {estimator!r}")


# --------------------------------------------------------------------------------------------
# Distribution-level API.
# --------------------------------------------------------------------------------------------


def _built_from_probs(d: Categorical | Bernoulli) -> bool:
    """Whether ``d`` was given ``probs`` (torch keeps the given parameter as ``_param``; both
    ``probs`` and ``logits`` may be cached on the object once either was read)."""
    return getattr(d, "_param", None) is vars(d).get("probs")


def _log_or_minus_inf(x: Tensor) -> Tensor:
    """``log x`` with ``log 0 = −inf`` and a zero (not NaN) gradient there."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, 1.0).log(), -_INF)


def _logits_of(d: Distribution) -> Tensor | None:
    """Logits over the last axis when ``d`` is categorical or Bernoulli (as two classes), else None.

    For a distribution built from ``probs``, the log-probabilities: torch derives its ``logits``
    by clamping probabilities into ``[eps, 1 − eps]``, which would make ``q = 0`` where ``p > 0``
    a finite KL (10.0 nats in float32 for p = (½, ½), q = (1, 0)) instead of ``+inf``.
    """
    if isinstance(d, Categorical):
        return _log_or_minus_inf(d.probs) if _built_from_probs(d) else d.logits
    if isinstance(d, Bernoulli):
        if _built_from_probs(d):
            return torch.stack([_log_or_minus_inf(1 - d.probs), _log_or_minus_inf(d.probs)], dim=-1)
        logits = d.logits
        return torch.stack([torch.zeros_like(logits), logits], dim=-1)
    if isinstance(d, Independent):
        inner = _logits_of(d.base_dist)
        if inner is None:
            return None
        return inner
    return None


def _class_shape(d: Distribution) -> tuple[int, ...] | None:
    """``(*batch, classes)`` of what ``_logits_of`` returns, without computing it."""
    if isinstance(d, Categorical):
        return tuple(d.param_shape)
    if isinstance(d, Bernoulli):
        return (*d.param_shape, 2)
    if isinstance(d, Independent):
        return _class_shape(d.base_dist)
    return None


def _reinterpreted_dims(d: Distribution) -> int:
    return d.reinterpreted_batch_ndims if isinstance(d, Independent) else 0


def _sum_rightmost(value: Tensor, dims: int) -> Tensor:
    return value.sum(dim=tuple(range(-dims, 0))) if dims else value


def check_compatible(p: Distribution, q: Distribution) -> torch.Size:
    """Return the broadcast batch shape of ``p`` and ``q``; raise ``ValueError`` naming both shapes
    when their event shapes, class counts or batch shapes do not fit together."""
    if p.event_shape != q.event_shape:
        raise ValueError(
            f"event shapes differ: p ({type(p).__name__}) has event shape {tuple(p.event_shape)}, "
            f"q ({type(q).__name__}) has event shape {tuple(q.event_shape)}"
        )
    try:
        batch_shape = (p.batch_shape if p.batch_shape == q.batch_shape
                       else torch.broadcast_shapes(p.batch_shape, q.batch_shape))
    except RuntimeError:
        raise ValueError(
            f"batch shapes do not broadcast: p ({type(p).__name__}) has batch shape "
            f"{tuple(p.batch_shape)}, q ({type(q).__name__}) has batch shape {tuple(q.batch_shape)}"
        ) from None
    p_classes, q_classes = _class_shape(p), _class_shape(q)
    if p_classes is not None and q_classes is not None and p_classes[-1] != q_classes[-1]:
        raise ValueError(
            "categorical distributions need the same number of classes: "
            f"p has shape {tuple(p_classes)}, q has shape {tuple(q_classes)}"
        )
    return batch_shape


def _analytic_kl(p: Distribution, q: Distribution) -> Tensor:
    p_logits, q_logits = _logits_of(p), _logits_of(q)
    if p_logits is not None and q_logits is not None:
        return _sum_rightmost(categorical_kl(p_logits, q_logits), _reinterpreted_dims(p))
    try:
        return _at_least_zero(kl_divergence(p, q))
    except NotImplementedError:
        raise NotImplementedError(
            f"no closed form for KL({type(p).__name__} ‖ {type(q).__name__}) is registered with "
            "torch.distributions; use a Monte-Carlo estimator (k1, k2 or k3)"
        ) from None


def kl_samples(
    p: Distribution,
    q: Distribution,
    *,
    estimator: Estimator = "k3",
    num_samples: int = 1,
    samples: Tensor | None = None,
) -> Tensor:
    """Per-sample Monte-Carlo estimates of ``KL(p ‖ q)``, shape ``(num_samples, *batch_shape)``.

    Draws ``x ~ p`` (reparameterised when ``p`` allows, so gradients flow) unless ``samples`` are
    given: values already drawn from ``p``, such as the actions of a rollout, with the batch shape
    (one sample each) or a leading sample axis. See ``monte_carlo_terms`` for the estimators.

    Gradients: when ``x`` is not reparameterised (a categorical ``p``, or given samples that carry
    no gradient) but ``p`` has trainable parameters, each term ``k`` gets the score-function
    correction ``k + sg(k)·(log p(x) − sg(log p(x)))`` (``sg`` = stop-gradient): its value is ``k``
    and its gradient ``∇k + k·∇log p(x)``, whose mean is ``∇E_{x~p}[k]`` — the gradient of the KL
    for the unbiased k1 and k3 (Williams 1992).
    """
    check_compatible(p, q)
    if samples is None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be ≥ 1, got {num_samples}")
        shape = torch.Size([num_samples])
        x = p.rsample(shape) if p.has_rsample else p.sample(shape)
    else:
        x = samples
        if x.dim() == len(p.batch_shape) + len(p.event_shape):
            x = x.unsqueeze(0)
    log_p = p.log_prob(x)
    terms = monte_carlo_terms(q.log_prob(x) - log_p, estimator)
    if log_p.requires_grad and not x.requires_grad:
        terms = terms + terms.detach() * (log_p - log_p.detach())
    return terms


def kl(
    p: Distribution,
    q: Distribution,
    *,
    estimator: Estimator = "analytic",
    num_samples: int = 1,
    units: Units = "nats",
    samples: Tensor | None = None,
) -> Tensor:
    """``D_KL(p ‖ q) = E_{x~p}[log p(x) − log q(x)]``, one value per batch element.

    ``estimator="analytic"`` uses the closed form (log-space for categorical and Bernoulli pairs,
    ``torch.distributions.kl_divergence`` for every other registered pair); ``"k1"``, ``"k2"``,
    ``"k3"`` average ``num_samples`` Monte-Carlo terms (``kl_samples``).
    """
    check_compatible(p, q)
    if estimator == "analytic":
        value = _analytic_kl(p, q)
    elif estimator in MONTE_CARLO_ESTIMATORS:
        value = kl_samples(
            p, q, estimator=estimator, num_samples=num_samples, samples=samples
        ).mean(0)
    else:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    return to_units(value, units)


def reverse_kl(
    p: Distribution,
    q: Distribution,
    *,
    estimator: Estimator = "analytic",
    num_samples: int = 1,
    units: Units = "nats",
    samples: Tensor | None = None,
) -> Tensor:
    """``D_KL(q ‖ p)``: the reverse (mode-seeking) direction; Monte-Carlo samples come from ``q``."""
    return kl(q, p, estimator=estimator, num_samples=num_samples, units=units, samples=samples)


def entropy(p: Distribution, *, units: Units = "nats") -> Tensor:
    """``H(P) = −E_{x~P}[log P(x)]`` (differential entropy for continuous P)."""
    logits = _logits_of(p)
    if logits is not None:
        return to_units(_sum_rightmost(categorical_entropy(logits), _reinterpreted_dims(p)), units)
    return to_units(p.entropy(), units)


def cross_entropy(p: Distribution, q: Distribution, *, units: Units = "nats") -> Tensor:
    """``H(P, Q) = −E_{x~P}[log Q(x)] = H(P) + KL(P ‖ Q)``."""
    check_compatible(p, q)
    p_logits, q_logits = _logits_of(p), _logits_of(q)
    if p_logits is not None and q_logits is not None:
        value = _sum_rightmost(categorical_cross_entropy(p_logits, q_logits), _reinterpreted_dims(p))
        return to_units(value, units)
    return to_units(p.entropy() + _analytic_kl(p, q), units)


def js(p: Distribution, q: Distribution, *, num_samples: int = 256, units: Units = "nats") -> Tensor:
    """Jensen–Shannon divergence ``½ KL(P ‖ M) + ½ KL(Q ‖ M)`` with the mixture ``M = (P + Q)/2``.

    Exact for categorical and Bernoulli pairs; for continuous pairs a Monte-Carlo estimate with
    ``num_samples`` draws from each of P and Q, using ``log m(x) = logaddexp(log p(x), log q(x)) − ln 2``.
    Symmetric and within ``[0, ln 2]`` nats.
    """
    check_compatible(p, q)
    p_logits, q_logits = _logits_of(p), _logits_of(q)
    if p_logits is not None and q_logits is not None:
        value = _sum_rightmost(categorical_js(p_logits, q_logits), _reinterpreted_dims(p))
        return to_units(value, units)
    if num_samples < 1:
        raise ValueError(f"num_samples must be ≥ 1, got {num_samples}")

    def half(a: Distribution, b: Distribution) -> Tensor:
        x = a.rsample((num_samples,)) if a.has_rsample else a.sample((num_samples,))
        log_a, log_b = a.log_prob(x), b.log_prob(x)
        log_m = torch.logaddexp(log_a, log_b) - math.log(2.0)
        return (log_a - log_m).mean(0)

    return to_units(0.5 * (half(p, q) + half(q, p)), units)


# --------------------------------------------------------------------------------------------
# Wasserstein distances with closed forms.
# --------------------------------------------------------------------------------------------


def _normal_params(d: Distribution) -> tuple[Tensor, Tensor, int]:
    if isinstance(d, Independent) and isinstance(d.base_dist, Normal):
        return d.base_dist.loc, d.base_dist.scale, d.reinterpreted_batch_ndims
    if isinstance(d, Normal):
        return d.loc, d.scale, 0
    raise ValueError(
        f"W2 has a closed form here only for (Independent) Normal distributions, got {type(d).__name__}"
    )


def wasserstein2_gaussian(p: Distribution, q: Distribution) -> Tensor:
    """W2 between diagonal Gaussians: ``W2² = ‖μ_p − μ_q‖² + ‖σ_p − σ_q‖²``; returns ``W2``."""
    check_compatible(p, q)
    mu_p, sigma_p, dims = _normal_params(p)
    mu_q, sigma_q, _ = _normal_params(q)
    squared = (mu_p - mu_q).square() + (sigma_p - sigma_q).square()
    return _sum_rightmost(squared, dims).sqrt()


def wasserstein1_categorical(p: Distribution | Tensor, q: Distribution | Tensor) -> Tensor:
    """W1 between categorical distributions over ordered classes 0, 1, …, K−1 (unit spacing):
    ``W1 = Σ_k |F_P(k) − F_Q(k)|`` with the cumulative distribution functions F.

    Accepts Categorical distributions or logits.
    """
    p_logits = p.logits if isinstance(p, Categorical) else p
    q_logits = q.logits if isinstance(q, Categorical) else q
    _check_logits(p_logits, q_logits)
    cdf_gap = torch.softmax(p_logits, -1).cumsum(-1) - torch.softmax(q_logits, -1).cumsum(-1)
    return cdf_gap[..., :-1].abs().sum(-1)
