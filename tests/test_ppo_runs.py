"""PPO end to end: every experiment and KL variant runs through the runner, logs what it promises,
and its KL machinery (adaptive β, target-KL stop, reference policy) acts as specified.

Runs are a few iterations of 4 envs × 64 steps; the 500k-step solve runs are in
experiments/ppo_cartpole/, not here.
"""

import itertools
import json
import math
import os

import pytest
import torch
from helpers import QUIET, REPO, run_cli, run_experiment
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from klexp.errors import KlexpError
from klexp.tasks.ppo.envs import VectorEnvFactory
from klexp.tasks.ppo.task import PPOTask

# 3 iterations of 4 envs × 64 steps, every iteration logged, a 2-episode greedy evaluation
SHORT = [*QUIET, "+trainer.enable_progress_bar=false", "task.total_timesteps=768", "task.num_steps=64",
         "task.eval_episodes=2", "trainer.log_every_n_steps=1"]


def scalars(run_dir, tag: str) -> list[float]:
    """Every value TensorBoard holds for ``tag``, in step order."""
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [event.value for event in events.Scalars(tag)]


def test_ppo_runs_end_to_end_and_logs_every_promised_scalar(tmp_path):
    summary = run_experiment(["experiment=ppo", *SHORT], tmp_path)
    metrics = summary["metrics"]
    assert summary["status"] == "completed"
    for tag in ["episode/return", "episode/return_recent", "time/sps",
                "time/env_steps", "loss/policy", "loss/value", "loss/entropy", "ppo/entropy",
                "ppo/clipfrac", "ppo/explained_variance", "ppo/learning_rate", "ppo/update_steps",
                "ppo/kl_k1", "ppo/kl_k1_max", "ppo/kl_k3", "ppo/kl_k3_max", "ppo/kl_exact",
                "ppo/kl_exact_max", "ppo/kl_after_update", "test/return_mean", "test/return_std",
                "test/length_mean"]:
        assert tag in metrics, tag
        assert math.isfinite(metrics[tag]), tag
    assert metrics["time/env_steps"] == 768
    assert metrics["ppo/update_steps"] == 16  # 4 epochs × 4 minibatches
    assert summary["objective"] == metrics["test/return_mean"] > 0
    # the learning rate anneals linearly per iteration: 2.5e-4 · (1 − i/3) at iteration i
    assert scalars(tmp_path, "ppo/learning_rate") == pytest.approx([2.5e-4, 2.5e-4 * 2 / 3, 2.5e-4 / 3])
    # the KL estimators: k3 and the exact KL are never negative; k1 can be
    assert min(scalars(tmp_path, "ppo/kl_k3")) >= 0
    assert min(scalars(tmp_path, "ppo/kl_exact")) >= 0
    assert metrics["ppo/kl_k3_max"] >= metrics["ppo/kl_k3"]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_same_seed_gives_the_same_run_and_another_seed_does_not(tmp_path):
    def run(seed: int, name: str) -> dict[str, float]:
        metrics = run_experiment(["experiment=ppo", *SHORT, f"seed={seed}"], tmp_path / name)["metrics"]
        return {k: v for k, v in metrics.items() if not k.startswith("time/sps")}

    first, again, other = run(1, "a"), run(1, "b"), run(2, "c")
    assert first == again
    assert first["loss/value"] != other["loss/value"]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ["experiment=ppo_kl_fixed"],
    ["experiment=ppo_kl_fixed", "task.clip=true", "kl.old_policy_kl.estimator=k3"],
    ["experiment=ppo_kl_adaptive"],
    ["experiment=ppo_kl_adaptive", "task.clip=true"],
    ["experiment=ppo_target_kl"],
    ["experiment=ppo_target_kl", "kl.target_kl.check=epoch", "kl.target_kl.estimator=k1"],
    ["experiment=ppo", "kl=[uniform_kl]", "task.ent_coef=0"],
], ids=["kl_fixed", "kl_fixed_clip_k3", "kl_adaptive", "kl_adaptive_clip", "target_kl",
        "target_kl_epoch_k1", "entropy_as_uniform_kl"])
def test_each_kl_variant_runs_and_logs_its_term(overrides, tmp_path):
    summary = run_experiment([*overrides, *SHORT], tmp_path)
    metrics = summary["metrics"]
    (name,) = [key.split("/")[1] for key in metrics if key.startswith("kl/") and key.endswith("/weight")]
    for suffix in ("value", "weight", "loss", "value_after_update"):
        assert math.isfinite(metrics[f"kl/{name}/{suffix}"]), suffix
    assert "test/return_mean" in metrics


