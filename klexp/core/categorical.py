"""Categorical distributions given by logits, in log space: the hot path of the KL core.

Every function reduces over the last axis (the classes) and keeps the broadcast batch shape, in nats
unless ``units="bits"``. Logits may be unnormalised; log-probabilities are logits too, and ``−inf``
means probability 0 (``0 · log 0 = 0``). This is the path every categorical and Bernoulli pair of
``klexp.core.divergences`` takes: ``torch.distributions.kl_divergence(Categorical, Categorical)``
returns ``inf`` once float32 logits reach a scale of ~100 (probabilities underflow to 0 and its
``q.probs == 0 → inf`` rule fires).

Dtypes: two inputs of different dtypes are promoted as torch promotes them
(``torch.promote_types``: float32 with float64 gives float64). Half-precision inputs (float16,
bfloat16) are computed, and returned, in float32: a divergence of nearly equal distributions (PPO's
regime, ~1e-5 nats) is a small difference of large terms, and bfloat16's 8-bit mantissa would leave
an error as large as the value. This is what ``torch.autocast`` does with ``log_softmax`` and
``kl_div``; the gradient reaches the inputs in their own dtype.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from klexp.core.torch_internals import log_ratio

Units = Literal["nats", "bits"]
UNITS: tuple[str, ...] = ("nats", "bits")

#: floating dtypes computed in float32 (see the module docstring)
HALF_PRECISION: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype a divergence of inputs of ``dtypes`` is computed and returned in: their
    promotion (``torch.promote_types``), float32 where that is a half-precision type."""
    promoted = dtypes[0]
    for dtype in dtypes[1:]:
        promoted = torch.promote_types(promoted, dtype)
    return torch.float32 if promoted in HALF_PRECISION else promoted


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 when it is half precision, else ``x`` itself."""
    return x.float() if x.dtype in HALF_PRECISION else x


def _in_compute_dtype(p_logits: Tensor, q_logits: Tensor) -> tuple[Tensor, Tensor]:
    if p_logits.dtype == q_logits.dtype and p_logits.dtype not in HALF_PRECISION:
        return p_logits, q_logits
    dtype = compute_dtype(p_logits.dtype, q_logits.dtype)
    return p_logits.to(dtype), q_logits.to(dtype)


def to_units(value: Tensor, units: Units) -> Tensor:
    """Convert a value in nats to ``units``: bits = nats / ln 2."""
    if units == "nats":
        return value
    if units == "bits":
        return value / math.log(2.0)
    raise ValueError(f"units must be one of {UNITS}, got {units!r}")


def at_least_zero(divergence: Tensor) -> Tensor:
    """A divergence is ≥ 0, but rounding leaves values down to −1e-16 (float64) or −4e-7 (float32)
    for nearly equal distributions: raise those to 0. Only the values change; the gradient stays
    that of the unclamped divergence (a clamp would zero it, and with it the Hessian that
    natural-gradient methods take at P = Q). NaN and +inf pass through."""
    # value: d − min(d, 0) = max(d, 0) exactly; the subtracted part is a constant to autograd
    return divergence - divergence.detach().clamp_max(0)


# --------------------------------------------------------------------------------------------
# Tensor helpers for the hot path: categorical distributions given by logits.
# --------------------------------------------------------------------------------------------


def check_logits(p_logits: Tensor, q_logits: Tensor) -> None:
    if p_logits.shape[-1:] != q_logits.shape[-1:]:
        raise ValueError(
            "categorical distributions need the same number of classes: "
            f"p has shape {tuple(p_logits.shape)}, q has shape {tuple(q_logits.shape)}"
        )
    try:
        torch.broadcast_shapes(p_logits.shape, q_logits.shape)
    except RuntimeError:
        raise ValueError(
            "batch shapes do not broadcast: "
            f"p has shape {tuple(p_logits.shape)}, q has shape {tuple(q_logits.shape)}"
        ) from None


def _support_violation_is_inf(value: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    """``+inf`` where ``value`` is NaN only because ``p`` underflowed: a class with finite ``log p``
    has ``p > 0`` even where ``exp`` rounds it to 0 (float32 below ``e^−104``), and where ``q = 0``
    there its term ``p · (+inf)`` is ``+inf``, not ``0 · inf = NaN``. NaN logits (a NaN row of
    ``log p`` or ``log q``) stay NaN."""
    underflow = value.isnan() & ~log_p[..., 0].isnan() & ~log_q[..., 0].isnan()
    return torch.where(underflow, torch.inf, value)


def categorical_kl(p_logits: Tensor, q_logits: Tensor, *, units: Units = "nats") -> Tensor:
    """``KL(P ‖ Q) = Σ_k p_k (log p_k − log q_k)`` over the last axis, from (unnormalised) logits.

    Log-probabilities are accepted too (they are logits). ``−inf`` logits mean probability 0.
    """
    check_logits(p_logits, q_logits)
    p_logits, q_logits = _in_compute_dtype(p_logits, q_logits)
    log_p = torch.log_softmax(p_logits, dim=-1)
    log_q = torch.log_softmax(q_logits, dim=-1)
    # softmax(x) is cheaper than exp(log_softmax(x)).
    value = torch.linalg.vecdot(torch.softmax(p_logits, dim=-1), log_ratio(log_p, log_q))
    value = _support_violation_is_inf(value, log_p, log_q)
    # A NaN (or +inf) among q's logits makes the whole row of log q NaN, which the 0·log 0 rule
    # would turn into a finite KL: keep it NaN, so a diverged model cannot pass unnoticed.
    value = torch.where(log_q[..., 0].isnan(), torch.nan, value)
    return to_units(at_least_zero(value), units)


def categorical_entropy(logits: Tensor, *, units: Units = "nats") -> Tensor:
    """``H(P) = −Σ_k p_k log p_k`` over the last axis, from logits."""
    log_p = torch.log_softmax(at_least_float32(logits), dim=-1)
    value = -torch.linalg.vecdot(log_p.exp(), log_p.nan_to_num(neginf=0.0))
    return to_units(value, units)


def categorical_cross_entropy(p_logits: Tensor, q_logits: Tensor, *, units: Units = "nats") -> Tensor:
    """``H(P, Q) = −Σ_k p_k log q_k`` over the last axis, from logits (``= H(P) + KL(P ‖ Q)``)."""
    check_logits(p_logits, q_logits)
    p_logits, q_logits = _in_compute_dtype(p_logits, q_logits)
    log_p = torch.log_softmax(p_logits, dim=-1)
    log_q = torch.log_softmax(q_logits, dim=-1)
    # A class with p = 0 (log p = −inf) contributes nothing even where log q = −inf.
    log_q = torch.where(log_p.isneginf(), torch.zeros((), dtype=log_q.dtype), log_q)
    value = -torch.linalg.vecdot(log_p.exp(), log_q)
    return to_units(_support_violation_is_inf(value, log_p, log_q), units)


def categorical_js(p_logits: Tensor, q_logits: Tensor, *, units: Units = "nats") -> Tensor:
    """Jensen–Shannon divergence ``½ KL(P ‖ M) + ½ KL(Q ‖ M)``, ``M = (P + Q)/2``, from logits.

    Symmetric, ``0 ≤ JS ≤ ln 2`` nats; the mixture is formed in log space.
    """
    check_logits(p_logits, q_logits)
    p_logits, q_logits = _in_compute_dtype(p_logits, q_logits)
    log_p = torch.log_softmax(p_logits, dim=-1)
    log_q = torch.log_softmax(q_logits, dim=-1)
    log_p, log_q = torch.broadcast_tensors(log_p, log_q)
    # logaddexp(−inf, −inf) has a NaN gradient; a finite floor keeps it finite where p = q = 0
    # (those terms are 0 either way) and leaves log m exact wherever p or q is positive.
    floor = torch.finfo(log_p.dtype).min
    log_m = torch.logaddexp(log_p.clamp_min(floor), log_q.clamp_min(floor)) - math.log(2.0)
    value = 0.5 * (
        torch.linalg.vecdot(log_p.exp(), log_ratio(log_p, log_m))
        + torch.linalg.vecdot(log_q.exp(), log_ratio(log_q, log_m))
    )
    return to_units(at_least_zero(value), units)

