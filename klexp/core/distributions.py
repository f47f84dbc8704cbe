"""klexp's view of ``torch.distributions`` objects: whether two fit together (event shapes, class
counts, broadcastable batch shapes), categorical and Bernoulli distributions seen as logits over
their classes, so that the log-space path of ``klexp.core.categorical`` can serve them, and the
copies the divergences compute with (broadcast, or held in the promoted dtype)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution, Independent

from klexp.core.categorical import HALF_PRECISION, at_least_float32, compute_dtype
from klexp.core.torch_internals import copy_with_state, given_probs, state_of

_INF = float("inf")


def _log_or_minus_inf(x: Tensor) -> Tensor:
    """``log x`` with ``log 0 = −inf`` and a zero (not NaN) gradient there."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, 1.0).log(), -_INF)


def as_logits(d: Distribution, dtype: torch.dtype | None = None) -> Tensor | None:
    """Logits ``(*batch, *event, classes)`` when ``d`` is categorical or Bernoulli (as two
    classes), or ``Independent`` (at any depth) of those, else None.

    For a distribution built from ``probs``, the log-probabilities: torch derives its ``logits``
    by clamping probabilities into ``[eps, 1 − eps]``, which would make ``q = 0`` where ``p > 0``
    a finite KL (10.0 nats in float32 for p = (½, ½), q = (1, 0)) instead of ``+inf``. Returned
    in ``dtype`` when given (the dtype a pair is computed in), else in at least float32.
    """
    def held(x: Tensor) -> Tensor:
        return at_least_float32(x) if dtype is None else x.to(dtype)

    if isinstance(d, Categorical):
        return _log_or_minus_inf(held(d.probs)) if given_probs(d) else held(d.logits)
    if isinstance(d, Bernoulli):
        if given_probs(d):
            probs = held(d.probs)
            return torch.stack([_log_or_minus_inf(1 - probs), _log_or_minus_inf(probs)], dim=-1)
        logits = held(d.logits)
        return torch.stack([torch.zeros_like(logits), logits], dim=-1)
    if isinstance(d, Independent):
        return as_logits(d.base_dist, dtype)
    return None


def pair_logits(p: Distribution, q: Distribution) -> tuple[Tensor, Tensor] | None:
    """``as_logits`` of both, in the dtype the pair is computed in, when both have logits."""
    if class_shape(p) is None or class_shape(q) is None:
        return None
    dtype = dtype_of(p, q)
    return as_logits(p, dtype), as_logits(q, dtype)


def log_prob(d: Distribution, x: Tensor) -> Tensor:
    """``log d(x)``: torch's ``d.log_prob(x)``, except for a categorical or Bernoulli distribution
    (``Independent`` or not) built from ``probs``, where the probability of ``x`` lies outside the
    ``[eps, 1 − eps]`` torch clamps its logits to: there the log of the probability itself, so a
    class of probability 0 has ``log d(x) = −inf`` (a Monte-Carlo KL through it is ``+inf``, as the
    closed form), not ``log eps``. Elsewhere the value is torch's, bit for bit.
    """
    base = d
    while isinstance(base, Independent):
        base = base.base_dist
    value = d.log_prob(x)
    if not isinstance(base, (Categorical, Bernoulli)) or not given_probs(base):
        return value
    probs = base.probs
    if isinstance(base, Categorical):
        index, probs = torch.broadcast_tensors(x.long().unsqueeze(-1), probs)
        prob_of_x = probs.gather(-1, index[..., :1]).squeeze(-1)
        exact_here = torch.ones_like(prob_of_x, dtype=torch.bool)
    else:
        prob_of_x = torch.where(x == 1, probs, 1 - probs)
        exact_here = (x == 0) | (x == 1)  # a grey value in [0, 1] keeps torch's log-density
    eps = torch.finfo(prob_of_x.dtype).eps
    exact_here = exact_here & ((prob_of_x < eps) | (prob_of_x > 1 - eps))
    correction = torch.where(exact_here, _log_or_minus_inf(prob_of_x) - base.log_prob(x), 0.0)
    return value + sum_rightmost(correction, factor_dims(d))


def factor_dims(d: Distribution) -> int:
    """How many rightmost batch dimensions of ``as_logits(d)`` (before the classes) are independent
    factors of one event: every event dimension, since categorical and Bernoulli events are
    scalars however many ``Independent`` wrappers reinterpret their batch dimensions."""
    return len(d.event_shape)


def class_shape(d: Distribution) -> tuple[int, ...] | None:
    """``(*batch, *event, classes)`` of what ``as_logits`` returns, without computing it."""
    if isinstance(d, Categorical):
        return tuple(d.param_shape)
    if isinstance(d, Bernoulli):
        return (*d.param_shape, 2)
    if isinstance(d, Independent):
        return class_shape(d.base_dist)
    return None


def flat_independent(d: Distribution) -> Distribution:
    """``Independent`` wrappers nested in one another as one ``Independent`` over all their
    reinterpreted dimensions (the same distribution); any other ``d`` itself."""
    if not isinstance(d, Independent):
        return d
    base, dims = d.base_dist, d.reinterpreted_batch_ndims
    while isinstance(base, Independent):
        base, dims = base.base_dist, dims + base.reinterpreted_batch_ndims
    return d if base is d.base_dist else Independent(base, dims, validate_args=False)


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


def expand_to(d: Distribution, batch_shape: torch.Size) -> Distribution:
    """``d`` with the batch shape ``batch_shape`` it broadcasts to (itself when it has it): draws
    from it are then independent per batch element, not one draw shared by a broadcast batch."""
    return d if d.batch_shape == batch_shape else d.expand(batch_shape)


