"""The ablation report: ``klexp report <sweep dir>`` (or ``python -m klexp.report``).

Finds every run under the given directories (a directory with a ``summary.json``; stages nested in
a run, such as a distillation teacher, belong to their run), groups the completed runs by their
overrides except the seed, and for each group and metric computes over the seeds

    mean = (1/n) Σ_i x_i,   std = sqrt(Σ_i (x_i − mean)² / (n − 1))   (sample std; "–" for n = 1).

A run the table does not count is named, never silently absent and never fatal: a run that did not
complete (its status), a job of a sweep that never wrote a record (``.hydra/`` but no
``summary.json``: "never started"), a ``summary.json`` that cannot be parsed (an interrupted copy),
and a rerun — a second completed run of one config and seed, which is counted once (the most
recently finished one).

It prints a rich table, then writes the same table as ``report.md`` and ``report.csv``, and one PNG per
``--tags`` tag: each group's mean over seeds vs the training step, with the seeds' range (min to
max) shaded. Output is ordered deterministically (groups in the order the sweep listed its values,
metrics in the order asked), and no file names a path or a time, so re-running a study reproduces
its table byte for byte.

A metric is a summary metric (the run's final value, e.g. ``test/acc``; a tag missing from the
summary falls back to its last logged scalar), or a reduction of a logged scalar series read with
TensorBoard's own ``EventAccumulator``:

* ``max:<tag>``, ``min:<tag>``, ``mean:<tag>``, ``last:<tag>`` — over all logged values;
* ``first_step:<tag>>=<x>`` (or ``<=``) — the first step at which the tag reached x
  (a run that never does counts as missing; the cell says how many seeds reached it).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from klexp.app.lifecycle import is_locked
from klexp.errors import KlexpError
from klexp.record import SUMMARY_FILE, read_summary

#: Override keys that do not change what a run computes (a resumed run continues its own).
NOT_A_GROUP_KEY = frozenset({"seed", "ckpt_path"})
REDUCTIONS = ("max", "min", "mean", "last")
_FIRST_STEP = re.compile(r"^first_step:(?P<tag>.+?)(?P<op>>=|<=)(?P<value>[-+]?[0-9.]+(?:[eE][-+]?\d+)?)$")
TABLE_FILE, CSV_FILE = "report.md", "report.csv"


# ---------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One run directory: its summary and (read on demand) its TensorBoard scalars."""

    directory: Path
    summary: dict[str, Any]

    @property
    def seed(self) -> Any:
        return self.summary.get("seed")

    @cached_property
    def settings(self) -> dict[str, str]:
        """What distinguishes this run from the others of a sweep, apart from its seed: the
        experiment and every override except the keys in ``NOT_A_GROUP_KEY``."""
        values = {"experiment": str(self.summary.get("experiment") or "")}
        for override in self.summary.get("overrides") or []:
            key, _, value = str(override).lstrip("+~").partition("=")
            if key not in NOT_A_GROUP_KEY:
                values[key] = value
        return values

    @cached_property
    def scalars(self) -> dict[str, list[tuple[int, float]]]:
        """Every scalar tag's ``(step, value)`` series, one value per step (the last written)."""
        from tensorboard.backend.event_processing.event_accumulator import (
            SCALARS,
            EventAccumulator,
        )

        tb_dir = self.directory / "tb"
        if not tb_dir.is_dir():
            return {}
        accumulator = EventAccumulator(str(tb_dir), size_guidance={SCALARS: 0})
        accumulator.Reload()
        series = {}
        for tag in accumulator.Tags()[SCALARS]:
            by_step = {event.step: float(event.value) for event in accumulator.Scalars(tag)}
            series[tag] = sorted(by_step.items())
        return series


