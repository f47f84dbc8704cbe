"""Token-level distillation objectives: divergences between a teacher's and a student's
next-token distributions, given as logits over the last axis (``(..., V)``; log-probabilities
are logits too). Each returns one value per position (``(...)``), in nats, computed in log space
so that it stays finite at extreme logits. ``T`` is the teacher, ``S`` the student.

Which sequences the positions come from (data, the teacher's samples, the student's own) and how
positions combine (``klexp.core.reduction``) are separate choices; ``klexp.core.sequences`` says
what each objective adds up to over whole sequences.

==========================  ==============================================================
function                    per position
==========================  ==============================================================
``forward_kl``              ``KL(T ‖ S) = Σ_v T_v (log T_v − log S_v)`` — mass covering
``reverse_kl``              ``KL(S ‖ T)`` — mode seeking (MiniLLM)
``gkd_generalised_jsd``     ``β KL(T ‖ M) + (1−β) KL(S ‖ M)``, ``M = βT + (1−β)S``; the
                            endpoints special-cased to ``KL(T ‖ S)`` at β = 0 and
                            ``KL(S ‖ T)`` at β = 1 (GKD, Agarwal et al. 2024; TRL)
``generalised_jsd``         the same divided by ``β(1−β)``: continuous on [0, 1]
``skew_kl``                 ``KL(p ‖ αp + (1−α)q)`` (DistiLLM, Ko et al. 2024)
``taid_kl``                 ``KL(p_t ‖ S)``, ``p_t = softmax((1−t)·sg(S logits) + t·T logits)``
``top_k_truncated_kl``      ``Σ_{v∈K} T_v (log T_v − log S_v)``: not a divergence
``top_k_tail_kl``           ``KL`` of the ``k+1``-bucket coarsenings (top k + the tail)
``sampled_kl_terms``        ``k1/k2/k3`` of ``KL(S ‖ T)`` at the sampled token
``reward_surrogate``        those terms as a per-token reward (REINFORCE, return to go)
==========================  ==============================================================
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from klexp.core.categorical import categorical_kl, check_logits, compute_dtype
from klexp.core.estimators import EstimatorName, monte_carlo_terms


def forward_kl(teacher: Tensor, student: Tensor) -> Tensor:
    """``KL(T ‖ S) = Σ_v T_v (log T_v − log S_v)`` per position: what cross-entropy on the
    teacher's distribution minimises (Hinton et al. 2015 at temperature 1)."""
    return categorical_kl(teacher, student)


def reverse_kl(teacher: Tensor, student: Tensor) -> Tensor:
    """``KL(S ‖ T) = Σ_v S_v (log S_v − log T_v)`` per position (MiniLLM's direction)."""
    return categorical_kl(student, teacher)


def _log_probs(teacher: Tensor, student: Tensor) -> tuple[Tensor, Tensor]:
    """Both log-probabilities in their common dtype (at least float32), broadcast."""
    dtype = compute_dtype(teacher.dtype, student.dtype)
    log_t = torch.log_softmax(teacher.to(dtype), -1)
    log_s = torch.log_softmax(student.to(dtype), -1)
    return torch.broadcast_tensors(log_t, log_s)


