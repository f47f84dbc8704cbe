"""Shaping: what a KL term does to the divergence it measured before weighting it.

A term's loss is ``weight(t) · shaping(D)``; without shaping it is ``weight(t) · D``. Each shaping
is one small object, chosen in the config like a schedule (``klexp/conf/shaping/``):

* ``FreeBits(nats=λ)`` (Kingma et al. 2016, "Improved Variational Inference with Inverse
  Autoregressive Flow", eq. 15): ``Σ_i max(λ, KL_i)`` over the event dimensions ``i``, each
  ``KL_i`` the batch mean of dimension ``i``; a dimension below ``λ`` contributes a constant, so
  the optimiser has no reason to push it further down.
* ``Capacity(target=C(t))`` (Burgess et al. 2018, "Understanding disentangling in β-VAE", eq. 8):
  ``|D − C(t)|``, ``C`` a number or a schedule of the training step.
* ``PerExample(count="num_train")``: ``D / N`` with ``N`` read from an output, the share of a
  whole-model KL that belongs to one training example (Blundell et al. 2015: the minibatch loss
  ``NLL + KL(q(w) ‖ p(w)) / N`` sums to ``−ELBO`` over an epoch).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from klexp.core.measure import Measurement
from klexp.core.schedules import Schedule, as_schedule
from klexp.errors import require, require_finite_non_negative


class Shaping(ABC):
    """Turns a measured divergence into the quantity a term weights."""

    #: the estimate must be made per event dimension (the shaping reads ``per_dim``)
    needs_dims: bool = False

    def reads(self) -> tuple[str, ...]:
        """Names of task outputs the shaping reads, besides the term's distributions."""
        return ()

    @abstractmethod
    def __call__(self, value: Tensor, measurement: Measurement, *, step: int,
                 outputs: Mapping[str, Any], batch_scale: float) -> Tensor:
        """The shaped divergence. ``value`` is the batch-reduced divergence (mean, or sum with
        ``batch_scale`` the number of elements summed), ``measurement`` what it was reduced from."""


class FreeBits(Shaping):
    """``Σ_i max(λ, KL_i)`` with ``KL_i`` the batch-mean KL of event dimension ``i`` (× the batch
    size under ``reduction=sum``); no gradient reaches a dimension while it is below ``λ``."""

    needs_dims = True

    def __init__(self, nats: float) -> None:
        require_finite_non_negative("nats", nats)
        self.nats = float(nats)

    def __call__(self, value: Tensor, measurement: Measurement, *, step: int,
                 outputs: Mapping[str, Any], batch_scale: float) -> Tensor:
        assert measurement.per_dim is not None
        return measurement.per_dim.clamp(min=self.nats).sum() * batch_scale

    def __repr__(self) -> str:
        return f"FreeBits(nats={self.nats})"


class Capacity(Shaping):
    """``|D − C(t)|`` with the target capacity ``C(t)``, a number of nats or a schedule."""

    def __init__(self, target: float | Schedule) -> None:
        if not isinstance(target, Schedule):
            require(isinstance(target, (int, float)) and not isinstance(target, bool)
                    and 0 < target < math.inf, "target", "a finite number > 0 or a schedule", target)
        self.target = as_schedule(target, "target")

    def __call__(self, value: Tensor, measurement: Measurement, *, step: int,
                 outputs: Mapping[str, Any], batch_scale: float) -> Tensor:
        return (value - self.target.value(step)).abs()

    def __repr__(self) -> str:
        return f"Capacity(target={self.target!r})"


class PerExample(Shaping):
    """``D / N`` with ``N = outputs[count]``, the number of training examples."""

    def __init__(self, count: str = "num_train") -> None:
        require(isinstance(count, str) and count != "", "count", "the name of a task output", count)
        self.count = count

    def reads(self) -> tuple[str, ...]:
        return (self.count,)

    def __call__(self, value: Tensor, measurement: Measurement, *, step: int,
                 outputs: Mapping[str, Any], batch_scale: float) -> Tensor:
        return value / float(outputs[self.count])

    def __repr__(self) -> str:
        return f"PerExample(count={self.count!r})"