def values_by_step(runs: Iterable[Run], tag: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """The steps at which any of ``runs`` logged ``tag`` (sorted) and, for each, the values the
    runs logged there (one per run that has it): the curve of a group of runs, for its mean and
    range."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for step, value in run.scalars.get(tag, []):
            by_step.setdefault(step, []).append(value)
    steps = np.array(sorted(by_step))
    return steps, [np.array(by_step[s]) for s in steps]


@dataclass(frozen=True)
class LeftOut:
    """A run the table does not count: its directory, why (its status, ``never started``,
    ``unreadable summary.json (…)``, or ``rerun``), the overrides it was started with, and where it
    lies relative to the directory the report read (the files name no absolute path)."""

    directory: Path
    reason: str
    overrides: tuple[str, ...]
    relative: str
    #: For a rerun: the run of the same config and seed that is counted instead.
    counted: LeftOut | None = None

    def line(self) -> str:
        """One console line."""
        if self.counted is not None:
            return (f"left out (rerun): {self.directory} — same config and seed as "
                    f"{self.counted.directory}, the most recent, which is counted once")
        return f"left out ({self.reason}): {self.directory}" + (
            f" — {' '.join(self.overrides)}" if self.overrides else "")

    def markdown(self) -> str:
        """One item of the report's list of runs left out."""
        if self.counted is not None:
            return (f"- `{self.relative}`: rerun of the same config and seed as "
                    f"`{self.counted.relative}` (the most recent, counted once)")
        return f"- `{self.relative}`: {self.reason}" + (
            f" (`{' '.join(self.overrides)}`)" if self.overrides else "")


@dataclass
class Survey:
    """What a report read: the runs with a readable record (any status), and the directories that
    hold no usable record (never started, unreadable summary)."""

    runs: list[Run]
    unusable: list[LeftOut]
    #: Each run's path relative to the directory given to the report.
    relative: dict[Path, str]

    def left_out(self, run: Run, reason: str | None = None) -> LeftOut:
        """``run`` as a run the table does not count (by default, for its status; a ``running``
        record whose directory no live process owns is a run that was killed)."""
        status = str(run.summary.get("status") or "no status")
        if status == "running" and not is_locked(run.directory):
            status = "running, but no process owns it: killed; `klexp resume=RUN_DIR` continues it"
        return LeftOut(run.directory, reason or status,
                       tuple(str(o) for o in run.summary.get("overrides") or []),
                       self.relative[run.directory])


def _read_summary(job_dir: Path) -> dict[str, Any] | str:
    """The record in ``job_dir``, or why it cannot be used."""
    try:
        summary = read_summary(job_dir)
    except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError among them
        return f"unreadable {SUMMARY_FILE}: {error}"
    if not isinstance(summary, dict):
        return f"unreadable {SUMMARY_FILE}: not a JSON object"
    return summary


def _saved_overrides(job_dir: Path) -> tuple[str, ...]:
    """The overrides Hydra recorded for a job (``.hydra/overrides.yaml``; none if unreadable)."""
    from omegaconf import OmegaConf

    try:
        saved = OmegaConf.to_container(OmegaConf.load(job_dir / ".hydra" / "overrides.yaml"))
    except Exception:  # a damaged or missing file only loses the hint
        return ()
    return tuple(str(o) for o in saved) if isinstance(saved, list) else ()


def survey(directories: Iterable[Path]) -> Survey:
    """Every run and every job of a sweep under ``directories``, in path order; a run's stages
    are part of it, not runs."""
    found: dict[Path, Run | LeftOut] = {}
    relative: dict[Path, str] = {}
    for directory in directories:
        directory = Path(directory)
        if not directory.is_dir():
            raise KlexpError(f"report: {directory} is not a directory")
        candidates = {path.parent for path in directory.rglob(SUMMARY_FILE)}
        candidates |= {path.parent for path in directory.rglob(".hydra") if path.is_dir()}
        for job_dir in sorted(candidates, key=lambda p: (len(p.parts), p)):
            run_dir = job_dir.resolve()
            if run_dir in found or any(parent in found for parent in run_dir.parents):
                continue
            relative[run_dir] = job_dir.relative_to(directory).as_posix() if job_dir != directory \
                else directory.resolve().name
            if not (job_dir / SUMMARY_FILE).is_file():
                found[run_dir] = LeftOut(run_dir, "never started", _saved_overrides(job_dir),
                                         relative[run_dir])
                continue
            summary = _read_summary(job_dir)
            found[run_dir] = Run(run_dir, summary) if isinstance(summary, dict) else \
                LeftOut(run_dir, summary, _saved_overrides(job_dir), relative[run_dir])
    ordered = [found[key] for key in sorted(found)]
    return Survey([r for r in ordered if isinstance(r, Run)],
                  [r for r in ordered if isinstance(r, LeftOut)], relative)


def find_runs(directories: Iterable[Path]) -> list[Run]:
    """Every run with a readable record under ``directories`` in path order (any status); a run's
    stages are part of it, not runs."""
    return survey(directories).runs


def counted_once(runs: Sequence[Run]) -> tuple[list[Run], list[tuple[Run, Run]]]:
    """The runs with one run per (config, seed) — of several, the one that finished last — and the
    reruns left out, each with the run counted instead."""
    latest: dict[tuple[Any, ...], Run] = {}
    for run in runs:
        key = (tuple(sorted(run.settings.items())), str(run.seed))
        if key not in latest or _finished(run) >= _finished(latest[key]):
            latest[key] = run
    kept = {id(run) for run in latest.values()}
    reruns = [(run, latest[(tuple(sorted(run.settings.items())), str(run.seed))])
              for run in runs if id(run) not in kept]
    return [run for run in runs if id(run) in kept], reruns


def _finished(run: Run) -> tuple[str, str]:
    return str(run.summary.get("end_time") or ""), str(run.directory)


# ---------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    """A column of the report, parsed from its spec (see the module docstring)."""

    spec: str
    tag: str
    reduction: str = "final"
    threshold: float | None = None
    at_least: bool = True

    @classmethod
    def parse(cls, spec: str) -> Metric:
        match = _FIRST_STEP.match(spec)
        if match:
            return cls(spec, match["tag"], "first_step", float(match["value"]), match["op"] == ">=")
        reduction, sep, tag = spec.partition(":")
        if sep and reduction in REDUCTIONS and tag:
            return cls(spec, tag, reduction)
        if sep and reduction in (*REDUCTIONS, "first_step"):
            raise KlexpError(f"report: --metrics {spec!r}: expected <reduction>:<tag> or "
                             f"first_step:<tag>>=<value>")
        return cls(spec, spec)

    def of(self, run: Run) -> float | None:
        """This metric's value for one run (None when the run has no such value)."""
        if self.reduction == "final":
            value = (run.summary.get("metrics") or {}).get(self.tag)
            if value is not None:
                return float(value)
            series = run.scalars.get(self.tag)
            return series[-1][1] if series else None
        series = run.scalars.get(self.tag)
        if not series:
            return None
        values = np.array([value for _, value in series], dtype=np.float64)
        if self.reduction == "first_step":
            reached = values >= self.threshold if self.at_least else values <= self.threshold
            return float(series[int(np.argmax(reached))][0]) if reached.any() else None
        return float({"max": np.max, "min": np.min, "mean": np.mean, "last": lambda v: v[-1]}
                     [self.reduction](values))


def default_metrics(runs: Sequence[Run]) -> list[str]:
    """The objective, then every ``test/<metric>`` all runs have (``val/<metric>`` without a test
    split); the per-term ``test/kl/...`` and ``test/loss/...`` parts only when asked for."""
    names = [run.summary.get("objective_name") for run in runs]
    common = set.intersection(*(set(run.summary.get("metrics") or {}) for run in runs))
    split = "test" if any(name.startswith("test/") for name in common) else "val"
    chosen = [name for name in dict.fromkeys(names) if name and name in common]
    chosen += sorted(name for name in common
                     if re.fullmatch(rf"{split}/[^/]+", name) and name not in chosen)
    return chosen


# ---------------------------------------------------------------------------- groups


@dataclass
class Group:
    """Runs that differ only by their seed, and their statistics per metric."""

    settings: dict[str, str]
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[Any]:
        return [run.seed for run in self.runs]

    def values(self, metric: Metric) -> list[float]:
        return [value for run in self.runs if (value := metric.of(run)) is not None]


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof = 1) over the ``n`` seeds that have a value."""

    mean: float | None
    std: float | None
    n: int
    of: int

    @classmethod
    def of_values(cls, values: Sequence[float], of: int) -> Stat:
        if not values:
            return cls(None, None, 0, of)
        array = np.array(values, dtype=np.float64)
        std = float(np.std(array, ddof=1)) if len(array) > 1 else None
        return cls(float(np.mean(array)), std, len(array), of)

    def text(self, decimals: int | None = None) -> str:
        """``mean ± std`` to four significant digits (or ``decimals``; below 1e-3 in scientific
        notation), then ``(k/n)`` if only k of the n seeds have a value."""
        if self.mean is None:
            return "n/a"
        if decimals is None and 0 < abs(self.mean) < 1e-3:  # tiny: scientific, 4 digits
            cell = f"{self.mean:.3e}" + (f" ± {self.std:.1e}" if self.std is not None else "")
        else:
            decimals = _decimals(self.mean) if decimals is None else decimals
            cell = f"{self.mean:.{decimals}f}"
            if self.std is not None:
                cell += f" ± {self.std:.{decimals}f}"
        if self.n < self.of:
            cell += f" ({self.n}/{self.of})"
        return cell


def _decimals(value: float) -> int:
    """Four significant digits, between 0 and 6 decimals."""
    if value == 0 or not math.isfinite(value):
        return 4
    return int(min(6, max(0, 3 - math.floor(math.log10(abs(value))))))


def sweep_orders(directories: Iterable[Path]) -> dict[str, list[str]]:
    """For each swept key, its values in the order the sweep command listed them (from the
    ``multirun.yaml`` Hydra writes at the top of a sweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    orders: dict[str, list[str]] = {}
    parser = OverridesParser.create()
    for directory in directories:
        for path in sorted(Path(directory).rglob("multirun.yaml")):
            try:
                overrides = OmegaConf.load(path).hydra.overrides.task
                parsed = parser.parse_overrides([str(o) for o in overrides])
            except Exception:  # a foreign or damaged file only loses its ordering hint
                continue
            for override in parsed:
                if override.is_sweep_override():
                    try:
                        values = list(override.sweep_string_iterator())
                    except Exception:  # interval sweeps (Optuna) have no listed values
                        continue
                    known = orders.setdefault(override.get_key_element().lstrip("+~"), [])
                    known += [v for v in values if v not in known]
    return orders


def _natural(value: str) -> tuple[Any, ...]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def group_runs(runs: Sequence[Run], orders: Mapping[str, list[str]]) -> tuple[list[str], list[Group]]:
    """Groups of runs equal in everything but the seed, and the keys whose values differ between
    groups (the report's leading columns). Groups are sorted by those keys: the sweep's own order
    of values where known, else numbers numerically and words alphabetically, and a key a group
    does not override before any value; seeds within a group are sorted too."""
    groups: dict[tuple[tuple[str, str], ...], Group] = {}
    for run in runs:
        key = tuple(sorted(run.settings.items()))
        groups.setdefault(key, Group(dict(key))).runs.append(run)
    all_keys = sorted({k for group in groups.values() for k in group.settings})
    varying = [k for k in all_keys
               if len({group.settings.get(k) for group in groups.values()}) > 1]
    swept = list(orders)
    varying.sort(key=lambda k: (k != "experiment", swept.index(k) if k in swept else len(swept), k))

    def position(group: Group) -> tuple[Any, ...]:
        parts: list[tuple[Any, ...]] = []
        for k in varying:
            known = orders.get(k, [])
            if k not in group.settings:  # not overridden: the experiment's own value comes first
                parts.append((0,))
            elif group.settings[k] in known:
                parts.append((1, known.index(group.settings[k])))
            else:
                parts.append((2, _natural(group.settings[k])))
        return tuple(parts)

    ordered = sorted(groups.values(), key=position)
    for group in ordered:
        group.runs.sort(key=lambda run: (_natural(str(run.seed)), str(run.directory)))
    return varying, ordered


# ---------------------------------------------------------------------------- the report


@dataclass
class Report:
    """The table of a sweep: one row per group, one column per swept key and per metric."""

    keys: list[str]
    common: dict[str, str]
    groups: list[Group]
    metrics: list[Metric]
    left_out: list[LeftOut]

    @cached_property
    def stats(self) -> list[list[Stat]]:
        return [[Stat.of_values(group.values(metric), len(group.runs)) for metric in self.metrics]
                for group in self.groups]

    def header(self) -> list[str]:
        return [*self.keys, "seeds", *(m.spec for m in self.metrics)]

    def rows(self) -> list[list[str]]:
        return [[*(group.settings.get(k, "") for k in self.keys), str(len(group.runs)),
                 *(stat.text(0 if metric.reduction == "first_step" else None)
                   for metric, stat in zip(self.metrics, stats, strict=True))]
                for group, stats in zip(self.groups, self.stats, strict=True)]

    def rich_table(self) -> Table:
        table = Table(title="mean ± std over seeds")
        for name in self.header():
            numeric = name not in self.keys
            table.add_column(name, justify="right" if numeric else "left")
        for row in self.rows():
            table.add_row(*row)
        return table

    def markdown(self, plots: Sequence[str] = ()) -> str:
        lines = []
        if self.common:
            lines.append("Common to every run: "
                         + ", ".join(f"`{k}={v}`" for k, v in self.common.items()) + ".")
            lines.append("")
        header = self.header()
        lines.append("| " + " | ".join(_md(h) for h in header) + " |")
        lines.append("| " + " | ".join("---" if h in self.keys else "---:" for h in header) + " |")
        lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in self.rows()]
        lines.append("")
        lines.append("Mean ± sample standard deviation (ddof = 1) over seeds; (k/n): only k of the "
                     "n seeds have a value.")
        if self.left_out:
            lines += ["", f"Left out ({len(self.left_out)} run(s)):", ""]
            lines += [run.markdown() for run in self.left_out]
        for name in plots:
            lines += ["", f"![{Path(name).stem}]({name})"]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        columns = [*self.keys, "seeds", "n_runs"]
        for metric in self.metrics:
            columns += [f"{metric.spec} mean", f"{metric.spec} std", f"{metric.spec} n"]
        writer.writerow(columns)
        for group, stats in zip(self.groups, self.stats, strict=True):
            row = [*(group.settings.get(k, "") for k in self.keys),
                   " ".join(str(seed) for seed in group.seeds), len(group.runs)]
            for stat in stats:
                row += [_exact(stat.mean), _exact(stat.std), stat.n]
            writer.writerow(row)
        return buffer.getvalue()


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _exact(value: float | None) -> str:
    return "" if value is None else repr(value)


