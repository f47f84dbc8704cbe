"""Train/val/test splits of token sequences drawn from a source whose every sequence probability
is known: what the sequence DataModules (``markov``, ``words``) share. A subclass checks its own
arguments, draws its sequences and hands them to ``set_splits``; it states ``true_next_token``,
the source a task scores its models against (``klexp.core.sequences``)."""

from __future__ import annotations

import pytorch_lightning as pl
from torch import Tensor

from klexp.core.sequences import check_enumerable
from klexp.data.batches import TensorBatches, TrainBatchesState
from klexp.errors import ConfigValueError, require_positive_int


class SequenceSplits(TrainBatchesState, pl.LightningDataModule):
    """Sequences ``(N, L)`` over ``vocab_size`` tokens in three splits.

    Args:
        vocab_size, length: the sequence space (``V^L`` at most ``klexp.core.sequences``'s limit).
        num_train: training sequences, a multiple of ``batch_size`` (every training batch holds
            ``batch_size`` sequences, which the reductions' invariance under accumulation needs).
        num_val, num_test: held-out sequences.
        seed: the run's seed (shuffling).
    """

    def __init__(self, vocab_size: int, length: int, num_train: int, num_val: int, num_test: int,
                 batch_size: int, eval_batch_size: int, seed: int) -> None:
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
        self.vocab_size, self.length = vocab_size, length
        self.split_sizes = [num_train, num_val, num_test]
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed

    def set_splits(self, tokens: Tensor) -> None:
        """Split ``num_train + num_val + num_test`` sequences ``(N, L)``, in that order."""
        self.splits = dict(zip(("train", "val", "test"), tokens.split(self.split_sizes), strict=True))

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
