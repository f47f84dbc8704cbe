"""A run directory is never silently reused.

A finished or killed run's directory holds its record (``.hydra/``), checkpoints, TensorBoard
events and ``summary.json``. A second run into it would replace the record and the summary, save
``last-v1.ckpt`` beside the old ``last.ckpt`` and append to the old TensorBoard run. So a new run
(or sweep) whose directory already holds any of klexp's artefacts is refused, in one line
pointing to ``klexp resume=<dir>``, which is how a run continues in place; the user's own files in
it (``out.txt``) do not count.

Hydra writes ``<dir>/.hydra/`` in ``run_job``, before the app's function runs; the hooks that come
earlier, with the directory already composed, are a Hydra callback's ``on_run_start`` and
``on_multirun_start``: ``RunDirectoryGuard`` takes the directory's lock there
(``klexp.app.lifecycle.DirectoryLock``; two commands started together into one directory cannot
both pass), then checks it. ``klexp.app.cli.main`` adds it to every command line
(``guard_overrides``).

srun, torchrun and Lightning's own DDP launcher start every process of a run with the same run
directory, and a process cannot tell its siblings' fresh files from an earlier run's: only the first
process (global rank 0) checks, and the others write no ``.hydra/`` record of their own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from klexp.app.lifecycle import DirectoryLocked, artefacts, claim, release
from klexp.app.sweep_checks import SweepJobRefused, check_sweep_jobs
from klexp.errors import KlexpError

# Where launchers put a process's rank: torchrun (RANK, LOCAL_RANK, GROUP_RANK), Lightning's DDP
# launcher (LOCAL_RANK, NODE_RANK), SLURM (SLURM_PROCID), LSF (JSM_NAMESPACE_RANK).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "GROUP_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
GUARD_KEY = "hydra.callbacks.run_directory"
GUARD_TARGET = "klexp.app.run_dirs.RunDirectoryGuard"
SHOWN_ENTRIES = 4
#: a plain interpolation of a config key (``${experiment_name}``, ``${kl.ce.weight}``), not a
#: resolver's (``${now:…}``, ``${hydra:…}``)
KEY_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")
#: an interpolation of Hydra's own node (``${hydra:job.num}``, ``${hydra:runtime.choices.data}``)
HYDRA_INTERPOLATION = re.compile(r"\$\{hydra:([\w.@]+)\}")
#: what Hydra's node holds that differs from one job of a sweep to the next, whatever it varies
PER_JOB = ("job.num", "job.id", "job.override_dirname")


class RunDirectoryInUse(KlexpError):
    """A new run or sweep would write into a directory that already holds one."""


def is_first_process(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is global rank 0 of its launch (or was started alone): no launcher
    variable in ``RANK_VARIABLES`` names another rank."""
    environ = os.environ if environ is None else environ
    for name in RANK_VARIABLES:
        value = environ.get(name, "0").strip()
        if value.isdigit() and int(value) != 0:
            return False
    return True


def guard_overrides(args: list[str], resume: bool, environ: Mapping[str, str] | None = None) -> list[str]:
    """Hydra overrides that put ``RunDirectoryGuard`` on this command (``resume``: the run
    continues in its own directory, which is then expected to hold it), and keep any process but
    the first from writing a ``.hydra/`` record into the run directory they share."""
    extra = []
    if not any(a.startswith(f"++{GUARD_KEY}") for a in args):
        extra += [f"++{GUARD_KEY}._target_={GUARD_TARGET}", f"++{GUARD_KEY}.resume={str(resume).lower()}"]
    if not is_first_process(environ):
        extra.append("hydra.output_subdir=null")
    return extra


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_ENTRIES])
    return shown + (", …" if len(names) > SHOWN_ENTRIES else "")


def check_new_run_directory(directory: Path) -> None:
    """Refuse a new run into ``directory`` (``hydra.run.dir``) if it holds any of klexp's
    artefacts (``klexp.app.lifecycle.artefacts``; foreign files do not count)."""
    if directory.exists() and not directory.is_dir():
        raise RunDirectoryInUse(f"hydra.run.dir: {directory} is a file, not a directory")
    found = artefacts(directory)
    if found:
        raise RunDirectoryInUse(
            f"hydra.run.dir: {directory} already holds a run ({_listed(found)}); continue it with "
            f"`klexp resume={directory}`, or give the new run another hydra.run.dir")


