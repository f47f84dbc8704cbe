"""The config's vocabulary for KL terms: flat YAML keys, turned into the typed objects.

A term in ``klexp/conf/kl/`` reads as a list of choices::

    reference_kl:
      _target_: klexp.kl_term
      p: policy
      q: reference
      direction: forward     # forward | reverse | js, or a node (_target_: klexp.Reverse …)
      estimator: k3          # analytic | k1 | k2 | k3, or an estimator node (_target_: klexp.OnSamples …)
      samples: actions       # the draws a Monte-Carlo estimator uses (fresh ones without)
      samples_from: old_policy
      placement: reward      # loss → klexp.KLTerm, reward → klexp.KLPenalty
      shaping: null          # a shaping node (klexp/conf/shaping/): what a loss term weights

so that each choice is one override (``kl.reference_kl.estimator=analytic``,
``kl.reference_kl.placement=loss``, ``shaping@kl.prior.shaping=free_bits``). ``kl_term`` and
``kl_stop`` are the converters: the estimator keys become one estimator object
(``klexp.core.estimate.estimator_from_config``), which the term's shorthand ``direction`` takes
(``klexp.core.directions.as_direction``: ``direction: js`` takes none, and ``analytic`` is every
direction's default), a ``shaping`` is applied to that direction (``Shaping.applied_to``: free
bits refuse ``js``), ``placement`` chooses the term's type, and every other key is passed to that
type's constructor; a key the chosen type does not take is refused naming it (null values aside,
so that a config default may stay). In Python, construct the types directly; a file whose keys
are all its type's own arguments may name the type itself (``klexp/conf/kl/seq_nll.yaml``:
``_target_: klexp.KLTerm``).
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Literal

from klexp.core.directions import as_direction
from klexp.core.estimate import Estimator, estimator_from_config
from klexp.core.shaping import Shaping
from klexp.errors import ConfigValueError, require, require_in
from klexp.lightning.target_kl import TargetKL
from klexp.lightning.term import KLMeasure, KLPenalty, KLTerm

Placement = Literal["loss", "reward"]
#: the keys that describe the estimator and its draws
ESTIMATOR_KEYS = ("estimator", "num_samples", "samples", "samples_from", "importance_weight")
#: where a term goes → its type
PLACEMENTS: dict[str, type[KLMeasure]] = {"loss": KLTerm, "reward": KLPenalty}


def kl_term(name: str, p: str, q: str, *, placement: Placement = "loss",
            estimator: Estimator | str | None = None, num_samples: int = 1, samples: str | None = None,
            samples_from: str | None = None, importance_weight: bool = True,
            shaping: Shaping | None = None, **options: Any) -> KLMeasure:
    """A ``KLTerm`` (``placement: loss``) or ``KLPenalty`` (``placement: reward``) from a config's
    flat keys (see the module docstring); ``options`` are the type's other arguments. Without an
    ``estimator`` the direction's own is used (the closed form for a shorthand)."""
    require_in("placement", placement, tuple(PLACEMENTS))
    chosen = estimator_from_config(estimator or "analytic", num_samples, samples, samples_from,
                                   importance_weight)
    given = None if estimator is None else chosen
    if shaping is not None and PLACEMENTS[placement] is KLTerm:
        options["direction"], given = _shaped(shaping, options, given), None
    elif shaping is not None:
        options["shaping"] = shaping  # refused below: only a loss term weights a shaping
    return _build(PLACEMENTS[placement], f"placement: {placement}", name, p, q, given, options)


def _shaped(shaping: Shaping, options: dict[str, Any], estimator: Estimator | None) -> Shaping:
    """``shaping`` applied to the direction the term's keys name (``direction``, ``estimator``,
    ``log_dims``), taken out of ``options``; refused naming ``shaping`` if it cannot shape it."""
    require(isinstance(shaping, Shaping), "shaping", "a shaping (klexp/conf/shaping/)", shaping)
    if shaping.names_its_divergence:
        raise ConfigValueError("shaping", f"in a config the term's direction says what {shaping!r} "
                               "shapes: remove the shaping's `of`")
    direction = as_direction(options.pop("direction", "forward"), estimator, options.pop("log_dims", None))
    try:
        return shaping.applied_to(direction)
    except ConfigValueError as error:
        raise ConfigValueError("shaping", error.message) from None


def kl_stop(name: str, p: str, q: str, *, estimator: Estimator | str = "k3", num_samples: int = 1,
            samples: str | None = None, samples_from: str | None = None,
            importance_weight: bool = True, **options: Any) -> TargetKL:
    """A ``TargetKL`` from a config's flat keys (``target``, ``check``, ``tolerance`` among
    ``options``)."""
    chosen = estimator_from_config(estimator, num_samples, samples, samples_from, importance_weight)
    built = _build(TargetKL, "a target-KL stop", name, p, q, chosen, options)
    assert isinstance(built, TargetKL)
    return built


def _build(kind: type[KLMeasure], why: str, name: str, p: str, q: str,
           estimator: Estimator | None, options: dict[str, Any]) -> KLMeasure:
    accepted = _arguments(kind)
    for key, value in list(options.items()):
        if key in accepted:
            continue
        if value is not None:
            close = difflib.get_close_matches(key, [*accepted, *ESTIMATOR_KEYS], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" ({why})"
            raise ConfigValueError(key, f"unknown key for {kind.__name__}{hint}")
        del options[key]
    return kind(name, p, q, estimator=estimator, **options)


def _arguments(kind: type[KLMeasure]) -> list[str]:
    """The keyword arguments ``kind`` takes: its own and, past a ``**options``, its bases'."""
    accepted: list[str] = []
    for base in kind.__mro__:
        if "__init__" not in vars(base):
            continue
        parameters = inspect.signature(base.__init__).parameters.values()
        accepted += [p.name for p in parameters if p.name != "self" and p.kind != p.VAR_KEYWORD]
        if all(p.kind != p.VAR_KEYWORD for p in parameters):
            break
    return accepted
