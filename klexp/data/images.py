"""DataModules for small labelled image sets held in memory.

Each subclass loads ``(images, labels)``: float images in ``[0, 1]`` of shape ``(N, H, W)`` and
integer labels. The base class splits them (stratified, seeded by ``split_seed`` so that run
seeds vary training, not the split), and serves seeded, resumable mini-batches.
"""

from __future__ import annotations

import math
from typing import Literal

import pytorch_lightning as pl
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

from klexp.data.batches import TensorBatches, TrainBatchesState
from klexp.errors import (
    KlexpError,
    require,
    require_in,
    require_positive_int,
    require_unit_interval,
)

Augmentation = Literal["none", "shift"]
AUGMENTATIONS: tuple[str, ...] = ("none", "shift")
MAX_SPLIT_SEED = 2**32 - 1


class ImageClassData(TrainBatchesState, pl.LightningDataModule):
    """Train/val/test splits of an in-memory labelled image set.

    Args:
        batch_size: training mini-batch size; evaluation uses ``eval_batch_size``.
        val_fraction, test_fraction: shares of the data held out (stratified by class).
        split_seed: seed of the split; ``seed`` (the run's) seeds the shuffling and transforms.
        augment: ``shift`` moves each training image by up to one pixel in each direction.
        binarize: draw each training pixel as Bernoulli(intensity) afresh every epoch (dynamic
            binarisation); val/test are binarised once with a fixed seed.
        holdout_class: a class removed from train/val/test and served as ``ood_dataloader``.
    """

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int = 512,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        seed: int = 0,
        augment: Augmentation = "none",
        binarize: bool = False,
        holdout_class: int | None = None,
    ) -> None:
        super().__init__()
        require_positive_int("batch_size", batch_size)
        require_positive_int("eval_batch_size", eval_batch_size)
        require(_is_number(val_fraction) and 0 < val_fraction < 1, "val_fraction", "a number in (0, 1)",
                val_fraction)
        require_unit_interval("test_fraction", test_fraction)
        require(val_fraction + test_fraction < 1, "test_fraction",
                f"val_fraction + test_fraction < 1 (val_fraction is {val_fraction})", test_fraction)
        # scikit-learn's random_state takes 0..2³²−1, and the validation split uses split_seed + 1
        require(isinstance(split_seed, int) and 0 <= split_seed < MAX_SPLIT_SEED, "split_seed",
                f"an integer in [0, {MAX_SPLIT_SEED - 1}]", split_seed)
        require_in("augment", augment, AUGMENTATIONS)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.split_seed, self.seed = split_seed, seed
        self.augment, self.binarize, self.holdout_class = augment, binarize, holdout_class
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self._train_batches: TensorBatches | None = None
        self._train_batches_state: dict | None = None

    # ------------------------------------------------------------------ what subclasses provide

    def load(self) -> tuple[Tensor, Tensor] | dict[str, tuple[Tensor, Tensor]]:
        """``(images, labels)`` to split, or ready splits ``{"train": …, "test": …}``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ facts tasks read

    @property
    def input_shape(self) -> tuple[int, int]:
        self._ensure_loaded()
        return tuple(self.splits["train"][0].shape[1:])

    @property
    def input_size(self) -> int:
        height, width = self.input_shape
        return height * width

    @property
    def num_classes(self) -> int:
        self._ensure_loaded()
        return self._num_classes

    @property
    def num_train(self) -> int:
        self._ensure_loaded()
        return len(self.splits["train"][1])

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, stage: str | None = None) -> None:
        self._ensure_loaded()

    def _ensure_loaded(self) -> None:
        if self.splits:
            return
        loaded = self.load()
        splits = loaded if isinstance(loaded, dict) else self._split(*loaded)
        if "val" not in splits:
            # val_fraction is a share of all the data; with a test split of its own (IDX's t10k
            # files) the training files are all there is, so it is their share
            share = self.val_fraction if isinstance(loaded, dict) else (
                self.val_fraction / (1 - self.test_fraction))
            splits.update(self._split_off_val(*splits["train"], share))
        labels = torch.cat([y for _, y in splits.values()])
        self._num_classes = int(labels.max()) + 1
        if self.holdout_class is not None:
            if not 0 <= self.holdout_class < self._num_classes:
                raise KlexpError(f"data.holdout_class: expected a class in 0..{self._num_classes - 1}, "
                                 f"got {self.holdout_class}")
            splits = self._hold_out(splits)
        if self.binarize:
            for offset, name in enumerate(("val", "test", "ood")):
                if name in splits:
                    images, y = splits[name]
                    generator = torch.Generator().manual_seed(self.split_seed + 1000 + offset)
                    splits[name] = (torch.bernoulli(images, generator=generator), y)
        self.splits = splits

    def _split(self, images: Tensor, labels: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        if len(images) != len(labels):
            raise KlexpError(f"{len(images)} images but {len(labels)} labels: they must match")
        rest, test = self._stratified(labels, self.test_fraction, self.split_seed, "test_fraction")
        return {"train": (images[rest], labels[rest]), "test": (images[test], labels[test])}

    def _split_off_val(self, images: Tensor, labels: Tensor,
                       share: float) -> dict[str, tuple[Tensor, Tensor]]:
        train, val = self._stratified(labels, share, self.split_seed + 1, "val_fraction",
                                      scale=self.val_fraction / share)
        return {"train": (images[train], labels[train]), "val": (images[val], labels[val])}

    def _stratified(self, labels: Tensor, share: float, seed: int, key: str,
                    scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """Indices of the kept and the held-out part (``share`` of ``labels``, stratified by class).
        Both parts need an example of every class: a share that leaves a class out is reported at
        ``data.<key>``, whose value is ``share · scale``, with the range that would do."""
        count, classes = len(labels), len(torch.unique(labels))
        # scikit-learn's rounding of a fractional test_size
        n_held, n_kept = math.ceil(share * count), math.floor((1 - share) * count)
        if min(n_held, n_kept) < classes:
            low, high = classes / count * scale, (1 - classes / count) * scale
            raise KlexpError(
                f"data.{key}: {getattr(self, key)} holds out {n_held} of {count} examples and keeps "
                f"{n_kept}; a split stratified by {classes} classes needs {classes} on each side "
                f"(expected {key} between {low:.3g} and {high:.3g})")
        try:
            kept, held = train_test_split(torch.arange(count).numpy(), test_size=share, random_state=seed,
                                          stratify=labels.numpy())
        except ValueError as error:
            raise KlexpError(f"data.{key}: cannot split {count} examples of {classes} classes by "
                             f"{getattr(self, key)} ({error})") from None
        return kept, held

    def _hold_out(self, splits: dict[str, tuple[Tensor, Tensor]]) -> dict[str, tuple[Tensor, Tensor]]:
        kept, held = {}, []
        for name, (images, labels) in splits.items():
            mask = labels == self.holdout_class
            kept[name] = (images[~mask], labels[~mask])
            held.append(images[mask])
        kept["ood"] = (torch.cat(held), torch.full((sum(len(h) for h in held),), -1))
        return kept

    def _transform(self, batch: tuple[Tensor, ...], generator: torch.Generator) -> tuple[Tensor, ...]:
        images, labels = batch
        if self.augment == "shift":
            images = random_shift(images, generator)
        if self.binarize:
            images = torch.bernoulli(images, generator=generator)
        return images, labels

    def train_dataloader(self) -> TensorBatches:
        if self._train_batches is None:
            rank, world = self._rank_and_world()
            needs_transform = self.augment != "none" or self.binarize
            self._train_batches = TensorBatches(
                self.splits["train"], self.batch_size, shuffle=True, seed=self.seed,
                transform=self._transform if needs_transform else None, rank=rank, world_size=world,
            )
            if self._train_batches_state is not None:
                self._train_batches.load_state_dict(self._train_batches_state)
        return self._train_batches

    def _eval_batches(self, split: str) -> TensorBatches:
        rank, world = self._rank_and_world()
        # Under DDP evaluation shares are equal too (a few examples repeat when the split does
        # not divide): Lightning's batch-size-weighted epoch mean across ranks is exact only then.
        return TensorBatches(self.splits[split], self.eval_batch_size, rank=rank, world_size=world)

    def val_dataloader(self) -> TensorBatches:
        return self._eval_batches("val")

    def test_dataloader(self) -> TensorBatches:
        return self._eval_batches("test")

    def ood_dataloader(self) -> TensorBatches | None:
        return self._eval_batches("ood") if "ood" in self.splits else None



def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def random_shift(images: Tensor, generator: torch.Generator, max_shift: int = 1) -> Tensor:
    """Translate each image by up to ``max_shift`` pixels along each axis, padding with zeros."""
    count, height, width = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    span = 2 * max_shift + 1
    rows = torch.randint(0, span, (count, 1, 1), generator=generator) + torch.arange(height).view(1, -1, 1)
    cols = torch.randint(0, span, (count, 1, 1), generator=generator) + torch.arange(width).view(1, 1, -1)
    return padded[torch.arange(count).view(-1, 1, 1), rows, cols]
