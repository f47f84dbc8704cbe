"""Every place klexp relies on torch behaviour that torch does not document, in one module.

The KL core keeps two speed and exactness tricks that lean on how ``torch.distributions`` and
``torch.autograd`` work inside; each is a function or class here, and
``tests/test_torch_internals.py`` pins each assumption against the installed torch, so an upgrade
that breaks one fails there, naming it, instead of as a wrong number in a training run.

1. **A distribution's state is its instance dictionary** (``state_of``). torch stores a
   distribution's constructor parameters (``loc``, ``scale``, ``probs`` or ``logits``…) and the
   distributions it wraps (``Independent.base_dist``) as instance attributes, and its
   ``lazy_property`` values (a categorical's ``logits`` derived from ``probs``, and back) are
   cached in that same dictionary under their own name on first read. klexp reads it to find the
   dtypes a distribution holds (``klexp.core.distributions.state_dtype``) and which parameter a
   categorical or Bernoulli was built from (``given_probs``), and copies a distribution with its
   tensors converted (``copy_with_state``): a shallow copy whose dictionary is updated, a cached
   derived value dropped so that the next read derives it again from the converted parameter.
2. **torch's derivation of logits from probabilities** (``derived_logits``): the non-public
   ``torch.distributions.utils.probs_to_logits``, which a ``lazy_property`` ``logits`` applies (the
   log of the probabilities clamped into ``[eps, 1 − eps]``). A distribution holding both
   parameters was built from ``probs`` exactly when its ``logits`` are this derivation.
3. **A custom autograd function** (``LogRatio``): ``log p − log q`` with the ``0·log 0`` rule
   applied in place on the forward's fresh output and a hand-written backward, forward-mode rule
   and generated vmap rule (``torch.autograd.Function`` with ``setup_context``), which spares
   ``nan_to_num``'s backward mask in the categorical KL's hot path.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution
from torch.distributions.utils import probs_to_logits

_INF = float("inf")


def state_of(d: Distribution) -> dict[str, Any]:
    """The state ``d`` holds: its parameters, the distributions it wraps and the values it derived
    and cached so far, by attribute name (the instance dictionary, not a copy)."""
    return vars(d)


def derived_logits(probs: Tensor, *, binary: bool) -> Tensor:
    """The logits torch derives from ``probs`` (a categorical's, or a Bernoulli's when ``binary``)."""
    return probs_to_logits(probs, is_binary=binary)


def given_probs(d: Categorical | Bernoulli) -> bool:
    """Whether ``d`` was given ``probs`` rather than ``logits``.

    torch keeps the given parameter in the instance dictionary and derives the other on first read,
    caching it there too; ``expand`` copies whichever are cached. So a distribution holding only
    ``probs`` was given them; one holding both was given ``probs`` exactly when its ``logits`` are
    torch's derivation from them, value for value. Logits given by the user are not:
    ``log clamp(softmax(l)) ≠ l`` wherever the clamp or rounding acts, and where they coincide both
    views give the same log-probabilities. (torch's ``_param``, which names the given one, points
    at ``logits`` after an ``expand`` that copied both.)
    """
    cached = state_of(d)
    if "probs" not in cached:
        return False
    if "logits" not in cached:
        return True
    with torch.no_grad():
        derived = derived_logits(cached["probs"], binary=isinstance(d, Bernoulli))
    return torch.equal(derived, cached["logits"])


def copy_with_state(d: Distribution, changes: dict[str, Any], drop: str | None = None) -> Distribution:
    """A shallow copy of ``d`` holding ``changes`` in place of those attributes, without the cached
    derived value ``drop`` (derived again, from the changed state, when next read)."""
    converted = copy.copy(d)
    state_of(converted).update(changes)
    if drop is not None:
        state_of(converted).pop(drop, None)
    return converted


class LogRatio(torch.autograd.Function):
    """``log p − log q`` with ``0·log 0 = 0`` applied, for a caller that multiplies it by ``p``.

    ``log p = −inf`` makes the difference ``−inf`` (or NaN when ``log q = −inf`` too): both are
    terms with ``p = 0`` and contribute 0. ``+inf`` (``q = 0`` where ``p > 0``) is kept, so the KL is
    ``+inf``. The derivative is that of ``log p − log q``: every replaced entry is multiplied by
    ``p = 0``, so its incoming gradient is already 0. Writing it by hand spares ``nan_to_num``'s
    backward, an ``isfinite`` mask that made ``categorical_kl``'s backward 1.5× ``F.kl_div``'s;
    the masking happens in place on the difference, a fresh tensor, saving one more pass.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(log_p: Tensor, log_q: Tensor) -> Tensor:
        return (log_p - log_q).nan_to_num_(nan=0.0, posinf=_INF, neginf=0.0)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        return grad, -grad

    @staticmethod
    def jvp(ctx: Any, tangent_p: Tensor, tangent_q: Tensor) -> Tensor:
        return tangent_p - tangent_q


def log_ratio(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``log p − log q``, 0 wherever ``p = 0``; only for products with ``p`` (see ``LogRatio``)."""
    return LogRatio.apply(log_p, log_q)
