"""Wasserstein distances: closed forms (W2 between diagonal Gaussians, W1 between categorical
distributions over ordered classes), the exact W1 between two 1-D sample sets, and W1 through a
critic with a gradient penalty (WGAN-GP, Gulrajani et al. 2017), the objective a GAN's generator
and critic train on.

Why W1 for a GAN (Arjovsky, Chintala & Bottou 2017, example 1): let P be uniform on the segment
``{0} × [0, 1]`` and ``Q_θ`` uniform on ``{θ} × [0, 1]``. For every ``θ ≠ 0`` the supports are
disjoint, so ``KL(P ‖ Q_θ) = +∞`` and ``JS(P, Q_θ) = ln 2`` whatever θ is — neither tells a
generator which way to move — while ``W1(P, Q_θ) = |θ|``, whose gradient points to θ = 0
(``tests/test_fdivergences.py`` checks all three and their gradients in θ).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, Independent, Normal

from klexp.core.categorical import check_logits, compute_dtype
from klexp.core.distributions import as_logits, check_compatible, flat_independent, sum_rightmost
from klexp.errors import require, require_non_negative, require_positive_int


def _normal_params(d: Distribution) -> tuple[Tensor, Tensor, int]:
    d = flat_independent(d)
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
    dtype = compute_dtype(mu_p.dtype, mu_q.dtype)
    mu_p, sigma_p, mu_q, sigma_q = (x.to(dtype) for x in (mu_p, sigma_p, mu_q, sigma_q))
    squared = (mu_p - mu_q).square() + (sigma_p - sigma_q).square()
    return sum_rightmost(squared, dims).sqrt()


def wasserstein1_categorical(p: Distribution | Tensor, q: Distribution | Tensor) -> Tensor:
    """W1 between categorical distributions over ordered classes 0, 1, …, K−1 (unit spacing):
    ``W1 = Σ_k |F_P(k) − F_Q(k)|`` with the cumulative distribution functions F.

    Accepts Categorical distributions (built from probabilities or logits) or logits.
    """
    p_logits = as_logits(p) if isinstance(p, Categorical) else p
    q_logits = as_logits(q) if isinstance(q, Categorical) else q
    check_logits(p_logits, q_logits)
    dtype = compute_dtype(p_logits.dtype, q_logits.dtype)
    p_logits, q_logits = p_logits.to(dtype), q_logits.to(dtype)
    cdf_gap = torch.softmax(p_logits, -1).cumsum(-1) - torch.softmax(q_logits, -1).cumsum(-1)
    return cdf_gap[..., :-1].abs().sum(-1)


def wasserstein1_empirical_1d(x: Tensor, y: Tensor) -> Tensor:
    """Exact W1 between the empirical distributions of two 1-D sample sets (any sizes):
    ``W1 = ∫ |F_x(t) − F_y(t)| dt``, the area between their empirical CDFs, evaluated between
    consecutive points of the merged, sorted samples; for equal sizes this is
    ``mean_i |x_(i) − y_(i)|`` over the sorted samples. Differentiable in the sample values.
    (``scipy.stats.wasserstein_distance`` computes the same number without gradients.)
    """
    require(x.dim() == 1 and y.dim() == 1 and len(x) > 0 and len(y) > 0, "samples",
            "two non-empty 1-D tensors", (tuple(x.shape), tuple(y.shape)))
    if len(x) == len(y):
        return (x.sort().values - y.sort().values).abs().mean()
    x_sorted, y_sorted = x.sort().values, y.sort().values
    merged = torch.cat([x_sorted, y_sorted]).sort().values
    left = merged[:-1].detach()
    cdf_x = torch.searchsorted(x_sorted.detach(), left, right=True).to(x.dtype) / len(x)
    cdf_y = torch.searchsorted(y_sorted.detach(), left, right=True).to(y.dtype) / len(y)
    return ((cdf_x - cdf_y).abs() * merged.diff()).sum()


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor) -> Tensor:
    """Gulrajani et al. (2017), eq. 3: ``E_x̂[(‖∇_x̂ v(x̂)‖₂ − 1)²]`` at ``x̂ = ε x_real + (1 − ε) x_fake``,
    ``ε ~ U[0, 1]`` per example, for a critic ``v`` mapping ``(batch, *shape)`` to ``(batch,)`` or
    ``(batch, 1)`` outputs. Differentiable in the critic's parameters (double back-propagation),
    not in ``real`` or ``fake``: the penalty shapes the critic only."""
    require(real.shape == fake.shape, "samples", "real and fake batches of one shape",
            (tuple(real.shape), tuple(fake.shape)))
    mix = torch.rand((len(real),) + (1,) * (real.dim() - 1), dtype=real.dtype, device=real.device)
    between = (mix * real.detach() + (1 - mix) * fake.detach()).requires_grad_(True)
    (slopes,) = torch.autograd.grad(critic(between).sum(), between, create_graph=True)
    return (slopes.flatten(1).norm(dim=1) - 1).square().mean()


class WassersteinGP:
    """Train a generator Q against data P on ``W1(P, Q)`` through a critic (WGAN-GP).

    Kantorovich–Rubinstein: ``W1(P, Q) = sup_{‖v‖_L ≤ 1} E_P[v] − E_Q[v]``. The critic maximises
    ``E_P[v] − E_Q[v]`` minus ``penalty_weight ·`` the gradient penalty (``gradient_penalty``),
    which keeps it near 1-Lipschitz; the generator minimises ``−E_Q[v]``. Units: those of the
    data's distance, not nats.

    Args:
        penalty_weight: λ (the paper's 10).
        critic_steps: critic updates per generator update (the paper's 5).
    """

    name = "wasserstein"

    def __init__(self, penalty_weight: float = 10.0, critic_steps: int = 5) -> None:
        require_non_negative("penalty_weight", penalty_weight)
        require_positive_int("critic_steps", critic_steps)
        self.penalty_weight = float(penalty_weight)
        self.critic_steps = critic_steps

    def critic_objective(self, v_real: Tensor, v_fake: Tensor) -> Tensor:
        """``E_P[v] − E_Q[v]``: an estimate of W1 when v is 1-Lipschitz (below it otherwise)."""
        return v_real.mean() - v_fake.mean()

    def generator_loss(self, v_fake: Tensor) -> Tensor:
        """``−E_Q[v]``."""
        return -v_fake.mean()

    def __repr__(self) -> str:
        return f"WassersteinGP(penalty_weight={self.penalty_weight}, critic_steps={self.critic_steps})"
