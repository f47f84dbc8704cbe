"""Runs never die silently, lose their logs, or continue from a wrong state."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import QUIET, REPO, cli, run_experiment
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from klexp.errors import NonFiniteError


def test_a_non_finite_kl_stops_training_naming_the_term_and_loses_nothing(tmp_path):
    overrides = [*QUIET, "data=synthetic", "trainer.max_epochs=3", "trainer.log_every_n_steps=1",
                 "callbacks.model_checkpoint.every_n_train_steps=2",
                 "+callbacks.poison._target_=helpers.PoisonWeights", "+callbacks.poison.step=11"]
    with pytest.raises(NonFiniteError, match=r"KL term 'ce' is nan at step 11 \(train\)") as error:
        run_experiment(overrides, tmp_path)
    assert "q=model (Categorical: nan=" in str(error.value)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "KL term 'ce' is nan at step 11" in summary["error"]

    last_good = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last_good["global_step"] == 10
    assert all(torch.isfinite(v).all() for v in last_good["state_dict"].values())
    assert (tmp_path / "checkpoints" / "on_exception.ckpt").is_file()

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("kl/ce/value")]
    assert max(steps) == 10 and len(steps) == 11


def _start(args, cwd, env):
    return subprocess.Popen([sys.executable, "-m", "klexp", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return events


def _metrics(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary.get("error")
    return summary["metrics"]


# 420 synthetic training examples in batches of 64: 7 batches an epoch, 28 steps in all.
KILLED_RUNS = {
    "classification": ["trainer.max_epochs=4", "task.net.dropout=0.2"],
    # sampled latents, dynamic binarisation and a β still annealing when the run is killed
    "vae": ["trainer.max_steps=28", "trainer.check_val_every_n_epoch=1", "task.iw_samples=5",
            "schedule@kl.prior.schedule=linear", "kl.prior.schedule.steps=20"],
}


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(KILLED_RUNS))
def test_a_run_killed_mid_epoch_resumes_to_exactly_the_uninterrupted_result(experiment, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = [f"experiment={experiment}", "data=synthetic", *KILLED_RUNS[experiment],
           "callbacks.progress_bar=null", "callbacks.model_checkpoint.every_n_train_steps=3",
           "trainer.log_every_n_steps=1"]
    # the killed run sleeps in each step (so the kill lands mid-epoch); sleeping changes no number
    args = [*run, "+callbacks.sleep._target_=helpers.Sleep", "+callbacks.sleep.seconds=0.15"]
    reference = cli(run, cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-2000:]
    (reference_dir,) = (tmp_path / "outputs" / experiment).iterdir()
    reference_dir = reference_dir.rename(tmp_path / "reference")

    process = _start(args, tmp_path, env)
    deadline = time.time() + 240
    run_dir = None
    while time.time() < deadline:
        found = list((tmp_path / "outputs" / experiment).glob("*/checkpoints/last.ckpt"))
        if found:
            step = torch.load(found[0], weights_only=True)["global_step"]
            if step >= 9 and step % 7:  # past one epoch, and not at an epoch boundary
                run_dir = found[0].parent.parent
                break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert run_dir is not None, "the run never wrote a mid-epoch checkpoint"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"
    config_before = (run_dir / ".hydra" / "config.yaml").read_text()

    resumed = cli([f"resume={run_dir}", "callbacks.sleep.seconds=0"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _metrics(run_dir) == _metrics(reference_dir)
    # the killed process's events after the checkpoint were purged: one event per step, as in
    # the uninterrupted run
    steps = [[e.step for e in _events(d).Scalars("loss/total")] for d in (run_dir, reference_dir)]
    assert steps[0] == steps[1]
    assert (run_dir / ".hydra" / "config.yaml").read_text() == config_before
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from_step"] >= 9
