"""How well generated samples cover a Gaussian mixture's modes: the metrics of PacGAN's released
code (Lin et al. 2018; also VEEGAN's and GDPP's tables), plus two KLs over the modes and a k-NN KL.

For samples ``x_1…x_N`` of the generator and modes ``μ_1…μ_K`` of common standard deviation σ:

* a sample is **high quality** when it lies within ``threshold · σ`` (3σ) of its nearest mode;
  ``high_quality`` is their share, in percent;
* a mode is **captured** when at least one high-quality sample is nearest to it; ``modes`` counts
  them;
* ``h``, the histogram of high-quality samples over their nearest modes, normalised, against the
  uniform ``u`` the data have: ``kl_modes = KL(u ‖ h)`` (``+∞`` as soon as a mode is missed) and
  ``reverse_kl_modes = KL(h ‖ u)`` (≤ ln K; PacGAN's "reverse KL"), in nats; both ``+∞`` when no
  sample is of high quality;
* ``knn_kl``: the k-NN estimate of ``KL(P_data ‖ Q_model)`` from as many data points
  (``klexp.core.knn_kl``), which, unlike the others, also sees how samples spread within a mode.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from klexp.core.categorical import categorical_kl
from klexp.core.sample_based import knn_kl

METRICS: tuple[str, ...] = ("modes", "high_quality", "kl_modes", "reverse_kl_modes", "knn_kl")


def mode_histogram(samples: Tensor, means: Tensor, std: float, threshold: float = 3.0) -> Tensor:
    """Counts ``(K,)`` of the high-quality samples (within ``threshold · std`` of their nearest
    mean) by nearest mean."""
    distances = torch.cdist(samples, means.to(samples.dtype))
    nearest_distance, nearest = distances.min(dim=1)
    good = nearest_distance < threshold * std
    return torch.bincount(nearest[good], minlength=len(means))


def mode_metrics(samples: Tensor, data: Tensor, means: Tensor, std: float, *,
                 threshold: float = 3.0, knn_k: int = 1) -> dict[str, Tensor]:
    """``modes``, ``high_quality`` (%), ``kl_modes``, ``reverse_kl_modes`` and ``knn_kl`` (nats) of
    generated ``samples (N, d)`` against a mixture with ``means (K, d)`` and ``std``, with ``data``
    ``(M, d)`` drawn from it for the k-NN estimate; 0-dim float tensors on the samples' device."""
    counts = mode_histogram(samples, means, std, threshold).to(samples.dtype)
    total = counts.sum()
    uniform = torch.zeros_like(counts)
    if total > 0:
        log_histogram = counts.log()  # −inf for missed modes: probability 0
        kl_modes = categorical_kl(uniform, log_histogram)
        reverse_kl_modes = categorical_kl(log_histogram, uniform)
    else:
        kl_modes = reverse_kl_modes = torch.tensor(math.inf, dtype=samples.dtype, device=samples.device)
    return {
        "modes": (counts > 0).sum().to(samples.dtype),
        "high_quality": 100 * total / len(samples),
        "kl_modes": kl_modes,
        "reverse_kl_modes": reverse_kl_modes,
        "knn_kl": knn_kl(data, samples, k=knn_k).to(samples.device),
    }
