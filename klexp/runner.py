"""Run one experiment from a composed config: validate, build, fit, test, record.

Nothing here knows which experiment it runs: data, task, KL terms, callbacks, logger and trainer
are all instantiated from the config. ``stages`` (a teacher to distil from, a reference policy)
are earlier runs of the same app with their own overrides, whose checkpoints feed config keys of
this one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.model_helpers import is_overridden
from rich.console import Console
from rich.table import Table

from klexp import tracking
from klexp.checkpoints import load_checkpoint
from klexp.errors import ConfigValueError, KlexpError
from klexp.terms import KLTerm
from klexp.validation import ConfigError, check_config, check_run_settings

CHECKPOINT_DIR = "checkpoints"
console = Console(stderr=True)


def instantiate_node(node: Any, path: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with a constructor's range errors reported at their key's path."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause, full_key = _innermost(error, path)
        if isinstance(cause, ConfigValueError):
            raise ConfigError(f"{full_key}.{cause.key}: {cause.message}") from None
        if isinstance(cause, KlexpError):
            raise cause from None
        first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ConfigError(f"{full_key}: {first_line}") from None


def _innermost(error: BaseException, path: str) -> tuple[BaseException, str]:
    full_key = path
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        match = re.search(r"full_key: (\S+)", str(error))
        if match:
            full_key = match.group(1)
        error = error.__cause__
    return error, full_key


def build_terms(kl: Mapping[str, Any] | None) -> list[KLTerm]:
    """One ``KLTerm`` per entry of ``cfg.kl``; the entry's key is the term's name (null drops it)."""
    terms = []
    for name, node in (kl or {}).items():
        if node is None:
            continue
        term = instantiate_node(node, f"kl.{name}", name=name)
        if not isinstance(term, KLTerm):
            raise ConfigError(f"kl.{name}: expected a KLTerm (_target_: klexp.terms.KLTerm), "
                              f"got {type(term).__name__}")
        terms.append(term)
    return terms


def check_terms_against_task(terms: Sequence[KLTerm], task: pl.LightningModule) -> None:
    """Every output a term reads must be one the task produces (checked before training)."""
    names = getattr(task, "output_names", None)
    if names is None:
        return
    for term in terms:
        try:
            term.check_outputs(names, type(task).__name__)
        except ConfigValueError as error:
            raise ConfigError(f"kl.{term.name}.{error.key}: {error.message}") from None


def build_callbacks(callbacks: Mapping[str, Any] | None) -> list[pl.Callback]:
    built = []
    for name, node in (callbacks or {}).items():
        if node is not None:
            built.append(instantiate_node(node, f"callbacks.{name}"))
    return built


def _has_test_data(task: pl.LightningModule, datamodule: pl.LightningDataModule | None) -> bool:
    if is_overridden("test_dataloader", task):
        return True
    return datamodule is not None and is_overridden("test_dataloader", datamodule)


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    scalars = {}
    for key, value in metrics.items():
        if (isinstance(value, torch.Tensor) and value.numel() == 1) or isinstance(value, (int, float)):
            scalars[key] = float(value)
    return scalars


# Command-line overrides a stage shares with its run: the same data, trainer and logging.
INHERITED_BY_STAGES = ("data", "trainer", "callbacks", "logger", "env", "threads")


def _override_root(override: str) -> str:
    key = override.lstrip("+~").split("=", 1)[0]
    return re.split(r"[.@]", key, maxsplit=1)[0]


def run_stages(cfg: DictConfig, run_dir: Path, overrides: Sequence[str], compose: Any) -> dict[str, Any]:
    """Run each earlier stage in ``run_dir/<stage>`` and write its last checkpoint into the key the
    stage names (``checkpoint_to``). A stage is composed from its own ``overrides`` followed by the
    run's command-line overrides of data, trainer, callbacks, logger, env and threads, so a teacher
    trains on the same data as its student. ``compose(overrides)`` composes the app's config."""
    results = {}
    for name, stage in (cfg.get("stages") or {}).items():
        if stage is None:
            continue
        inherited = [o for o in overrides if _override_root(o) in INHERITED_BY_STAGES]
        stage_overrides = [*stage.overrides, *inherited]
        stage_cfg = compose(stage_overrides)
        stage_dir = run_dir / name
        with open_dict(stage_cfg):
            stage_cfg.paths.output_dir = str(stage_dir)
            stage_cfg.stages = None
            stage_cfg.seed = cfg.seed
        console.print(f"[bold]stage {name}[/]: {' '.join(stage_overrides)}")
        summary = run(stage_cfg, stage_dir, overrides=stage_overrides, compose=compose)
        checkpoint = stage_dir / CHECKPOINT_DIR / "last.ckpt"
        OmegaConf.update(cfg, stage.checkpoint_to, str(checkpoint), merge=False)
        results[name] = {"run_dir": str(stage_dir), "checkpoint": str(checkpoint),
                         "metrics": summary["metrics"]}
    return results


