"""Mini-batches over in-memory tensors: fast, seeded per epoch, shardable and resumable.

The data sets klexp ships with are small enough to live in memory, where slicing a permuted index
is far cheaper than a ``DataLoader`` that gathers and collates one example at a time. The order
of epoch ``e`` is a pure function of ``(seed, e)``, so a run resumed from a mid-epoch checkpoint
sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from klexp.errors import require_positive_int

BatchTransform = Callable[[tuple[Tensor, ...], torch.Generator], tuple[Tensor, ...]]


class TensorBatches:
    """Iterate over ``tensors`` (sharing their first axis) in mini-batches.

    ``shuffle`` draws a new permutation for every epoch from ``seed`` and the epoch number;
    ``transform`` (e.g. augmentation or dynamic binarisation) gets a generator seeded by
    ``(seed, epoch, batch index)``. With ``world_size > 1`` each rank takes an equal, disjoint
    share of every epoch (the last few examples are repeated to make shares equal, as
    ``DistributedSampler`` does). ``state_dict``/``load_state_dict`` let Lightning resume mid-epoch.
    """

    def __init__(
        self,
        tensors: tuple[Tensor, ...],
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        transform: BatchTransform | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        require_positive_int("batch_size", batch_size)
        if len({len(t) for t in tensors}) != 1:
            raise ValueError(f"tensors must share their first axis, got {[tuple(t.shape) for t in tensors]}")
        self.tensors, self.batch_size = tensors, batch_size
        self.shuffle, self.seed = shuffle, seed
        self.transform, self.rank, self.world_size = transform, rank, world_size
        self._next_epoch = 0
        self._resume: tuple[int, int] | None = None
        self._progress: list[int] | None = None  # [epoch, batches handed out] while iterating

    @property
    def examples_per_rank(self) -> int:
        n = len(self.tensors[0])
        return -(-n // self.world_size)

    def __len__(self) -> int:
        return -(-self.examples_per_rank // self.batch_size)

    def _order(self, epoch: int) -> Tensor:
        n = len(self.tensors[0])
        if self.shuffle:
            generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            padded = self.examples_per_rank * self.world_size
            order = torch.cat([order, order[: padded - n]])[self.rank :: self.world_size]
        return order

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        epoch, start = self._resume if self._resume is not None else (self._next_epoch, 0)
        self._resume = None
        self._next_epoch = epoch + 1
        self._progress = [epoch, start]
        order = self._order(epoch)
        for index in range(start, len(self)):
            rows = order[index * self.batch_size : (index + 1) * self.batch_size]
            batch = tuple(t[rows] for t in self.tensors)
            if self.transform is not None:
                generator = torch.Generator().manual_seed(_mix(self.seed, epoch, index))
                batch = self.transform(batch, generator)
            # Lightning does not fetch ahead from a loader with a length, so while this batch is
            # out it is being trained on, and a checkpoint taken meanwhile (after its step)
            # must resume with the next one.
            self._progress[1] = index + 1
            yield batch
        self._progress = None

    def state_dict(self) -> dict[str, Any]:
        if self._progress is None or self._progress[1] >= len(self):
            epoch = self._next_epoch if self._progress is None else self._progress[0] + 1
            return {"epoch": epoch, "consumed": 0}
        return {"epoch": self._progress[0], "consumed": self._progress[1]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._next_epoch = int(state["epoch"])
        self._resume = (self._next_epoch, int(state["consumed"])) if state["consumed"] else None


def _mix(*numbers: int) -> int:
    """A 63-bit seed from several integers (a fixed, well-spread combination)."""
    value = 0x9E3779B97F4A7C15
    for number in numbers:
        value = (value ^ (number + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & (2**63 - 1)
    return value


class TrainBatchesState:
    """A ``LightningDataModule`` mixin for modules whose training batches are ``TensorBatches`` in
    ``self._train_batches``: the batch position travels with the DataModule's own state.

    Lightning sets up the train loader before it restores a checkpoint when a scheduler asks for
    ``estimated_stepping_batches``, and then skips restoring the loader; the DataModule's own state
    is always restored, so a mid-epoch resume continues at the right batch.
    """

    _train_batches: TensorBatches | None = None
    _train_batches_state: dict | None = None

    def state_dict(self) -> dict:
        return {} if self._train_batches is None else {"train_batches": self._train_batches.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._train_batches_state = state_dict.get("train_batches")
        if self._train_batches is not None and self._train_batches_state is not None:
            self._train_batches.load_state_dict(self._train_batches_state)

    def _rank_and_world(self) -> tuple[int, int]:
        """This process's rank and the world size (0 and 1 before a trainer is attached)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size
