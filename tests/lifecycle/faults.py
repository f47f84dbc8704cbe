"""A test-only callback that every process of the fault-injection suite carries
(``+callbacks.faults._target_=lifecycle.faults.Faults``). It changes no number of the run; what it
does is set per process by environment variables, so the reference run, a killed run and its
resume share one config:

* ``KLEXP_FAULT_LOG``: a JSON-lines file (outside the run directory) that receives this process's
  events: ``train_start``, ``saving`` (a checkpoint write began), ``saved`` (with its step) and
  ``train_end``, each with the pid, the run directory and the time. The harness reads it to kill at
  a chosen moment and to see which processes trained in which directory.
* ``KLEXP_FAULT_STEP_SLEEP``: seconds to sleep after each training batch (so a kill lands mid-run).
* ``KLEXP_FAULT_SLOW_SAVE=<k>:<seconds>``: the k-th checkpoint write of this process writes half
  its bytes, logs ``saving``, sleeps, then writes the rest (so a kill lands inside the write).
* ``KLEXP_FAULT_FULL_DISK=<k>``: from the k-th checkpoint write of this process on, every write
  stops half-way with ``OSError(ENOSPC)``, as on a full disk.

The writes are intercepted at ``torch.save`` inside the Trainer's ``CheckpointIO.save_checkpoint``,
whichever CheckpointIO the runner installs, so the fault reaches the file the way a real one would.
"""

from __future__ import annotations

import errno
import io
import json
import os
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytorch_lightning as pl
import torch


def _log(event: str, **fields: Any) -> None:
    path = os.environ.get("KLEXP_FAULT_LOG")
    if not path:
        return
    line = json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **fields})
    with open(path, "a") as file:  # one short line per write: appends of one process stay whole
        file.write(line + "\n")


class Faults(pl.Callback):
    """See the module docstring."""

    def __init__(self) -> None:
        self.saves = 0
        self.step_sleep = float(os.environ.get("KLEXP_FAULT_STEP_SLEEP") or 0)
        slow = os.environ.get("KLEXP_FAULT_SLOW_SAVE")
        self.slow_save = (int(slow.split(":")[0]), float(slow.split(":")[1])) if slow else None
        full = os.environ.get("KLEXP_FAULT_FULL_DISK")
        self.full_disk_from = int(full) if full else None
        self.run_dir = ""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.run_dir = str(Path(trainer.default_root_dir).resolve())
        checkpoint_io = trainer.strategy.checkpoint_io
        if getattr(checkpoint_io, "_faults_wrapped", False):
            return
        save = checkpoint_io.save_checkpoint

        def save_checkpoint(checkpoint: dict[str, Any], path: Any, *args: Any, **kwargs: Any) -> None:
            self.saves += 1
            with mock.patch.object(torch, "save", self._writer(torch.save)):
                save(checkpoint, path, *args, **kwargs)
            _log("saved", dir=self.run_dir, step=int(checkpoint.get("global_step", -1)),
                 path=str(path))

        checkpoint_io.save_checkpoint = save_checkpoint
        checkpoint_io._faults_wrapped = True

    def _writer(self, real_save: Any) -> Any:
        number = self.saves

        def write(obj: Any, file: Any, *args: Any, **kwargs: Any) -> None:
            slow = self.slow_save is not None and number == self.slow_save[0]
            full = self.full_disk_from is not None and number >= self.full_disk_from
            if not (slow or full):
                real_save(obj, file, *args, **kwargs)
                return
            if isinstance(file, (str, os.PathLike)):  # a path: open it so the fault reaches the file
                with open(file, "wb") as handle:
                    write(obj, handle)
                return
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            file.write(data[: len(data) // 2])
            file.flush()
            if full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            _log("saving", dir=self.run_dir, number=number)
            time.sleep(self.slow_save[1])
            file.write(data[len(data) // 2:])

        return write

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _log("train_start", dir=self.run_dir, step=trainer.global_step)

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        if self.step_sleep:
            time.sleep(self.step_sleep)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _log("train_end", dir=self.run_dir, step=trainer.global_step)
