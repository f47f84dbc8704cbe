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
Every other pair uses the closed form torch registers. ``Independent`` wrappers, nested to any
depth, sum KL, entropy and cross-entropy over their event dimensions (these split over independent
factors; the Jensen–Shannon divergence does not, see ``js``).

Broadcasting and dtypes: ``p`` and ``q`` may have different batch shapes that broadcast, and
different floating dtypes, promoted as torch promotes them; half-precision (float16, bfloat16)
distributions are computed with, and their divergences returned, in float32 (see
``klexp.core.categorical``).
"""

from __future__ import annotations

import math
from typing import TypedDict, Unpack

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, kl_divergence

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
    enumerated_joint,
    expand_to,
    factor_dims,
    flat_independent,
    in_compute_dtype,
    log_prob,
    pair_logits,
    sum_rightmost,
)
from klexp.core.estimators import (
    ESTIMATORS,
    MONTE_CARLO_ESTIMATORS,
    EstimatorName,
    draw,
    kl_samples,
    score_function_surrogate,
)


def _analytic_kl(p: Distribution, q: Distribution) -> Tensor:
    logits = pair_logits(p, q)
    if logits is not None:
        p_logits, q_logits = logits
        return sum_rightmost(categorical_kl(p_logits, q_logits), factor_dims(p))
    if isinstance(p, Independent) and isinstance(q, Independent) and nesting(p) != nesting(q):
        # torch pairs only Independents that reinterpret equally many dimensions at each level
        p, q = flat_independent(p), flat_independent(q)
    try:
        return at_least_zero(kl_divergence(*in_compute_dtype(p, q)))
    except NotImplementedError:
        raise NotImplementedError(
            f"no closed form for KL({type(p).__name__} ‖ {type(q).__name__}) is registered with "
            "torch.distributions; use a Monte-Carlo estimator (k1, k2 or k3)"
        ) from None


def nesting(d: Distribution) -> tuple[int, ...]:
    """The ``reinterpreted_batch_ndims`` of each ``Independent`` wrapper of ``d``, outermost first."""
    dims: list[int] = []
    while isinstance(d, Independent):
        dims.append(d.reinterpreted_batch_ndims)
        d = d.base_dist
    return tuple(dims)


class KLOptions(TypedDict, total=False):
    """How ``kl`` and ``reverse_kl`` estimate (see ``kl``)."""

    estimator: EstimatorName
    num_samples: int
    units: Units
    samples: Tensor | None


def kl(
    p: Distribution,
    q: Distribution,
    *,
    estimator: EstimatorName = "analytic",
    num_samples: int = 1,
    units: Units = "nats",
    samples: Tensor | None = None,
) -> Tensor:
    """``D_KL(p ‖ q) = E_{x~p}[log p(x) − log q(x)]``, one value per batch element.

    ``estimator="analytic"`` uses the closed form (log-space for categorical and Bernoulli pairs,
    ``torch.distributions.kl_divergence`` for every other registered pair); ``"k1"``, ``"k2"``,
    ``"k3"`` average ``num_samples`` Monte-Carlo terms (``kl_samples``), drawn afresh for each
    element of the broadcast batch.
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


def reverse_kl(p: Distribution, q: Distribution, **options: Unpack[KLOptions]) -> Tensor:
    """``D_KL(q ‖ p)``: the reverse (mode-seeking) direction; Monte-Carlo samples come from ``q``;
    the options as ``kl``'s."""
    return kl(q, p, **options)


def entropy(p: Distribution, *, units: Units = "nats") -> Tensor:
    """``H(P) = −E_{x~P}[log P(x)]`` (differential entropy for continuous P)."""
    logits = as_logits(p)
    if logits is not None:
        return to_units(sum_rightmost(categorical_entropy(logits), factor_dims(p)), units)
    (p,) = in_compute_dtype(p)
    return to_units(p.entropy(), units)


def cross_entropy(p: Distribution, q: Distribution, *, units: Units = "nats") -> Tensor:
    """``H(P, Q) = −E_{x~P}[log Q(x)] = H(P) + KL(P ‖ Q)``."""
    check_compatible(p, q)
    logits = pair_logits(p, q)
    if logits is not None:
        p_logits, q_logits = logits
        value = sum_rightmost(categorical_cross_entropy(p_logits, q_logits), factor_dims(p))
        return to_units(value, units)
    p, q = in_compute_dtype(p, q)
    return to_units(p.entropy() + _analytic_kl(p, q), units)


def js(p: Distribution, q: Distribution, *, num_samples: int = 256, units: Units = "nats") -> Tensor:
    """Jensen–Shannon divergence ``½ KL(P ‖ M) + ½ KL(Q ‖ M)`` with the mixture ``M = (P + Q)/2``.

    Symmetric and within ``[0, ln 2]`` nats. Unlike the KL, it does not split over independent
    factors (the mixture of two products is not a product), so the JS of ``Independent``
    distributions is that of their joint:

    * categorical and Bernoulli pairs, ``Independent`` or not, with at most
      ``MAX_ENUMERATED_OUTCOMES`` joint outcomes (``classes ** event_size``): exact, by
      enumerating the joint outcomes in log space. Time and memory grow as
      ``batch · classes ** event_size``, hence the limit.
    * every other pair, including independent discrete factors with more joint outcomes: a
      Monte-Carlo estimate with ``num_samples`` draws from each of P and Q per batch element, the
      k1 estimate of each half, ``mean(log p(x) − log m(x))`` with the joint log-density
      ``log m(x) = logaddexp(log p(x), log q(x)) − ln 2``. Unbiased, with a standard error
      ∝ 1/√num_samples; an estimate from few draws can fall below 0. Its gradient is that of the divergence in
      expectation: through reparameterised draws, else by the score function
      (``score_function_surrogate``, as in ``kl_samples``).
    """
    check_compatible(p, q)
    logits = pair_logits(p, q)
    if logits is not None:
        joint = enumerated_joint(p, *logits)
        if joint is not None:
            return to_units(categorical_js(*joint), units)
    if num_samples < 1:
        raise ValueError(f"num_samples must be ≥ 1, got {num_samples}")
    batch_shape = torch.broadcast_shapes(p.batch_shape, q.batch_shape)
    p, q = (expand_to(d, batch_shape) for d in in_compute_dtype(p, q))
    return to_units(0.5 * (_kl_to_mixture(p, q, num_samples) + _kl_to_mixture(q, p, num_samples)), units)


def _kl_to_mixture(a: Distribution, b: Distribution, num_samples: int) -> Tensor:
    """k1 estimate of ``KL(A ‖ M) = E_{x~A}[log a(x) − log m(x)]``, ``M = (A + B)/2``, from
    ``num_samples`` draws of ``A``, with the gradient of the expectation."""
    x = draw(a, num_samples)
    log_a, log_b = log_prob(a, x), log_prob(b, x)
    log_m = torch.logaddexp(log_a, log_b) - math.log(2.0)
    return score_function_surrogate(log_a - log_m, log_a, x).mean(0)