def run(
    cfg: DictConfig,
    run_dir: Path | str,
    overrides: Sequence[str] = (),
    compose: Any = None,
) -> dict[str, Any]:
    """Validate ``cfg``, train and test, and return the run's summary (also in summary.json)."""
    run_dir = Path(run_dir)
    check_run_settings(cfg)
    check_config(cfg)
    record = tracking.RunRecord(run_dir, cfg, overrides)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))

    if cfg.get("stages"):
        if compose is None:
            raise KlexpError("stages: this config has stages, which need the Hydra app to compose them")
        record.data["stages"] = run_stages(cfg, run_dir, overrides, compose)

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule = instantiate_node(cfg.data, "data") if cfg.get("data") is not None else None
    task = instantiate_node(cfg.task, "task")
    terms = build_terms(cfg.get("kl"))
    check_terms_against_task(terms, task)
    callbacks = build_callbacks(cfg.get("callbacks"))
    resume_step = checkpoint_step(cfg.get("ckpt_path"))
    if resume_step is not None:
        record.data["resumed_from_step"] = resume_step
    # On resume, TensorBoard drops events logged after the checkpoint by the killed process.
    purge = {"purge_step": resume_step} if resume_step is not None else {}
    logger = instantiate_node(cfg.logger, "logger", **purge) if cfg.get("logger") is not None else False
    started = _TrainingStarted(record, terms)
    trainer: pl.Trainer = instantiate_node(cfg.trainer, "trainer", logger=logger,
                                           callbacks=[*terms, *callbacks, started])

    metrics: dict[str, float] = {}
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        metrics.update(_scalar_metrics(trainer.callback_metrics))
        if cfg.get("test", True) and _has_test_data(task, datamodule):
            trainer.test(task, datamodule=datamodule, verbose=False)
            metrics.update(_scalar_metrics(trainer.callback_metrics))
    except BaseException as error:
        if not started.happened:
            raise  # set-up failed (data, checkpoint, …): nothing of the run directory is touched
        _flush(logger)
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        record.finish(status, _scalar_metrics(trainer.callback_metrics), error=message)
        raise

    summary = record.finish("completed", metrics)
    if isinstance(logger, TensorBoardLogger):
        final = {k: v for k, v in metrics.items() if k.startswith(("val/", "test/")) and math.isfinite(v)}
        tracking.log_hparams(logger, tracking.hparams_of(cfg, overrides), final,
                             chosen=tracking.override_keys(overrides), objective=cfg.get("objective"))
    _flush(logger)
    if trainer.is_global_zero:
        report(summary, run_dir, logger)
    return summary


class _TrainingStarted(pl.Callback):
    """Writes the run's record and dashboard layout once training has really started, so a run
    that fails while setting up (bad data path, unfit checkpoint) leaves an existing run
    directory as it was."""

    def __init__(self, record: tracking.RunRecord, terms: Sequence[KLTerm]) -> None:
        self.record, self.terms, self.happened = record, terms, False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.happened = True
        self.record.write()
        if isinstance(trainer.logger, TensorBoardLogger):
            charts = pl_module.custom_scalars() if hasattr(pl_module, "custom_scalars") else {}
            tracking.write_custom_scalars(trainer.logger, [t.name for t in self.terms], charts)


def checkpoint_step(path: str | None) -> int | None:
    """The logging step a checkpoint was saved at — Lightning's count of batches that stepped,
    which loggers use as their step (under manual optimisation ``global_step`` counts optimiser
    steps instead) — or None without a checkpoint."""
    if path is None:
        return None
    checkpoint = load_checkpoint(path, "ckpt_path")
    try:
        loop = checkpoint["loops"]["fit_loop"]
        stepped = int(loop["epoch_loop.state_dict"]["_batches_that_stepped"])
        progress = loop["epoch_loop.batch_progress"]["current"]
    except (KeyError, TypeError):
        return int(checkpoint["global_step"])
    # saved in on_train_batch_end, before Lightning counted that batch (it adds it on restore)
    return stepped + int(progress["completed"] < progress["ready"])


def _flush(logger: Any) -> None:
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.flush()


def report(summary: Mapping[str, Any], run_dir: Path, logger: Any) -> None:
    """Print the test (or final) metrics, where the run lives and how to look at it."""
    metrics = summary["metrics"]
    shown = {k: v for k, v in metrics.items() if k.startswith("test/")} or {
        k: v for k, v in metrics.items() if k.startswith("val/")}
    table = Table(title=f"{summary.get('experiment') or 'run'} — final metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(shown):
        table.add_row(key, f"{shown[key]:.4f}")
    out = Console(soft_wrap=True)
    out.print(table)
    if summary.get("objective") is not None:
        out.print(f"objective {summary['objective_name']} = {summary['objective']:.4f}")
    out.print(f"run directory: {run_dir}")
    if isinstance(logger, TensorBoardLogger):
        out.print(f"TensorBoard logs: {logger.log_dir}")
        out.print(f"view them with:  tensorboard --logdir {run_dir}")
