"""Sweeps as a user runs them: ``klexp -m`` with Hydra's basic sweeper, ``launcher=joblib`` (jobs in
parallel processes) and ``hparams_search=`` (Optuna), then ``klexp report`` on the sweep."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import FAST, cli

# 2 values × 2 seeds of a few-step run; threads pinned, so runs compare bit for bit across launchers
SWEEP = [*FAST, "data=synthetic", "data.separation=0.5", "trainer.log_every_n_steps=1", "threads=1"]
WEIGHTS = ("0.5", "2")


def sweep_dir(cwd: Path, experiment: str = "classification") -> Path:
    """The one directory of the one sweep made in ``cwd``: the sweep's own record and lock in it,
    its runs in a folder named after their experiment."""
    (directory,) = (cwd / "outputs" / "multirun").iterdir()
    assert [p.name for p in directory.iterdir() if p.is_dir()] == [experiment]
    assert "klexp.lock" in {p.name for p in directory.iterdir()}
    return directory


def summaries(directory: Path) -> dict[tuple[str, int], dict]:
    """(kl.ce.weight or '', seed) → summary of every run in a sweep directory."""
    found = {}
    for path in directory.rglob("summary.json"):
        summary = json.loads(path.read_text())
        settings = dict(o.lstrip("+").split("=", 1) for o in summary["overrides"])
        found[(settings.get("kl.ce.weight", ""), summary["seed"])] = summary
    return found


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("basic")
    result = cli(["-m", *SWEEP, f"kl.ce.weight={','.join(WEIGHTS)}", "seed=0,1"], cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir(cwd)


def test_basic_sweep_names_each_run_after_its_overrides_with_the_seed_last(basic_sweep):
    runs = sorted(p.parent.relative_to(basic_sweep).as_posix() for p in basic_sweep.rglob("summary.json"))
    assert len(runs) == 4
    for run in runs:
        experiment, combination, seed = run.split("/")
        assert experiment == "classification"
        assert seed in ("seed=0", "seed=1")
        assert "kl.ce.weight=" in combination and "seed" not in combination
    assert all(s["status"] == "completed" for s in summaries(basic_sweep).values())


def test_report_of_a_sweep_has_one_row_per_value_with_the_std_over_seeds(basic_sweep, tmp_path):
    out = tmp_path / "report"
    result = cli(["report", str(basic_sweep), "--metrics", "test/acc", "test/nll",
                  "--tags", "val/acc", "--out", str(out)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kl.ce.weight" in result.stdout and "±" in result.stdout
    table = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    assert [row["kl.ce.weight"] for row in table] == list(WEIGHTS)
    runs = summaries(basic_sweep)
    for row in table:
        assert row["seeds"] == "0 1"
        for metric in ("test/acc", "test/nll"):
            values = [runs[(row["kl.ce.weight"], seed)]["metrics"][metric] for seed in (0, 1)]
            assert float(row[f"{metric} mean"]) == np.mean(values)
            assert float(row[f"{metric} std"]) == np.std(values, ddof=1)
    assert any(float(row["test/nll std"]) > 0 for row in table)  # the seeds really differ
    assert (out / "val_acc.png").is_file()
    assert "| kl.ce.weight | seeds | test/acc | test/nll |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes_with_the_same_numbers(basic_sweep, tmp_path):
    result = cli(["-m", "launcher=joblib", *SWEEP, f"kl.ce.weight={','.join(WEIGHTS)}", "seed=0"],
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    directory = sweep_dir(tmp_path)
    hydra_cfg = yaml.safe_load((directory / "multirun.yaml").read_text())["hydra"]
    assert hydra_cfg["launcher"]["_target_"].endswith("JoblibLauncher")
    assert hydra_cfg["launcher"]["n_jobs"] == 2
    parallel = summaries(directory)
    assert sorted(parallel) == [(w, 0) for w in WEIGHTS]
    # `launcher` changes neither the run directories' names nor any number
    serial = summaries(basic_sweep)
    for key, summary in parallel.items():
        assert summary["status"] == "completed"
        assert summary["metrics"] == serial[key]["metrics"]
    names = {p.parent.parent.name for p in directory.rglob("summary.json")}
    assert names == {p.parent.parent.name for p in basic_sweep.rglob("summary.json")}


@pytest.mark.slow
def test_optuna_search_runs_trials_and_maximises_the_returned_objective(tmp_path):
    result = cli(["experiment=confidence_penalty", "hparams_search=confidence_optuna",
                  "hydra.sweeper.n_trials=2", *SWEEP], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    directory = sweep_dir(tmp_path, "confidence_penalty")
    trials = [json.loads(p.read_text()) for p in directory.rglob("summary.json")]
    assert len(trials) == 2
    objectives = [t["objective"] for t in trials]
    assert all(t["objective_name"] == "val/acc" and t["objective"] is not None for t in trials)
    best = yaml.safe_load((directory / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(objectives))
    assert set(best["best_params"]) == {"kl.confidence.weight", "task.label_smoothing",
                                        "task.lr_scheduler.max_lr"}
    for trial in trials:
        chosen = dict(o.split("=", 1) for o in trial["overrides"] if o.startswith(("kl.", "task.")))
        assert 0 <= float(chosen["kl.confidence.weight"]) <= 1
        assert 3e-4 <= float(chosen["task.lr_scheduler.max_lr"]) <= 1e-2


def test_sweep_job_directories_fit_the_file_system_and_never_collide():
    from klexp.app.resolvers import MAX_DIRNAME_BYTES, sweep_subdir

    assert sweep_subdir("kl.ce.weight=0.5", 1) == "kl.ce.weight=0.5/seed=1"
    # only the seed varies: no empty first part, which would make the path absolute (/seed=0)
    assert sweep_subdir("", 0) == "seed=0"
    # a checkpoint path as a value stays one directory level
    assert sweep_subdir("task.reference_checkpoint=runs/ref/last.ckpt", 2) == (
        "task.reference_checkpoint=runs_ref_last.ckpt/seed=2")
    long_a = ",".join(f"trainer.option_{i}=value_{i}" for i in range(20))
    long_b = long_a.replace("value_19", "value_20")
    name_a, name_b = sweep_subdir(long_a, 0), sweep_subdir(long_b, 0)
    assert len(name_a.split("/")[0].encode()) <= MAX_DIRNAME_BYTES
    assert name_a != name_b and name_a.endswith("/seed=0")
    assert name_a.startswith(long_a[:100])


def test_launcher_and_search_configs_compose():
    from helpers import REPO
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "klexp" / "conf"), version_base="1.3"):
        parallel = compose("config", ["launcher=joblib"], return_hydra_config=True)
        search = compose("config", ["experiment=confidence_penalty", "hparams_search=confidence_optuna"],
                         return_hydra_config=True)
    assert parallel.hydra.launcher._target_.endswith("JoblibLauncher")
    assert parallel.hydra.launcher.n_jobs == 2 and parallel.threads == 1
    assert search.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert search.hydra.sweeper.direction == "maximize" and search.objective == "val/acc"
    assert search.hydra.mode.name == "MULTIRUN"
    assert set(search.hydra.sweeper.params) == {"kl.confidence.weight", "task.label_smoothing",
                                                "task.lr_scheduler.max_lr"}
