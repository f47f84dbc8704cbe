"""Every tensor a task builds follows the module's device and dtype: each experiment trains, tests
and logs in float64 (Lightning's ``precision=64-true``), where a tensor a task made in float32
(a numpy rollout, a loaded data set, a grid for evaluation) would fail at once. On this CPU-only
machine the dtype stands in for the device: both are moved by the same ``.to(device, dtype)``."""

from __future__ import annotations

import pytest
from helpers import FAST, QUIET, run_experiment

EXPERIMENTS = {
    "classification": [*FAST, "data=synthetic"],
    "distill": [*FAST, "data=synthetic", "experiment=distill"],
    # the teacher stage inherits the data and trainer overrides
    "distill_seq": [*QUIET, "experiment=distill_seq", "data.num_train=256", "trainer.max_steps=4",
                    "task.student_fraction=0.5", "task.source=teacher"],
    "vae": [*QUIET, "experiment=vae", "data=synthetic", "trainer.max_steps=3",
            "trainer.check_val_every_n_epoch=1", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", "task.iw_samples=3"],
    "bayes": [*FAST, "experiment=bayes", "data=synthetic", "data.holdout_class=2", "stages=null",
              "task.ood_noise=5", "task.eval_samples=2"],
    "ppo": [*QUIET, "experiment=ppo", "task.total_timesteps=512", "task.eval_episodes=1",
            "kl=[uniform_kl,target_kl]"],
    "ppo_tokens": [*QUIET, "experiment=ppo_tokens", "task.total_timesteps=512", "task.eval_episodes=1",
                   "kl.reference_kl.placement=reward", "kl.reference_kl.estimator=k3"],
    "ppo_pendulum": [*QUIET, "experiment=ppo_pendulum", "task.total_timesteps=4096",
                     "task.eval_episodes=1"],
    "fit_gaussian": [*QUIET, "experiment=fit_gaussian", "trainer.max_epochs=1"],
    "gan": [*QUIET, "experiment=gan", "divergence=wasserstein", "trainer.max_epochs=1",
            "++trainer.limit_train_batches=12", "++trainer.limit_val_batches=1",
            "++trainer.limit_test_batches=1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_every_experiment_runs_in_float64(experiment, tmp_path):
    summary = run_experiment([*EXPERIMENTS[experiment], "trainer.precision=64-true"], tmp_path)
    assert summary["status"] == "completed"
