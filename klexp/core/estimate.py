"""How a KL term estimates its divergence, one small object each, chosen like a schedule or a
shaping:

* ``ClosedForm()`` — the exact divergence (``klexp.core.divergences``), shorthand ``analytic``;
* ``MonteCarlo(k, num_samples)`` — Schulman's ``k1`` | ``k2`` | ``k3`` (``klexp.core.estimators``)
  on ``num_samples`` fresh draws of the sampled distribution, shorthand ``k1`` | ``k2`` | ``k3``;
* ``OnSamples(samples, k, samples_from, importance_weight)`` — the same ``k`` on draws the task
  already made (e.g. a rollout's actions), read from the output ``samples``: their count is their
  own, and when they come from another distribution than the sampled one (``samples_from``) each
  term is importance-weighted (``klexp.core.estimators.kl_samples``).

The draws belong to the estimator, so no combination of them can be wrong; which estimators a
term accepts is decided by its direction (Jensen–Shannon has no ``k``) and its type (a reward
penalty needs the actions taken: ``klexp.lightning.term``). ``as_estimator`` turns a shorthand
into its object.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, Literal

from torch.distributions import Distribution

from klexp.core.estimators import ESTIMATORS, MONTE_CARLO_ESTIMATORS
from klexp.errors import ConfigValueError, require, require_in, require_positive_int

K = Literal["k1", "k2", "k3"]


class Estimator(ABC):
    """How a divergence is estimated; ``str()`` is its shorthand (``analytic``, ``k1``…)."""

    #: Monte-Carlo: the estimate has per-sample terms (their spread is logged)
    monte_carlo: bool = False

    @property
    @abstractmethod
    def name(self) -> str:
        """The shorthand: ``analytic``, ``k1``, ``k2`` or ``k3``."""

    def reads(self, sampled: str) -> tuple[str, ...]:
        """Outputs read besides the two distributions; ``sampled`` names the one drawn from."""
        return ()

    def arguments(self, outputs: Mapping[str, Any], sampled: str,
                  distribution: Callable[[str, str], Distribution]) -> dict[str, Any]:
        """The keyword arguments of ``klexp.core.measure.measure`` that say how to estimate, given
        a step's ``outputs``; ``distribution(role, name)`` reads a distribution among them."""
        return {"estimator": self.name}

    def __str__(self) -> str:
        return self.name


class ClosedForm(Estimator):
    """The exact divergence."""

    @property
    def name(self) -> str:
        return "analytic"

    def __repr__(self) -> str:
        return "ClosedForm()"


class MonteCarlo(Estimator):
    """``k`` averaged over ``num_samples`` fresh draws per batch element (reparameterised where the
    sampled distribution allows)."""

    monte_carlo = True

    def __init__(self, k: K = "k3", num_samples: int = 1) -> None:
        require_in("k", k, MONTE_CARLO_ESTIMATORS)
        require_positive_int("num_samples", num_samples)
        self.k, self.num_samples = k, num_samples

    @property
    def name(self) -> str:
        return self.k

    def arguments(self, outputs: Mapping[str, Any], sampled: str,
                  distribution: Callable[[str, str], Distribution]) -> dict[str, Any]:
        return {"estimator": self.k, "num_samples": self.num_samples}

    def __repr__(self) -> str:
        return f"MonteCarlo(k={self.k!r}, num_samples={self.num_samples})"


class OnSamples(Estimator):
    """``k`` on the draws in output ``samples``. ``samples_from`` names the output distribution they
    came from; when it is not the sampled one, each term is weighted by ``ρ = sampled(x) /
    samples_from(x)`` (``importance_weight``) or used as written. Unset, the draws are taken to
    come from the sampled distribution: klexp cannot check that for you."""

    monte_carlo = True

    def __init__(self, samples: str, k: K = "k3", samples_from: str | None = None,
                 importance_weight: bool = True) -> None:
        require_in("k", k, MONTE_CARLO_ESTIMATORS)
        for key, value in (("samples", samples), ("samples_from", samples_from)):
            if value is not None or key == "samples":
                require(isinstance(value, str) and value != "", key, "the name of an output", value)
        require(isinstance(importance_weight, bool), "importance_weight", "true or false",
                importance_weight)
        self.k, self.samples, self.samples_from = k, samples, samples_from
        self.importance_weight = importance_weight

    @property
    def name(self) -> str:
        return self.k

    def reweighted(self, sampled: str) -> bool:
        """Whether the draws come from another output than ``sampled`` (their density is read)."""
        return self.samples_from not in (None, sampled)

    def reads(self, sampled: str) -> tuple[str, ...]:
        return (self.samples, self.samples_from) if self.reweighted(sampled) else (self.samples,)

    def arguments(self, outputs: Mapping[str, Any], sampled: str,
                  distribution: Callable[[str, str], Distribution]) -> dict[str, Any]:
        samples = outputs[self.samples]
        sample_log_prob = None
        if self.reweighted(sampled):
            assert self.samples_from is not None
            sample_log_prob = distribution("samples_from", self.samples_from).log_prob(samples)
        return {"estimator": self.k, "samples": samples, "sample_log_prob": sample_log_prob,
                "importance_weight": self.importance_weight}

    def __repr__(self) -> str:
        return (f"OnSamples(samples={self.samples!r}, k={self.k!r}, samples_from={self.samples_from!r}, "
                f"importance_weight={self.importance_weight})")


def as_estimator(value: Estimator | str, key: str = "estimator") -> Estimator:
    """An estimator from its object or its shorthand: ``analytic`` → ``ClosedForm()``, ``k1`` |
    ``k2`` | ``k3`` → ``MonteCarlo(k)`` (one fresh draw per element)."""
    if isinstance(value, Estimator):
        return value
    require_in(key, value, ESTIMATORS)
    return ClosedForm() if value == "analytic" else MonteCarlo(value)


def estimator_from_config(estimator: Estimator | str = "analytic", num_samples: int = 1,
                          samples: str | None = None, samples_from: str | None = None,
                          importance_weight: bool = True) -> Estimator:
    """The estimator a config's flat keys describe (``klexp.lightning.config``): a shorthand plus
    its draws, ``num_samples`` fresh ones or those in output ``samples`` (from ``samples_from``,
    ``importance_weight``). A closed form ignores the draw keys, so that switching a term between
    ``analytic`` and ``k3`` is one override."""
    require_positive_int("num_samples", num_samples)
    if samples is None and samples_from is not None:
        raise ConfigValueError("samples_from", "names where the draws in `samples` came from; "
                               "set samples too")
    if samples is not None and num_samples != 1:
        raise ConfigValueError("num_samples", "with samples given in an output, their own count is "
                               f"used; leave num_samples at 1, got {num_samples}")
    if isinstance(estimator, Estimator):
        given = {"num_samples": num_samples != 1, "samples": samples is not None,
                 "importance_weight": importance_weight is not True}
        for key, set_here in given.items():
            if set_here:
                raise ConfigValueError(key, f"the estimator node {estimator!r} holds its draws; "
                                       "set it there")
        return estimator
    chosen = as_estimator(estimator)
    if isinstance(chosen, ClosedForm):
        return chosen
    if samples is None:
        return MonteCarlo(chosen.name, num_samples)  # type: ignore[arg-type]
    return OnSamples(samples, chosen.name, samples_from, importance_weight)  # type: ignore[arg-type]
