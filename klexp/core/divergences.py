"""The KL core: divergences between probability distributions, as pure functions.

Every function returns one value per batch element (the distributions' broadcast batch shape), in
nats unless ``units="bits"``. Nothing here knows about Lightning or Hydra.

Conventions
-----------
``kl(p, q)`` is ``D_KL(P ‖ Q) = E_{x~P}[log P(x) − log Q(x)]``: the cost of using ``Q`` where ``P``
is true. ``estimator="analytic"`` is the closed form; ``k1``, ``k2``, ``k3`` are Monte-Carlo
estimates (``klexp.core.estimators``).

Categorical and Bernoulli pairs are computed in log space from logits (``klexp.core.categorical``),
not through ``torch.distributions.kl_divergence``: the latter turns ``inf`` once float32 logits
reach a scale of ~100 (probabilities underflow to 0 and its ``q.probs == 0 → inf`` rule fires).
Every other pair uses the closed form torch registers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, kl_divergence

from klexp.core.categorical import (
    Units,
    at_least_zero,
    categorical_cross_entropy,
    categorical_entropy,
    categorical_js,
    categorical_kl,
    to_units,
)
from klexp.core.distributions import (
    as_logits,
    check_compatible,
    reinterpreted_dims,
    sum_rightmost,
)
from klexp.core.estimators import ESTIMATORS, MONTE_CARLO_ESTIMATORS, Estimator, kl_samples


def _analytic_kl(p: Distribution, q: Distribution) -> Tensor:
    p_logits, q_logits = as_logits(p), as_logits(q)
    if p_logits is not None and q_logits is not None:
        return sum_rightmost(categorical_kl(p_logits, q_logits), reinterpreted_dims(p))
    try:
        return at_least_zero(kl_divergence(p, q))
    except NotImplementedError:
        raise NotImplementedError(
            f"no closed form for KL({type(p).__name__} ‖ {type(q).__name__}) is registered with "
            "torch.distributions; use a Monte-Carlo estimator (k1, k2 or k3)"
        ) from None



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
    logits = as_logits(p)
    if logits is not None:
        return to_units(sum_rightmost(categorical_entropy(logits), reinterpreted_dims(p)), units)
    return to_units(p.entropy(), units)


def cross_entropy(p: Distribution, q: Distribution, *, units: Units = "nats") -> Tensor:
    """``H(P, Q) = −E_{x~P}[log Q(x)] = H(P) + KL(P ‖ Q)``."""
    check_compatible(p, q)
    p_logits, q_logits = as_logits(p), as_logits(q)
    if p_logits is not None and q_logits is not None:
        value = sum_rightmost(categorical_cross_entropy(p_logits, q_logits), reinterpreted_dims(p))
        return to_units(value, units)
    return to_units(p.entropy() + _analytic_kl(p, q), units)


def js(p: Distribution, q: Distribution, *, num_samples: int = 256, units: Units = "nats") -> Tensor:
    """Jensen–Shannon divergence ``½ KL(P ‖ M) + ½ KL(Q ‖ M)`` with the mixture ``M = (P + Q)/2``.

    Exact for categorical and Bernoulli pairs; for continuous pairs a Monte-Carlo estimate with
    ``num_samples`` draws from each of P and Q, using ``log m(x) = logaddexp(log p(x), log q(x)) − ln 2``.
    Symmetric and within ``[0, ln 2]`` nats.
    """
    check_compatible(p, q)
    p_logits, q_logits = as_logits(p), as_logits(q)
    if p_logits is not None and q_logits is not None:
        value = sum_rightmost(categorical_js(p_logits, q_logits), reinterpreted_dims(p))
        return to_units(value, units)
    if num_samples < 1:
        raise ValueError(f"num_samples must be ≥ 1, got {num_samples}")

    def half(a: Distribution, b: Distribution) -> Tensor:
        x = a.rsample((num_samples,)) if a.has_rsample else a.sample((num_samples,))
        log_a, log_b = a.log_prob(x), b.log_prob(x)
        log_m = torch.logaddexp(log_a, log_b) - math.log(2.0)
        return (log_a - log_m).mean(0)

    return to_units(0.5 * (half(p, q) + half(q, p)), units)

