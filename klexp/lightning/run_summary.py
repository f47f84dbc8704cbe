"""The run record: ``summary.json`` in a run directory, written by a callback any Trainer can hold.

It says how the run ended (``running``, ``completed``, ``failed`` or ``interrupted``, with the
error), its final metrics and objective, the seed, the git commit and whether the tree had
uncommitted changes, library versions, start and end time and wall seconds, plus whatever the
caller adds (klexp's runner: experiment, overrides, stages). It is first written when training
really starts, so a run that fails while setting up leaves an existing directory as it was.
"""

from __future__ import annotations

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

SUMMARY_FILE = "summary.json"
_VERSIONED = ("torch", "pytorch_lightning", "hydra", "omegaconf", "gymnasium", "torchmetrics",
              "tensorboard", "numpy")


class RunSummary(pl.Callback):
    """Write ``<dirpath>/summary.json`` (see the module docstring) on rank zero.

    Args:
        dirpath: the run directory.
        objective: the metric that is the run's single number (``objective`` in the file).
        info: more keys for the file (``data`` may be updated until the run ends).
    """

    def __init__(self, dirpath: str | Path, objective: str | None = None,
                 info: Mapping[str, Any] | None = None) -> None:
        self.path = Path(dirpath) / SUMMARY_FILE
        self.started = time.time()
        seed = os.environ.get("PL_GLOBAL_SEED")
        self.data: dict[str, Any] = {
            "status": "running",
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

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._training = True
        self.write()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.finish("completed", trainer.callback_metrics)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._training:
            self.finish("completed", trainer.callback_metrics)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if not self._training:
            return  # set-up failed: nothing of the run directory is touched
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
        text = str(exception).strip()
        self.finish(status, trainer.callback_metrics,
                    error=text.splitlines()[0] if text else type(exception).__name__)

    def finish(self, status: str, metrics: Mapping[str, Any] | None = None,
               error: str | None = None) -> dict[str, Any]:
        """Record the outcome (merging ``metrics`` into those already recorded) and write."""
        ended = time.time()
        self.data.update(status=status, end_time=_iso(ended),
                         wall_seconds=round(ended - self.started, 3))
        if metrics is not None:
            self.data["metrics"] = {**self.data["metrics"], **scalar_metrics(metrics)}
            name = self.data["objective_name"]
            self.data["objective"] = self.data["metrics"].get(name) if name else None
        if error is not None:
            self.data["error"] = error
        self.write()
        return self.data

    @rank_zero_only
    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.data, indent=2, sort_keys=True, default=str) + "\n")
        temporary.replace(self.path)


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The one-number entries of a metrics mapping (tensors of one element, ints, floats)."""
    scalars = {}
    for key, value in metrics.items():
        if (isinstance(value, torch.Tensor) and value.numel() == 1) or (
                isinstance(value, (int, float)) and not isinstance(value, bool)):
            scalars[key] = float(value)
    return scalars


def final_metrics(metrics: Mapping[str, Any],
                  prefixes: tuple[str, ...] = ("val/", "test/")) -> dict[str, float]:
    """The finite scalar metrics whose names start with one of ``prefixes``."""
    return {k: v for k, v in scalar_metrics(metrics).items()
            if k.startswith(prefixes) and math.isfinite(v)}


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """The ``summary.json`` of a run directory."""
    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "unknown")
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
