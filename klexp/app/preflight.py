"""Decide before building: what the data, the task, a checkpoint and the environment can decide is
decided before the logger, the Trainer or any file of the run exists.

One mechanism for every such check: do, on its own and writing nothing, what Lightning would do
first once the Trainer exists, so that a problem surfaces as one ``KlexpError`` line instead of a
traceback from scikit-learn, Gymnasium or Lightning after the run's files are there:

1. the DataModule is prepared and set up for the stages the run will use (splits against the
   data and its classes, data files, train and test agreeing); Lightning calls ``setup`` again
   later, so a DataModule keeps what it loaded (klexp's do);
2. the task has the steps the run will ask of it (``training_step``, and ``test_step`` when it
   tests);
3. a copy of the task builds what it builds lazily — its network for the data's shape, its
   environment with its kwargs, a teacher or reference checkpoint — through the optional
   ``configure_model_for(datamodule)`` (``klexp.BuildsForData``), under a saved random state,
   so the run's own random streams and numbers are untouched;
4. the checkpoint to resume from is read (``weights_only``) and its ``state_dict`` compared with
   the built copy's, naming the first key that does not fit with both shapes.

A module without ``configure_model_for`` takes part too: one that builds everything in its
constructor is compared as constructed; one that builds in ``configure_model`` is left to Lightning.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.model_helpers import is_overridden

from klexp.app.config_checks import ConfigError
from klexp.app.stages import Compose, stage_config, stages_to_run
from klexp.errors import KlexpError
from klexp.lightning.contract import builds_for_data
from klexp.nets.frozen import first_mismatch, load_checkpoint


def check_before_fit(cfg: DictConfig, task: pl.LightningModule,
                     datamodule: pl.LightningDataModule | None, *, build: bool = True) -> None:
    """Set up ``datamodule``, check the task's steps, build a copy of ``task`` and fit
    ``cfg.ckpt_path`` against it (``build=False``: data and steps only, for a run whose task reads
    checkpoints that earlier stages have yet to write). Runs on the process that starts the run
    (global rank 0); ranks started beside it leave data preparation to Lightning's barriers."""
    if rank_zero_only.rank != 0:
        return
    will_test = bool(cfg.get("test", True)) and has_test_data(task, datamodule)
    if datamodule is not None:
        set_up(datamodule, ("fit", "test") if will_test else ("fit",))
    check_steps(task, datamodule, will_test)
    if not build:
        return
    built = built_copy(task, datamodule)
    if cfg.get("ckpt_path") is not None and built is not None:
        check_checkpoint_fits(str(cfg.ckpt_path), built)


def has_test_data(task: pl.LightningModule, datamodule: pl.LightningDataModule | None) -> bool:
    """Whether the task or the DataModule serves test batches."""
    if is_overridden("test_dataloader", task):
        return True
    return datamodule is not None and is_overridden("test_dataloader", datamodule)


def set_up(datamodule: pl.LightningDataModule, stages: tuple[str, ...]) -> None:
    """``prepare_data`` and ``setup`` for each stage, as the Trainer will call them; an error
    that is not klexp's own becomes one line at ``data``."""
    with _one_line("data"):
        datamodule.prepare_data()
        for stage in stages:
            datamodule.setup(stage)


def check_steps(task: pl.LightningModule, datamodule: pl.LightningDataModule | None,
                will_test: bool) -> None:
    """The task can do what the run asks of it: train on batches from somewhere, and test."""
    name = type(task).__name__
    if not is_overridden("training_step", task):
        raise ConfigError(f"task: {name} has no training_step (expected a LightningModule that trains)")
    serves_train = datamodule is not None and is_overridden("train_dataloader", datamodule)
    if not serves_train and not is_overridden("train_dataloader", task):
        raise ConfigError(f"data: {name} serves no training batches of its own and the config "
                          "has no DataModule that does (expected data=<a DataModule>)")
    if will_test and not is_overridden("test_step", task):
        raise ConfigError(f"test: the run tests on the test split, but {name} has no test_step "
                          "(expected test=false, or a task with a test_step)")


