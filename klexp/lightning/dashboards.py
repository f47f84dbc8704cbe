"""klexp's TensorBoard dashboards for any Trainer with a ``TensorBoardLogger``, as one callback.

Everything here is built from what the run has *written*: the callback reads the run's event files
back (incrementally, ``EventTags``) after each validation, at the end of ``fit`` and ``test`` and on
an exception, and rewrites what changed.

* **Custom Scalars**: the charts the module asks for (a ``custom_scalars()`` method returning
  ``{section: {title: [tag regex, ...]}}``, ``klexp.HasCharts``) and one section for the
  trainer's KL terms. A chart whose regexes match no written tag is left out; a chart that
  matches several tags becomes one chart per tag, titled ``<title> — <tag>``: TensorBoard draws
  every line of a run in the run's one colour, so two tags on one chart could not be told apart
  (nor kept on one scale).
* **Non-finite values**: TensorBoard draws no point for ``inf`` or ``NaN``. For each scalar with
  such points the callback writes a companion ``<tag>/nonfinite`` (1 at each of those steps), says
  so in the chart's title, and lists them, with their steps, in a text note (``klexp/non-finite``).
* **HParams**: the run's hyperparameters against its final ``val/`` and ``test/`` metrics, written
  once, on rank zero, at the end of the run (after ``test`` when the run tests, else after
  ``fit``), into the sub-run ``<log dir>/hparams``: a session without an experiment definition,
  holding the final metrics as its scalars, named ``final/<tag>``. TensorBoard then builds the
  HParams table of a logdir from all its sessions — the union of every run's hparams (``differs``
  marked where values differ) and of every run's final metrics — so a logdir that mixes runs of
  different experiments shows each run's values. (A run that writes its own experiment
  definition hides the others': TensorBoard uses the first one it finds.) The ``final/`` names
  keep the session's copies off the run's own charts; in Time Series they are one dot per run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch.utils.tensorboard.summary import hparams as hparams_summary
from torch.utils.tensorboard.summary import scalar as scalar_summary

from klexp.lightning.contract import Charts, module_charts
from klexp.lightning.run_summary import scalar_metrics
from klexp.lightning.term import kl_terms_of

#: the sub-run (under the logger's directory) that holds the run's HParams session
HPARAMS_RUN = "hparams"
#: the prefix of the final metrics' names in the HParams session
FINAL_PREFIX = "final/"
#: the companion of a scalar with non-finite points
NONFINITE_SUFFIX = "/nonfinite"
#: the text note that lists a run's non-finite points
NONFINITE_NOTE = "klexp/non-finite"
#: the keys by which Hydra builds a config node, not settings of what it builds
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_"})


@dataclass
class Series:
    """What a run wrote under one scalar tag: its steps, and its non-finite points."""

    steps: list[int] = field(default_factory=list)
    nonfinite: list[tuple[int, float]] = field(default_factory=list)

    def kinds(self) -> str:
        """``+inf``, ``-inf``, ``NaN`` (those present, joined by ``/``)."""
        names = {"+inf" if v > 0 else "-inf" if v < 0 else "NaN" for _, v in self.nonfinite}
        return "/".join(kind for kind in ("+inf", "-inf", "NaN") if kind in names)



def event_files(directory: str | Path) -> list[Path]:
    """The TensorBoard event files of one run directory (not its sub-runs) in the order they were
    created: by the creation time and then the writer's number in their names
    (``events.out.tfevents.<time>.<host>.<pid>.<number>``), as numbers — by name, a run's writers
    number 9 and 10 made in one second read 10 first, and its points out of step order."""
    def created(path: Path) -> tuple[int, int, str]:
        parts = path.name.split(".")
        try:
            return int(parts[3]), int(parts[-1]), path.name
        except (IndexError, ValueError):
            return 0, 0, path.name

    return sorted(Path(directory).glob("events.out.tfevents.*"), key=created)


class EventTags:
    """The scalar tags written to one TensorBoard run directory (its own event files, not its
    sub-runs'), read incrementally: each ``update`` reads only what was appended since."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.series: dict[str, Series] = {}
        self.last_step = 0
        self._loaders: dict[Path, Any] = {}

    def update(self) -> dict[str, Series]:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        for path in event_files(self.directory):
            loader = self._loaders.setdefault(path, EventFileLoader(str(path)))
            for event in loader.Load():
                self._add(event)
        return self.series

    def _add(self, event: Any) -> None:
        from tensorboard import data_compat
        from tensorboard.util import tensor_util

        for value in event.summary.value:
            value = data_compat.migrate_value(value)
            if value.metadata.plugin_data.plugin_name != "scalars":
                continue
            number = float(tensor_util.make_ndarray(value.tensor).item())
            series = self.series.setdefault(value.tag, Series())
            series.steps.append(event.step)
            self.last_step = max(self.last_step, event.step)
            if not math.isfinite(number):
                series.nonfinite.append((event.step, number))


class Dashboards(pl.Callback):
    """Custom Scalars, non-finite notes and HParams (see the module docstring).

    Args:
        hparams: the values to show in the HParams table (numbers, strings, booleans); by default
            the module's ``hparams`` (``save_hyperparameters``), flattened with dotted keys.
        write_hparams_after: ``fit``, ``test``, or ``auto`` — after ``test`` when the module (or
            its DataModule) has test data, else after ``fit``.
    """

    def __init__(self, hparams: Mapping[str, Any] | None = None,
                 write_hparams_after: Literal["auto", "fit", "test"] = "auto") -> None:
        self.hparams = None if hparams is None else dict(hparams)
        self.write_hparams_after = write_hparams_after
        self.written = False
        self.final: dict[str, float] = {}
        self._tags: EventTags | None = None
        self._layout: dict[str, dict[str, list[Any]]] | None = None
        self._companions: dict[str, int] = {}

    # ------------------------------------------------------------------ hooks

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.refresh(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.final.update(final_values(trainer.callback_metrics))
        self.refresh(trainer, pl_module)
        if self._after(trainer, pl_module) == "fit":
            self._write_hparams(trainer, pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.final.update(final_values(trainer.callback_metrics))
        self.refresh(trainer, pl_module)
        self._write_hparams(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self.refresh(trainer, pl_module, note=True)

    # ------------------------------------------------------------------ what is written

    @rank_zero_only
    def refresh(self, trainer: pl.Trainer, pl_module: pl.LightningModule, note: bool = False) -> None:
        """Read what the run has written since the last call; write the companions of new
        non-finite points and the Custom Scalars layout when it changed (and the text note of
        non-finite values when ``note``)."""
        logger = tensorboard_of(trainer)
        if logger is None:
            return
        writer = logger.experiment
        writer.flush()
        if self._tags is None:
            self._tags = EventTags(logger.log_dir)
        series = self._tags.update()
        for tag, values in list(series.items()):
            written = series.get(tag + NONFINITE_SUFFIX, Series()).steps  # by a resumed run's first process
            for step, _ in values.nonfinite[self._companions.get(tag, 0):]:
                if step not in written:
                    writer.add_scalar(tag + NONFINITE_SUFFIX, 1.0, step)
            self._companions[tag] = len(values.nonfinite)
        names = [term.name for term in kl_terms_of(trainer)]
        layout = custom_scalars_layout({**term_charts(names), **module_charts(pl_module)}, series)
        if layout and layout != self._layout:
            writer.add_custom_scalars(layout)
            self._layout = layout
        if note and any(values.nonfinite for values in series.values()):
            writer.add_text(NONFINITE_NOTE, nonfinite_note(series), self._tags.last_step)
        writer.flush()

    def _after(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        if self.write_hparams_after != "auto":
            return self.write_hparams_after
        datamodule = getattr(trainer, "datamodule", None)
        tests = is_overridden("test_step", pl_module) and (
            is_overridden("test_dataloader", pl_module)
            or (datamodule is not None and is_overridden("test_dataloader", datamodule)))
        return "test" if tests else "fit"

    def _write_hparams(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = tensorboard_of(trainer)
        if self.written or logger is None:
            return
        self.written = True
        self.refresh(trainer, pl_module, note=True)
        hparams = self.hparams if self.hparams is not None else flatten(dict(pl_module.hparams))
        values = {key: as_hparam(value) for key, value in hparams.items()}
        step = self._tags.last_step if self._tags is not None else 0
        log_hparams(Path(logger.log_dir) / HPARAMS_RUN, values, self.final, step)


def tensorboard_of(trainer: pl.Trainer) -> TensorBoardLogger | None:
    """The trainer's first TensorBoard logger, if any."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger
    return None


def final_values(metrics: Mapping[str, Any],
                 prefixes: tuple[str, ...] = ("val/", "test/")) -> dict[str, float]:
    """The scalar metrics whose names start with one of ``prefixes``, non-finite ones included
    (the HParams table shows them as they are)."""
    return {k: v for k, v in scalar_metrics(metrics).items() if k.startswith(prefixes)}


def term_charts(names: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """One section, ``KL terms``: each term's value, weight and loss (train, then validation)."""
    if not names:
        return {}
    return {"KL terms": {f"{name}: {part}": [f"^kl/{re.escape(name)}/{part}$",
                                             f"^val/kl/{re.escape(name)}/{part}$"]
                         for name in names for part in ("value", "weight", "loss")}}


def custom_scalars_layout(charts: Charts, series: Mapping[str, Series]) -> dict[str, dict[str, list[Any]]]:
    """TensorBoard's Custom Scalars layout of ``charts`` (``{section: {title: [regex, ...]}}``)
    over the tags written (``series``): one single-tag chart per written tag a chart's regexes
    match, titled ``<title> — <tag>`` and followed by its ``/nonfinite`` companion's chart when it
    has one; charts and sections that match nothing are left out."""
    layout: dict[str, dict[str, list[Any]]] = {}
    for section, section_charts in charts.items():
        built: dict[str, list[Any]] = {}
        for title, patterns in section_charts.items():
            for tag in matching_tags(patterns, series):
                values = series[tag]
                note = f" ({values.kinds()} points not drawn: see {tag}{NONFINITE_SUFFIX})" \
                    if values.nonfinite else ""
                built[f"{title} — {tag}{note}"] = ["Multiline", [f"^{re.escape(tag)}$"]]
                if values.nonfinite:
                    companion = tag + NONFINITE_SUFFIX
                    built[f"{title} — {companion}"] = ["Multiline", [f"^{re.escape(companion)}$"]]
        if built:
            layout[section] = built
    return layout


def matching_tags(patterns: Sequence[str], series: Mapping[str, Series]) -> list[str]:
    """The written tags (companions excluded) any of ``patterns`` matches, in the patterns' order,
    then training before validation before test, then by name."""
    found: list[str] = []
    for pattern in patterns:
        regex = re.compile(pattern)
        found += sorted((tag for tag in series if regex.search(tag) and tag not in found
                         and not tag.endswith(NONFINITE_SUFFIX)),
                        key=lambda tag: (tag.startswith("test/"), tag.startswith("val/"), tag))
    return found


def nonfinite_note(series: Mapping[str, Series], shown: int = 10) -> str:
    """A Markdown table of the scalars with non-finite points: tag, kind, count, first steps."""
    rows = ["| tag | value | points | steps |", "| --- | --- | --- | --- |"]
    for tag in sorted(series):
        values = series[tag]
        if values.nonfinite:
            steps = ", ".join(str(step) for step, _ in values.nonfinite[:shown])
            more = ", …" if len(values.nonfinite) > shown else ""
            rows.append(f"| `{tag}` | {values.kinds()} | {len(values.nonfinite)} of "
                        f"{len(values.steps)} | {steps}{more} |")
    return ("TensorBoard draws no point for these values; each tag has a companion "
            f"`<tag>{NONFINITE_SUFFIX}` (1 at each such step).\n\n" + "\n".join(rows))


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys, under ``prefix`` when one is given. A node
    built from ``_target_`` shows as its class name under its own key (``task.optimizer:
    AdamW``) beside its settings (``task.optimizer.lr``); Hydra's other keys are left out."""
    flat: dict[str, Any] = {}
    if "_target_" in values:
        flat[prefix or "_target_"] = str(values["_target_"]).rsplit(".", 1)[-1]
    for key, value in values.items():
        if key in HYDRA_KEYS:
            continue
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def as_hparam(value: Any) -> Any:
    """A value TensorBoard's HParams plugin accepts: numbers stay numbers (numeric strings become
    numbers), booleans and None become strings, anything else its string."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return str(value)


@rank_zero_only
def log_hparams(directory: str | Path, hparams: Mapping[str, Any], metrics: Mapping[str, float],
                step: int = 0) -> None:
    """Write a run's HParams session into its own TensorBoard run ``directory``: the session's
    start (``hparams``), its final ``metrics`` as scalars ``final/<tag>`` at ``step``, and its
    end. No experiment definition: TensorBoard builds the table from every session in the
    logdir. A rewrite (a resumed run that ends again) replaces the previous session."""
    from torch.utils.tensorboard.writer import FileWriter

    directory = Path(directory)
    for old in directory.glob("events.out.tfevents.*"):
        old.unlink()
    final = {FINAL_PREFIX + tag: value for tag, value in sorted(metrics.items())}
    _, start, end = hparams_summary(dict(hparams), final)
    writer = FileWriter(str(directory))
    writer.add_summary(start, step)
    for tag, value in final.items():
        writer.add_summary(scalar_summary(tag, value), step)
    writer.add_summary(end, step)
    writer.close()