def _mixture_log_probs(teacher: Tensor, student: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """``log T``, ``log S`` and ``log M`` with ``M = βT + (1−β)S``, ``0 < β < 1``."""
    check_logits(teacher, student)
    log_t, log_s = _log_probs(teacher, student)
    floor = torch.finfo(log_t.dtype).min
    # logaddexp(−inf, −inf) has a NaN gradient; the floor changes no term that is not 0·log 0
    log_m = torch.logaddexp(log_t.clamp_min(floor) + math.log(beta),
                            log_s.clamp_min(floor) + math.log1p(-beta))
    return log_t, log_s, log_m


def _gkd_interior(teacher: Tensor, student: Tensor, beta: float) -> Tensor:
    log_t, log_s, log_m = _mixture_log_probs(teacher, student, beta)
    return beta * categorical_kl(log_t, log_m) + (1 - beta) * categorical_kl(log_s, log_m)


def _jsd_endpoint(teacher: Tensor, student: Tensor, beta: float) -> Tensor | None:
    """Both generalised JSDs at their endpoints: ``KL(T ‖ S)`` at β = 0, ``KL(S ‖ T)`` at β = 1;
    None inside (0, 1)."""
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    if beta == 0:
        return forward_kl(teacher, student)
    if beta == 1:
        return reverse_kl(teacher, student)
    return None


def gkd_generalised_jsd(teacher: Tensor, student: Tensor, beta: float) -> Tensor:
    """The generalised Jensen–Shannon divergence in GKD's convention (Agarwal et al. 2024,
    "On-Policy Distillation of Language Models"; TRL's ``generalized_jsd_loss``)::

        JSD(β) = β KL(T ‖ M) + (1−β) KL(S ‖ M),   M = βT + (1−β)S,   0 < β < 1
        JSD(0) = KL(T ‖ S),                        JSD(1) = KL(S ‖ T)

    The endpoints are special cases: the interior tends to **0** at both ends
    (``JSD(β) ≈ β KL(T ‖ S)`` as β → 0, ``≈ (1−β) KL(S ‖ T)`` as β → 1), so the function jumps
    at β = 0 and β = 1 and near them β scales the loss rather than choosing a direction. Kept
    as GKD writes it to show that; ``generalised_jsd`` is the continuous form."""
    endpoint = _jsd_endpoint(teacher, student, beta)
    return _gkd_interior(teacher, student, beta) if endpoint is None else endpoint


def generalised_jsd(teacher: Tensor, student: Tensor, beta: float) -> Tensor:
    """The generalised Jensen–Shannon divergence made continuous on ``[0, 1]``::

        JSD*(β) = [β KL(T ‖ M) + (1−β) KL(S ‖ M)] / (β(1−β)),   M = βT + (1−β)S

    With ``M = S + β(T − S)``, ``KL(T ‖ M) = KL(T ‖ S) + O(β)`` and ``KL(S ‖ M) = O(β²)``, so
    ``JSD*(β) → KL(T ‖ S)`` as β → 0; symmetrically ``→ KL(S ‖ T)`` as β → 1: the endpoints are
    the limits, not special cases. At β = ½ it is 4 × the ordinary Jensen–Shannon divergence.
    Near the ends the interior is a difference of nearly equal sums: in float64 it is exact to
    ~1e-8 relative for ``1e-6 ≤ β ≤ 1 − 1e-6``."""
    endpoint = _jsd_endpoint(teacher, student, beta)
    if endpoint is not None:
        return endpoint
    return _gkd_interior(teacher, student, beta) / (beta * (1 - beta))


def skew_kl(p: Tensor, q: Tensor, alpha: float = 0.1) -> Tensor:
    """The α-skew KL of DistiLLM (Ko et al. 2024), ``KL(p ‖ αp + (1−α)q)``, ``0 ≤ α < 1``:
    finite even where ``q`` is 0 (``≤ −log α``), ``KL(p ‖ q)`` at α = 0. DistiLLM's **skew
    forward** KL is ``skew_kl(teacher, student)``, its **skew reverse** KL
    ``skew_kl(student, teacher)`` = ``KL(S ‖ αS + (1−α)T)``; α = 0.1 in the paper."""
    if not 0 <= alpha < 1:
        raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
    if alpha == 0:
        return categorical_kl(p, q)
    log_p, _, log_m = _mixture_log_probs(p, q, alpha)
    return categorical_kl(log_p, log_m)


def taid_target(teacher: Tensor, student: Tensor, t: float) -> Tensor:
    """TAID's intermediate distribution (Shing et al. 2025, "TAID: Temporally Adaptive
    Interpolated Distillation", eq. 4): log-probabilities of
    ``p_t = softmax((1−t)·sg(student logits) + t·teacher logits)``, with no gradient to the
    student (``sg``). ``t = 1`` is the teacher, ``t = 0`` the (frozen) student."""
    if not 0 <= t <= 1:
        raise ValueError(f"t must be in [0, 1], got {t!r}")
    check_logits(teacher, student)
    mixed = (1 - t) * torch.log_softmax(student.detach(), -1) + t * torch.log_softmax(teacher, -1)
    return torch.log_softmax(mixed, -1)


def taid_kl(teacher: Tensor, student: Tensor, t: float) -> Tensor:
    """TAID's objective ``KL(p_t ‖ S)`` (``taid_target``): the forward KL to the interpolated
    teacher; its gradient is ``−Σ_v p_t,v ∇log S_v`` as the forward KL's with ``T`` replaced by
    ``p_t``. ``t`` follows a schedule (``klexp.core.taid.TaidSchedule``)."""
    return categorical_kl(taid_target(teacher, student, t), student)


def _top_k(teacher: Tensor, student: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    check_logits(teacher, student)
    if not 1 <= k <= teacher.shape[-1]:
        raise ValueError(f"k must be in [1, {teacher.shape[-1]}] (the vocabulary), got {k!r}")
    log_t, log_s = _log_probs(teacher, student)
    index = log_t.topk(k, dim=-1).indices
    return log_t, log_s, index


def top_k_truncated_kl(teacher: Tensor, student: Tensor, k: int) -> Tensor:
    """``Σ_{v∈K} T_v (log T_v − log S_v)`` over the teacher's ``k`` most likely tokens ``K``,
    the rest dropped (what top-k logit distillation computes when only the teacher's top-k
    log-probabilities are stored). **Not a divergence**: it is negative wherever the student
    puts more mass than the teacher on the top ``k`` (e.g. ``T = (0.5, 0.5)``, ``S = (0.9,
    0.1)``, ``k = 1``: ``0.5 log(0.5/0.9) < 0``); clamping it to 0 hides that rather than
    fixing it. ``top_k_tail_kl`` is the divergence."""
    log_t, log_s, index = _top_k(teacher, student, k)
    top_t, top_s = log_t.gather(-1, index), log_s.gather(-1, index)
    return (top_t.exp() * (top_t - top_s)).sum(-1)


def coarsen_top_k(log_probs: Tensor, index: Tensor) -> Tensor:
    """Log-probabilities of the ``k + 1`` buckets ``(top_1, …, top_k, tail)``: the tokens
    ``index`` one by one and every other token lumped into one tail bucket (``−inf`` when empty)."""
    top = log_probs.gather(-1, index)
    tail = log_probs.scatter(-1, index, float("-inf")).logsumexp(-1, keepdim=True)
    return torch.cat([top, tail], dim=-1)


def top_k_tail_kl(teacher: Tensor, student: Tensor, k: int) -> Tensor:
    """``KL`` between the teacher and the student coarsened to ``k + 1`` buckets: the teacher's
    top ``k`` tokens and a tail bucket holding the rest (``1 − Σ_K``). A true divergence (≥ 0,
    0 iff the coarsenings agree) and, by the data-processing inequality, ``≤ KL(T ‖ S)``;
    equal to it at ``k = V``."""
    log_t, log_s, index = _top_k(teacher, student, k)
    return categorical_kl(coarsen_top_k(log_t, index), coarsen_top_k(log_s, index))


def sampled_kl_terms(student_log_prob: Tensor, teacher_log_prob: Tensor,
                     estimator: EstimatorName) -> Tensor:
    """``k1``, ``k2`` or ``k3`` of ``KL(S ‖ T)`` at tokens ``y ~ S`` (the student's own
    samples), from their log-probabilities under each model: ``log r = log T(y) − log S(y)``,
    ``k1 = −log r``, ``k2 = ½(log r)²``, ``k3 = (r − 1) − log r``
    (``klexp.core.estimators.monte_carlo_terms``). Back-propagated as written they are a
    **loss**; their gradients are in ``docs/distill-seq.md``: on the student's own tokens, k1
    has zero mean, k2 follows the per-token reverse KL, k3 the per-token forward KL."""
    return monte_carlo_terms(teacher_log_prob - student_log_prob, estimator)


def reward_surrogate(terms: Tensor, student_log_prob: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-token terms ``k_t`` of sequences sampled from the student (``(N, L)``) used as a
    **reward** ``r_t = −k_t``: returns ``sg(k_t) + log S(y_t)·sg(G_t) − sg(log S(y_t)·G_t)``
    with the return to go ``G_t = Σ_{t' ≥ t} k_t'`` (masked): the value is ``k_t``, the gradient
    REINFORCE's ``∇log S(y_t)·G_t`` (Williams 1992), whose expectation with k1 is the exact
    gradient of the sequence-level ``KL(S ‖ T)`` (as k1 in the reward is in PPO, docs/ppo.md)."""
    if mask is not None:
        terms = terms * mask
        student_log_prob = student_log_prob * mask
    returns = terms.detach().flip(-1).cumsum(-1).flip(-1)
    score = student_log_prob * returns
    return terms.detach() + score - score.detach()
