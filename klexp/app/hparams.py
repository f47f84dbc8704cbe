"""What TensorBoard's HParams tab shows for a run of the ``klexp`` app: the resolved config that
defines the run, flattened to dotted keys — the experiment and seed, every key of the task
(optimiser settings, widths, divergence…), of each KL term (weight, direction, estimator,
placement, schedule and shaping with their settings) and of the data, the trainer's length and
precision where they are not Lightning's defaults — and the command line's config-group choices
(``divergence=wasserstein``, ``data=synthetic``: the name the user chose, where the config shows
a class name).

A node built from ``_target_`` shows as its class name under its own key (``task.optimizer:
AdamW``, ``kl.prior.schedule: LinearWarmup``) beside its settings (``task.optimizer.lr``)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from klexp.lightning.dashboards import as_hparam, flatten

#: Overrides that change how a run is displayed or launched, not what it computes.
NOT_HPARAMS = frozenset({"callbacks.progress_bar", "trainer.enable_model_summary",
                         "trainer.enable_progress_bar", "launcher", "hparams_search", "verbose"})
#: The config sections that define what a run computes, flattened whole.
SECTIONS = ("task", "kl", "data")
#: Trainer settings that change what a run computes (the rest are where and how it shows).
TRAINER_KEYS = ("max_epochs", "max_steps", "accumulate_grad_batches", "gradient_clip_val",
                "gradient_clip_algorithm", "precision", "devices", "num_nodes", "strategy",
                "limit_train_batches", "val_check_interval")
#: Lightning's defaults, which the trainer node lists too: a run shows only the settings it changes.
_TRAINER_DEFAULTS = {name: p.default for name, p in inspect.signature(pl.Trainer.__init__).parameters.items()}


def hparams_of(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The run's resolved config as TensorBoard HParams (numbers and strings; see the module
    docstring)."""
    values: dict[str, Any] = {"experiment": cfg.get("experiment_name") or "", "seed": cfg.get("seed")}
    for section in SECTIONS:
        node = cfg.get(section)
        if node is not None:
            plain = OmegaConf.to_container(node, resolve=True)
            values.update(flatten(plain, section) if isinstance(plain, Mapping) else {section: plain})
    trainer = cfg.get("trainer") or {}
    for key in TRAINER_KEYS:
        if trainer.get(key) is not None and trainer[key] != _TRAINER_DEFAULTS[key]:
            values[f"trainer.{key}"] = trainer[key]
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key not in NOT_HPARAMS and "." not in key:
            values[key] = value  # a config-group choice (data=synthetic), in the user's words
    return {k: as_hparam(_scalar(v)) for k, v in values.items()}


def _scalar(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return str(list(value))
    return value
