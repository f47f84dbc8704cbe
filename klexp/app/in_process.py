"""Run klexp from Python as the ``klexp`` command does: the app's config composed from overrides
and run in this process, so that a script of many short runs (a study, a benchmark) pays
Lightning's import once."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from klexp.app.cli import CONFIG_DIR, CONFIG_NAME
from klexp.app.resolvers import register_resolvers
from klexp.app.stages import Compose


@contextmanager
def composed_app(overrides: Sequence[str], output_dir: Path | str) -> Iterator[tuple[DictConfig, Compose]]:
    """Inside Hydra initialised as the ``klexp`` app: the config ``klexp <overrides>`` composes,
    with ``output_dir`` as its run directory (its ``hydra`` node removed, as the app sees it), and
    how a stage composes its own config."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=CONFIG_NAME, overrides=list(overrides), return_hydra_config=True)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            del cfg["hydra"]

        def compose_stage(stage_overrides: Sequence[str]) -> DictConfig:
            return compose(config_name=CONFIG_NAME, overrides=list(stage_overrides))

        yield cfg, compose_stage


def run_overrides(overrides: Sequence[str], output_dir: Path | str) -> dict[str, Any]:
    """Compose ``overrides`` as ``klexp <overrides>`` would and run them (stages included) with
    ``output_dir`` as the run directory; returns the run's summary (its ``summary.json``)."""
    from klexp.app.runner import run  # Lightning is imported to run, not to compose

    overrides = list(overrides)
    with composed_app(overrides, output_dir) as (cfg, compose_stage):
        return run(cfg, Path(output_dir), overrides=overrides, compose=compose_stage)
