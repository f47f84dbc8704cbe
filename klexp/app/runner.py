"""Run one experiment from a composed config: check, build, fit, test, record.

Nothing here knows which experiment it runs: data, task, KL terms, callbacks, logger and trainer
are all instantiated from the config, and the run record and dashboards are the same public
callbacks (``RunSummary``, ``Dashboards``) a user's own Trainer can hold. ``stages`` (a teacher
to distil from, a reference policy) are earlier runs of the same app whose checkpoints feed config
keys of this one.
"""

from __future__ import annotations

import copy
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import CheckpointIO
from pytorch_lightning.utilities.model_helpers import is_overridden
from rich.console import Console
from rich.table import Table

from klexp.app.config_checks import ConfigError, check_config, check_run_settings
from klexp.app.console import run_output
from klexp.app.hparams import hparams_of
from klexp.app.lifecycle import RunFailed, RunInterrupted, Terminated, refuse_pending
from klexp.app.preflight import check_before_fit, naming_stand_ins, stage_stand_ins
from klexp.app.stages import Compose, run_stages, stages_to_run
from klexp.errors import ConfigValueError, KlexpError
from klexp.lightning.checkpoint_io import AtomicCheckpointIO
from klexp.lightning.contract import check_module_terms, declared_outputs
from klexp.lightning.dashboards import Dashboards
from klexp.lightning.internals import checkpoint_logging_step
from klexp.lightning.logging import LOG_STEP_KEY
from klexp.lightning.loss import Term
from klexp.lightning.run_summary import RunSummary, stop_signal
from klexp.nets.frozen import load_checkpoint
from klexp.record import recorded_metrics

console = Console(stderr=True, soft_wrap=True)  # a line in a pipe is never cut at 80 columns


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


def build_terms(kl: Mapping[str, Any] | None) -> list[Term]:
    """One term per entry of ``cfg.kl`` (a KL term, or any other ``klexp.Term`` such as
    ``DistillTerm``); the entry's key is the term's name (null drops it)."""
    terms = []
    for name, node in (kl or {}).items():
        if node is None:
            continue
        term = instantiate_node(node, f"kl.{name}", name=name)
        if not isinstance(term, Term):
            raise ConfigError(f"kl.{name}: expected a term (_target_: klexp.kl_term, "
                              f"klexp.DistillTerm or another klexp.Term), "
                              f"got {type(term).__name__}")
        terms.append(term)
    return terms


def check_terms_against_task(terms: Sequence[Term], task: pl.LightningModule) -> None:
    """Before anything is built: every output a term reads is one the task declares
    (``output_names``), and the task's own checks of its terms (``check_terms``) pass."""
    names = declared_outputs(task)
    for term in terms:
        if names is not None:
            try:
                term.check_outputs(names, f"{type(task).__name__} returns")
            except KlexpError as error:
                raise ConfigError(f"kl.{term.name}: {error}") from None
    check_module_terms(task, terms)


def check_before_stages(cfg: DictConfig, overrides: Sequence[str] = (),
                        compose: Compose | None = None) -> None:
    """The task's, the terms' and the data's checks before the stages train for minutes: the task
    is built as it will be, first with a stand-in path where each stage will write its checkpoint
    (constructors store checkpoint paths and read them only when the model is configured), then,
    with ``compose``, with a stand-in file holding what that checkpoint will hold
    (``preflight.stage_stand_ins``), so that the network is checked against its stages' too."""
    probe = copy.deepcopy(cfg)
    for name, stage in stages_to_run(cfg).items():
        OmegaConf.update(probe, stage.checkpoint_to, f"<checkpoint of stage {name}>", merge=False)
    task = instantiate_node(probe.task, "task")
    check_terms_against_task(build_terms(probe.get("kl")), task)
    datamodule = instantiate_node(probe.data, "data") if probe.get("data") is not None else None
    check_before_fit(probe, task, datamodule, build=False)
    if compose is None:
        return
    with tempfile.TemporaryDirectory(prefix="klexp-stages-") as directory:
        stand_ins = stage_stand_ins(cfg, overrides, compose, instantiate_node, Path(directory))
        if stand_ins is None:
            return
        for name, path in stand_ins.items():
            OmegaConf.update(probe, cfg.stages[name].checkpoint_to, str(path), merge=False)
        with naming_stand_ins(stand_ins):
            check_before_fit(probe, instantiate_node(probe.task, "task"), datamodule)


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


