"""Sequences from a known source: a random Markov chain over a small vocabulary, generated (no
download), whose every sequence probability is known exactly — so a model trained on its samples
can be scored against the truth by enumeration (``klexp.core.sequences``)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.distributions import Dirichlet

from klexp.core.sequences import check_enumerable, sample_sequences
from klexp.data.batches import TensorBatches, TrainBatchesState
from klexp.errors import ConfigValueError, require_finite_positive, require_positive_int


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


class MarkovSequences(TrainBatchesState, pl.LightningDataModule):
    """Train/val/test sequences sampled from a ``MarkovSource``; the source itself is a fact a
    task reads (``true_next_token``) to score models against the truth.

    Args:
        vocab_size, length: the sequence space (``V^L`` at most ``klexp.core.sequences``'s limit).
        order, concentration, source_seed: the source (``MarkovSource``).
        num_train: training sequences, a multiple of ``batch_size`` (every training batch holds
            ``batch_size`` sequences, which the reductions' invariance under accumulation needs).
        num_val, num_test: held-out sequences.
        seed: the run's seed (shuffling); the samples are drawn with ``source_seed``.
    """

    def __init__(self, vocab_size: int = 8, length: int = 6, order: int = 2, concentration: float = 0.3,
                 source_seed: int = 0, num_train: int = 8192, num_val: int = 1024, num_test: int = 1024,
                 batch_size: int = 64, eval_batch_size: int = 1024, seed: int = 0) -> None:
        super().__init__()
        for key, value in (("length", length), ("num_train", num_train), ("num_val", num_val),
                           ("num_test", num_test), ("batch_size", batch_size),
                           ("eval_batch_size", eval_batch_size)):
            require_positive_int(key, value)
        try:
            check_enumerable(vocab_size, length)
        except ValueError as error:
            raise ConfigValueError("length", str(error)) from None
        if num_train % batch_size:
            raise ConfigValueError("num_train", f"a multiple of batch_size ({batch_size}), got {num_train}")
        self.source = MarkovSource(vocab_size, order, concentration, source_seed)
        self.vocab_size, self.length = vocab_size, length
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        generator = torch.Generator().manual_seed(source_seed)
        tokens = sample_sequences(self.source.next_token, num_train + num_val + num_test, length,
                                  generator=generator)
        self.splits = dict(zip(("train", "val", "test"), tokens.split([num_train, num_val, num_test]),
                               strict=True))

    @property
    def true_next_token(self) -> MarkovSource:
        return self.source

    def train_dataloader(self) -> TensorBatches:
        rank, world = self._rank_and_world()
        self._train_batches = TensorBatches((self.splits["train"],), self.batch_size, shuffle=True,
                                            seed=self.seed, rank=rank, world_size=world)
        if self._train_batches_state is not None:
            self._train_batches.load_state_dict(self._train_batches_state)
        return self._train_batches

    def val_dataloader(self) -> TensorBatches:
        return TensorBatches((self.splits["val"],), self.eval_batch_size)

    def test_dataloader(self) -> TensorBatches:
        return TensorBatches((self.splits["test"],), self.eval_batch_size)
