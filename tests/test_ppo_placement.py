"""PPO's KL terms where the issue puts them: in the reward or in the loss, with draws whose source
is checked, on an environment whose optimum is known; scalars on the env-step axis; minibatches
large enough for advantage normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import QUIET, run_experiment
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from klexp import KlexpError, KLPenalty, KLTerm, OnSamples
from klexp.app.config_checks import ConfigError
from klexp.errors import ConfigValueError
from klexp.tasks.ppo import PPOTask, VectorEnvFactory
from klexp.tasks.ppo.checks import check_minibatch
from klexp.tasks.ppo.rollout import gae

TOKENS = [*QUIET, "experiment=ppo_tokens", "task.total_timesteps=1024", "env.num_envs=4",
          "task.num_steps=64", "task.eval_episodes=2", "trainer.log_every_n_steps=1"]


def events(run_dir) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return accumulator


class Harness:
    """A PPOTask on the token env with the given terms, outside a Trainer's loop: enough to run
    ``collect_rollout`` and ``process_rollout`` by hand."""

    def __init__(self, *terms: KLTerm, **task_args) -> None:
        from types import SimpleNamespace

        from pytorch_lightning.trainer.states import RunningStage

        env = VectorEnvFactory("klexp/TokenSequence-v0", num_envs=4, seed=3)
        self.task = PPOTask(env, total_timesteps=256, num_steps=64, reference_from_env=True,
                            **task_args)
        self.task.configure_model()
        self.task.check_terms(terms)
        self.task._trainer = SimpleNamespace(
            callbacks=list(terms), global_step=0, world_size=1, global_rank=0, fast_dev_run=False,
            state=SimpleNamespace(stage=RunningStage.TRAINING), accumulate_grad_batches=1,
            _logger_connector=SimpleNamespace(should_update_logs=False))
        self.task.on_train_start()


def test_a_kl_term_in_the_reward_lowers_each_step_reward_by_beta_k_before_gae():
    term = KLPenalty("reference_kl", p="policy", q="reference", weight=0.3,
                     estimator=OnSamples("actions", "k1", samples_from="old_policy"))
    harness = Harness(term)
    task = harness.task
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in task.actor.net:  # a policy far from the reference, so the penalty is large
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_()
    task.collect_rollout()
    batch = task.process_rollout()
    assert term.calls == 1

    buffer, steps, envs = task.rollout_state.buffer, task.num_steps, task.env.num_envs
    valid = ~buffer.autoreset.reshape(-1)
    reference = torch.distributions.Categorical(logits=batch.reference_params)
    policy = torch.distributions.Categorical(logits=batch.old_params)
    k1 = (policy.log_prob(batch.actions) - reference.log_prob(batch.actions)).double().numpy()
    penalty = np.zeros(steps * envs)
    penalty[valid] = 0.3 * k1
    with torch.no_grad():
        obs = torch.from_numpy(buffer.obs.reshape(steps * envs, -1))
        values = task.critic(torch.cat([obs, torch.from_numpy(buffer.next_obs)])).view(steps + 1, envs)
    advantages, _ = gae(buffer.rewards - penalty.reshape(steps, envs).astype(np.float32),
                        values.numpy(), buffer.terminated, buffer.truncated, task.gamma, task.gae_lambda)
    np.testing.assert_allclose(batch.advantages.numpy(), advantages.reshape(-1)[valid], rtol=1e-5,
                               atol=1e-6)
    assert abs(penalty).sum() > 1.0  # the test has teeth: the rewards really moved


def test_the_rollouts_actions_must_be_declared_draws_of_the_old_policy():
    wrong = KLTerm("reference_kl", p="policy", q="reference", estimator=OnSamples("actions", "k3"))
    with pytest.raises(KlexpError, match=r"kl\.reference_kl\.samples_from: 'actions' are draws from "
                                         r"'old_policy'; set samples_from: old_policy \(got None\)"):
        Harness(wrong)
    with pytest.raises(KlexpError, match=r"got 'policy'"):
        Harness(KLTerm("x", p="policy", q="reference",
                       estimator=OnSamples("actions", "k1", samples_from="policy")))


def test_a_config_naming_an_unknown_source_fails_before_anything_is_built(tmp_path):
    with pytest.raises(ConfigError, match=r"kl\.reference_kl: KL term 'reference_kl' reads"):
        run_experiment([*TOKENS, "kl.reference_kl.estimator=k3",
                        "kl.reference_kl.samples_from=nowhere"], tmp_path)


def test_minibatches_too_small_to_normalise_are_refused_at_start_and_in_flight():
    env = VectorEnvFactory("CartPole-v1", num_envs=2, seed=0)
    with pytest.raises(ConfigValueError, match=r"num_minibatches: must be ≤ 8: advantage normalisation"):
        PPOTask(env, num_steps=8, num_minibatches=9, total_timesteps=16)
    PPOTask(env, num_steps=8, num_minibatches=16, total_timesteps=16, norm_adv=False)
    task = PPOTask(env, num_steps=8, num_minibatches=8, total_timesteps=16)
    with pytest.raises(KlexpError, match=r"task\.num_minibatches: 8 minibatches of the 15 states left "
                                         r"once autoreset steps were dropped give one of 1"):
        check_minibatch(1, 15, task.num_minibatches, task.loss_settings.norm_adv)


def test_token_run_logs_exact_metrics_against_env_steps(tmp_path):
    summary = run_experiment(TOKENS, tmp_path)
    metrics = summary["metrics"]
    assert metrics["ppo/kl_reference"] >= 0
    for name in ("reward", "kl_reference", "objective", "optimal_objective", "gap", "kl_optimum"):
        assert f"exact/{name}" in metrics and f"test/exact/{name}" in metrics, name
    beta = 0.1
    assert metrics["exact/gap"] == pytest.approx(beta * metrics["exact/kl_optimum"], rel=1e-5)
    assert metrics["exact/gap"] == pytest.approx(metrics["exact/optimal_objective"]
                                                 - metrics["exact/objective"], rel=1e-5, abs=1e-6)
    assert summary["objective"] == metrics["test/exact/gap"]
    accumulator = events(tmp_path)
    # every training scalar, the KL term's included, on the environment-step axis (4 × 64 a rollout)
    for tag in ("exact/gap", "kl/reference_kl/value", "loss/policy", "ppo/kl_exact"):
        assert [e.step for e in accumulator.Scalars(tag)] == [256, 512, 768, 1024], tag


@pytest.mark.parametrize(("estimator", "placement", "importance_weight"),
                         [("k1", "reward", True), ("k3", "loss", False), ("k3", "loss", True),
                          ("analytic", "reward", True)])
def test_every_estimator_and_placement_runs(estimator, placement, importance_weight, tmp_path):
    summary = run_experiment([*TOKENS, "task.total_timesteps=512", f"kl.reference_kl.estimator={estimator}",
                              f"kl.reference_kl.placement={placement}",
                              f"kl.reference_kl.importance_weight={importance_weight}"], tmp_path)
    assert summary["status"] == "completed"
    assert summary["metrics"]["kl/reference_kl/value"] >= (0 if estimator != "k1" else -10)


def test_the_exact_kl_in_loss_and_in_reward_together(tmp_path):
    summary = run_experiment([*TOKENS, "task.total_timesteps=512", "kl=[reference_kl,reference_kl_reward]"],
                             tmp_path)
    metrics = summary["metrics"]
    assert metrics["kl/reference_kl_reward/weight"] == metrics["kl/reference_kl/weight"] == pytest.approx(0.1)
