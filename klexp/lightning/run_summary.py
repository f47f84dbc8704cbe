"""The run record: ``summary.json`` in a run directory, written by a callback any Trainer can hold.

It says how the run ended (``running``, ``completed``, ``failed`` with the error, or
``interrupted`` with the signal), its final metrics and objective, the seed, the git commit and
whether the tree had uncommitted changes, library versions, start and end time and wall seconds,
plus whatever the caller adds (klexp's runner: experiment, overrides, stages). It is first written
when training really starts, so a run that fails while setting up leaves an existing directory as
it was.

A full disk must not keep the record at ``running``: while a run is under way, the directory
holds ``.summary.reserve`` (``RESERVE_BYTES`` written once the record first is), and a record
that cannot be written for want of space frees it and is written into what it leaves. The reserve
goes once the run has ended.
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from klexp.errors import KlexpError
from klexp.lightning.checkpoint_io import atomic_write_text
from klexp.record import (
    COMPLETED,
    FAILED,
    INTERRUPTED,
    RUNNING,
    STATUSES,
    SUMMARY_FILE,
    recorded_status,
    strict_json,
)

_VERSIONED = ("torch", "pytorch_lightning", "hydra", "omegaconf", "gymnasium", "torchmetrics",
              "tensorboard", "numpy")


class RecordRegression(KlexpError):
    """A write would replace a completed run's record by a lesser one."""


def stop_signal(exception: BaseException) -> str | None:
    """The signal that stopped a Trainer, from the exception its loops raised: Ctrl-C's
    ``KeyboardInterrupt`` is SIGINT, Lightning's ``SIGTERMException`` (raised at the next batch
    boundary after a SIGTERM) is SIGTERM; None for any other exception."""
    if isinstance(exception, KeyboardInterrupt):
        return "SIGINT"
    if isinstance(exception, SIGTERMException):
        return "SIGTERM"
    return None


class RunSummary(pl.Callback):
    """Write ``<dirpath>/summary.json`` (see the module docstring) on rank zero.

    The record is written atomically (a temporary file beside it, renamed into place) and never
    regresses: once it says ``completed``, no write of this or any later ``RunSummary`` replaces
    it by ``running``, ``failed`` or ``interrupted`` (such a write raises ``RecordRegression``).

    Args:
        dirpath: the run directory.
        objective: the metric that is the run's single number (``objective`` in the file).
        info: more keys for the file (``data`` may be updated until the run ends).
        complete_after: ``"fit"``: the run is complete when ``fit`` ends (a later ``test`` adds
            its metrics); ``"test"``: only when the ``test`` that follows the fit ends.
    """

    def __init__(self, dirpath: str | Path, objective: str | None = None,
                 info: Mapping[str, Any] | None = None, complete_after: str = "fit") -> None:
        if complete_after not in ("fit", "test"):
            raise ValueError(f"complete_after: expected 'fit' or 'test', got {complete_after!r}")
        self.path = Path(dirpath) / SUMMARY_FILE
        self.complete_after = complete_after
        self.started = time.time()
        seed = os.environ.get("PL_GLOBAL_SEED")
        self.data: dict[str, Any] = {
            "status": RUNNING,
            "seed": int(seed) if seed is not None else None,
            "objective_name": objective,
            "objective": None,
            "metrics": {},
            "git": git_state(),
            "versions": library_versions(),
            "start_time": _iso(self.started),
            "end_time": None,
            "wall_seconds": None,
            **dict(info or {}),
        }
        self._training = False

    @property
    def training_started(self) -> bool:
        """Whether the run went on past its set-up (its record has been written)."""
        return self._training

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._training = True
        self.write()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed fit whose checkpoint had already finished training has no on_train_start,
        # but its fit did end: what follows (the test) belongs to the run.
        self._training = True
        if self.complete_after == "fit":
            self.finish(COMPLETED, trainer.callback_metrics)
        else:
            self._merge(trainer.callback_metrics)
            self.write()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._training:
            self.finish(COMPLETED, trainer.callback_metrics)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if not self._training or self.data["status"] == COMPLETED:
            return  # set-up failed (nothing of the directory is touched), or the run is complete
        signal_name = stop_signal(exception)
        text = str(exception).strip()
        try:
            if signal_name is not None:
                self.finish(INTERRUPTED, trainer.callback_metrics, signal=signal_name)
            else:
                self.finish(FAILED, trainer.callback_metrics,
                            error=text.splitlines()[0] if text else type(exception).__name__)
        except OSError as error:  # e.g. the disk is full: the run's own error is what to raise
            rank_zero_warn(f"summary.json could not be written: {error}")

    def finish(self, status: str, metrics: Mapping[str, Any] | None = None,
               error: str | None = None, signal: str | None = None) -> dict[str, Any]:
        """Record the outcome (merging ``metrics`` into those already recorded) and write."""
        if status not in STATUSES:
            raise ValueError(f"status: expected one of {', '.join(STATUSES)}, got {status!r}")
        ended = time.time()
        self.data.update(status=status, end_time=_iso(ended),
                         wall_seconds=round(ended - self.started, 3))
        self._merge(metrics)
        if error is not None:
            self.data["error"] = error
        if signal is not None:
            self.data["signal"] = signal
        self.write()
        return self.data

    def _merge(self, metrics: Mapping[str, Any] | None) -> None:
        if metrics is not None:
            self.data["metrics"] = {**self.data["metrics"], **scalar_metrics(metrics)}
            name = self.data["objective_name"]
            self.data["objective"] = self.data["metrics"].get(name) if name else None

    @rank_zero_only
    def write(self) -> None:
        """Write the record atomically; refuse to replace a completed record by a lesser one. The
        space it needs is kept in reserve while the run is under way (see the module docstring)."""
        reserve = self.path.parent / RESERVE_FILE
        try:
            write_record(self.path, self.data)
        except OSError as error:
            if error.errno != errno.ENOSPC or not reserve.exists():
                raise
            reserve.unlink()
            write_record(self.path, self.data)
        if self.data["status"] != RUNNING:
            reserve.unlink(missing_ok=True)
        elif not reserve.exists():
            _reserve(reserve)