@pytest.mark.slow
def test_adaptive_beta_in_ppo_doubles_and_halves_once_per_update_phase(tmp_path):
    # a target near the KL these updates reach, so β moves both ways
    run_experiment(["experiment=ppo_kl_adaptive", *SHORT, "task.total_timesteps=3072",
                    "kl.old_policy_kl.schedule.target=2e-4"], tmp_path)
    betas = scalars(tmp_path, "kl/old_policy_kl/weight")
    measured = scalars(tmp_path, "kl/old_policy_kl/value_after_update")
    assert len(betas) == len(measured) == 12
    assert betas[0] == 1.0
    for beta, d, next_beta in zip(betas, measured, betas[1:], strict=False):
        if d > 1.5 * 2e-4:
            assert next_beta == 2 * beta
        elif d < 2e-4 / 1.5:
            assert next_beta == beta / 2
        else:
            assert next_beta == beta
    changes = {round(b / a, 6) for a, b in itertools.pairwise(betas)}
    assert {2.0, 0.5} <= changes


@pytest.mark.parametrize(("check", "steps", "stop_minibatch"), [("minibatch", 1, 1), ("epoch", 4, 3)])
def test_target_kl_stops_the_update_phase_at_its_granularity(check, steps, stop_minibatch, tmp_path):
    # a target any update exceeds: minibatch checks stop before the 2nd step (the 1st minibatch
    # measures θ = θ_old), epoch checks after the 1st epoch
    summary = run_experiment(["experiment=ppo_target_kl", *SHORT, "kl.target_kl.target=1e-9",
                              f"kl.target_kl.check={check}"], tmp_path)
    assert scalars(tmp_path, "ppo/update_steps") == [steps] * 3
    assert scalars(tmp_path, "kl/target_kl/stopped") == [1.0] * 3
    assert scalars(tmp_path, "kl/target_kl/stop_epoch") == [0.0] * 3
    assert scalars(tmp_path, "kl/target_kl/stop_minibatch") == [stop_minibatch] * 3
    assert summary["metrics"]["kl/target_kl/value"] > 1e-9


@pytest.mark.slow
def test_target_kl_that_is_never_reached_does_not_stop(tmp_path):
    run_experiment(["experiment=ppo_target_kl", *SHORT, "kl.target_kl.target=10"], tmp_path)
    assert scalars(tmp_path, "ppo/update_steps") == [40.0] * 3  # 10 epochs × 4 minibatches
    assert scalars(tmp_path, "kl/target_kl/stopped") == [0.0] * 3


@pytest.mark.slow
def test_ppo_ref_kl_trains_its_reference_first_then_a_path_works_too(tmp_path):
    stage = "stages.reference.overrides=['experiment=ppo','task.total_timesteps=512','task.num_steps=64']"
    summary = run_experiment(["experiment=ppo_ref_kl", *SHORT, stage], tmp_path / "staged")
    reference = tmp_path / "staged" / "reference" / "checkpoints" / "last.ckpt"
    assert summary["stages"]["reference"]["checkpoint"] == str(reference)
    assert reference.is_file()
    # KL(π_θ ‖ π_ref) is logged and the proportional controller moves β from its initial 0.1
    run_dir = tmp_path / "staged"
    values = scalars(run_dir, "kl/reference_kl/value_after_update")
    betas = scalars(run_dir, "kl/reference_kl/weight")
    assert all(v > 0 for v in values)
    assert betas[0] == pytest.approx(0.1)
    for beta, d, next_beta in zip(betas, values, betas[1:], strict=False):
        error = min(0.2, max(-0.2, d / 0.005 - 1))  # Ziegler et al.: β ← β(1 + e · 512 / 10000)
        assert next_beta == pytest.approx(beta * (1 + error * 512 / 10000))

    # the same experiment from an existing checkpoint, without the stage
    summary = run_experiment(["experiment=ppo_ref_kl", *SHORT, "stages=null",
                              f"task.reference_checkpoint={reference}"], tmp_path / "path")
    assert summary["metrics"]["kl/reference_kl/value"] > 0

    # fine-tuning starts the actor at the reference's weights (the reference itself stays frozen)
    for init in (True, False):
        task = PPOTask(VectorEnvFactory("CartPole-v1"), reference_checkpoint=str(reference),
                       init_from_reference=init)
        task.configure_model()
        same = [torch.equal(a, r) for a, r in zip(task.actor.parameters(), task.reference.parameters(),
                                                  strict=True)]
        assert all(same) if init else not any(same)
        assert not any(p.requires_grad for p in task.reference.parameters())

    # a CartPole policy cannot be the reference on Pendulum
    with pytest.raises(KlexpError, match="holds a CategoricalPolicy policy for CartPole-v1"):
        run_experiment(["experiment=ppo_pendulum", *SHORT, "kl=[reference_kl]",
                        f"task.reference_checkpoint={reference}"], tmp_path / "mismatch")


def test_pendulum_runs_with_a_gaussian_policy(tmp_path):
    summary = run_experiment(["experiment=ppo_pendulum", *SHORT, "task.total_timesteps=1200",
                              "task.num_steps=100", "task.num_minibatches=4",
                              "task.update_epochs=2"], tmp_path)
    metrics = summary["metrics"]
    assert math.isfinite(metrics["ppo/kl_exact"]) and metrics["ppo/kl_exact"] >= 0
    # Pendulum episodes last 200 steps; rewards are at most 0
    assert metrics["test/length_mean"] == 200
    assert metrics["test/return_mean"] <= 0
    assert metrics["episode/return"] <= 0  # the true return, not the normalised reward


