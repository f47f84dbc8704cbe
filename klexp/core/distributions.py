"""klexp's view of ``torch.distributions`` objects: whether two fit together (event shapes, class
counts, broadcastable batch shapes), and categorical and Bernoulli distributions seen as logits
over their classes, so that the log-space path of ``klexp.core.categorical`` can serve them."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution, Independent

_INF = float("inf")


def _built_from_probs(d: Categorical | Bernoulli) -> bool:
    """Whether ``d`` was given ``probs`` (torch keeps the given parameter as ``_param``; both
    ``probs`` and ``logits`` may be cached on the object once either was read)."""
    return getattr(d, "_param", None) is vars(d).get("probs")


def _log_or_minus_inf(x: Tensor) -> Tensor:
    """``log x`` with ``log 0 = −inf`` and a zero (not NaN) gradient there."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, 1.0).log(), -_INF)


def as_logits(d: Distribution) -> Tensor | None:
    """Logits over the last axis when ``d`` is categorical or Bernoulli (as two classes), else None.

    For a distribution built from ``probs``, the log-probabilities: torch derives its ``logits``
    by clamping probabilities into ``[eps, 1 − eps]``, which would make ``q = 0`` where ``p > 0``
    a finite KL (10.0 nats in float32 for p = (½, ½), q = (1, 0)) instead of ``+inf``.
    """
    if isinstance(d, Categorical):
        return _log_or_minus_inf(d.probs) if _built_from_probs(d) else d.logits
    if isinstance(d, Bernoulli):
        if _built_from_probs(d):
            return torch.stack([_log_or_minus_inf(1 - d.probs), _log_or_minus_inf(d.probs)], dim=-1)
        logits = d.logits
        return torch.stack([torch.zeros_like(logits), logits], dim=-1)
    if isinstance(d, Independent):
        inner = as_logits(d.base_dist)
        if inner is None:
            return None
        return inner
    return None


def class_shape(d: Distribution) -> tuple[int, ...] | None:
    """``(*batch, classes)`` of what ``as_logits`` returns, without computing it."""
    if isinstance(d, Categorical):
        return tuple(d.param_shape)
    if isinstance(d, Bernoulli):
        return (*d.param_shape, 2)
    if isinstance(d, Independent):
        return class_shape(d.base_dist)
    return None


def reinterpreted_dims(d: Distribution) -> int:
    return d.reinterpreted_batch_ndims if isinstance(d, Independent) else 0


def sum_rightmost(value: Tensor, dims: int) -> Tensor:
    return value.sum(dim=tuple(range(-dims, 0))) if dims else value


def check_compatible(p: Distribution, q: Distribution) -> torch.Size:
    """Return the broadcast batch shape of ``p`` and ``q``; raise ``ValueError`` naming both shapes
    when their event shapes, class counts or batch shapes do not fit together."""
    if p.event_shape != q.event_shape:
        raise ValueError(
            f"event shapes differ: p ({type(p).__name__}) has event shape {tuple(p.event_shape)}, "
            f"q ({type(q).__name__}) has event shape {tuple(q.event_shape)}"
        )
    try:
        batch_shape = (p.batch_shape if p.batch_shape == q.batch_shape
                       else torch.broadcast_shapes(p.batch_shape, q.batch_shape))
    except RuntimeError:
        raise ValueError(
            f"batch shapes do not broadcast: p ({type(p).__name__}) has batch shape "
            f"{tuple(p.batch_shape)}, q ({type(q).__name__}) has batch shape {tuple(q.batch_shape)}"
        ) from None
    p_classes, q_classes = class_shape(p), class_shape(q)
    if p_classes is not None and q_classes is not None and p_classes[-1] != q_classes[-1]:
        raise ValueError(
            "categorical distributions need the same number of classes: "
            f"p has shape {tuple(p_classes)}, q has shape {tuple(q_classes)}"
        )
    return batch_shape