def build_report(directories: Sequence[Path], metrics: Sequence[str] | None = None) -> Report:
    """Read the runs under ``directories`` and compute the table (no output written)."""
    found = survey(directories)
    runs, reruns = counted_once([run for run in found.runs
                                 if run.summary.get("status") == "completed"])
    left_out = [*found.unusable,
                *(found.left_out(run) for run in found.runs if run.summary.get("status") != "completed")]
    for rerun, counted in reruns:
        left_out.append(replace(found.left_out(rerun, "rerun"), counted=found.left_out(counted)))
    left_out.sort(key=lambda run: run.directory)
    if not runs:
        where = ", ".join(str(d) for d in directories)
        reasons = Counter(run.reason.split(":")[0] for run in left_out)
        left = "".join(f"; left out: {n} {reason}" if i == 0 else f", {n} {reason}"
                       for i, (reason, n) in enumerate(sorted(reasons.items())))
        raise KlexpError(f"report: no completed runs (directories with a completed summary.json) "
                         f"under {where}{left}")
    keys, groups = group_runs(runs, sweep_orders(directories))
    common = {k: v for k, v in sorted(groups[0].settings.items()) if k not in keys}
    chosen = [Metric.parse(spec) for spec in (metrics or default_metrics(runs))]
    return Report(keys, common, groups, chosen, left_out)


