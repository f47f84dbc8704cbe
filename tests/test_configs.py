"""Every config in klexp/conf/ composes and instantiates; the runner builds what an experiment names."""

import inspect
import os
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
from helpers import compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.profilers import SimpleProfiler

from klexp.app.cli import CONFIG_DIR
from klexp.app.config_checks import check_config
from klexp.app.runner import build_callbacks, build_terms, check_terms_against_task, instantiate_node
from klexp.lightning.loss import Term
from klexp.lightning.profiler import NoProfiler

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
    assert all(isinstance(term, Term) for term in terms)
    assert [t.name for t in terms] == [k for k, v in (cfg.kl or {}).items() if v is not None]
    instantiate_node(cfg.task, "task")
    if cfg.get("data") is not None:
        instantiate_node(cfg.data, "data")
    build_callbacks(cfg.callbacks)
    instantiate(cfg.logger)
    instantiate(cfg.trainer)


def _compose_option(group: str, option: str, experiment: str, tmp_path):
    if group == "kl":  # the experiment's own terms plus this one
        own = list(compose_config([f"experiment={experiment}"]).kl)
        overrides = [f"kl=[{','.join(dict.fromkeys([*own, option]))}]"]
    elif group in ("schedule", "shaping"):
        overrides = [f"+{group}@kl.{experiment_term(experiment)}.{group}={option}"]
    else:
        overrides = [f"{group}={option}"]
    if option == "mnist_idx":
        overrides.append("data.root=/nonexistent")
    cfg = compose_config([f"experiment={experiment}", *overrides], output_dir=tmp_path)
    OmegaConf.resolve(cfg)
    check_config(cfg)
    return cfg


def likely_contexts(group: str, option: str) -> list[str]:
    """Every experiment, those likeliest to be the option's context first:
    the ones that compose the group (for a schedule or shaping, which is added to a term, the
    ones that do not yet), then the ones that name the option, then the ones naming a word that
    shares the longest start with it (``distill_top_k`` → ``distill_forward``'s)."""
    added = group in ("schedule", "shaping")

    def distance(experiment: str) -> tuple[bool, bool, int]:
        text = (CONFIG_DIR / "experiment" / f"{experiment}.yaml").read_text()
        shared = max((len(os.path.commonprefix([option, word]))  # noqa: RUF071 (words, not paths)
                      for word in re.findall(r"[a-z_]+", text)), default=0)
        return (f"/{group}" in text) == added, option not in text, -shared
    return sorted(EXPERIMENTS, key=distance)


def experiment_term(experiment: str) -> str:
    cfg = compose_config([f"experiment={experiment}"])
    names = [name for name, term in (cfg.kl or {}).items() if term is not None]
    if not names:
        raise ValueError(f"experiment={experiment} has no KL term to add a schedule or shaping to")
    return names[0]


@pytest.mark.parametrize(
    ("group", "option"),
    [(group, option)
     for group in ("data", "task", "trainer", "logger", "callbacks", "kl", "schedule", "shaping", "env",
                   "divergence")
     if (CONFIG_DIR / group).is_dir()
     for option in group_options(group)],
)
def test_every_group_option_composes_in_some_experiment(group, option, tmp_path):
    """Each file is valid where it is meant to be used: with the default experiment or, for
    options that need a context (a PPO task needs an env; a distillation term needs a teacher),
    with one of the experiments. Valid means composed, checked, and built: a KL term file's term
    must read outputs the experiment's task produces, a schedule must instantiate."""
    errors = []
    for experiment in likely_contexts(group, option):
        try:
            cfg = _compose_option(group, option, experiment, tmp_path)
            if group in ("schedule", "shaping"):
                instantiate(cfg.kl[experiment_term(experiment)][group])
            if group == "kl":
                for stage in (cfg.get("stages") or {}).values():  # what a stage would hand over
                    OmegaConf.update(cfg, stage.checkpoint_to, "stage/checkpoints/last.ckpt")
                terms = build_terms(cfg.kl)
                check_terms_against_task(terms, instantiate_node(cfg.task, "task"))
        except Exception as error:
            errors.append(f"{experiment}: {(str(error).splitlines() or [type(error).__name__])[0]}")
            continue
        return
    pytest.fail(f"{group}={option} works with no experiment: {errors[:3]}")


def test_every_yaml_file_is_reachable_through_a_group():
    groups = {"experiment", "data", "task", "trainer", "logger", "callbacks", "kl", "schedule",
              "shaping", "divergence", "env", "launcher", "hparams_search", "hydra"}
    for path in Path(CONFIG_DIR).rglob("*.yaml"):
        relative = path.relative_to(CONFIG_DIR)
        assert relative.parts[0] in groups or relative == Path("config.yaml"), relative


def test_every_config_folder_ships_in_the_wheel():
    """The packages setuptools finds with pyproject.toml's settings hold klexp/conf and each of its
    folders (tests/test_user_project.py installs a wheel and runs from it)."""
    import tomllib
    from setuptools import find_namespace_packages

    repo = CONFIG_DIR.parents[1]
    find = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find.get("namespaces", True), "the config folders have no __init__.py: namespace packages"
    packages = set(find_namespace_packages(str(repo), include=find["include"]))
    folders = {"klexp.conf." + ".".join(p.relative_to(CONFIG_DIR).parts)
               for p in CONFIG_DIR.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    assert folders | {"klexp.conf", "klexp.nets", "hydra_plugins.klexp_search_path"} <= packages


def test_the_default_profiler_records_nothing_and_a_chosen_one_replaces_it(tmp_path):
    trainer = instantiate(compose_config([], output_dir=tmp_path).trainer)
    assert isinstance(trainer.profiler, NoProfiler)
    chosen = instantiate(compose_config(["trainer.profiler=simple"], output_dir=tmp_path).trainer)
    assert isinstance(chosen.profiler, SimpleProfiler)


#: the trainer settings runs override most, which the default node lists (so they need no `+`)
OVERRIDDEN_MOST = ("max_steps", "max_time", "precision", "gradient_clip_val", "gradient_clip_algorithm",
                   "accumulate_grad_batches", "limit_train_batches", "limit_val_batches",
                   "limit_test_batches", "val_check_interval", "check_val_every_n_epoch",
                   "num_sanity_val_steps", "strategy", "num_nodes")


def test_the_trainer_node_lists_the_settings_runs_override_at_lightnings_defaults(tmp_path):
    defaults = {name: p.default for name, p in inspect.signature(pl.Trainer.__init__).parameters.items()}
    node = compose_config([], output_dir=tmp_path).trainer
    assert {key: node[key] for key in OVERRIDDEN_MOST} == {key: defaults[key] for key in OVERRIDDEN_MOST}
    cfg = compose_config(["trainer.max_steps=5", "trainer.precision=64-true", "trainer.gradient_clip_val=0.5",
                          "trainer.accumulate_grad_batches=2", "trainer.limit_train_batches=3"],
                         output_dir=tmp_path)
    check_config(cfg)
    trainer = instantiate(cfg.trainer)
    assert (trainer.max_steps, trainer.precision, trainer.gradient_clip_val,
            trainer.accumulate_grad_batches, trainer.limit_train_batches) == (5, "64-true", 0.5, 2, 3)