def check_new_sweep_directory(directory: Path) -> None:
    """Refuse a sweep into ``directory`` (``hydra.sweep.dir``) if it holds any of klexp's artefacts."""
    if directory.exists() and not directory.is_dir():
        raise RunDirectoryInUse(f"hydra.sweep.dir: {directory} is a file, not a directory")
    found = artefacts(directory)
    if found:
        raise RunDirectoryInUse(
            f"hydra.sweep.dir: {directory} already holds a sweep ({_listed(found)}); give the new "
            "sweep another hydra.sweep.dir (`klexp report` reads several; `klexp resume=<run dir>` "
            "continues one of its runs)")


def swept_keys(config: DictConfig) -> list[str]:
    """The keys and config groups a sweep varies: its command line's sweep overrides
    (``seed=0,1``, ``experiment=a,b``; a group given a package by its ``group@package`` name) and
    its sweeper's ``params`` (Optuna's search space)."""
    overrides = [str(o) for o in config.hydra.overrides.task]
    keys = [o.key_or_group + (f"@{o.package}" if o.package else "")
            for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()]
    params = OmegaConf.select(config, "hydra.sweeper.params")
    return keys + ([str(key) for key in params] if params else [])


def swept_dependency(template: str, swept: Iterable[str], groups: Iterable[str]) -> tuple[str, str] | None:
    """``(interpolated key, swept key)`` if the directory ``template`` (unresolved) interpolates a
    config key the sweep may change: the swept key itself, a key inside or around it, or any key
    when the sweep varies a config group (``experiment`` sets ``experiment_name``); or a value of
    Hydra's node that differs from job to job (``PER_JOB``, the choice of a swept group); else
    None."""
    swept = [key.lstrip("+~") for key in swept]
    groups = {group.split("@")[0] for group in groups}
    for used in KEY_INTERPOLATION.findall(template):
        for key in swept:
            if (key in groups or "@" in key or key == used or used.startswith(key + ".")
                    or key.startswith(used + ".")):
                return used, key
    for used in HYDRA_INTERPOLATION.findall(template):
        choice = used.removeprefix("runtime.choices.")
        for key in swept:
            if used in PER_JOB or (choice != used and choice.split("@")[0] == key.split("@")[0]):
                return f"hydra:{used}", key
    return None


def unnamed_swept_key(subdir: str, swept: Iterable[str], excluded: Iterable[str]) -> str | None:
    """A swept key whose value the ``subdir`` template (unresolved) does not put in a run's
    folder, so that two of the sweep's jobs would share one: not in ``${hydra:job.override_dirname}``
    (absent, or the key among its ``excluded``) nor interpolated itself (``${seed}``; an
    ``experiment`` by its ``${experiment_name}``); None when every job is told apart (also by a
    job number: ``${hydra:job.num}``)."""
    if "hydra:job.num" in subdir or "hydra:job.id" in subdir:
        return None
    named = set(KEY_INTERPOLATION.findall(subdir))
    by_overrides = "hydra:job.override_dirname" in subdir
    for key in swept:
        key = key.lstrip("+~")
        if key in named or (key == "experiment" and "experiment_name" in named):
            continue
        if not by_overrides or key in set(excluded):
            return key
    return None


