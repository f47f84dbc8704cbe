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

from klexp.core.distributions import check_compatible

Estimator = Literal["analytic", "k1", "k2", "k3"]
ESTIMATORS: tuple[str, ...] = ("analytic", "k1", "k2", "k3")
MONTE_CARLO_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")


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


def kl_samples(
    p: Distribution,
    q: Distribution,
    *,
    estimator: Estimator = "k3",
    num_samples: int = 1,
    samples: Tensor | None = None,
    sample_log_prob: Tensor | None = None,
    importance_weight: bool = True,
) -> Tensor:
    """Per-sample Monte-Carlo estimates of ``KL(p ‖ q)``, shape ``(num_samples, *batch_shape)``.

    Draws ``x ~ p`` (reparameterised when ``p`` allows, so gradients flow) unless ``samples`` are
    given — values already drawn, such as the actions of a rollout, with the batch shape (one
    sample each) or a leading sample axis. Given samples are draws from ``p`` unless
    ``sample_log_prob`` is given: ``log s(x)`` of the distribution ``s`` they were drawn from.
    See ``monte_carlo_terms`` for the estimators ``k``.

    Gradients, with ``sg`` the stop-gradient:

    * ``x ~ p`` reparameterised: the gradient flows through ``x``.
    * ``x ~ p`` not reparameterised (a categorical ``p``, or given samples that carry no
      gradient) while ``p`` has trainable parameters: each term gets the score-function
      correction ``k + sg(k)·(log p(x) − sg(log p(x)))``, value ``k``, gradient
      ``∇k + k·∇log p(x)``, whose mean is ``∇E_{x~p}[k]`` — the gradient of the KL for the
      unbiased k1 and k3 (Williams 1992).
    * ``x ~ s`` (``sample_log_prob`` given): with ``importance_weight`` each term is
      ``ρ·k``, ``ρ = p(x)/sg(s(x))``, an unbiased estimate of ``E_{x~p}[k]`` whose gradient is
      ``∇E_{x~p}[k]`` at every step (equal to the score-function form while ``s = p``); without,
      ``k`` as written, back-propagated as it stands (what most RL fine-tuning code does: on
      samples of ``s = p``, k1 then has a zero-mean gradient, k2 the gradient of ``KL(p ‖ q)``
      and k3 that of ``KL(q ‖ p)``).
    """
    check_compatible(p, q)
    if samples is None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be ≥ 1, got {num_samples}")
        if sample_log_prob is not None:
            raise ValueError("sample_log_prob describes given samples; pass samples too")
        shape = torch.Size([num_samples])
        x = p.rsample(shape) if p.has_rsample else p.sample(shape)
    else:
        x = samples
        if x.dim() == len(p.batch_shape) + len(p.event_shape):
            x = x.unsqueeze(0)
    log_p = p.log_prob(x)
    terms = monte_carlo_terms(q.log_prob(x) - log_p, estimator)
    if sample_log_prob is not None:
        if importance_weight:
            terms = torch.exp(log_p - sample_log_prob.detach()) * terms
    elif log_p.requires_grad and not x.requires_grad:
        terms = terms + terms.detach() * (log_p - log_p.detach())
    return terms
