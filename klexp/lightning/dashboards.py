"""klexp's TensorBoard dashboards for any Trainer with a ``TensorBoardLogger``, as one callback.

* **Custom Scalars**: one chart per KL term (value, weight and loss, train and validation) and the
  module's own charts, when it has a ``custom_scalars()`` method returning
  ``{section: {chart title: [tag regex, ...]}}``. Written when training starts.
* **HParams**: the run's hyperparameters against its *real* final metrics (the finite ``val/`` and
  ``test/`` scalars), written once, on rank zero, at the end of the run — after ``test`` when the
  run will test, else after ``fit``. There is no ``hp_metric`` placeholder (give the logger
  ``default_hp_metric=False``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch.utils.tensorboard.summary import hparams as hparams_summary

from klexp.lightning.run_summary import final_metrics
from klexp.lightning.term import kl_terms_of

Charts = Mapping[str, Mapping[str, Sequence[str]]]


class Dashboards(pl.Callback):
    """Custom Scalars and HParams (see the module docstring).

    Args:
        hparams: the values to show in the HParams table (numbers, strings, booleans); by default
            the module's ``hparams`` (``save_hyperparameters``), flattened with dotted keys.
        chosen: hparams to mark as varying in a sweep, so TensorBoard shows them first (its table
            shows five hparam columns by default); by default all of them.
        objective: the metric to list first.
        write_hparams_after: ``fit``, ``test``, or ``auto`` — after ``test`` when the module (or
            its DataModule) has test data, else after ``fit``.
    """

    def __init__(self, hparams: Mapping[str, Any] | None = None, chosen: Sequence[str] | None = None,
                 objective: str | None = None,
                 write_hparams_after: Literal["auto", "fit", "test"] = "auto") -> None:
        self.hparams = None if hparams is None else dict(hparams)
        self.chosen, self.objective = chosen, objective
        self.write_hparams_after = write_hparams_after
        self.written = False
        self.final: dict[str, float] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = tensorboard_of(trainer)
        if logger is None:
            return
        charts = pl_module.custom_scalars() if hasattr(pl_module, "custom_scalars") else {}
        write_custom_scalars(logger, [term.name for term in kl_terms_of(trainer)], charts)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.final.update(final_metrics(trainer.callback_metrics))
        if self._after(trainer, pl_module) == "fit":
            self._write_hparams(trainer, pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.final.update(final_metrics(trainer.callback_metrics))
        self._write_hparams(trainer, pl_module)

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
        hparams = self.hparams if self.hparams is not None else flatten(dict(pl_module.hparams))
        values = {key: as_hparam(value) for key, value in hparams.items()}
        chosen = list(values) if self.chosen is None else self.chosen
        log_hparams(logger, values, self.final, chosen, self.objective)
        logger.experiment.flush()


def tensorboard_of(trainer: pl.Trainer) -> TensorBoardLogger | None:
    """The trainer's first TensorBoard logger, if any."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger
    return None


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
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
def log_hparams(logger: TensorBoardLogger, hparams: Mapping[str, Any],
                metrics: Mapping[str, float], chosen: Sequence[str] = (),
                objective: str | None = None) -> None:
    """Write the HParams session once, naming metrics already logged as scalars, so the HParams
    table shows each run's final values (TensorBoard reads them from the scalar summaries).

    TensorBoard's HParams tab takes its columns from one run's experiment definition and shows
    the first five hparams and the first five metrics of it: hparams marked ``differs`` first, then
    by name; metrics in the order written. A run cannot see the rest of its sweep, so the hparams
    marked are the ``chosen`` ones, and metrics are written objective first, then the ``test/``
    and ``val/`` metrics, then their per-term and per-loss parts."""
    order = sorted(metrics, key=lambda k: (k != objective, k.count("/") > 1,
                                           not k.startswith("test/"), k))
    experiment, start, end = hparams_summary(dict(hparams), {k: metrics[k] for k in order})
    _mark_differs(experiment, set(chosen))
    writer = logger.experiment._get_file_writer()
    for summary in (experiment, start, end):
        writer.add_summary(summary)
    writer.flush()


@rank_zero_only
def write_custom_scalars(logger: TensorBoardLogger, term_names: Sequence[str], task_charts: Charts) -> None:
    """One Multiline chart per KL term (value, weight, loss; train and val) and the task's own.
    Tags are regular expressions, as TensorBoard's custom-scalars plugin reads them."""
    layout: dict[str, dict[str, list[Any]]] = {}
    if term_names:
        layout["KL terms"] = {
            name: ["Multiline", [f"^kl/{name}/(value|weight|loss)$",
                                 f"^val/kl/{name}/(value|weight|loss)$"]]
            for name in term_names
        }
    for title, charts in task_charts.items():
        layout[title] = {chart: ["Multiline", list(tags)] for chart, tags in charts.items()}
    if layout:
        logger.experiment.add_custom_scalars(layout)


def _mark_differs(experiment: Any, keys: set[str]) -> None:
    """Set ``differs`` on the experiment definition's hparams named in ``keys`` (in place)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    for value in experiment.value:
        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        for info in data.experiment.hparam_infos:
            info.differs = info.name in keys
        value.metadata.plugin_data.content = data.SerializeToString()
