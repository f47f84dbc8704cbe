"""MNIST-format IDX files from a local directory (plain or gzip-compressed).

Expects ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte`` (each optionally with ``.gz``), as distributed for MNIST, Fashion-MNIST
and KMNIST. Nothing is downloaded. The t10k files are the test split; validation comes out of train.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from klexp.data.images import ImageClassData
from klexp.errors import KlexpError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes: a big-endian magic number, one 4-byte size per
    dimension, then the data. Raises ``KlexpError`` naming the file for any format problem."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise KlexpError(f"{path}: cannot read IDX file ({error})") from None
    if len(raw) < 4:
        raise KlexpError(f"{path}: file is {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise KlexpError(
            f"{path}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(IDX {'images' if expected_magic == IMAGES_MAGIC else 'labels'} of unsigned bytes)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise KlexpError(f"{path}: truncated header ({len(raw)} bytes, expected {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    found = len(raw) - header
    if found != expected:
        raise KlexpError(
            f"{path}: header promises shape {shape} = {expected} bytes of data, found {found} "
            f"({'truncated' if found < expected else 'trailing bytes'})"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


class IdxData(ImageClassData):
    """IDX image/label files under ``root``; intensities 0–255 scaled to [0, 1]."""

    def __init__(self, root: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()

    def _find(self, name: str) -> Path:
        for candidate in (self.root / name, self.root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
        raise KlexpError(f"data.root: {self.root} has no {name} (or {name}.gz)")

    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        if not self.root.is_dir():
            raise KlexpError(f"data.root: directory {self.root} does not exist")
        paths = {split: (self._find(images), self._find(labels))
                 for split, (images, labels) in FILES.items()}
        splits = {}
        for split, (image_path, label_path) in paths.items():
            images = read_idx(image_path, IMAGES_MAGIC)
            labels = read_idx(label_path, LABELS_MAGIC)
            if len(images) != len(labels):
                raise KlexpError(
                    f"{self.root}: {split} has {len(images)} images but {len(labels)} labels"
                )
            splits[split] = (
                torch.from_numpy(images.astype(np.float32) / 255.0),
                torch.from_numpy(labels.astype(np.int64)),
            )
        self._check_test_matches_train(splits, paths)
        return splits

    def _check_test_matches_train(self, splits: dict[str, tuple[Tensor, Tensor]],
                                  paths: dict[str, tuple[Path, Path]]) -> None:
        """The test files hold images of the training images' shape, and only classes the
        training files hold (a network is built for those)."""
        (train_images, train_labels), (test_images, test_labels) = splits["train"], splits["test"]
        if train_images.shape[1:] != test_images.shape[1:]:
            raise KlexpError(
                f"data.root: {paths['test'][0].name} holds {_size(test_images)} images, "
                f"{paths['train'][0].name} {_size(train_images)}: expected test images of the "
                f"training images' shape")
        unseen = sorted(set(test_labels.tolist()) - set(train_labels.tolist()))
        if unseen:
            raise KlexpError(
                f"data.root: {paths['test'][1].name} holds classes {unseen} that "
                f"{paths['train'][1].name} does not: expected test classes among the training "
                f"classes {sorted(set(train_labels.tolist()))}")


def _size(images: Tensor) -> str:
    return "×".join(str(n) for n in images.shape[1:])


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write unsigned bytes as an IDX file (gzip when the name ends in ``.gz``)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x00000800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(header + array.tobytes())