def built_copy(task: pl.LightningModule,
               datamodule: pl.LightningDataModule | None) -> pl.LightningModule | None:
    """A copy of the task as the run will build it: built by ``configure_model_for(datamodule)``
    under a saved random state, or as constructed when it builds nothing lazily; None when it
    builds in ``configure_model`` only (what it will hold is then unknown before the Trainer), or
    cannot be copied."""
    builds = builds_for_data(task)
    if is_overridden("configure_model", task) and not builds:
        return None
    try:
        probe = copy.deepcopy(task)
    except Exception:
        return None  # left to Lightning, which builds the task itself
    if builds:
        with saved_random_state(), _one_line("task"):
            probe.configure_model_for(datamodule)
    return probe


def check_checkpoint_fits(path: str, task: pl.LightningModule, key: str = "ckpt_path") -> None:
    """The checkpoint's ``state_dict`` loads into ``task`` (after the task's own
    ``on_load_checkpoint``, as Lightning does it), strictly unless ``task.strict_loading`` is off;
    else one line naming the first key that does not fit, with both shapes."""
    checkpoint = load_checkpoint(path, key)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise KlexpError(f"{key}: {Path(path).expanduser()} is not a Lightning checkpoint (it has no "
                         "state_dict)")
    with _one_line("task"):
        task.on_load_checkpoint(checkpoint)
    problem = first_mismatch(task.state_dict(), checkpoint["state_dict"],
                             strict=task.strict_loading)
    if problem is not None:
        raise KlexpError(f"{key}: {Path(path).expanduser()} does not fit the task as configured: "
                         f"{problem}")


def stage_stand_ins(cfg: DictConfig, overrides: Sequence[str], compose: Compose,
                    instantiate: Callable[..., Any], directory: Path) -> dict[str, Path] | None:
    """For each stage of ``cfg``, a checkpoint in ``directory`` holding what the stage's own
    checkpoint will hold of its task — the ``state_dict`` of its task built for its data and what
    its ``on_save_checkpoint`` adds — so that the run's task can be built and checked against its
    stages before they train. None when a stage's task builds only under a trainer."""
    stand_ins = {}
    for name, stage in stages_to_run(cfg).items():
        stage_cfg, _ = stage_config(cfg, stage, overrides, compose, directory / name)
        try:
            task = instantiate(stage_cfg.task, "task")
            datamodule = instantiate(stage_cfg.data, "data") if stage_cfg.get("data") is not None else None
            if datamodule is not None:
                set_up(datamodule, ("fit",))
            built = built_copy(task, datamodule)
            if built is None:
                return None
            checkpoint: dict[str, Any] = {"state_dict": built.state_dict()}
            with _one_line("task"):
                built.on_save_checkpoint(checkpoint)
        except KlexpError as error:
            raise KlexpError(f"stages.{name}: {error}") from None
        stand_ins[name] = directory / f"{name}.ckpt"
        torch.save(checkpoint, stand_ins[name])
    return stand_ins


@contextmanager
def naming_stand_ins(stand_ins: Mapping[str, Path]) -> Iterator[None]:
    """A problem found in a stand-in checkpoint names the stage that will write the real one."""
    try:
        yield
    except KlexpError as error:
        message = str(error)
        for name, path in stand_ins.items():
            message = message.replace(str(path), f"<the checkpoint stage {name} will write>")
        if message == str(error):
            raise
        raise KlexpError(message) from None


@contextmanager
def saved_random_state() -> Iterator[None]:
    """Restore torch's (CPU), NumPy's and Python's global random states on exit, as seeded by
    ``seed_everything``: whatever is drawn inside leaves the run's streams as they were."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


@contextmanager
def _one_line(key: str) -> Iterator[None]:
    """An error from user code that is not klexp's own becomes one line at ``key``."""
    try:
        yield
    except KlexpError:
        raise
    except Exception as error:
        text = str(error).strip()
        first = text.splitlines()[0] if text else type(error).__name__
        raise ConfigError(f"{key}: {first}") from None

