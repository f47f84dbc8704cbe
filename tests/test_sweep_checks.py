"""A sweep's jobs are read ahead and checked before the first one runs (``klexp.app.sweep_checks``):
which jobs Hydra's basic sweeper will run, in its order."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from klexp.app.hydra_internals import BASIC_SWEEPER
from klexp.app.sweep_checks import job_overrides


def sweep_config(task: list[str], params: dict[str, str] | None = None,
                 sweeper: str = BASIC_SWEEPER) -> DictConfig:
    return OmegaConf.create({"hydra": {"overrides": {"task": task},
                                       "sweeper": {"_target_": sweeper, "params": params}}})


def test_the_jobs_are_the_product_of_the_sweeps_in_the_basic_sweepers_order():
    config = sweep_config(["data=synthetic", "kl.ce.weight=1,-1", "seed=0,1"])
    assert job_overrides(config) == [
        ["data=synthetic", "kl.ce.weight=1", "seed=0"], ["data=synthetic", "kl.ce.weight=1", "seed=1"],
        ["data=synthetic", "kl.ce.weight=-1", "seed=0"], ["data=synthetic", "kl.ce.weight=-1", "seed=1"]]


def test_the_sweepers_params_come_first_and_the_command_line_replaces_them():
    config = sweep_config(["seed=3", "experiment=a,b"], params={"seed": "0,1", "kl.ce.weight": "2"})
    assert job_overrides(config) == [["seed=3", "kl.ce.weight=2", "experiment=a"],
                                     ["seed=3", "kl.ce.weight=2", "experiment=b"]]
    ranged = sweep_config(["seed=range(0,3)"])
    assert job_overrides(ranged) == [["seed=0"], ["seed=1"], ["seed=2"]]


def test_another_sweeper_or_a_sweep_it_cannot_expand_is_not_read_ahead():
    assert job_overrides(sweep_config(["seed=0,1"], sweeper="hydra_plugins.optuna.OptunaSweeper")) is None
    assert job_overrides(sweep_config(["lr=interval(0.1,1)"])) is None  # a search space, not jobs
    assert job_overrides(sweep_config(["seed=[1"])) is None  # Hydra's own parser names it
