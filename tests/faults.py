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


class SignalAt:
    """A callback that sends this process ``signum`` at the start of batch ``batch`` of ``stage``
    (``train`` or ``test``), as ``timeout``, ``docker stop`` or Ctrl-C would at that moment."""

    def __new__(cls, stage: str, batch: int = 0, signum: int = 15):
        import pytorch_lightning as pl

        def send(index: int) -> None:
            if index == batch:
                os.kill(os.getpid(), signum)

        class _SignalAt(pl.Callback):
            def on_train_batch_start(self, trainer: Any, pl_module: Any, b: Any, index: int) -> None:
                if stage == "train":
                    send(trainer.global_step)

            def on_test_batch_start(self, trainer: Any, pl_module: Any, b: Any, index: int,
                                    *args: Any) -> None:
                if stage == "test":
                    send(index)

        return _SignalAt()
