"""Every config in conf/ composes and instantiates; the runner builds what an experiment names."""

from pathlib import Path

import pytest
from helpers import compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from klexp.cli import CONFIG_DIR
from klexp.runner import build_callbacks, build_terms, instantiate_node
from klexp.terms import KLTerm
from klexp.validation import check_config

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_there_are_experiments():
    assert "classification" in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_validates_and_instantiates(experiment, tmp_path):
    cfg = compose_config([f"experiment={experiment}"], output_dir=tmp_path)
    OmegaConf.resolve(cfg)
    check_config(cfg)
    assert cfg.experiment_name
    terms = build_terms(cfg.kl)
    assert all(isinstance(term, KLTerm) for term in terms)
    assert [t.name for t in terms] == [k for k, v in (cfg.kl or {}).items() if v is not None]
    instantiate_node(cfg.task, "task")
    if cfg.get("data") is not None:
        instantiate_node(cfg.data, "data")
    build_callbacks(cfg.callbacks)
    instantiate(cfg.logger)
    instantiate(cfg.trainer)


@pytest.mark.parametrize(
    ("group", "option"),
    [(group, option)
     for group in ("data", "task", "trainer", "logger", "callbacks", "kl", "schedule", "env")
     if (CONFIG_DIR / group).is_dir()
     for option in group_options(group)],
)
def test_every_group_option_composes(group, option, tmp_path):
    if group == "kl":
        override = f"kl=[{option}]"
    elif group == "schedule":
        override = f"+schedule@kl.ce.schedule={option}"
    else:
        override = f"{group}={option}"
    extra = ["data.root=/nonexistent"] if option == "mnist_idx" else []
    cfg = compose_config([override, *extra], output_dir=tmp_path)
    OmegaConf.resolve(cfg)
    check_config(cfg)
    node = cfg.kl.ce.schedule if group == "schedule" else None
    if node is not None:
        instantiate(node)


def test_every_yaml_file_is_reachable_through_a_group():
    groups = {"experiment", "data", "task", "trainer", "logger", "callbacks", "kl", "schedule",
              "env", "launcher", "hparams_search"}
    for path in Path(CONFIG_DIR).rglob("*.yaml"):
        relative = path.relative_to(CONFIG_DIR)
        assert relative.parts[0] in groups or relative == Path("config.yaml"), relative
