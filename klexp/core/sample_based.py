"""Divergences estimated from two sets of samples alone, with no density: for evaluating a model
that can only be sampled (a GAN's generator) against data that are only samples.

The k-nearest-neighbour KL estimate (Wang, Kulkarni & Verdú 2009, eq. 5; Pérez-Cruz 2008 for
k = 1): with ``x_1…x_n ~ P`` and ``y_1…y_m ~ Q`` in ``R^d``, ``ρ_k(i)`` the distance from ``x_i`` to
its k-th nearest neighbour among the other x's and ``ν_k(i)`` the distance to its k-th nearest
neighbour among the y's,

    KL̂(P ‖ Q) = (d/n) Σ_i log(ν_k(i) / ρ_k(i)) + log(m / (n − 1))     (nats),

consistent as n, m → ∞ (asymptotically unbiased, mean-square consistent) for densities with
finite KL. It is not a bound, can be negative at small n, and a point of P with an exact
duplicate among the x's (``ρ = 0``) makes it ``+∞``; a non-finite sample (a diverged generator's)
makes it NaN. The neighbour search is scipy's k-d tree.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from klexp.core.categorical import Units, to_units
from klexp.errors import require, require_positive_int


def knn_kl(p_samples: Tensor, q_samples: Tensor, *, k: int = 1, units: Units = "nats") -> Tensor:
    """The k-NN estimate of ``KL(P ‖ Q)`` from samples ``(n, d)`` of P and ``(m, d)`` of Q (see the
    module docstring); a 0-dim tensor in ``p_samples``' dtype and device. No gradient flows."""
    require_positive_int("k", k)
    require(p_samples.dim() == 2 and q_samples.dim() == 2 and p_samples.shape[1] == q_samples.shape[1],
            "samples", "two (count, dimension) tensors of one dimension",
            (tuple(p_samples.shape), tuple(q_samples.shape)))
    n, d = p_samples.shape
    m = q_samples.shape[0]
    require(n > k and m >= k, "samples", f"more than k = {k} samples of P and at least k of Q",
            (n, m))
    # imported here: scipy.spatial takes ~1 s to load, which every ``import klexp.core`` would pay
    from scipy.spatial import KDTree

    x = p_samples.detach().cpu().double().numpy()
    y = q_samples.detach().cpu().double().numpy()
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return torch.tensor(math.nan, dtype=p_samples.dtype, device=p_samples.device)
    # the nearest "neighbour" of x_i among the x's is x_i itself: ask for k + 1 and take the last
    rho = np.atleast_2d(KDTree(x).query(x, k=[k + 1])[0])[:, -1]
    nu = np.atleast_2d(KDTree(y).query(x, k=[k])[0])[:, -1]
    with np.errstate(divide="ignore"):
        log_ratio = np.log(nu) - np.log(rho)
    value = d * float(np.mean(log_ratio)) + math.log(m / (n - 1))
    return to_units(torch.tensor(value, dtype=p_samples.dtype, device=p_samples.device), units)
