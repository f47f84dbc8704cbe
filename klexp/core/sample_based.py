"""Divergences estimated from two sets of samples alone, with no density: for evaluating a model
that can only be sampled (a GAN's generator) against data that are only samples.

The k-nearest-neighbour KL estimate (Wang, Kulkarni & Verdú 2009, eq. 5; Pérez-Cruz 2008 for
k = 1): with ``x_1…x_n ~ P`` and ``y_1…y_m ~ Q`` in ``R^d``, ``ρ_k(i)`` the distance from ``x_i`` to
its k-th nearest neighbour among the other x's and ``ν_k(i)`` the distance to its k-th nearest
neighbour among the y's,

    KL̂(P ‖ Q) = (d/n) Σ_i log(ν_k(i) / ρ_k(i)) + log(m / (n − 1))     (nats),

consistent as n, m → ∞ (asymptotically unbiased, mean-square consistent) for densities with
finite KL. It is not a bound and can be negative at small n.

Ties. Densities make equal points a zero-probability event, but samples are rounded (float32 draws,
a data set with repeated rows, a generator that collapsed onto a point), and a zero distance would
make a term ``log 0``: ``knn_kl(x, x)`` was ``−∞`` and a duplicate in P ``+∞``, or NaN with both.
Here **zero distances are skipped**: ``ρ_k(i)`` and ``ν_k(i)`` are the distances to the k-th
nearest neighbour *at a positive distance* (counting every sample there, ties included), so a
point's copies — itself among the x's, its duplicates among the x's and the y's — are never its
neighbours. The rule is deterministic and keeps the estimate invariant to a common change of scale
and origin (adding a small ε to every distance, another common fix, does not); for samples of
densities it changes nothing. ``knn_kl(x, x)`` of distinct points is then
``log(n/(n − 1))`` (the estimator's own offset, → 0). A point with fewer than k samples at a
positive distance, in either set, leaves the estimate undefined: NaN, as for a non-finite sample
(a diverged generator's). The neighbour search is scipy's k-d tree.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from klexp.core.categorical import Units, to_units

if TYPE_CHECKING:
    from scipy.spatial import KDTree
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
    # x_i itself is among the x's at distance 0, so ρ skips it by the same rule as any duplicate
    rho = _kth_positive_distance(KDTree(x), x, k)
    nu = _kth_positive_distance(KDTree(y), x, k)
    value = d * float(np.mean(np.log(nu) - np.log(rho))) + math.log(m / (n - 1))
    return to_units(torch.tensor(value, dtype=p_samples.dtype, device=p_samples.device), units)


def _kth_positive_distance(tree: KDTree, points: np.ndarray, k: int) -> np.ndarray:
    """For each of ``points``, the distance to its k-th nearest sample of ``tree`` among those at a
    positive distance (NaN where fewer than k are)."""
    at_zero = np.asarray(tree.query_ball_point(points, r=0.0, return_length=True))
    available = tree.n
    deepest = min(k + int(at_zero.max()), available)
    distances = np.atleast_2d(tree.query(points, k=list(range(1, deepest + 1)))[0])
    index = at_zero + k - 1
    found = index < deepest
    kth = np.full(len(points), np.nan)
    kth[found] = distances[found, index[found]]
    return kth
