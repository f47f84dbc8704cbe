"""A distribution over sequences given as a table — each sequence with its weight, the rest 0 —
and its exact next-token function: ``P(x_t | x_<t) = Σ_{x' ⊒ x_≤t} w(x') / Σ_{x' ⊒ x_<t} w(x')``,
the weight of the table's sequences that extend the prefix by ``x_t`` over that of those that
extend the prefix (a prefix tree of the table, one dense level per length).

A prefix no sequence of the table extends has probability 0, so what follows it changes no
sequence's probability; it is given to ``fallback_token`` (for words: the end token, which then
reads as absorbing)."""

from __future__ import annotations

import torch
from torch import Tensor

from klexp.core.sequences import check_enumerable
from klexp.errors import ConfigValueError


class TableSource:
    """The sequences ``(K, L)`` over ``range(vocab_size)`` with probabilities ``∝ weights (K,)``.

    ``next_token`` (prefixes ``(N, t)`` → log-probabilities ``(N, V)``) is exact: the chain of its
    conditionals gives each table sequence its normalised weight (``probs``) and every other
    sequence 0.
    """

    def __init__(self, sequences: Tensor, weights: Tensor, vocab_size: int, fallback_token: int) -> None:
        if sequences.ndim != 2 or weights.shape != sequences.shape[:1] or not len(sequences):
            raise ConfigValueError("sequences", f"a (K, L) table and K > 0 weights, got "
                                                f"{tuple(sequences.shape)} and {tuple(weights.shape)}")
        length = sequences.shape[1]
        check_enumerable(vocab_size, length)
        if sequences.min() < 0 or sequences.max() >= vocab_size or not 0 <= fallback_token < vocab_size:
            raise ConfigValueError("sequences", f"tokens in range({vocab_size})")
        weights = weights.to(torch.float64)
        if not (torch.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
            raise ConfigValueError("weights", "finite weights ≥ 0 with a positive sum")
        self.vocab_size, self.length = vocab_size, length
        self.sequences, self.probs = sequences.long(), weights / weights.sum()
        self.levels = [self._level(t, fallback_token) for t in range(length)]

    def _level(self, t: int, fallback_token: int) -> Tensor:
        """Log-probabilities ``(V^t, V)`` of the token after each prefix of length ``t``."""
        mass = torch.zeros(self.vocab_size ** t, self.vocab_size, dtype=torch.float64)
        mass.index_put_((prefix_index(self.sequences[:, :t], self.vocab_size), self.sequences[:, t]),
                        self.probs, accumulate=True)
        mass[mass.sum(1) == 0, fallback_token] = 1
        return (mass / mass.sum(1, keepdim=True)).log()

    def next_token(self, prefixes: Tensor) -> Tensor:
        """Next-token log-probabilities ``(N, V)`` after prefixes ``(N, t)``, ``0 ≤ t < L``."""
        level = self.levels[prefixes.shape[1]].to(prefixes.device)
        return level[prefix_index(prefixes.long(), self.vocab_size)]

    def sample(self, num_sequences: int, generator: torch.Generator | None = None) -> Tensor:
        """``num_sequences`` sequences ``(N, L)`` drawn from the table, with replacement."""
        rows = torch.multinomial(self.probs, num_sequences, replacement=True, generator=generator)
        return self.sequences[rows]


def prefix_index(prefixes: Tensor, vocab_size: int) -> Tensor:
    """The rank ``(N,)`` of each prefix ``(N, t)`` among all ``V^t`` of its length in
    lexicographic order (its digits in base ``V``: the order of ``klexp.core.sequences``)."""
    powers = vocab_size ** torch.arange(prefixes.shape[1] - 1, -1, -1, device=prefixes.device)
    return (prefixes * powers).sum(1)
