"""What a KL term measures on one batch: a divergence between two distributions in a chosen
direction with a chosen estimator, per batch element, and optionally per event dimension.

``measure(p, q, direction=...)`` is pure: the Lightning term (``klexp.lightning.KLTerm``) reads
``p`` and ``q`` from a step's outputs, calls it, weights and logs the result.

* ``forward``: ``KL(p ‖ q)``; ``reverse``: ``KL(q ‖ p)`` (Monte-Carlo draws then come from ``q``);
  ``js``: the Jensen–Shannon divergence (closed form for discrete pairs, Monte Carlo otherwise).
* Per dimension (``per_dim``), for ``Independent`` distributions: ``"estimate"`` makes the
  estimate itself per event dimension (free bits floor each dimension's KL); ``"report"`` makes
  per-dimension values available for the logs — from the same closed form (the total is then the
  sum of the dimensions' closed forms), or, for Monte-Carlo estimators, from draws made aside (no
  gradient, the global random stream left where it was) so that how often a run logs never
  changes its training; they are computed only when read. Monte-Carlo estimates of the total use
  the joint log-ratio: a sum of per-dimension estimates has a far larger variance (k2, k3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent

from klexp.core.distributions import flat_independent
from klexp.core.divergences import js, kl
from klexp.core.estimators import EstimatorName, kl_samples

#: the shorthands of ``klexp.core.directions``' types: only the KL directions take Monte-Carlo
#: ``k`` estimators and split over the event dimensions of ``Independent`` distributions
DirectionName = Literal["forward", "reverse", "js"]
PerDim = Literal["estimate", "report"] | None
#: Monte-Carlo draws per distribution for a Jensen–Shannon estimate of continuous distributions
JS_MIN_SAMPLES = 256


@dataclass(frozen=True)
class Measurement:
    """``elementwise``: the divergence per batch element; ``per_sample``: the Monte-Carlo terms
    behind each element's estimate, ``(num_samples, *batch)``, for their spread; ``per_dim``: the
    batch mean per event dimension (flattened), when asked for, computed on first read."""

    elementwise: Tensor
    per_sample: Tensor | None = None
    dims: Callable[[], Tensor] | None = None

    @cached_property
    def per_dim(self) -> Tensor | None:
        return None if self.dims is None else self.dims()


def measure(
    p: Distribution,
    q: Distribution,
    *,
    direction: DirectionName = "forward",
    estimator: EstimatorName = "analytic",
    num_samples: int = 1,
    samples: Tensor | None = None,
    sample_log_prob: Tensor | None = None,
    importance_weight: bool = True,
    per_dim: PerDim = None,
) -> Measurement:
    """The divergence ``D`` of ``direction`` between ``p`` and ``q`` (see the module docstring);
    ``samples``, ``sample_log_prob`` and ``importance_weight`` as in ``kl_samples``, where the
    distribution sampled is ``p`` for ``forward`` and ``q`` for ``reverse``."""
    if direction == "reverse":
        p, q = q, p

    def elementwise(a: Distribution, b: Distribution) -> tuple[Tensor, Tensor | None]:
        if direction == "js":
            return js(a, b, num_samples=max(num_samples, JS_MIN_SAMPLES)), None
        if estimator == "analytic":
            return kl(a, b), None
        terms = kl_samples(a, b, estimator=estimator, num_samples=num_samples, samples=samples,
                           sample_log_prob=sample_log_prob, importance_weight=importance_weight)
        return terms.mean(0), terms

    if per_dim is None:
        return Measurement(*elementwise(p, q))
    if direction == "js":
        raise ValueError("Jensen–Shannon does not split over dimensions (the mixture of two "
                         "products is not a product)")
    p, q = flat_independent(p), flat_independent(q)
    event_dims = shared_event_dims(p, q)
    if per_dim == "estimate" or estimator == "analytic":
        # a closed-form KL of Independent distributions is the sum of its dimensions' KLs
        split, per_sample = elementwise(p.base_dist, q.base_dist)
        if per_sample is not None:
            per_sample = per_sample.flatten(-event_dims).sum(-1)
        return Measurement(split.flatten(-event_dims).sum(-1), per_sample,
                           lambda: batch_mean_per_dim(split, event_dims))
    value, per_sample = elementwise(p, q)

    def drawn_aside() -> Tensor:
        with torch.no_grad(), random_stream_aside(value.device):
            return batch_mean_per_dim(elementwise(p.base_dist, q.base_dist)[0], event_dims)

    return Measurement(value, per_sample, drawn_aside)


def shared_event_dims(p: Distribution, q: Distribution) -> int:
    """The number of reinterpreted batch dimensions two (flat) ``Independent`` distributions share."""
    dims = {d.reinterpreted_batch_ndims if isinstance(d, Independent) else 0 for d in (p, q)}
    if dims == {0} or len(dims) != 1:
        raise ValueError(
            "splitting a divergence per dimension needs p and q to be Independent distributions "
            f"with the same event dimensions; got {type(p).__name__} and {type(q).__name__}"
        )
    return dims.pop()


def batch_mean_per_dim(elementwise: Tensor, event_dims: int) -> Tensor:
    """Per-dimension values ``(*batch, *event)`` → their batch mean over flattened event dims."""
    flat = elementwise.flatten(-event_dims)
    return flat.reshape(-1, flat.shape[-1]).mean(0)


@contextmanager
def random_stream_aside(device: torch.device) -> Iterator[None]:
    """Draws inside leave the global generator of ``device`` (and the CPU's) where they found it."""
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            yield
    else:
        with torch.random.fork_rng(devices=[device], device_type=device.type):
            yield
