"""The run record's format: ``summary.json`` in a run directory, its statuses, and how it writes
the numbers JSON has no literal for.

The standard library only: the command decides on a run's record (``klexp resume=`` of a
completed run) before Lightning loads, and ``klexp report`` reads records without it. The record
is written by ``klexp.lightning.run_summary.RunSummary``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.json"

#: how a run ended, or that it has not (yet): the record's ``status``
RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"
STATUSES = (RUNNING, COMPLETED, FAILED, INTERRUPTED)

#: how a record writes the numbers JSON has no literal for (Python's own ``float`` reads them back)
NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float written as ``"nan"``, ``"inf"`` or ``"-inf"``: a record
    is standard JSON (``NaN``/``Infinity`` are not, and strict readers such as ``jq`` refuse them),
    and ``float(text)`` reads them back (``read_summary`` does)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def read_summary(run_dir: str | Path) -> Any:
    """The ``summary.json`` of a run directory as JSON decodes it (a dict for every record klexp
    writes), its non-finite metrics (written as strings, see ``strict_json``) read back as floats.
    Raises ``OSError`` or ``ValueError`` when there is no readable file."""
    summary = json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
    metrics = summary.get("metrics") if isinstance(summary, dict) else None
    if isinstance(metrics, dict):
        summary["metrics"] = {key: NON_FINITE.get(value, value) if isinstance(value, str) else value
                              for key, value in metrics.items()}
    return summary


def recorded_status(run_dir: str | Path) -> str | None:
    """The ``status`` in a run directory's ``summary.json``; None when there is no readable one."""
    try:
        status = read_summary(run_dir).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if status in STATUSES else None


def recorded_metrics(run_dir: str | Path) -> dict[str, float]:
    """The metrics of a run directory's ``summary.json``; none when there is no readable one."""
    try:
        metrics = read_summary(run_dir).get("metrics")
    except (OSError, ValueError, AttributeError):
        return {}
    return dict(metrics) if isinstance(metrics, dict) else {}
