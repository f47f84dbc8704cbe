"""Exact reruns: the same config and seed on this CPU give the same numbers, bit for bit — final
metrics, every logged scalar at every step, and the trained weights."""

import json
from pathlib import Path

import pytest
import torch
from helpers import FAST, QUIET, run_cli, run_experiment
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

# threads pinned: the thread count changes how float reductions are split (see README)
CLASSIFICATION = [*FAST, "data=synthetic", "data.separation=0.5", "trainer.log_every_n_steps=1",
                  "threads=1", "seed=3"]
VAE = [*QUIET, "experiment=vae", "trainer.max_steps=12", "trainer.check_val_every_n_epoch=1",
       "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "task.iw_samples=4",
       "trainer.log_every_n_steps=1", "seed=3"]
PPO = [*QUIET, "experiment=ppo", "task.total_timesteps=1024", "task.eval_episodes=2", "seed=3"]


def measured(tag: str) -> bool:
    """A number computed by the run (not its speed: ``time/…`` tags are wall-clock)."""
    return not tag.startswith("time/")


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={SCALARS: 0})
    accumulator.Reload()
    # sorted: Lightning's logger reopens a second event file for the test stage, and the order in
    # which TensorBoard reads two files named in the same second is not part of a run's numbers
    return {tag: sorted((e.step, e.value) for e in accumulator.Scalars(tag))
            for tag in accumulator.Tags()[SCALARS] if measured(tag)}


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return checkpoint["state_dict"]


def assert_identical(first: Path, second: Path) -> None:
    summary_a = json.loads((first / "summary.json").read_text())
    summary_b = json.loads((second / "summary.json").read_text())
    assert summary_a["status"] == summary_b["status"] == "completed"
    metrics_a = {k: v for k, v in summary_a["metrics"].items() if measured(k)}
    metrics_b = {k: v for k, v in summary_b["metrics"].items() if measured(k)}
    assert metrics_a and metrics_a == metrics_b
    assert summary_a["objective"] == summary_b["objective"]
    series_a, series_b = scalars(first), scalars(second)
    assert series_a and series_a.keys() == series_b.keys()
    differing = [tag for tag in series_a if series_a[tag] != series_b[tag]]
    assert not differing, differing
    weights_a, weights_b = weights(first), weights(second)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@pytest.fixture(scope="module")
def classification(tmp_path_factory):
    """The classification run (in this process), made once for the tests below."""
    run_dir = tmp_path_factory.mktemp("classification") / "seed3"
    run_experiment(CLASSIFICATION, run_dir)
    return run_dir


def test_classification_rerun_is_bit_exact(classification, tmp_path):
    run_experiment(CLASSIFICATION, tmp_path / "second")
    assert_identical(classification, tmp_path / "second")


def test_a_different_seed_gives_different_numbers(classification, tmp_path):
    """The check above can fail: runs that should differ do."""
    run_experiment([*CLASSIFICATION, "seed=4"], tmp_path / "seed4")
    with pytest.raises(AssertionError):
        assert_identical(classification, tmp_path / "seed4")


@pytest.mark.slow
def test_the_command_line_reproduces_an_in_process_run(classification, tmp_path):
    """A process of its own gives the numbers this process gives: what lets the other tests run
    the command in this process (helpers.cli) and compare with runs made in processes."""
    result = run_cli(CLASSIFICATION, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (cli_run,) = (tmp_path / "outputs" / "classification").iterdir()
    assert_identical(classification, cli_run)


@pytest.mark.parametrize("overrides", [VAE, PPO], ids=["vae", "ppo"])
def test_vae_and_ppo_reruns_are_bit_exact(overrides, tmp_path):
    run_experiment(overrides, tmp_path / "first")
    run_experiment(overrides, tmp_path / "second")
    assert_identical(tmp_path / "first", tmp_path / "second")
