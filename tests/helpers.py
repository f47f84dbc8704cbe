"""Shared helpers for tests: compose the app's config in-process and run it in a temp directory."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from klexp.app.in_process import composed_app, run_overrides

REPO = Path(__file__).resolve().parent.parent

# Overrides that make any experiment a seconds-long smoke run.
QUIET = ["callbacks.progress_bar=null", "trainer.enable_model_summary=false"]
FAST = [*QUIET, "trainer.max_epochs=1", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]


def compose_config(overrides: Sequence[str] = (), output_dir: Path | None = None) -> DictConfig:
    """The composed config as the app would see it (hydra node removed, output_dir set)."""
    with composed_app(overrides, output_dir or "unused-output-dir") as (cfg, _):
        return cfg


def run_experiment(overrides: Sequence[str], output_dir: Path) -> dict[str, Any]:
    """Compose and run in-process, as ``klexp <overrides>`` would; returns the run summary."""
    return run_overrides(overrides, output_dir)


def build_experiment(overrides: Sequence[str], output_dir: Path) -> None:
    """Everything ``klexp <overrides>`` decides and builds before it trains, as the runner does it:
    the config's checks, the task, its terms and their checks against it, the data set up, the
    task's network built (and a stage's, against stand-ins of its checkpoint), the callbacks, the
    logger and the Trainer. For a command that only changes values of a run trained elsewhere."""
    from hydra.utils import instantiate

    from klexp.app.config_checks import check_config, check_run_settings
    from klexp.app.preflight import check_before_fit
    from klexp.app.runner import (
        build_callbacks,
        build_terms,
        check_before_stages,
        check_terms_against_task,
        instantiate_node,
    )

    with composed_app(overrides, output_dir) as (cfg, compose_stage):
        check_run_settings(cfg)
        check_config(cfg)
        if cfg.get("stages"):
            check_before_stages(cfg, overrides, compose_stage)
        else:
            task = instantiate_node(cfg.task, "task")
            check_terms_against_task(build_terms(cfg.get("kl")), task)
            data = instantiate_node(cfg.data, "data") if cfg.get("data") is not None else None
            check_before_fit(cfg, task, data)
        build_callbacks(cfg.get("callbacks"))
        logger = instantiate(cfg.logger) if cfg.get("logger") is not None else False
        instantiate_node(cfg.trainer, "trainer", logger=logger)


def run_cli(args: Sequence[str], cwd: Path, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m klexp <args>`` in ``cwd`` (outputs/ lands there), a real process: for the
    contracts only a process can show (its exit status through a pipe, signals, DDP's ranks)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "klexp", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def cli(args: Sequence[str], cwd: Path, app: str | None = None) -> subprocess.CompletedProcess[str]:
    """``klexp <args>`` in ``cwd`` by the command's own entry point (``klexp.app.cli.main``) in this
    process, as ``run_cli`` would run it but without a Python and Lightning start-up (~6 s): its
    exit status, stdout and stderr (``sys.exit("klexp: …")`` printed as the interpreter would).
    ``app``: the module of another Hydra app (a user's own), run as ``python -m <app> <args>`` runs it.
    What the command changes in the process (working directory, argv, environment, signal
    handlers, logging, Hydra's global state) is put back, and the run directories it claimed are
    released, as the kernel would release them when its process ended."""
    import io
    import logging
    import signal

    from klexp.app import lifecycle
    from klexp.app.cli import main

    out, err = io.StringIO(), io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    root = logging.getLogger()
    logging_state = (root.handlers[:], root.level, logging.raiseExceptions)
    argv, environ, directory = sys.argv[:], dict(os.environ), os.getcwd()
    held = set(lifecycle._HELD)
    # Lightning's own lines reach the command's output, as in a process of its own (where they go
    # to Lightning's handler on stderr; here, imported under pytest, they go up to the root logger,
    # whose handlers the run's logging config sets): up to the root, whichever way it was imported
    lightning = logging.getLogger("pytorch_lightning")
    lightning_state = (lightning.handlers[:], lightning.propagate)
    lightning.handlers[:], lightning.propagate = [], True
    os.environ.pop("HYDRA_FULL_ERROR", None)
    os.chdir(cwd)
    status: int = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                if app is None:
                    main(list(args))
                else:
                    import runpy

                    sys.argv = [app, *args]
                    runpy.run_module(app, run_name="__main__", alter_sys=True)
            except SystemExit as exit_info:
                if isinstance(exit_info.code, str):
                    print(exit_info.code, file=sys.stderr)
                    status = 1
                else:
                    status = exit_info.code or 0
    finally:
        os.chdir(directory)
        sys.argv[:] = argv
        os.environ.clear()
        os.environ.update(environ)
        for number, handler in handlers.items():
            signal.signal(number, handler)
        for handler in root.handlers[:]:
            if handler not in logging_state[0]:
                root.removeHandler(handler)
                handler.close()
        root.handlers[:], root.level, logging.raiseExceptions = logging_state
        lightning.handlers[:], lightning.propagate = lightning_state
        GlobalHydra.instance().clear()
        for claimed in set(lifecycle._HELD) - held:
            lifecycle.release(claimed)
    return subprocess.CompletedProcess(["klexp", *args], status, out.getvalue(), err.getvalue())


class Sleep:
    """A callback that slows training down, so a test can kill a run mid-way (numerics unchanged)."""

    def __new__(cls, seconds: float):
        import time

        import pytorch_lightning as pl

        class _Sleep(pl.Callback):
            def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
                time.sleep(seconds)

        return _Sleep()


class PoisonWeights:
    """A callback that sets the model's first weight to NaN before training step ``step``."""

    def __new__(cls, step: int):
        import pytorch_lightning as pl
        import torch

        class _Poison(pl.Callback):
            def on_train_batch_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
                if trainer.global_step == step:
                    with torch.no_grad():
                        next(pl_module.parameters()).view(-1)[0] = float("nan")

        return _Poison()


class RecordTermWeights:
    """A callback that writes each rank's KL-term weights at the end of training to
    ``<directory>/weights_rank<r>.json`` (to check that DDP ranks stay in lock-step)."""

    def __new__(cls, directory: str):
        import json

        import pytorch_lightning as pl

        from klexp.lightning.term import kl_terms_of

        class _Record(pl.Callback):
            def on_train_end(self, trainer: Any, pl_module: Any) -> None:
                weights = {t.name: t.current_weight(trainer.global_step) for t in kl_terms_of(trainer)}
                path = Path(directory) / f"weights_rank{trainer.global_rank}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(weights))

        return _Record()
