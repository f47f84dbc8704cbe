"""Monte-Carlo estimators of ``KL(p ‖ q)`` from samples ``x ~ p`` and their log-ratio
``log r = log q(x) − log p(x)`` (Schulman, "Approximating KL Divergence",
http://joschu.net/blog/kl-approx.html):

* ``k1 = −log r``            unbiased, high variance, can be negative;
* ``k2 = ½ (log r)²``        biased, low variance, never negative;
* ``k3 = (r − 1) − log r``   unbiased, low variance, never negative.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.distributions import Distribution

from klexp.core.categorical import at_least_float32, compute_dtype
from klexp.core.distributions import check_compatible, dtype_of, expand_to, log_prob, with_state_dtype

EstimatorName = Literal["analytic", "k1", "k2", "k3"]
ESTIMATORS: tuple[str, ...] = ("analytic", "k1", "k2", "k3")
MONTE_CARLO_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")


def monte_carlo_terms(log_ratio: Tensor, estimator: EstimatorName) -> Tensor:
    """Per-sample KL estimates from ``log r = log q(x) − log p(x)`` with ``x ~ p``.

    ``k1 = −log r``, ``k2 = ½ (log r)²``, ``k3 = (r − 1) − log r`` (Schulman 2020). Their mean over
    samples estimates ``KL(p ‖ q)``; k1 and k3 are unbiased, k2 and k3 are never negative.
    Half-precision log-ratios are computed, and returned, in float32 (``klexp.core.categorical``).
    """
    log_ratio = at_least_float32(log_ratio)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        # expm1 keeps k3 accurate (and ≥ 0) when r ≈ 1, where (r − 1) − log r cancels.
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"estimator must be one of {MONTE_CARLO_ESTIMATORS}, got {estimator!r}")


def draw(p: Distribution, num_samples: int) -> Tensor:
    """``num_samples`` draws of ``p``, ``(num_samples, *batch, *event)``: reparameterised when ``p``
    allows (gradients then flow through them), else plain draws carrying no gradient."""
    shape = torch.Size([num_samples])
    return p.rsample(shape) if p.has_rsample else p.sample(shape)


def score_function_surrogate(terms: Tensor, log_prob: Tensor, samples: Tensor) -> Tensor:
    """Per-sample terms ``f(x)``, ``x ~ p``, of a Monte-Carlo estimate of ``E_{x~p}[f(x)]``, made to
    carry the gradient of that expectation when the draws do not.

    When ``p`` has trainable parameters but ``x`` carries no gradient (a discrete ``p``, or draws
    made elsewhere), returns ``f + sg(f)·(log p(x) − sg(log p(x)))``: value ``f``, gradient
    ``∇f + f·∇log p(x)``, whose mean is ``∇E_{x~p}[f]`` (the score-function or REINFORCE
    estimator, Williams 1992; ``sg`` is the stop-gradient). Otherwise ``terms`` as they are:
    reparameterised draws carry the gradient through ``x``. An infinite term keeps its value
    (``∞·0`` would make it NaN).
    """
    if samples.requires_grad or not log_prob.requires_grad:
        return terms
    correction = terms.detach() * (log_prob - log_prob.detach())
    return terms + correction.nan_to_num(nan=0.0)


def kl_samples(
    p: Distribution,
    q: Distribution,
    *,
    estimator: EstimatorName = "k3",
    num_samples: int = 1,
    samples: Tensor | None = None,
    sample_log_prob: Tensor | None = None,
    importance_weight: bool = True,
) -> Tensor:
    """Per-sample Monte-Carlo estimates of ``KL(p ‖ q)``, shape ``(num_samples, *batch_shape)``.

    ``batch_shape`` is the broadcast batch shape of ``p`` and ``q``: each batch element gets draws
    of its own, also where ``p`` is shared by a batch of ``q`` (``p`` is expanded first).
    Draws ``x ~ p`` (reparameterised when ``p`` allows, so gradients flow) unless ``samples`` are
    given — values already drawn, such as the actions of a rollout, of shape
    ``(*batch_shape, *event_shape)`` (one sample each) or with a leading sample axis. Given samples
    are draws from ``p`` unless ``sample_log_prob`` is given: ``log s(x)`` of the distribution
    ``s`` they were drawn from. See ``monte_carlo_terms`` for the estimators ``k``. Log-densities
    are ``klexp.core.distributions.log_prob``: a class of probability 0 in a distribution built
    from ``probs`` gives ``+inf`` as in the closed form.
    ``p``, ``q`` and floating ``samples`` are computed with in their promoted dtype, float32 for
    half precision (``klexp.core.categorical.compute_dtype``).

    Gradients, with ``sg`` the stop-gradient:

    * ``x ~ p`` reparameterised: the gradient flows through ``x``.
    * ``x ~ p`` not reparameterised (a categorical ``p``, or given samples that carry no
      gradient) while ``p`` has trainable parameters: each term gets the score-function
      correction ``k + sg(k)·(log p(x) − sg(log p(x)))``, value ``k``, gradient
      ``∇k + k·∇log p(x)``, whose mean is ``∇E_{x~p}[k]`` — the gradient of the KL for the
      unbiased k1 and k3 (Williams 1992; ``score_function_surrogate``).
    * ``x ~ s`` (``sample_log_prob`` given): with ``importance_weight`` each term is
      ``ρ·k``, ``ρ = p(x)/sg(s(x))``, an unbiased estimate of ``E_{x~p}[k]`` whose gradient is
      ``∇E_{x~p}[k]`` at every step (equal to the score-function form while ``s = p``); without,
      ``k`` as written, back-propagated as it stands (what most RL fine-tuning code does: on
      samples of ``s = p``, k1 then has a zero-mean gradient, k2 the gradient of ``KL(p ‖ q)``
      and k3 that of ``KL(q ‖ p)``).
    """
    batch_shape = check_compatible(p, q)
    given_dtypes = [samples.dtype] if samples is not None and samples.is_floating_point() else []
    dtype = compute_dtype(dtype_of(p, q), *given_dtypes)
    p, q = expand_to(with_state_dtype(p, dtype), batch_shape), with_state_dtype(q, dtype)
    if samples is None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be ≥ 1, got {num_samples}")
        if sample_log_prob is not None:
            raise ValueError("sample_log_prob describes given samples; pass samples too")
        x = draw(p, num_samples)
    else:
        x = with_sample_axis(samples.to(dtype) if given_dtypes else samples, p)
    log_p = log_prob(p, x)
    terms = monte_carlo_terms(log_prob(q, x) - log_p, estimator)
    if sample_log_prob is None:
        return score_function_surrogate(terms, log_p, x)
    if importance_weight:
        terms = torch.exp(log_p - sample_log_prob.detach()) * terms
    return terms


def with_sample_axis(samples: Tensor, p: Distribution) -> Tensor:
    """``samples`` of ``p`` with a leading sample axis: given with shape
    ``(*batch_shape, *event_shape)`` of ``p`` (one sample each) or ``(n, *batch_shape, *event_shape)``;
    any other shape raises ``ValueError`` naming both (broadcasting would pair draws with the wrong
    batch elements, or share one draw between several)."""
    one_each = p.batch_shape + p.event_shape
    if samples.shape == one_each:
        return samples.unsqueeze(0)
    if samples.shape[1:] == one_each:
        return samples
    raise ValueError(
        f"samples must have shape {tuple(one_each)} (batch shape {tuple(p.batch_shape)}, event shape "
        f"{tuple(p.event_shape)}: one per batch element) or that shape after a leading sample axis; "
        f"got {tuple(samples.shape)}"
    )