#: where a run keeps the space its record will need (see the module docstring)
RESERVE_FILE = ".summary.reserve"
RESERVE_BYTES = 256 * 1024


def _reserve(path: Path) -> None:
    """Take ``RESERVE_BYTES`` of the disk in ``path`` (written, so that every file system really
    allocates them); on a disk already full, none."""
    try:
        with open(path, "wb") as file:
            file.write(bytes(RESERVE_BYTES))
            file.flush()
            os.fsync(file.fileno())
    except OSError:
        path.unlink(missing_ok=True)


def write_record(path: Path, data: Mapping[str, Any]) -> None:
    """Write a run record to ``path`` atomically, unless that would replace a ``completed``
    record by one that is not (``RecordRegression``)."""
    if data.get("status") != COMPLETED and recorded_status(path.parent) == COMPLETED:
        raise RecordRegression(f"summary.json: {path} records a completed run; it is never replaced "
                               f"by a {data.get('status')!r} one")
    atomic_write_text(path, json.dumps(strict_json(data), indent=2, sort_keys=True, default=str,
                                       allow_nan=False) + "\n")


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The one-number entries of a metrics mapping (tensors of one element, ints, floats), except
    Lightning's ``step``: the x-axis a module with its own logging step hands its epoch metrics
    (``klexp.lightning.logging.log_metrics``), not a metric of the run."""
    scalars = {}
    for key, value in metrics.items():
        if key == "step":
            continue
        if (isinstance(value, torch.Tensor) and value.numel() == 1) or (
                isinstance(value, (int, float)) and not isinstance(value, bool)):
            scalars[key] = float(value)
    return scalars


def final_metrics(metrics: Mapping[str, Any],
                  prefixes: tuple[str, ...] = ("val/", "test/")) -> dict[str, float]:
    """The finite scalar metrics whose names start with one of ``prefixes``."""
    return {k: v for k, v in scalar_metrics(metrics).items()
            if k.startswith(prefixes) and math.isfinite(v)}


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            package = __import__(name)
            versions[name] = getattr(package, "__version__", "unknown")
        except ImportError:
            continue
    return versions


def git_state(directory: Path | None = None) -> dict[str, Any]:
    """The commit of the git repository of ``directory`` and whether it has uncommitted changes;
    by default the project being run (the working directory), else klexp's own checkout."""
    if directory is None:
        state = git_state(Path.cwd())
        return state if state["commit"] is not None else git_state(Path(__file__).resolve().parent)
    cwd = directory
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")
