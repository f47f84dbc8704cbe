"""``klexp rerun <run dir> [overrides]``: run a finished run's command again, into a new run
directory. With the same code and machine, the numbers are the same (runs are deterministic)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from klexp.errors import KlexpError


def saved_overrides(run_dir: Path, command: str = "rerun") -> list[str]:
    """The command-line overrides a run was started with (Hydra's ``.hydra/overrides.yaml``)."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise KlexpError(f"{command}: {run_dir} is not a klexp run directory (no .hydra/overrides.yaml)")
    return [str(o) for o in OmegaConf.to_container(OmegaConf.load(overrides_file)) or []]


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: klexp rerun <run dir> [extra overrides...]")
        return 0 if argv else 2
    try:
        overrides = [*saved_overrides(Path(argv[0]).expanduser()), *argv[1:]]
    except KlexpError as error:
        print(f"klexp: {error}", file=sys.stderr)
        return 2
    from klexp.cli import app

    print(f"klexp rerun: {' '.join(overrides)}")
    sys.argv = [sys.argv[0], *overrides]
    try:
        app()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0
