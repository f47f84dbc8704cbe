"""A finished or killed run, as the command line that continues or repeats it.

* ``klexp rerun <run dir> [overrides]`` runs the run's own overrides again into a new run
  directory; with the same code and machine the numbers are the same (runs are deterministic).
* ``klexp resume=<run dir> [overrides]`` continues it in place from ``checkpoints/last.ckpt``.

Both give the run its ``--config-dir`` again (a user's own project), as Hydra recorded it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from klexp.app.hydra_internals import flag_actions
from klexp.app.stages import stages_to_run
from klexp.errors import KlexpError


def quoted(value: object) -> str:
    """A Hydra override value in single quotes (run directories of sweeps contain '=')."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def saved_overrides(run_dir: Path, command: str = "rerun") -> list[str]:
    """The command-line overrides a run was started with (Hydra's ``.hydra/overrides.yaml``)."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise KlexpError(f"{command}: {run_dir} is not a klexp run directory (no .hydra/overrides.yaml)")
    return [str(o) for o in OmegaConf.to_container(OmegaConf.load(overrides_file)) or []]


def split_flags(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``args`` as (Hydra's flags with their values, overrides), by Hydra's own argument parser's
    table of flags: ``--config-dir d a=1 -m`` → (``--config-dir d -m``, ``a=1``)."""
    actions = flag_actions()
    flags: list[str] = []
    overrides: list[str] = []
    words = list(args)
    while words:
        word = words.pop(0)
        action = actions.get(word.split("=", 1)[0]) if word.startswith("-") else None
        if action is None:
            overrides.append(word)
            continue
        flags.append(word)
        takes_value = "=" not in word and action.nargs != 0
        if takes_value and words and (action.nargs != "?" or words[0] in (action.choices or ())):
            flags.append(words.pop(0))
    return flags, overrides


CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def saved_flags(run_dir: Path, given: Sequence[str] = ()) -> list[str]:
    """The flags a run needs again that Hydra does not keep with its overrides: ``--config-dir``
    of a user's own project (Hydra's ``.hydra/hydra.yaml`` lists it among its config sources),
    unless ``given`` names one."""
    if any(flag.split("=", 1)[0] in CONFIG_DIR_FLAGS for flag in given):
        return []
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return []
    sources = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.config_sources") or []
    return [word for source in sources if source.provider == "command-line" and source.schema == "file"
            for word in ("--config-dir", str(source.path))]


def rerun_arguments(argv: Sequence[str]) -> list[str]:
    """``<run dir> [extra overrides]`` → the run's flags (``--config-dir``) and overrides, followed
    by the extra ones."""
    if not argv:
        raise KlexpError("rerun: usage: klexp rerun <run dir> [extra overrides...]")
    run_dir = Path(argv[0]).expanduser()
    overrides = saved_overrides(run_dir)
    flags, extra = split_flags(argv[1:])
    return [*saved_flags(run_dir, flags), *flags, *overrides, *extra]


def finished_stages(run_dir: Path) -> list[str]:
    """Overrides that hand a resumed run the checkpoints its stages already wrote (instead of
    training them again): ``stages=null`` and each stage's ``checkpoint_to`` key. A stage the run
    did not run (its key given) needs none: the run's own overrides give the key again."""
    config_file = run_dir / ".hydra" / "config.yaml"
    stages = stages_to_run(OmegaConf.load(config_file)) if config_file.is_file() else {}
    if not stages:
        return []
    overrides = ["stages=null"]
    for name, stage in stages.items():
        checkpoint = run_dir / name / "checkpoints" / "last.ckpt"
        if not checkpoint.is_file():
            return []  # a stage never finished: run them all again
        overrides.append(f"{stage.checkpoint_to}={quoted(checkpoint)}")
    return overrides


def resume_arguments(run_dir: Path, extra: Sequence[str], record: bool = True) -> list[str]:
    """Command-line arguments that continue the run in ``run_dir`` from its last checkpoint: the
    run's own overrides, then ``extra``, writing into the same directory. Hydra's record of this
    invocation goes to ``.hydra/resume-<time>`` so the original config and overrides stay as they
    were (nowhere, without ``record``)."""
    if not run_dir.is_dir():
        raise KlexpError(f"resume: {run_dir} is not a directory")
    saved = saved_overrides(run_dir, command="resume")
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise KlexpError(f"resume: {run_dir} has no checkpoints/last.ckpt to resume from")
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    flags, overrides = split_flags(extra)
    subdir = quoted(f".hydra/resume-{stamp}") if record else "null"
    return [*saved_flags(run_dir, flags), *flags, *saved, *finished_stages(run_dir),
            f"ckpt_path={quoted(checkpoint)}", *overrides, f"hydra.run.dir={quoted(run_dir)}",
            f"hydra.output_subdir={subdir}"]
