"""Sequences from a known source: a random Markov chain over a small vocabulary, generated (no
download), whose every sequence probability is known exactly — so a model trained on its samples
can be scored against the truth by enumeration (``klexp.core.sequences``)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Dirichlet

from klexp.core.sequences import sample_sequences
from klexp.data.sequence_splits import SequenceSplits
from klexp.errors import require_finite_positive, require_positive_int


class MarkovSource:
    """A Markov chain of ``order`` ``k``: ``P(x_t | x_<t) = P(x_t | x_{t−k} … x_{t−1})``, each
    row drawn from a Dirichlet(``concentration``) (small → peaked: a distribution with clear
    modes); positions before the start read as a start symbol of their own."""

    def __init__(self, vocab_size: int, order: int = 2, concentration: float = 0.3, seed: int = 0) -> None:
        require_positive_int("vocab_size", vocab_size)
        require_positive_int("order", order)
        require_finite_positive("concentration", concentration)
        self.vocab_size, self.order = vocab_size, order
        contexts = (vocab_size + 1) ** order
        with torch.random.fork_rng(devices=[]):  # the source is the same whatever the run's seed
            torch.manual_seed(seed)
            rows = Dirichlet(torch.full((vocab_size,), float(concentration), dtype=torch.float64))
            probs = rows.sample((contexts,))
        self.log_probs = probs.clamp_min(1e-300).log()

    def next_token(self, prefixes: Tensor) -> Tensor:
        """Next-token log-probabilities ``(N, V)`` after prefixes ``(N, t)``."""
        n = len(prefixes)
        start = torch.full((n, self.order), self.vocab_size, dtype=torch.long, device=prefixes.device)
        context = torch.cat([start, prefixes.long()], 1)[:, -self.order:]
        index = torch.zeros(n, dtype=torch.long, device=prefixes.device)
        for column in context.unbind(1):
            index = index * (self.vocab_size + 1) + column
        return self.log_probs.to(prefixes.device)[index]


class MarkovSequences(SequenceSplits):
    """Train/val/test sequences sampled from a ``MarkovSource``; the source itself is a fact a
    task reads (``true_next_token``) to score models against the truth.

    Args:
        vocab_size, length: the sequence space (``V^L`` at most ``klexp.core.sequences``'s limit).
        order, concentration, source_seed: the source (``MarkovSource``).
        num_train, num_val, num_test, batch_size, eval_batch_size: the splits
            (``klexp.data.sequence_splits.SequenceSplits``).
        seed: the run's seed (shuffling); the samples are drawn with ``source_seed``.
    """

    def __init__(self, vocab_size: int = 8, length: int = 6, order: int = 2, concentration: float = 0.3,
                 source_seed: int = 0, num_train: int = 8192, num_val: int = 1024, num_test: int = 1024,
                 batch_size: int = 64, eval_batch_size: int = 1024, seed: int = 0) -> None:
        super().__init__(vocab_size, length, num_train, num_val, num_test, batch_size, eval_batch_size, seed)
        self.source = MarkovSource(vocab_size, order, concentration, source_seed)
        generator = torch.Generator().manual_seed(source_seed)
        self.set_splits(sample_sequences(self.source.next_token, sum(self.split_sizes), length,
                                         generator=generator))

    @property
    def true_next_token(self) -> MarkovSource:
        return self.source
