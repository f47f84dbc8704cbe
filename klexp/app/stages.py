"""Stages: earlier runs of the same app whose last checkpoints feed config keys of this one (a
teacher to distil from, a deterministic baseline, a reference policy), so that no experiment
needs code of its own in the runner. A stage whose key the run already sets
(``task.teacher_checkpoint=<file>``) is not run: the run reuses that checkpoint."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console

CHECKPOINT_DIR = "checkpoints"
# Command-line overrides a stage shares with its run: the same data, trainer and logging.
INHERITED_BY_STAGES = ("data", "trainer", "callbacks", "logger", "env", "threads")

Compose = Callable[[Sequence[str]], DictConfig]
RunFunction = Callable[..., Mapping[str, Any]]


def _override_root(override: str) -> str:
    key = override.lstrip("+~").split("=", 1)[0]
    return re.split(r"[.@]", key, maxsplit=1)[0]


def stages_to_run(cfg: DictConfig) -> dict[str, DictConfig]:
    """The stages of ``cfg`` that run: each one not null whose ``checkpoint_to`` key ``cfg``
    leaves null. A key set already names the checkpoint to reuse instead of training the stage
    again (one key, e.g. ``task.teacher_checkpoint=<file>``); the run checks it before the
    Trainer exists, as any checkpoint its task reads."""
    return {name: stage for name, stage in (cfg.get("stages") or {}).items()
            if stage is not None and OmegaConf.select(cfg, stage.checkpoint_to) is None}


def stage_config(cfg: DictConfig, stage: DictConfig, overrides: Sequence[str], compose: Compose,
                 stage_dir: Path) -> tuple[DictConfig, list[str]]:
    """The config a stage runs with, and its overrides: the stage's own ``overrides`` followed by
    the run's command-line overrides of data, trainer, callbacks, logger, env and threads, with
    the run's seed, no stages of its own, and ``stage_dir`` as its output directory."""
    inherited = [o for o in overrides if _override_root(o) in INHERITED_BY_STAGES]
    stage_overrides = [*stage.overrides, *inherited]
    stage_cfg = compose(stage_overrides)
    with open_dict(stage_cfg):
        stage_cfg.paths.output_dir = str(stage_dir)
        stage_cfg.stages = None
        stage_cfg.seed = cfg.seed
    return stage_cfg, stage_overrides


def run_stages(cfg: DictConfig, run_dir: Path, overrides: Sequence[str], compose: Compose,
               run: RunFunction, console: Console) -> dict[str, Any]:
    """Run each stage of ``cfg.stages`` in ``run_dir/<stage>`` with ``run`` and write its last
    checkpoint into the key the stage names (``checkpoint_to``). A stage is composed (by
    ``compose``) from its own ``overrides`` followed by the run's command-line overrides of data,
    trainer, callbacks, logger, env and threads, so a teacher trains on the same data as its
    student. A stage whose key is set already is not run (``stages_to_run``). Returns, per stage
    run, its run directory, checkpoint and final metrics."""
    results = {}
    for name, stage in stages_to_run(cfg).items():
        stage_dir = run_dir / name
        stage_cfg, stage_overrides = stage_config(cfg, stage, overrides, compose, stage_dir)
        console.print(f"[bold]stage {name}[/]: {' '.join(stage_overrides)}")
        summary = run(stage_cfg, stage_dir, overrides=stage_overrides, compose=compose)
        checkpoint = stage_dir / CHECKPOINT_DIR / "last.ckpt"
        OmegaConf.update(cfg, stage.checkpoint_to, str(checkpoint), merge=False)
        results[name] = {"run_dir": str(stage_dir), "checkpoint": str(checkpoint),
                         "metrics": summary["metrics"]}
    return results
