"""Exact sequence-level divergences between two autoregressive models, by enumerating every
sequence: the truth a distillation objective is scored against.

A model is a function of token ids ``(B, L)`` returning next-token logits ``(B, L, V)`` (any
normalisation; ``log_softmax`` is applied), where position ``t`` holds the distribution of token
``t`` given tokens ``0 … t − 1`` — what a causal model returns under teacher forcing. It must not
look at token ``t`` or later; if it does, the probabilities of all sequences do not sum to 1, and
``sequence_divergences`` says so. A sequence's log-probability is the chain rule,
``log T(x) = Σ_t log T(x_t | x_<t)``.

With T the teacher and S the student over all ``V^L`` sequences of length L, in nats, float64:

* ``kl`` = ``KL(T ‖ S) = Σ_x T(x) log(T(x)/S(x))`` (forward, mass covering);
* ``reverse_kl`` = ``KL(S ‖ T)`` (mode seeking);
* ``total_variation`` = ``½ Σ_x |T(x) − S(x)|``, in [0, 1];
* ``teacher_entropy``, ``student_entropy`` = ``H(T)``, ``H(S)``;
* the teacher-forced token averages that token-level objectives optimise, with
  ``KL_t(A ‖ B)(x) = KL(A(·|x_<t) ‖ B(·|x_<t))``:
  ``token_kl_on_teacher`` = ``E_{x~T}[(1/L) Σ_t KL_t(T ‖ S)]`` (forward KL on teacher or data
  sequences), ``token_reverse_kl_on_student`` = ``E_{x~S}[(1/L) Σ_t KL_t(S ‖ T)]`` (reverse KL on
  the student's own sequences, on-policy), ``token_reverse_kl_on_teacher`` and
  ``token_kl_on_student`` (the two directions on the other side's sequences), and
  ``cross_entropy_on_teacher`` = ``E_{x~T}[−(1/L) log S(x)]`` (the student's negative
  log-likelihood per token of teacher sequences).

By the chain rule ``L · token_kl_on_teacher = kl`` and ``L · token_reverse_kl_on_student =
reverse_kl`` exactly; the other two token averages are no sequence-level divergence. Every value is
a differentiable function of the models' outputs when gradients are enabled (the exact gradient of
a divergence, for testing an objective's), otherwise evaluated batch by batch without a graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from klexp.core.categorical import categorical_kl
from klexp.errors import ConfigValueError, require, require_positive_int

#: next-token logits ``(B, L, V)`` of token ids ``(B, L)``, position t given tokens before t
SequenceModel = Callable[[Tensor], Tensor]

#: Up to this many sequences (``V^L``) are enumerated: 8 tokens × length 7, or 4 × 11.
MAX_ENUMERATED_SEQUENCES = 2**21

_INF = float("inf")

#: the sums that are averaged over the L positions
_PER_TOKEN = frozenset({"token_kl_on_teacher", "token_reverse_kl_on_student",
                        "token_reverse_kl_on_teacher", "token_kl_on_student",
                        "cross_entropy_on_teacher"})


@dataclass(frozen=True)
class SequenceDivergences:
    """Exact sequence-level values (nats, float64, 0-dim tensors); see the module docstring."""

    kl: Tensor
    reverse_kl: Tensor
    total_variation: Tensor
    teacher_entropy: Tensor
    student_entropy: Tensor
    token_kl_on_teacher: Tensor
    token_reverse_kl_on_student: Tensor
    token_reverse_kl_on_teacher: Tensor
    token_kl_on_student: Tensor
    cross_entropy_on_teacher: Tensor

    def as_dict(self) -> dict[str, Tensor]:
        """The values by name, in field order."""
        return asdict(self)


def all_sequences(vocab_size: int, length: int, start: int = 0, stop: int | None = None) -> Tensor:
    """Sequences ``start … stop − 1`` of all ``V^L``, in lexicographic order (the last position
    varies fastest), as token ids ``(stop − start, L)``."""
    stop = vocab_size**length if stop is None else stop
    index = torch.arange(start, stop, dtype=torch.long)
    powers = vocab_size ** torch.arange(length - 1, -1, -1, dtype=torch.long)
    return (index.unsqueeze(-1) // powers) % vocab_size


def _mass_weighted(log_weight: Tensor, value: Tensor) -> Tensor:
    """``Σ exp(log w) · value`` with ``0 · value = 0`` where ``w = 0`` (also for an infinite value)."""
    zero_weight = log_weight == -_INF
    safe_value = torch.where(zero_weight, torch.zeros_like(value), value)
    return (log_weight.exp() * safe_value).sum()


def sequence_divergences(teacher: SequenceModel, student: SequenceModel, *, vocab_size: int,
                         length: int, batch_size: int = 16_384, tolerance: float = 1e-6,
                         device: torch.device | str | None = None) -> SequenceDivergences:
    """Every value of ``SequenceDivergences`` for ``teacher`` T and ``student`` S over all
    ``vocab_size ** length`` sequences, enumerated ``batch_size`` at a time (token ids on
    ``device``, the CPU when None), in float64.

    Raises ``ConfigValueError`` when there are more than ``MAX_ENUMERATED_SEQUENCES`` sequences,
    when a model's logits do not have the shape ``(B, length, vocab_size)``, or when its sequence
    probabilities do not sum to 1 within ``tolerance`` (its position t reads token t or later).
    """
    require_positive_int("vocab_size", vocab_size)
    require_positive_int("length", length)
    require_positive_int("batch_size", batch_size)
    count = vocab_size**length
    require(count <= MAX_ENUMERATED_SEQUENCES, "length",
            f"at most {MAX_ENUMERATED_SEQUENCES} sequences to enumerate (vocab_size ** length)",
            f"{vocab_size} ** {length} = {count}")
    sums: dict[str, Tensor] = {}
    for start in range(0, count, batch_size):
        tokens = all_sequences(vocab_size, length, start, min(start + batch_size, count)).to(device)
        log_t = _token_log_probs(teacher, tokens, "teacher", vocab_size)
        log_s = _token_log_probs(student, tokens, "student", vocab_size)
        for name, value in _batch_sums(tokens, log_t, log_s).items():
            sums[name] = value if name not in sums else sums[name] + value
    for name in ("teacher", "student"):
        mass = sums.pop(f"{name}_mass")
        if abs(mass.item() - 1.0) > tolerance:
            raise ConfigValueError(name, f"the probabilities of all {count} sequences sum to "
                                   f"{mass.item():.9g}, not 1: the logits at position t must depend "
                                   "on the tokens before t only")
    return SequenceDivergences(**{name: value / length if name in _PER_TOKEN else value
                                  for name, value in sums.items()})


def _token_log_probs(model: SequenceModel, tokens: Tensor, role: str, vocab_size: int) -> Tensor:
    logits = model(tokens)
    expected = (*tokens.shape, vocab_size)
    if tuple(logits.shape) != expected:
        raise ConfigValueError(role, f"next-token logits of shape (batch, length, vocab_size) = "
                               f"{expected} expected, got {tuple(logits.shape)}")
    return torch.log_softmax(logits.to(torch.float64), dim=-1)


def _batch_sums(tokens: Tensor, log_t: Tensor, log_s: Tensor) -> dict[str, Tensor]:
    """This batch's share of every sum, in ``SequenceDivergences`` field order, then the masses."""
    index = tokens.unsqueeze(-1)
    seq_t = log_t.gather(-1, index).squeeze(-1).sum(-1)  # log T(x)
    seq_s = log_s.gather(-1, index).squeeze(-1).sum(-1)
    forward_tokens = categorical_kl(log_t, log_s).sum(-1)  # Σ_t KL_t(T ‖ S)
    reverse_tokens = categorical_kl(log_s, log_t).sum(-1)
    # log T − log S with 0 where both are 0 (the weight is 0 there anyway)
    both_zero = (seq_t == -_INF) & (seq_s == -_INF)
    log_ratio = torch.where(both_zero, torch.zeros_like(seq_t), seq_t - seq_s)
    return {
        "kl": _mass_weighted(seq_t, log_ratio),
        "reverse_kl": _mass_weighted(seq_s, -log_ratio),
        "total_variation": 0.5 * (seq_t.exp() - seq_s.exp()).abs().sum(),
        "teacher_entropy": _mass_weighted(seq_t, -seq_t),
        "student_entropy": _mass_weighted(seq_s, -seq_s),
        "token_kl_on_teacher": _mass_weighted(seq_t, forward_tokens),
        "token_reverse_kl_on_student": _mass_weighted(seq_s, reverse_tokens),
        "token_reverse_kl_on_teacher": _mass_weighted(seq_t, reverse_tokens),
        "token_kl_on_student": _mass_weighted(seq_s, forward_tokens),
        "cross_entropy_on_teacher": _mass_weighted(seq_t, -seq_s),
        "teacher_mass": seq_t.exp().sum(),
        "student_mass": seq_s.exp().sum(),
    }
