"""Shaping: what a KL term weights instead of the divergence it measures.

A term's loss is ``weight(t) · shaping(D)``; without shaping it is ``weight(t) · D``. A shaping holds
the divergence ``D`` it shapes (``of``: a direction of ``klexp.core.directions``, ``KL(p ‖ q)`` in
closed form unless named), so that a shaping that needs what only some divergences have (free bits
need one value per event dimension) says so in the type of its own argument. Each is one small
object, chosen in the config like a schedule (``klexp/conf/shaping/``; there the term's
``direction`` says what it shapes):

* ``FreeBits(nats=λ, of=KL)`` (Kingma et al. 2016, "Improved Variational Inference with Inverse
  Autoregressive Flow", eq. 15): ``Σ_i max(λ, KL_i)`` over the event dimensions ``i``, each
  ``KL_i`` the batch mean of dimension ``i``; a dimension below ``λ`` contributes a constant, so
  the optimiser has no reason to push it further down. ``of`` is a KL direction (``Forward`` or
  ``Reverse``): the Jensen–Shannon divergence of two products is not a sum over dimensions.
* ``Capacity(target=C(t), of=D)`` (Burgess et al. 2018, "Understanding disentangling in β-VAE",
  eq. 8): ``|D − C(t)|``, ``C`` a number or a schedule of the training step.
* ``PerExample(count="num_train", of=D)``: ``D / N`` with ``N`` read from an output, the share of a
  whole-model KL that belongs to one training example (Blundell et al. 2015: the minibatch loss
  ``NLL + KL(q(w) ‖ p(w)) / N`` sums to ``−ELBO`` over an epoch).
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Self

from torch import Tensor

from klexp.core.directions import Direction, Forward, Reverse, as_direction
from klexp.core.measure import Measurement
from klexp.core.schedules import Schedule, as_schedule
from klexp.errors import ConfigValueError, require, require_finite_non_negative


class Shaping(ABC):
    """Turns the divergence ``of`` a term measures into the quantity the term weights."""

    #: the estimate must be made per event dimension (the shaping reads ``per_dim``)
    needs_dims: bool = False

    def __init__(self, of: Direction | str | None) -> None:
        # unnamed: KL(p ‖ q) in closed form, until a config's term applies its own direction
        self._named = of is not None
        self.of = self._shapes(as_direction(Forward() if of is None else of, key="of"))

    def _shapes(self, of: Direction) -> Direction:
        """``of``, if this type of shaping can shape it; else ``ConfigValueError`` naming ``of``."""
        return of

    @property
    def names_its_divergence(self) -> bool:
        """Whether ``of`` was named (a config's term names it with its own ``direction``)."""
        return self._named

    def applied_to(self, of: Direction) -> Self:
        """This shaping, shaping ``of`` instead."""
        shaped = copy.copy(self)
        shaped.of = shaped._shapes(of)
        shaped._named = True
        return shaped

    def _of_repr(self) -> str:
        return f", of={self.of!r}" if self.names_its_divergence else ""

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

    def __init__(self, nats: float, of: Forward | Reverse | str | None = None) -> None:
        require_finite_non_negative("nats", nats)
        self.nats = float(nats)
        super().__init__(of)

    def _shapes(self, of: Direction) -> Direction:
        if not isinstance(of, (Forward, Reverse)):
            raise ConfigValueError("of", f"free bits floor the KL of each event dimension: they shape "
                                   f"Forward or Reverse, and {of!r} does not split over dimensions")
        return of

    def __call__(self, value: Tensor, measurement: Measurement, *, step: int,
                 outputs: Mapping[str, Any], batch_scale: float) -> Tensor:
        assert measurement.per_dim is not None
        return measurement.per_dim.clamp(min=self.nats).sum() * batch_scale

    def __repr__(self) -> str:
        return f"FreeBits(nats={self.nats}{self._of_repr()})"


class Capacity(Shaping):
    """``|D − C(t)|`` with the target capacity ``C(t)``, a number of nats or a schedule."""

    def __init__(self, target: float | Schedule, of: Direction | str | None = None) -> None:
        if not isinstance(target, Schedule):
            require(isinstance(target, (int, float)) and not isinstance(target, bool)
                    and 0 < target < math.inf, "target", "a finite number > 0 or a schedule", target)
        self.target = as_schedule(target, "target")
        super().__init__(of)

    def __call__(self, value: Tensor, measurement: Measurement, *, step: int,
                 outputs: Mapping[str, Any], batch_scale: float) -> Tensor:
        return (value - self.target.value(step)).abs()

    def __repr__(self) -> str:
        return f"Capacity(target={self.target!r}{self._of_repr()})"


class PerExample(Shaping):
    """``D / N`` with ``N = outputs[count]``, the number of training examples."""

    def __init__(self, count: str = "num_train", of: Direction | str | None = None) -> None:
        require(isinstance(count, str) and count != "", "count", "the name of a task output", count)
        self.count = count
        super().__init__(of)

    def reads(self) -> tuple[str, ...]:
        return (self.count,)

    def __call__(self, value: Tensor, measurement: Measurement, *, step: int,
                 outputs: Mapping[str, Any], batch_scale: float) -> Tensor:
        return value / float(outputs[self.count])

    def __repr__(self) -> str:
        return f"PerExample(count={self.count!r}{self._of_repr()})"
