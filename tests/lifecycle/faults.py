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

The fault is injected into the file the Trainer's ``CheckpointIO.save_checkpoint`` opens for writing
(through ``open`` or ``os.fdopen``, in the saving thread only), whichever CheckpointIO the runner
installs, so it reaches the file the way a real one would: half of a write lands, then the error
(or the pause).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytorch_lightning as pl


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
            fault = self._fault(self.saves)
            if fault is None:
                save(checkpoint, path, *args, **kwargs)
            else:
                with _files_of_this_thread(fault):
                    save(checkpoint, path, *args, **kwargs)
            _log("saved", dir=self.run_dir, step=int(checkpoint.get("global_step", -1)),
                 path=str(path))

        checkpoint_io.save_checkpoint = save_checkpoint
        checkpoint_io._faults_wrapped = True

    def _fault(self, number: int) -> Any:
        """What the first write of checkpoint save ``number`` does to a file, or None."""
        full = self.full_disk_from is not None and number >= self.full_disk_from
        slow = self.slow_save is not None and number == self.slow_save[0]
        if not (full or slow):
            return None
        fired = []

        def write(file: Any, data: Any) -> Any:
            if fired and not full:
                return file.write(data)
            fired.append(True)
            data = bytes(data)
            file.write(data[: len(data) // 2])
            file.flush()
            if full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            _log("saving", dir=self.run_dir, number=number)
            time.sleep(self.slow_save[1])
            return file.write(data[len(data) // 2:]) + len(data) // 2

        return write

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _log("train_start", dir=self.run_dir, step=trainer.global_step)

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        if self.step_sleep:
            time.sleep(self.step_sleep)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _log("train_end", dir=self.run_dir, step=trainer.global_step)


class _FaultyFile:
    """A file whose writes go through ``fault`` (every other use goes to the file itself)."""

    def __init__(self, file: Any, fault: Any) -> None:
        self._file, self._fault = file, fault

    def write(self, data: Any) -> Any:
        return self._fault(self._file, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def __enter__(self) -> _FaultyFile:
        self._file.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._file.__exit__(*exc)


@contextlib.contextmanager
def _files_of_this_thread(fault: Any) -> Iterator[None]:
    """Inside, files this thread opens for writing (``open``, ``os.fdopen``: whichever way the
    CheckpointIO opens its file) write through ``fault``; other threads' files are untouched."""
    thread = threading.get_ident()
    real_open, real_fdopen = builtins.open, os.fdopen

    def wrap(opened: Any, mode: str) -> Any:
        writing = any(flag in mode for flag in "wax+")
        return _FaultyFile(opened, fault) if writing and threading.get_ident() == thread else opened

    def faulty_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        return wrap(real_open(file, mode, *args, **kwargs), mode)

    def faulty_fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        return wrap(real_fdopen(fd, mode, *args, **kwargs), mode)

    with mock.patch.object(builtins, "open", faulty_open), mock.patch.object(os, "fdopen", faulty_fdopen):
        yield
