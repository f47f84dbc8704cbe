"""Run records and TensorBoard dashboards.

* ``summary.json`` in every run directory: final metrics, objective, seed, git commit and dirty flag,
  library versions, start/end time and wall seconds, and the failure if the run failed.
* TensorBoard HParams, written once at the end with the run's real final metrics.
* A custom-scalars layout: one chart per KL term (value, weight, loss) plus the task's own charts.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.tensorboard.summary import hparams as hparams_summary

SUMMARY_FILE = "summary.json"
_VERSIONED = ("torch", "pytorch_lightning", "hydra", "omegaconf", "gymnasium", "torchmetrics",
              "tensorboard", "numpy")


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
    """The commit of the repository klexp runs from and whether it has uncommitted changes."""
    cwd = directory or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


class RunRecord:
    """Collects what ``summary.json`` says about a run; ``write`` may be called repeatedly."""

    def __init__(self, run_dir: Path, cfg: DictConfig, overrides: Sequence[str]) -> None:
        self.run_dir = run_dir
        self.started = time.time()
        self.data: dict[str, Any] = {
            "status": "running",
            "experiment": cfg.get("experiment_name"),
            "seed": cfg.get("seed"),
            "overrides": list(overrides),
            "objective_name": cfg.get("objective"),
            "objective": None,
            "metrics": {},
            "stages": {},
            "git": git_state(),
            "versions": library_versions(),
            "start_time": _iso(self.started),
            "end_time": None,
            "wall_seconds": None,
        }

    def finish(self, status: str, metrics: Mapping[str, float] | None = None,
               error: str | None = None) -> dict[str, Any]:
        ended = time.time()
        self.data.update(status=status, end_time=_iso(ended),
                         wall_seconds=round(ended - self.started, 3))
        if metrics is not None:
            self.data["metrics"] = dict(metrics)
            name = self.data["objective_name"]
            self.data["objective"] = self.data["metrics"].get(name) if name else None
        if error is not None:
            self.data["error"] = error
        self.write()
        return self.data

    @rank_zero_only
    def write(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / SUMMARY_FILE
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.data, indent=2, sort_keys=True, default=str) + "\n")
        temporary.replace(path)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")


def read_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())


# ---------------------------------------------------------------------------- TensorBoard


def hparams_of(cfg: DictConfig, overrides: Sequence[str]) -> dict[str, Any]:
    """The run's overrides plus key config values, as TensorBoard HParams (scalars and strings)."""
    values: dict[str, Any] = {"experiment": cfg.get("experiment_name") or "", "seed": cfg.get("seed")}
    for name, term in (cfg.get("kl") or {}).items():
        if term is None:
            continue
        for key in ("weight", "direction", "estimator"):
            if key in term:
                values[f"kl.{name}.{key}"] = term[key]
        schedule = term.get("schedule")
        if schedule is not None:
            values[f"kl.{name}.schedule"] = str(schedule.get("_target_", "")).rsplit(".", 1)[-1]
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key not in NOT_HPARAMS:
            values[key] = _as_hparam(value)
    return {k: _as_hparam(v) for k, v in values.items()}


#: Overrides that change how a run is displayed or launched, not what it computes.
NOT_HPARAMS = frozenset({"callbacks.progress_bar", "trainer.enable_model_summary",
                         "trainer.enable_progress_bar", "launcher", "hparams_search"})


def override_keys(overrides: Sequence[str]) -> list[str]:
    """The hparams a user chose on the command line (where a sweep's varying keys always are)."""
    keys = (override.lstrip("+~").partition("=")[0] for override in overrides)
    return [key for key in keys if key not in NOT_HPARAMS]


def _as_hparam(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return str(OmegaConf.to_container(value) if isinstance(value, DictConfig) else value)


@rank_zero_only
def log_hparams(logger: TensorBoardLogger, hparams: Mapping[str, Any],
                metrics: Mapping[str, float], chosen: Sequence[str] = (),
                objective: str | None = None) -> None:
    """Write the HParams session once, naming metrics already logged as scalars, so the HParams
    table shows each run's final values (TensorBoard reads them from the scalar summaries).

    TensorBoard's HParams tab takes its columns from one run's experiment definition and shows
    the first five hparams and the first five metrics of it: hparams marked ``differs`` first, then
    by name; metrics in the order written. A run cannot see the rest of its sweep, so the hparams
    marked are the ``chosen`` ones (the command line's), and metrics are written objective first,
    then the ``test/`` and ``val/`` metrics, then their per-term and per-loss parts."""
    order = sorted(metrics, key=lambda k: (k != objective, k.count("/") > 1,
                                           not k.startswith("test/"), k))
    experiment, start, end = hparams_summary(dict(hparams), {k: metrics[k] for k in order})
    _mark_differs(experiment, set(chosen))
    writer = logger.experiment._get_file_writer()
    for summary in (experiment, start, end):
        writer.add_summary(summary)
    writer.flush()


@rank_zero_only
def write_custom_scalars(logger: TensorBoardLogger, term_names: Sequence[str],
                         task_charts: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
    """One Multiline chart per KL term (value, weight, loss; train and val) and the task's own.
    Tags are regular expressions, as TensorBoard's custom-scalars plugin reads them."""
    layout: dict[str, dict[str, list[Any]]] = {}
    if term_names:
        layout["KL terms"] = {
            name: ["Multiline", [f"^kl/{name}/(value|weight|loss)$",
                                 f"^val/kl/{name}/(value|weight|loss)$"]]
            for name in term_names
        }
    for title, charts in task_charts.items():
        layout[title] = {chart: ["Multiline", list(tags)] for chart, tags in charts.items()}
    if layout:
        logger.experiment.add_custom_scalars(layout)


def _mark_differs(experiment: Any, keys: set[str]) -> None:
    """Set ``differs`` on the experiment definition's hparams named in ``keys`` (in place)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    for value in experiment.value:
        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        for info in data.experiment.hparam_infos:
            info.differs = info.name in keys
        value.metadata.plugin_data.content = data.SerializeToString()
