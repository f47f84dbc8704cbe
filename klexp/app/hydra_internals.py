"""Every place klexp reaches into Hydra's private modules (``hydra._internal``), in one module.

Hydra's public API neither tells its own flags from overrides nor lets an application report a
config that does not compose in its own words, and its default sweeper's class lives in a private
module. The command needs all three: the flags to resume and rerun a run as it was started
(``klexp.app.resume``), the sweeper's name to read a sweep's jobs ahead
(``klexp.app.sweep_checks``), and one line for every mistake a config can hold, where Hydra prints
several (the key, ``full_key``, ``object_type``, the config search path, a list of options one a
line, the ``HYDRA_FULL_ERROR`` hint). Each touch is a function or a name here, and
``tests/test_hydra_internals.py`` runs each against the installed Hydra, so an upgrade that moves
one fails there, naming it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import hydra._internal.utils as hydra_utils
from hydra.errors import CompactHydraException
from omegaconf.errors import OmegaConfBaseException

#: the class of Hydra's default sweeper, whose jobs are the product of its sweeps (a config's
#: ``hydra.sweeper._target_`` names it)
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def flag_actions() -> dict[str, argparse.Action]:
    """Hydra's command-line flags (``--config-dir``, ``-cd``, ``-m``, ``--cfg``…), each with the
    ``argparse`` action that says whether it takes a value: its own parser's table."""
    return dict(hydra_utils.get_args_parser()._option_string_actions)


def one_line(error: BaseException) -> str:
    """Hydra's report of a compact error as one line: its lines joined, the indented items under a
    header (a config group's options) as ``header a, b, c``, the config search path left out, and
    the first line of an OmegaConf cause (``Key 'foo' is not in struct``) after a semicolon."""
    sentences: list[str] = []
    items: list[str] = []
    shown = True  # whether the current header and its items are shown

    def close_items() -> None:
        if items and shown and sentences:
            sentences[-1] += " " + ", ".join(items)
        items.clear()

    for line in str(error).splitlines():
        if not line.strip():
            continue
        if line[0].isspace():
            items.append(line.strip())
            continue
        close_items()
        shown = not line.startswith("Config search path")
        if shown:
            sentences.append(line.strip())
    close_items()
    # a sentence Hydra ended without a stop gets a semicolon before the next
    text = " ".join(sentence if sentence.endswith((".", ":")) or number == len(sentences) else f"{sentence};"
                    for number, sentence in enumerate(sentences, start=1))
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        text += f"; {str(cause).strip().splitlines()[0]}"
    return text or type(error).__name__


@contextlib.contextmanager
def compact_errors_reported_by(report: Callable[[CompactHydraException], NoReturn]) -> Iterator[None]:
    """While inside, each error Hydra would print compactly (an override it cannot parse, a config
    that does not compose, a missing option; ``hydra.errors.CompactHydraException``) goes to
    ``report`` instead, which ends the process (``SystemExit`` passes Hydra's handler by). Other
    errors keep Hydra's report, and ``HYDRA_FULL_ERROR=1`` keeps Hydra's full traceback for all."""
    original = hydra_utils.run_and_report

    def run_and_report(func: Callable[[], Any]) -> Any:
        def reported() -> Any:
            try:
                return func()
            except CompactHydraException as error:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                report(error)

        return original(reported)

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    finally:
        hydra_utils.run_and_report = original