def plot_tags(report: Report, tags: Sequence[str], out: Path) -> list[str]:
    """One PNG per tag: per group, the mean over seeds at each step, the min–max range shaded.
    Returns the file names written (in ``out``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for tag in tags:
        figure, axes = plt.subplots(figsize=(7, 4.2), dpi=100)
        drawn = False
        for group in report.groups:
            steps, values = values_by_step(group.runs, tag)
            if not values:
                continue
            mean = np.array([v.mean() for v in values])
            label = ", ".join(f"{k}={group.settings[k]}" for k in report.keys
                              if k in group.settings) or "all runs"
            low, high = np.array([v.min() for v in values]), np.array([v.max() for v in values])
            (line,) = axes.plot(steps, mean, label=f"{label} (n={len(group.runs)})", linewidth=1.5,
                                marker="o" if len(steps) <= 30 else None, markersize=3)
            axes.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
            if len(steps) == 1:  # a lone point has no area to shade: show its range as an error bar
                axes.errorbar(steps, mean, yerr=[mean - low, high - mean], color=line.get_color(),
                              capsize=3, linewidth=1)
            drawn = True
        if not drawn:
            plt.close(figure)
            Console(stderr=True).print(f"[yellow]report: no run logged {tag!r}; no plot[/]")
            continue
        axes.set_title(f"{tag} (mean over seeds; shaded: min–max)")
        axes.set_xlabel("step")
        axes.set_ylabel(tag)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", tag).strip("_") + ".png"
        figure.savefig(out / name, metadata={"Software": None})
        plt.close(figure)
        written.append(name)
    return written


# ---------------------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="klexp report",
        description="Table (mean ± std over seeds, per group of overrides) and plots of a sweep.",
    )
    parser.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR",
                        help="sweep (or run) directories; every run below them is read")
    parser.add_argument("--metrics", nargs="+", default=None, metavar="METRIC",
                        help="columns: summary metrics (test/acc), max:/min:/mean:/last:<tag>, "
                             "first_step:<tag>>=<x>; default: the objective and the test metrics")
    parser.add_argument("--tags", nargs="+", default=[], metavar="TAG",
                        help="scalar tags to plot against the step (one PNG each)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: <first sweep dir>/report)")
    return parser


def _split(values: Sequence[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [part for value in values for part in value.split(",") if part]


def main(argv: Sequence[str] | None = None) -> int:
    """``klexp report SWEEP_DIR... [--metrics ...] [--tags ...] [--out DIR]``; returns the exit code."""
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    console = Console(soft_wrap=True)
    errors = Console(stderr=True, soft_wrap=True)  # one line, however narrow a pipe
    out = args.out or args.sweep_dirs[0] / "report"
    try:
        if out.exists() and not out.is_dir():
            raise KlexpError(f"report: --out {out} is a file; expected a directory (new or existing)")
        report = build_report(args.sweep_dirs, _split(args.metrics))
    except KlexpError as error:
        errors.print(f"klexp: {error}", markup=False, highlight=False)
        return 1

    if report.common:
        console.print("common to every run: " + " ".join(f"{k}={v}" for k, v in report.common.items()),
                      markup=False, highlight=False)
    table = report.rich_table()
    if not console.is_terminal:  # a log file or a pipe: print the whole table, never truncated
        wide = console.options.update_width(10_000)
        console.width = max(console.width, Measurement.get(console, wide, table).maximum)
    console.print(table)
    for run in report.left_out:
        console.print(run.line(), style="yellow", markup=False, highlight=False)
    # The table is on the console before any file is written: a sweep the user cannot write to
    # (read-only, a full disk) still gives its numbers, and the failed write is one line.
    try:
        out.mkdir(parents=True, exist_ok=True)
        plots = plot_tags(report, _split(args.tags) or [], out)
        (out / TABLE_FILE).write_text(report.markdown(plots))
        (out / CSV_FILE).write_text(report.csv())
    except OSError as error:
        errors.print(f"klexp: report: cannot write {error.filename or out}: "
                     f"{error.strerror or error}", markup=False, highlight=False)
        return 1
    console.print(f"wrote {out / TABLE_FILE}, {out / CSV_FILE}"
                  + "".join(f", {out / name}" for name in plots))
    logdir = os.path.commonpath([d.resolve() for d in args.sweep_dirs]) if len(args.sweep_dirs) > 1 \
        else args.sweep_dirs[0]
    console.print(f"dashboards: tensorboard --logdir {logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
