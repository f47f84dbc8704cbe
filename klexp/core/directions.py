"""Which divergence a KL term measures between its outputs ``p`` and ``q``, one small object each,
holding what only it can take:

* ``Forward(estimator, log_dims)`` — ``KL(p ‖ q)``; Monte-Carlo draws come from ``p``;
* ``Reverse(estimator, log_dims)`` — ``KL(q ‖ p)``; Monte-Carlo draws come from ``q``;
* ``JensenShannon()`` — ``½ KL(p ‖ m) + ½ KL(q ‖ m)``, ``m = (p + q)/2``: it takes no estimator (its
  own is exact for discrete pairs, Monte Carlo otherwise: ``klexp.core.divergences.js``) and does
  not split over event dimensions (the mixture of two products is not a product).

Since only the KL directions hold an estimator and a per-dimension log, a Jensen–Shannon term with
``k3`` cannot be written (nor free bits of one: ``klexp.core.shaping.FreeBits`` shapes a KL
direction). The shorthand ``forward`` | ``reverse`` | ``js``, with an ``estimator``
and ``log_dims`` beside it as a config writes them, becomes its object in ``as_direction``.
"""

from __future__ import annotations

from abc import ABC
from typing import Any, ClassVar

from klexp.core.estimate import ClosedForm, Estimator, as_estimator
from klexp.errors import ConfigValueError, require, require_in


class Direction(ABC):
    """The divergence between ``p`` and ``q`` a term measures; ``str()`` is its shorthand."""

    #: the shorthand (``klexp.core.measure.measure``'s ``direction``)
    name: ClassVar[str]
    estimator: Estimator = ClosedForm()
    log_dims: bool = False
    #: the keys of ``as_direction`` this type does not take → why
    refuses: ClassVar[dict[str, str]] = {}

    def sampled(self, p: str, q: str) -> str:
        """Which of the outputs ``p`` and ``q`` Monte-Carlo estimators draw from."""
        return p

    def __str__(self) -> str:
        return self.name


class _KL(Direction):
    """A KL direction: any estimator; ``log_dims`` also logs the KL of each event dimension."""

    def __init__(self, estimator: Estimator | str = "analytic", log_dims: bool = False) -> None:
        require(isinstance(log_dims, bool), "log_dims", "true or false", log_dims)
        self.estimator, self.log_dims = as_estimator(estimator), log_dims

    def __repr__(self) -> str:
        dims = ", log_dims=True" if self.log_dims else ""
        return f"{type(self).__name__}({self.estimator!r}{dims})"


class Forward(_KL):
    """``KL(p ‖ q)``."""

    name = "forward"


class Reverse(_KL):
    """``KL(q ‖ p)``: Monte-Carlo draws come from ``q``."""

    name = "reverse"

    def sampled(self, p: str, q: str) -> str:
        return q


class JensenShannon(Direction):
    """The Jensen–Shannon divergence, in [0, ln 2]; it takes no estimator and no per-dimension log."""

    name = "js"
    #: what it says to the keys a KL direction takes
    refuses: ClassVar[dict[str, str]] = {
        "estimator": "Jensen–Shannon has no k1/k2/k3 estimator; use estimator=analytic",
        "log_dims": "Jensen–Shannon does not split over dimensions",
    }

    def __repr__(self) -> str:
        return "JensenShannon()"


#: the shorthand → its type
DIRECTIONS: dict[str, type[Direction]] = {kind.name: kind for kind in (Forward, Reverse, JensenShannon)}


def as_direction(direction: Direction | str, estimator: Estimator | str | None = None,
                 log_dims: bool | None = None, *, key: str = "direction") -> Direction:
    """A direction from its object, or from its shorthand with the ``estimator`` and ``log_dims``
    written beside it (``direction="reverse", estimator="k3"`` → ``Reverse(MonteCarlo("k3"))``).
    The closed form is every direction's default, so ``estimator="analytic"`` goes with any; a key
    the chosen type does not take is refused naming it; ``key`` names the argument itself."""
    if isinstance(direction, Direction):
        for name, value in (("estimator", estimator), ("log_dims", log_dims)):
            if value is not None:
                raise ConfigValueError(name, f"the direction {direction!r} holds its {name}; set it there")
        return direction
    if not isinstance(direction, str):
        raise ConfigValueError(key, "expected a direction (klexp.Forward, klexp.Reverse, "
                               f"klexp.JensenShannon) or its shorthand, got {direction!r}")
    require_in(key, direction, tuple(DIRECTIONS))
    given: dict[str, Any] = {}
    if estimator is not None and not isinstance(chosen := as_estimator(estimator), ClosedForm):
        given["estimator"] = chosen
    if log_dims:
        given["log_dims"] = log_dims
    kind = DIRECTIONS[direction]
    for name, value in given.items():
        if name in kind.refuses:
            raise ConfigValueError(name, f"{kind.refuses[name]}, got {str(value)!r}")
    return kind(**given)
