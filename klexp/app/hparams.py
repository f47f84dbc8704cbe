"""What TensorBoard's HParams tab shows for a run of the ``klexp`` app: its command-line overrides
plus key config values (experiment, seed, each KL term's weight, direction, estimator, schedule
and shaping)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from klexp.lightning.dashboards import as_hparam

#: Overrides that change how a run is displayed or launched, not what it computes.
NOT_HPARAMS = frozenset({"callbacks.progress_bar", "trainer.enable_model_summary",
                         "trainer.enable_progress_bar", "launcher", "hparams_search", "verbose"})


def hparams_of(cfg: DictConfig, overrides: Sequence[str]) -> dict[str, Any]:
    """The run's overrides plus key config values, as TensorBoard HParams (scalars and strings)."""
    values: dict[str, Any] = {"experiment": cfg.get("experiment_name") or "", "seed": cfg.get("seed")}
    for name, term in (cfg.get("kl") or {}).items():
        if term is None:
            continue
        for key in ("weight", "direction", "estimator", "placement"):
            if key in term:
                values[f"kl.{name}.{key}"] = term[key]
        for key in ("schedule", "shaping"):
            node = term.get(key)
            if node is not None:
                values[f"kl.{name}.{key}"] = str(node.get("_target_", "")).rsplit(".", 1)[-1]
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key not in NOT_HPARAMS:
            values[key] = value
    return {k: as_hparam(_plain(v)) for k, v in values.items()}


def override_keys(overrides: Sequence[str]) -> list[str]:
    """The hparams a user chose on the command line (where a sweep's varying keys always are)."""
    keys = (override.lstrip("+~").partition("=")[0] for override in overrides)
    return [key for key in keys if key not in NOT_HPARAMS]


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return str(OmegaConf.to_container(value))
    return value
