"""Faults injected where a run writes: a checkpoint I/O whose disk fills up after some saves."""

from __future__ import annotations

import errno
import os
from typing import Any

import torch

from klexp.lightning.checkpoint_io import AtomicCheckpointIO, atomic_write


class FullDiskCheckpointIO(AtomicCheckpointIO):
    """``AtomicCheckpointIO`` on a disk that fills up: save number ``after + 1`` (and every later
    one) writes half of its bytes and then fails with ENOSPC, as a real full disk does."""

    def __init__(self, after: int = 0) -> None:
        super().__init__()
        self.after = after
        self.saves = 0

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        self.saves += 1
        if self.saves <= self.after:
            return super().save_checkpoint(checkpoint, path, storage_options)

        def write_half(file: Any) -> None:
            import io

            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            file.write(buffer.getvalue()[: buffer.tell() // 2])
            file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        atomic_write(path, write_half)
