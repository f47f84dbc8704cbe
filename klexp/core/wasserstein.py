"""Wasserstein distances with closed forms: between diagonal Gaussians (W2) and between
categorical distributions over ordered classes (W1)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, Independent, Normal

from klexp.core.categorical import check_logits
from klexp.core.distributions import check_compatible, sum_rightmost


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
    return sum_rightmost(squared, dims).sqrt()


def wasserstein1_categorical(p: Distribution | Tensor, q: Distribution | Tensor) -> Tensor:
    """W1 between categorical distributions over ordered classes 0, 1, …, K−1 (unit spacing):
    ``W1 = Σ_k |F_P(k) − F_Q(k)|`` with the cumulative distribution functions F.

    Accepts Categorical distributions or logits.
    """
    p_logits = p.logits if isinstance(p, Categorical) else p
    q_logits = q.logits if isinstance(q, Categorical) else q
    check_logits(p_logits, q_logits)
    cdf_gap = torch.softmax(p_logits, -1).cumsum(-1) - torch.softmax(q_logits, -1).cumsum(-1)
    return cdf_gap[..., :-1].abs().sum(-1)