def run(
    cfg: DictConfig,
    run_dir: Path | str,
    overrides: Sequence[str] = (),
    compose: Compose | None = None,
) -> dict[str, Any]:
    """Check ``cfg``, train and test, and return the run's summary (also in summary.json)."""
    run_dir = Path(run_dir)
    check_run_settings(cfg)
    check_config(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    info: dict[str, Any] = {"experiment": cfg.get("experiment_name"), "seed": cfg.get("seed"),
                            "overrides": list(overrides), "stages": {}}
    if stages_to_run(cfg):
        if compose is None:
            raise KlexpError("stages: this config has stages, which need the Hydra app to compose them")
        check_before_stages(cfg, overrides, compose)
        info["stages"] = run_stages(cfg, run_dir, overrides, compose, run, console)

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    task = instantiate_node(cfg.task, "task")
    terms = build_terms(cfg.get("kl"))
    check_terms_against_task(terms, task)
    datamodule = instantiate_node(cfg.data, "data") if cfg.get("data") is not None else None
    check_before_fit(cfg, task, datamodule)
    callbacks = build_callbacks(cfg.get("callbacks"))
    resume_step = checkpoint_step(cfg.get("ckpt_path"))
    if resume_step is not None:
        info["resumed_from_step"] = resume_step
        # metrics the run recorded before it stopped (the validation of a run stopped while
        # testing) stay in its record unless the resumed run logs them again
        info["metrics"] = recorded_metrics(run_dir)
    # On resume, TensorBoard drops events logged after the checkpoint by the killed process.
    purge = {"purge_step": resume_step} if resume_step is not None else {}
    logger = instantiate_node(cfg.logger, "logger", **purge) if cfg.get("logger") is not None else False
    will_test = bool(cfg.get("test", True)) and _has_test_data(task, datamodule)
    summary = RunSummary(run_dir, objective=cfg.get("objective"), info=info,
                         complete_after="test" if will_test else "fit")
    dashboards = Dashboards(hparams_of(cfg, overrides), write_hparams_after="test" if will_test else "fit")
    events_before = _events_files(logger)
    with run_output(bool(cfg.get("verbose", False))):
        trainer: pl.Trainer = instantiate_node(
            cfg.trainer, "trainer", logger=logger, callbacks=[*terms, *callbacks, summary, dashboards],
            plugins=with_atomic_checkpoints(cfg.trainer.get("plugins")))
        # Every check has passed (the Trainer's own too): a resume of a completed run is refused
        # now, before any file exists (begin_resume put it off so that a mistake in its overrides
        # is named first)
        refuse_pending()
        try:
            trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
            if will_test:
                trainer.test(task, datamodule=datamodule, verbose=False)
        except BaseException as error:
            if not summary.training_started:
                # stopped before the run went on (a refused resume): its events stay as they were
                _remove_new_events(logger, events_before)
            elif summary.data["status"] == "running" and signal_of(error) is not None:
                # a signal between Lightning's calls (after fit, before test), which no callback saw
                summary.finish("interrupted", signal=signal_of(error))
            ending = ending_of(error, summary.data, run_dir, trainer.global_step)
            if ending is error:
                raise
            raise ending from error
        finally:
            _flush(logger)
    if trainer.is_global_zero:
        print_run_result(summary.data, run_dir, logger)
    return summary.data


def with_atomic_checkpoints(plugins: Any) -> list[Any]:
    """The config's Trainer plugins, with ``AtomicCheckpointIO`` unless one of them is a
    ``CheckpointIO`` already (a user's own, or a test's that injects faults)."""
    built = [instantiate_node(p, "trainer.plugins") for p in (plugins or [])]
    if not any(isinstance(p, CheckpointIO) for p in built):
        built.append(AtomicCheckpointIO())
    return built


def ending_of(error: BaseException, record: Mapping[str, Any], run_dir: Path,
              step: int) -> BaseException:
    """What the command raises when fit or test stopped on ``error``: ``RunInterrupted`` for
    SIGTERM or SIGINT (Lightning turns them into ``SystemExit``: 0 for SIGTERM, 1 for SIGINT),
    ``RunFailed`` for an error of the environment (a full disk), else the error itself."""
    signal_name = signal_of(error)
    if signal_name is not None:
        return RunInterrupted(run_dir, signal_name, step if record["status"] == "interrupted" else None)
    if isinstance(error, OSError):
        return RunFailed(run_dir, error)
    return error


def signal_of(error: BaseException) -> str | None:
    """The signal behind ``error``: Lightning's ways of stopping on one (``stop_signal``; its
    ``SystemExit(1)`` after Ctrl-C carries the ``KeyboardInterrupt`` as context) or klexp's own
    ``Terminated``."""
    if isinstance(error, Terminated):
        return str(error)
    return stop_signal(error) or (stop_signal(error.__context__) if error.__context__ else None)


def _events_files(logger: Any) -> set[Path]:
    if not isinstance(logger, TensorBoardLogger):
        return set()
    return set(Path(logger.log_dir).glob("events.out.tfevents.*"))


def _remove_new_events(logger: Any, before: set[Path]) -> None:
    for path in _events_files(logger) - before:
        path.unlink(missing_ok=True)


def checkpoint_step(path: str | None) -> int | None:
    """The first logging step after a checkpoint: the one a module with its own x-axis saved
    (``LOG_STEP_KEY``), else Lightning's (``internals.checkpoint_logging_step``; the global step
    for a checkpoint without loop state); None without a checkpoint."""
    if path is None:
        return None
    checkpoint = load_checkpoint(path, "ckpt_path")
    if LOG_STEP_KEY in checkpoint:
        return int(checkpoint[LOG_STEP_KEY])
    step = checkpoint_logging_step(checkpoint)
    return int(checkpoint["global_step"]) if step is None else step


def _flush(logger: Any) -> None:
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.flush()


def print_run_result(summary: Mapping[str, Any], run_dir: Path, logger: Any) -> None:
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