def check_sweep_directories(config: DictConfig) -> None:
    """Refuse, before the sweep starts, what would make two of its runs meet: a ``hydra.sweep.dir``
    that resolves differently from job to job (the directory checked and locked here would not
    hold the jobs, and a job landing on an earlier run's folder would have its record replaced
    before any check could run), or a swept key that no level of a run's folder names (two jobs
    would share one)."""
    sweep = OmegaConf.to_container(config.hydra.sweep, resolve=False)
    swept = swept_keys(config)
    found = swept_dependency(str(sweep["dir"]), swept, config.hydra.runtime.choices.keys())
    if found is not None:
        used, key = found
        raise RunDirectoryInUse(
            f"hydra.sweep.dir: {sweep['dir']} depends on {used}, which this sweep varies ({key}); "
            "give the sweep one fixed directory (each run's folder in it already starts with its "
            "experiment_name: hydra.sweep.subdir)")
    excluded = OmegaConf.select(config, "hydra.job.config.override_dirname.exclude_keys") or []
    unnamed = unnamed_swept_key(str(sweep["subdir"]), swept, excluded)
    if unnamed is not None:
        raise RunDirectoryInUse(
            f"hydra.sweep.subdir: this sweep varies {unnamed}, which no level of a run's folder "
            "names (override_dirname leaves it out), so its runs would share folders; sweep it in "
            "separate commands, or name it in hydra.sweep.subdir")


def check_sweep_job_directory(directory: Path, record: str | None) -> None:
    """Refuse a sweep job whose directory held an earlier run before this job's own record
    (``record``, Hydra's output_subdir) was written. ``check_sweep_directories`` refuses the sweeps
    whose jobs could meet an earlier run before any job starts; this is the last line behind it
    (a ``hydra.sweep.subdir`` of the user's own that maps two jobs to one folder in ways it cannot
    read): the earlier run's checkpoints, events and summary are kept, its record is replaced."""
    own = (Path(record).parts[0],) if record else ()
    found = artefacts(directory, ignore=own)
    if found:
        replaced = f" (its {record}/ record was replaced)" if record else ""
        raise RunDirectoryInUse(
            f"hydra.sweep.dir: job directory {directory} already held a run ({_listed(found)}); "
            f"this job stopped before writing to it{replaced}")


def take_new_directory(directory: Path, key: str, check: Callable[[Path], None]) -> None:
    """Own ``directory`` for a new run or sweep: its lock first (refused when a live process holds
    it), then ``check`` of what it holds, then the owner's pid in the lock file."""
    if directory.exists() and not directory.is_dir():
        check(directory)
    try:
        lock = claim(directory)
    except DirectoryLocked as error:
        raise RunDirectoryInUse(f"{key}: {error}; wait for it to end, or give the new run another "
                                f"{key}") from None
    try:
        check(directory)
    except RunDirectoryInUse:
        release(directory)
        raise
    lock.announce()


def _resolved_path(config: DictConfig, key: str) -> Path:
    """The directory ``key`` names; an interpolation in it that does not resolve (a top-level key
    such as ``experiment_name=${nowhere}``) ends the command in one line, before anything exists."""
    # ${hydra:...} interpolations read HydraConfig, which run_job sets to this config right after
    HydraConfig.instance().set_config(config)
    try:
        return Path(str(OmegaConf.select(config, key, throw_on_resolution_failure=True)))
    except OmegaConfBaseException as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SystemExit(f"klexp: {key}: cannot resolve it: {reason}") from None


class RunDirectoryGuard(Callback):
    """Hydra callback: refuse a run or sweep into a directory that already holds one (see the
    module docstring). ``resume``: the command continues the run in its own directory."""

    def __init__(self, resume: bool = False) -> None:
        self.resume = resume

    # Hydra turns an exception raised by a callback into a warning and carries on; only exiting
    # stops it before it writes into the directory.
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_first_process():
            return
        directory = _resolved_path(config, "hydra.run.dir")
        try:
            if self.resume:  # klexp.app.lifecycle.begin_resume took it (a no-op then)
                claim(directory)
            else:
                take_new_directory(directory, "hydra.run.dir", check_new_run_directory)
        except (RunDirectoryInUse, DirectoryLocked) as error:
            raise SystemExit(f"klexp: {error}") from None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_first_process():
            return
        try:
            check_sweep_directories(config)
            check_sweep_jobs(config, lambda overrides: compose(config.hydra.job.config_name,
                                                               overrides=list(overrides)))
            take_new_directory(_resolved_path(config, "hydra.sweep.dir"), "hydra.sweep.dir",
                               check_new_sweep_directory)
        except (RunDirectoryInUse, SweepJobRefused) as error:
            raise SystemExit(f"klexp: {error}") from None
