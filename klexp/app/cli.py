"""The ``klexp`` command: the Hydra app (``klexp [overrides]``, ``klexp -m ...`` for sweeps), plus
``klexp report <sweep dir>`` and ``klexp rerun <run dir>``."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from klexp.app.hydra_internals import compact_errors_reported_by, one_line
from klexp.app.lifecycle import (
    EXIT_FAILED,
    RunEnding,
    Terminated,
    begin_resume,
    handle_sigterm,
    interruption_line,
    owned,
)
from klexp.app.resolvers import register_resolvers
from klexp.app.resume import rerun_arguments, resume_arguments, saved_overrides, split_flags
from klexp.app.run_dirs import check_sweep_job_directory, guard_overrides, is_first_process
from klexp.errors import KlexpError

# klexp's configs, inside the package (``pkg://klexp.conf``) in a checkout and an install alike
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
CONFIG_NAME = "config"


class UserError(CompactHydraException):
    """A user mistake: Hydra prints its one-line message, without a traceback, and exits 1."""


# Registered when this module is imported, not only when ``main`` runs: a sweep launcher's worker
# processes import it to unpickle the app, then resolve the job's config (``sweep_subdir``).
register_resolvers()


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose the app's config inside a running Hydra app (used for stages)."""
    return hydra.compose(config_name=CONFIG_NAME, overrides=list(overrides))


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=CONFIG_NAME)
def app(cfg: DictConfig) -> Any:
    from klexp.app.runner import run  # heavy imports only once the config composed

    hydra_config = HydraConfig.get()
    overrides = [str(o) for o in OmegaConf.to_container(hydra_config.overrides.task)]
    run_dir = Path(cfg.paths.output_dir)
    sweep_job = hydra_config.mode == RunMode.MULTIRUN and is_first_process()
    try:
        # a sweep's job owns its own directory while it runs (the sweep's process owns the sweep's)
        with owned(run_dir) if sweep_job else contextlib.nullcontext():
            if sweep_job:
                check_sweep_job_directory(run_dir, hydra_config.output_subdir)
            summary = run(cfg, run_dir, overrides=overrides, compose=compose_config)
    except RunEnding as ending:
        raise SystemExit(end_with(f"klexp: {ending}", ending.exit_status)) from None
    except KlexpError as error:
        if hydra_config.mode == RunMode.MULTIRUN:
            raise UserError(f"klexp: {error}") from None  # the other jobs go on; Hydra names this one
        # exiting passes Hydra's job runner by, which would frame the line with its own
        raise SystemExit(end_with(f"klexp: {error}", EXIT_FAILED)) from None
    return summary.get("objective")


def end_with(line: str, status: int) -> int:
    """Print the command's one last line (stdout for status 0, else stderr); return ``status``."""
    print(line, file=sys.stdout if status == 0 else sys.stderr, flush=True)
    return status


# Hydra's flags that start no run, whose command lines take no overrides of ours
NO_RUN_FLAGS = ("--shell-completion", "-sc", "--experimental-rerun")
MULTIRUN_FLAGS = ("-m", "--multirun")


def sweeps_a_config_group(overrides: Sequence[str]) -> bool:
    """Whether ``overrides`` sweep a config group of klexp's (``experiment=a,b``, ``+shaping@…=a,b``)."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException:
        return False  # Hydra names it
    return any(o.is_sweep_override() and (o.package is not None or (CONFIG_DIR / o.key_or_group).is_dir())
               for o in parsed)


def report_in_one_line(error: CompactHydraException, sweep: bool = False) -> NoReturn:
    """End the command on a mistake Hydra found (an override it cannot parse, a config that does
    not compose, an option that does not exist) with one line, as klexp's own mistakes end;
    ``sweep``: the command sweeps a config group."""
    line = one_line(error)
    key = re.match(r"Could not override '([^']+)'", line)
    if sweep and key:
        # Hydra checks a sweep's fixed overrides against the config with each swept group at its
        # default (hydra-ecosystem/hydra#2888): a key only the swept options have needs ++
        line += (f" (a sweep checks its fixed overrides before any job, with each swept group at its "
                 f"default: ++{key[1]}=… sets a key only some of the swept options have)")
    raise SystemExit(end_with(line if line.startswith("klexp: ") else f"klexp: {line}", EXIT_FAILED))


def with_overrides(args: list[str], extra: list[str]) -> list[str]:
    """``args`` with ``extra`` overrides beside the user's own: Hydra's parser reads the overrides
    as one run of words, so Hydra's flags (with their values) go first, then the user's overrides,
    then ``extra`` (``a=1 --cfg job`` → ``--cfg job a=1 ++x``)."""
    flags, overrides = split_flags(args)
    return [*flags, *overrides, *extra]


def main(argv: Sequence[str] | None = None) -> Any:
    """``klexp [overrides]`` | ``klexp resume=<run dir> [overrides]`` |
    ``klexp rerun <run dir> [overrides]`` | ``klexp report <sweep dir> ...``.

    A new run or sweep never writes into a directory that already holds one
    (``klexp.app.run_dirs``); ``resume=`` continues a run in its own directory."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "report":
        from klexp.report import main as report_main

        return sys.exit(report_main(args[1:]))
    handle_sigterm()
    # a log handler that cannot write (the job log on a full disk) must not print a traceback
    # over the run's own one-line ending
    logging.raiseExceptions = False
    try:
        if args and args[0] == "rerun":
            args = rerun_arguments(args[1:])
            print(f"klexp rerun: {' '.join(args)}")
        resume = [a for a in args if a.startswith("resume=")]
        if resume:
            if any(a in MULTIRUN_FLAGS for a in args):
                raise KlexpError("resume: continues one run in its own directory; it cannot be a "
                                 "sweep (-m)")
            run_dir = Path(resume[-1].split("=", 1)[1]).expanduser()
            rest = [a for a in args if not a.startswith("resume=")]
            if not run_dir.is_dir():
                raise KlexpError(f"resume: {run_dir} is not a directory")
            saved_overrides(run_dir, command="resume")  # a klexp run directory, before its lock
            goes_on = begin_resume(run_dir, split_flags(rest)[1], is_first_process())
            args = resume_arguments(run_dir, rest, record=goes_on)
    except RunEnding as ending:
        sys.exit(end_with(f"klexp: {ending}", ending.exit_status))
    except KlexpError as error:
        sys.exit(f"klexp: {error}")
    if not any(a in NO_RUN_FLAGS for a in args):
        args = with_overrides(args, guard_overrides(args, resume=bool(resume)))
    sys.argv = [sys.argv[0], *args]
    try:
        sweep = any(a in MULTIRUN_FLAGS for a in args) and sweeps_a_config_group(split_flags(args)[1])
        with compact_errors_reported_by(functools.partial(report_in_one_line, sweep=sweep)):
            return app()
    except (KeyboardInterrupt, Terminated) as stop:
        line, status = interruption_line(stop)
        sys.exit(end_with(line, status))


if __name__ == "__main__":
    main()
