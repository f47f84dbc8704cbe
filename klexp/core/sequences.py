"""Exact sequence-level quantities of autoregressive models, by enumerating every sequence.

An autoregressive model over a vocabulary of ``V`` tokens and sequences of length ``L`` is given
here as a **next-token function**: ``prefixes (N, t) → logits (N, V)`` of the token that follows
each prefix (``t = 0`` is the empty prefix; log-probabilities are logits too). Its sequence
probability is the chain ``P(x) = Π_t P(x_t | x_<t)``.

Where ``V^L`` is small (8 tokens × length 6 = 262,144 sequences), everything a distillation
objective stands for is computed exactly, in float64 by default:

* the **prefix tree** (``prefix_tree``): level ``t`` holds the next-token log-probabilities after
  each of the ``V^t`` prefixes of length ``t``, in lexicographic order, computed in batches of at
  most ``chunk_size`` prefixes: ``(V^L − 1)/(V − 1)`` rows in all, 37,449 for 8 × 6, never
  ``V^L · L``;
* **sequence log-probabilities** ``log P(x)`` of all ``V^L`` sequences (``sequence_log_probs``);
* **sequence divergences** (``sequence_divergences``): ``KL(T ‖ S) = Σ_x T(x) log(T(x)/S(x))``,
  ``KL(S ‖ T)``, total variation ``½ Σ_x |T(x) − S(x)|`` and the entropies, each a sum over all
  sequences;
* the **teacher-forced token averages** the objectives optimise: ``E_{x~W}[(1/L) Σ_t
  KL(T(·|x_<t) ‖ S(·|x_<t))]`` and the reverse, with the sequences ``x`` drawn from the teacher
  or the student ``W`` — sums over the prefix tree weighted by ``W(x_<t)``.

The chain rule ties the two: ``KL(T ‖ S) = E_{x~T}[Σ_t KL(T_t ‖ S_t)]`` (the first argument
samples), ``L ×`` the token average on the teacher's sequences; ``tests/test_sequences.py``
checks it, and every quantity against brute force over ``itertools.product``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from klexp.core.categorical import categorical_kl

#: ``prefixes (N, t) → next-token logits (N, V)``
NextToken = Callable[[Tensor], Tensor]

#: the largest sequence space enumerated (a guard against a typo costing the machine's memory)
MAX_SEQUENCES = 1 << 22


def check_enumerable(vocab_size: int, length: int) -> int:
    """``V^L``, or ``ValueError`` naming both when it is over ``MAX_SEQUENCES``."""
    if vocab_size < 1 or length < 1:
        raise ValueError(f"vocab_size and length must be ≥ 1, got {vocab_size} and {length}")
    count = vocab_size ** length
    if count > MAX_SEQUENCES:
        raise ValueError(f"vocab_size {vocab_size} and length {length} make {count:,} sequences; "
                         f"exact enumeration takes at most {MAX_SEQUENCES:,}")
    return count


def all_sequences(vocab_size: int, length: int, device: torch.device | str | None = None) -> Tensor:
    """Every sequence of ``length`` tokens in ``range(vocab_size)``, ``(V^L, L)``, in
    lexicographic order (row ``i`` is ``i`` written in base ``V``)."""
    check_enumerable(vocab_size, length)
    index = torch.arange(vocab_size ** length, device=device)
    powers = vocab_size ** torch.arange(length - 1, -1, -1, device=device)
    return (index.unsqueeze(1) // powers) % vocab_size


def prefix_tree(next_token: NextToken, vocab_size: int, length: int, *, chunk_size: int = 65536,
                dtype: torch.dtype = torch.float64) -> list[Tensor]:
    """The next-token log-probabilities after every prefix: level ``t`` (``t = 0 … L−1``) is
    ``(V^t, V)``, rows in the lexicographic order of the prefixes. ``next_token`` is called on
    batches of at most ``chunk_size`` prefixes; its logits are normalised here, in ``dtype``."""
    check_enumerable(vocab_size, length)
    levels = []
    for t in range(length):
        prefixes = all_sequences(vocab_size, t) if t else torch.zeros(1, 0, dtype=torch.long)
        rows = [torch.log_softmax(next_token(chunk).to(dtype), dim=-1)
                for chunk in prefixes.split(chunk_size)]
        level = torch.cat(rows)
        if level.shape != (vocab_size ** t, vocab_size):
            raise ValueError(f"next_token must return ({vocab_size ** t}, {vocab_size}) logits for "
                             f"the prefixes of length {t}, got {tuple(level.shape)}")
        levels.append(level)
    return levels


def prefix_log_probs(tree: list[Tensor]) -> list[Tensor]:
    """``log P(prefix)`` of every prefix of length ``t = 0 … L``: level ``t`` is ``(V^t,)``,
    lexicographic. The last level holds the whole sequences."""
    levels = [tree[0].new_zeros(1)]
    for next_log_probs in tree:
        # the prefixes of length t+1, lexicographic, are (prefix, token) with the token fastest
        levels.append((levels[-1].unsqueeze(1) + next_log_probs).flatten())
    return levels


def sequence_log_probs(tree: list[Tensor]) -> Tensor:
    """``log P(x)`` of all ``V^L`` sequences, in the order of ``all_sequences``."""
    return prefix_log_probs(tree)[-1]


def token_average(weights: list[Tensor], values: list[Tensor]) -> Tensor:
    """``E_{x~W}[(1/L) Σ_t v_t(x_<t)]``: per-prefix values ``v_t`` (level ``t``, ``(V^t,)``)
    averaged over the ``L`` positions of sequences drawn from ``W`` (``weights``: the levels
    ``0 … L−1`` of ``prefix_log_probs`` of ``W``). A prefix ``W`` never writes weighs 0 even where
    its value is infinite (a reverse KL against a source of finite support)."""
    total = sum(torch.where(w > -torch.inf, w.exp() * v, 0).sum()
                for w, v in zip(weights, values, strict=True))
    return total / len(values)


@dataclass(frozen=True)
class SequenceDivergences:
    """What ``sequence_divergences`` measures, in nats; ``token_*`` are per-token averages (the
    sum over positions divided by ``L``), ``on_teacher`` / ``on_student`` naming whose sequences
    they are taken over."""

    kl_forward: Tensor
    kl_reverse: Tensor
    tv: Tensor
    teacher_entropy: Tensor
    student_entropy: Tensor
    token_kl_forward_on_teacher: Tensor
    token_kl_reverse_on_teacher: Tensor
    token_kl_forward_on_student: Tensor
    token_kl_reverse_on_student: Tensor

    def as_dict(self) -> dict[str, Tensor]:
        return dict(vars(self))


def sequence_divergences(teacher: NextToken | list[Tensor], student: NextToken | list[Tensor],
                         vocab_size: int, length: int, *, chunk_size: int = 65536,
                         dtype: torch.dtype = torch.float64) -> SequenceDivergences:
    """Exact sequence-level divergences between a teacher ``T`` and a student ``S`` (next-token
    functions, or prefix trees already computed), by enumeration:

    * ``kl_forward = KL(T ‖ S) = Σ_x T(x)(log T(x) − log S(x))``, ``kl_reverse = KL(S ‖ T)``;
    * ``tv = ½ Σ_x |T(x) − S(x)| ∈ [0, 1]``;
    * ``teacher_entropy = −Σ_x T(x) log T(x)``, ``student_entropy`` likewise (≤ ``L log V``);
    * ``token_kl_forward_on_W = E_{x~W}[(1/L) Σ_t KL(T(·|x_<t) ‖ S(·|x_<t))]`` and
      ``token_kl_reverse_on_W`` with ``KL(S_t ‖ T_t)``, for ``W`` the teacher or the student.

    Differentiable: gradients flow to whichever model carries them."""
    trees = [m if isinstance(m, list) else prefix_tree(m, vocab_size, length, chunk_size=chunk_size,
                                                       dtype=dtype)
             for m in (teacher, student)]
    teacher_prefixes, student_prefixes = (prefix_log_probs(tree) for tree in trees)
    log_t, log_s = teacher_prefixes[-1], student_prefixes[-1]
    p_t, p_s = log_t.exp(), log_s.exp()
    forward_tokens = [categorical_kl(t, s) for t, s in zip(*trees, strict=True)]
    reverse_tokens = [categorical_kl(s, t) for t, s in zip(*trees, strict=True)]
    return SequenceDivergences(
        kl_forward=_plogp_ratio(p_t, log_t, log_s),
        kl_reverse=_plogp_ratio(p_s, log_s, log_t),
        tv=0.5 * (p_t - p_s).abs().sum(),
        teacher_entropy=-_plogp_ratio(p_t, log_t, torch.zeros_like(log_t)),
        student_entropy=-_plogp_ratio(p_s, log_s, torch.zeros_like(log_s)),
        token_kl_forward_on_teacher=token_average(teacher_prefixes[:-1], forward_tokens),
        token_kl_reverse_on_teacher=token_average(teacher_prefixes[:-1], reverse_tokens),
        token_kl_forward_on_student=token_average(student_prefixes[:-1], forward_tokens),
        token_kl_reverse_on_student=token_average(student_prefixes[:-1], reverse_tokens),
    )


def _plogp_ratio(p: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    """``Σ p (log p − log q)`` with ``0 · log 0 = 0``."""
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros((), dtype=p.dtype)).sum()


def sample_sequences(next_token: NextToken, num_sequences: int, length: int, *,
                     generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> Tensor:
    """``num_sequences`` sequences ``(N, L)`` drawn from the model token by token (no gradient)."""
    tokens = torch.zeros(num_sequences, 0, dtype=torch.long, device=device)
    with torch.no_grad():
        for _ in range(length):
            probs = torch.softmax(next_token(tokens).double(), dim=-1)
            draw = torch.multinomial(probs, 1, generator=generator)
            tokens = torch.cat([tokens, draw], dim=1)
    return tokens