def state_dtype(d: Distribution) -> torch.dtype | None:
    """The promotion of the floating dtypes of the tensors ``d`` holds (and of the distributions
    it wraps); None when it holds none."""
    found: torch.dtype | None = None
    for value in state_of(d).values():
        dtype = (value.dtype if isinstance(value, Tensor) and value.is_floating_point()
                 else state_dtype(value) if isinstance(value, Distribution) else None)
        if dtype is not None:
            found = dtype if found is None else torch.promote_types(found, dtype)
    return found


def dtype_of(*distributions: Distribution) -> torch.dtype:
    """The dtype a divergence between ``distributions`` is computed in
    (``klexp.core.categorical.compute_dtype`` of the dtypes they hold)."""
    dtypes = [dtype for d in distributions if (dtype := state_dtype(d)) is not None]
    return compute_dtype(*dtypes) if dtypes else torch.get_default_dtype()


def in_compute_dtype(*distributions: Distribution) -> tuple[Distribution, ...]:
    """The distributions, each held in the dtype a divergence between them is computed in
    (``klexp.core.categorical.compute_dtype``: the promotion of their dtypes, float32 for half
    precision); each is itself when it already is, so same-dtype float32 or float64 inputs pass
    untouched.

    torch promotes operation by operation, so a float32 ``p`` beside a float64 ``q`` would still
    compute ``p.entropy()`` or ``p.log_prob(x)`` in float32, and a bfloat16 pair every step in
    bfloat16 (a KL of nearly equal Normals in bfloat16 is mostly rounding error).
    """
    found: set[torch.dtype] = set()
    for d in distributions:
        _collect_floating_dtypes(d, found)
    if len(found) == 1 and next(iter(found)) not in HALF_PRECISION:  # the common case
        return distributions
    dtype = compute_dtype(*found) if found else torch.get_default_dtype()
    return tuple(with_state_dtype(d, dtype) for d in distributions)


def _collect_floating_dtypes(d: Distribution, found: set[torch.dtype]) -> None:
    for value in state_of(d).values():
        if isinstance(value, Tensor):
            if value.is_floating_point():
                found.add(value.dtype)
        elif isinstance(value, Distribution):
            _collect_floating_dtypes(value, found)


def with_state_dtype(d: Distribution, dtype: torch.dtype) -> Distribution:
    """``d`` itself when every floating tensor it holds is of ``dtype``, else a shallow copy
    holding them in ``dtype`` (and so for the distributions it wraps, such as ``Independent``'s
    ``base_dist``).

    A distribution is its state: the parameters and the values torch derives and caches from them.
    Gradients reach the original parameters through the conversion. A categorical or Bernoulli
    copy keeps only the parameter it was built from (torch derives the other again, in ``dtype``,
    so ``log_prob`` still knows how it was built). Tensors held elsewhere (a
    ``TransformedDistribution``'s transforms) are left as they are; torch's type promotion then
    computes with them in ``dtype``.
    """
    changes: dict[str, object] = {}
    for name, value in state_of(d).items():
        if isinstance(value, Tensor) and value.is_floating_point() and value.dtype != dtype:
            changes[name] = value.to(dtype)
        elif isinstance(value, Distribution):
            converted = with_state_dtype(value, dtype)
            if converted is not value:
                changes[name] = converted
    if not changes:
        return d
    derived = None
    if isinstance(d, (Categorical, Bernoulli)):
        derived = "logits" if given_probs(d) else "probs"
    return copy_with_state(d, changes, drop=derived)


#: Up to this many joint outcomes, a divergence of independent discrete factors that does not
#: split over factors (Jensen–Shannon, every f-divergence but the two KLs) is computed exactly by
#: enumerating them (e.g. 12 independent bits, or 6 factors of 4 classes).
MAX_ENUMERATED_OUTCOMES = 2**12


def joint_outcomes(d: Distribution, logits: Tensor) -> int:
    """How many joint outcomes the event of ``d`` has, ``classes ** event_size``, for its
    ``logits`` ``(*batch, *event, classes)``."""
    return logits.shape[-1] ** d.event_shape.numel()


def enumerated_joint(p: Distribution, p_logits: Tensor, q_logits: Tensor) -> tuple[Tensor, Tensor] | None:
    """The ``joint_logits`` of a categorical or Bernoulli pair ``p``, ``q`` (``Independent`` or not,
    given by their ``logits``) over their joint outcomes, when there are at most
    ``MAX_ENUMERATED_OUTCOMES`` of them; None beyond."""
    if joint_outcomes(p, q_logits) > MAX_ENUMERATED_OUTCOMES:
        return None
    dims = factor_dims(p)
    return joint_logits(p_logits, dims), joint_logits(q_logits, dims)


def joint_logits(logits: Tensor, dims: int) -> Tensor:
    """Log-probabilities ``(*batch, classes ** n)`` of the joint outcomes of ``n`` independent
    categorical factors given by ``logits`` ``(*batch, *factors, classes)`` (``dims`` factor
    dimensions, ``n`` factors in all): ``log p(x₁, …, x_n) = Σ_i log p_i(x_i)``, outcomes in
    row-major order (the last factor varies fastest). No factor dimension: ``logits`` themselves.
    """
    if dims == 0:
        return logits
    factors = torch.log_softmax(logits.to(compute_dtype(logits.dtype)), dim=-1)
    factors = factors.flatten(-1 - dims, -2)
    joint = factors[..., 0, :]
    for i in range(1, factors.shape[-2]):
        joint = (joint.unsqueeze(-1) + factors[..., i, None, :]).flatten(-2)
    return joint