def test_async_vector_env_by_config(tmp_path):
    summary = run_experiment(["experiment=ppo", *SHORT, "env.vectorization_mode=async"], tmp_path)
    assert summary["status"] == "completed"


@pytest.mark.parametrize(("overrides", "message"), [
    (["experiment=ppo", "kl=[reference_kl]"], "kl.reference_kl.q: .*needs task.reference_checkpoint"),
    (["experiment=ppo_pendulum", "kl=[uniform_kl]"], "kl.uniform_kl.q: .*no uniform counterpart"),
    (["experiment=ppo", "task.reference_checkpoint=/nonexistent.ckpt"], "does not exist"),
    (["experiment=ppo", "task.init_from_reference=true"], "needs task.reference_checkpoint"),
])
def test_config_mistakes_fail_with_the_key_named(overrides, message, tmp_path):
    with pytest.raises(KlexpError, match=message):
        run_experiment([*overrides, *SHORT], tmp_path)


@pytest.mark.slow
def test_a_resumed_run_continues_its_iterations_step_count_and_learning_rate(tmp_path):
    # 3 iterations of 16 minibatch steps; a checkpoint after the first
    run_experiment(["experiment=ppo", *SHORT, "+callbacks.model_checkpoint.every_n_train_steps=16",
                    "callbacks.model_checkpoint.save_top_k=-1"], tmp_path / "first")
    checkpoint = tmp_path / "first" / "checkpoints" / "epoch=0-step=16.ckpt"
    saved = torch.load(checkpoint, weights_only=True)["klexp_ppo_progress"]
    assert json.loads(saved["action_rng"])["bit_generator"] == "PCG64"  # the sampler's state travels
    run_experiment(["experiment=ppo", *SHORT, f"ckpt_path='{checkpoint}'"], tmp_path / "resumed")
    assert scalars(tmp_path / "resumed", "time/env_steps") == [512.0, 768.0]
    assert scalars(tmp_path / "resumed", "ppo/learning_rate") == pytest.approx(
        scalars(tmp_path / "first", "ppo/learning_rate")[1:])


@pytest.mark.slow
def test_under_two_process_ddp_target_kl_stops_every_rank_together_and_adaptive_beta_moves_in_lock_step(
        tmp_path):
    """One two-process run holds both claims (one DDP start-up instead of two): a target-KL stop
    taken by every rank together — each rank has its own envs, so its KL differs, and a rank
    stopping alone would leave the other waiting in the gradient all-reduce (this run used to
    hang) — and an adaptive β that adapts to the ranks' mean KL, the same on every rank."""
    env = {"PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # 4096 env steps over 2 ranks × 4 envs × 64 steps: 8 iterations
    result = run_cli(["experiment=ppo_kl_adaptive", "kl=[old_policy_kl,target_kl]", "trainer=ddp",
                      "trainer.accelerator=cpu", "task.total_timesteps=4096", "task.num_steps=64",
                      "task.eval_episodes=2", "kl.target_kl.target=1e-4", "callbacks.progress_bar=null",
                      "trainer.log_every_n_steps=1",
                      "+callbacks.record._target_=helpers.RecordTermWeights",
                      f"+callbacks.record.directory={tmp_path / 'weights'}"],
                     cwd=tmp_path, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "ppo_kl_adaptive").iterdir()
    steps = scalars(run_dir, "ppo/update_steps")
    assert len(steps) == 8 and min(steps) < 40  # it did stop early, and no rank hung
    ranks = [json.loads((tmp_path / "weights" / f"weights_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["old_policy_kl"] != 1.0  # β moved from its initial value


@pytest.mark.slow
def test_a_resumed_adaptive_run_continues_with_the_beta_it_had_reached(tmp_path):
    # 6 iterations of 40 minibatch steps (10 epochs × 4); a checkpoint after the third
    common = ["experiment=ppo_kl_adaptive", *SHORT, "task.total_timesteps=1536",
              "kl.old_policy_kl.schedule.target=2e-4"]
    run_experiment([*common, "+callbacks.model_checkpoint.every_n_train_steps=120",
                    "callbacks.model_checkpoint.save_top_k=-1"], tmp_path / "first")
    betas = scalars(tmp_path / "first", "kl/old_policy_kl/weight")
    assert len(set(betas[:4])) > 1, "β should have moved before the checkpoint"
    checkpoint = tmp_path / "first" / "checkpoints" / "epoch=0-step=120.ckpt"
    state = torch.load(checkpoint, weights_only=True)["callbacks"]
    (saved,) = (s for key, s in state.items() if "old_policy_kl" in key)
    assert saved["schedule"]["beta"] == betas[3]
    run_experiment([*common, f"ckpt_path='{checkpoint}'"], tmp_path / "resumed")
    assert scalars(tmp_path / "resumed", "kl/old_policy_kl/weight")[0] == betas[3]
