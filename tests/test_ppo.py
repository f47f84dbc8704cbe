"""PPO: the maths (GAE, estimators, policy families), the Gymnasium 1.x rollout, the env factory.

Fast tests only; end-to-end runs of every experiment are in test_ppo_runs.py.
"""

import functools
import math

import gymnasium as gym
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Categorical, Independent, Normal

from klexp import core as divergences
from klexp.core import AdaptiveBeta
from klexp.core.estimate import OnSamples
from klexp.data.step_indices import StepIndices
from klexp.errors import ConfigValueError, KlexpError
from klexp.lightning import KLTerm, TargetKL
from klexp.tasks.ppo.actor import Actor, NumpyMLP, orthogonal_mlp, policy_spec
from klexp.tasks.ppo.distributions import (
    CategoricalDistribution,
    DiagGaussianDistribution,
    make_proba_distribution,
)
from klexp.tasks.ppo.envs import ACTION_STREAM, EVAL_STREAM, TRAIN_STREAM, VectorEnvFactory
from klexp.tasks.ppo.rollout import Batch, RolloutState, explained_variance, gae
from klexp.tasks.ppo.task import CHECKPOINT_PROGRESS_KEY, PPOTask

# ---------------------------------------------------------------------------------------- GAE


def test_gae_matches_a_hand_computed_example_with_a_truncation_and_a_termination():
    # One env, six steps (γ = 0.9, λ = 0.5):
    #   t = 0, 1  episode A, cut by the time limit at t = 1 (truncated): obs[2] is its final obs;
    #   t = 2     the autoreset step (reward 0, no transition);
    #   t = 3, 4  episode B, terminated at t = 4: obs[5] is its final obs;
    #   t = 5     the autoreset step; V(s_6) is the value of the next episode's first obs.
    rewards = np.array([[1.0], [1.0], [0.0], [1.0], [1.0], [0.0]], np.float32)
    values = np.array([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0], [7.0]], np.float32)
    terminated = np.array([[0], [0], [0], [0], [1], [0]], bool)
    truncated = np.array([[0], [1], [0], [0], [0], [0]], bool)

    advantages, returns = gae(rewards, values, terminated, truncated, gamma=0.9, gae_lambda=0.5)

    # δ_t = r_t + γ V(s_{t+1}) (1 − terminated_t) − V(s_t); A_t = δ_t + γλ (1 − done_t) A_{t+1}
    # δ = [1 + 1.8 − 1, 1 + 2.7 − 2 (bootstrapped from the truncated episode's final obs),
    #      0.6, 1 + 4.5 − 4, 1 − 5 (terminal: worth 0), 0.3]
    # A_5 = 0.3; A_4 = −4; A_3 = 1.5 − 0.45·4 = −0.3; A_2 = 0.6 − 0.45·0.3 = 0.465;
    # A_1 = 1.7 (the truncation cuts the trace); A_0 = 1.8 + 0.45·1.7 = 2.565
    np.testing.assert_allclose(advantages[:, 0], [2.565, 1.7, 0.465, -0.3, -4.0, 0.3], atol=1e-6)
    np.testing.assert_allclose(returns[:, 0], [3.565, 3.7, 3.465, 3.7, 1.0, 6.3], atol=1e-6)


def test_gae_treats_envs_independently_and_reduces_to_td_and_monte_carlo():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(5, 3)).astype(np.float32)
    values = rng.normal(size=(6, 3)).astype(np.float32)
    no_end = np.zeros((5, 3), bool)
    # λ = 0: one-step TD errors
    td, _ = gae(rewards, values, no_end, no_end, gamma=0.9, gae_lambda=0.0)
    np.testing.assert_allclose(td, rewards + 0.9 * values[1:] - values[:-1], atol=1e-6)
    # λ = 1: the discounted return bootstrapped at the end, minus V
    _, returns = gae(rewards, values, no_end, no_end, gamma=0.9, gae_lambda=1.0)
    discounts = 0.9 ** np.arange(5)
    expected = (discounts[:, None] * rewards).sum(0) + 0.9**5 * values[5]
    np.testing.assert_allclose(returns[0], expected, rtol=1e-5)
    # each column is its own env
    single, _ = gae(rewards[:, 1:2], values[:, 1:2], no_end[:, :1], no_end[:, :1], 0.9, 0.95)
    both, _ = gae(rewards, values, no_end, no_end, 0.9, 0.95)
    np.testing.assert_allclose(both[:, 1:2], single, atol=1e-6)


# ------------------------------------------------------------------------------ KL estimators


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-60.0, 60.0, allow_nan=False), min_size=1, max_size=32))
def test_k3_is_never_negative(log_ratios):
    # k3 = (r − 1) − log r ≥ 0 because log r ≤ r − 1 (float32, as PPO computes it)
    k3 = divergences.monte_carlo_terms(torch.tensor(log_ratios, dtype=torch.float32), "k3")
    assert (k3 >= 0).all()


def test_k1_and_k3_estimate_the_exact_kl_of_old_and_new_policy():
    torch.manual_seed(0)
    old_logits = torch.randn(4000, 3)
    new_logits = old_logits + 0.3 * torch.randn(4000, 3)
    actions = Categorical(logits=old_logits).sample()  # the rollout's actions: draws from π_old
    policy = CategoricalDistribution(3)
    logratio = policy.log_prob(new_logits, actions) - policy.log_prob(old_logits, actions)
    exact = policy.kl(old_logits, new_logits).mean()
    k1 = divergences.monte_carlo_terms(logratio, "k1").mean()
    k3 = divergences.monte_carlo_terms(logratio, "k3").mean()
    assert exact > 0.01
    assert abs(k1 - exact) < 0.15 * exact
    assert abs(k3 - exact) < 0.1 * exact


# ---------------------------------------------------------------------------- policy families


def test_categorical_policy_agrees_with_torch_distributions():
    torch.manual_seed(0)
    logits, other = torch.randn(8, 4), torch.randn(8, 4)
    actions = torch.randint(0, 4, (8,))
    policy = CategoricalDistribution(4)
    reference = Categorical(logits=logits)
    torch.testing.assert_close(policy.log_prob(logits, actions), reference.log_prob(actions))
    torch.testing.assert_close(policy.entropy(logits), reference.entropy())
    torch.testing.assert_close(policy.kl(logits, other),
                               torch.distributions.kl_divergence(reference, Categorical(logits=other)))


def test_gumbel_max_sampling_draws_from_the_softmax():
    logits = np.array([[0.0, 1.0, -1.0, 2.0]] * 20_000)
    draws = CategoricalDistribution(4).sample(logits, np.random.default_rng(0))
    frequencies = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(frequencies, torch.softmax(torch.tensor(logits[0]), 0).numpy(), atol=0.01)


def test_gaussian_policy_agrees_with_torch_distributions():
    torch.manual_seed(0)
    policy = DiagGaussianDistribution(2)
    params, other = torch.randn(8, 4), torch.randn(8, 4)
    actions = torch.randn(8, 2)
    reference = Independent(Normal(params[:, :2], params[:, 2:].exp()), 1)
    torch.testing.assert_close(policy.log_prob(params, actions), reference.log_prob(actions))
    torch.testing.assert_close(policy.entropy(params), reference.entropy())
    other_reference = Independent(Normal(other[:, :2], other[:, 2:].exp()), 1)
    torch.testing.assert_close(policy.kl(params, other),
                               torch.distributions.kl_divergence(reference, other_reference))
    draws = policy.sample(np.tile(np.array([[1.0, -2.0, 0.0, math.log(0.5)]]), (20_000, 1)),
                          np.random.default_rng(0))
    np.testing.assert_allclose(draws.mean(0), [1.0, -2.0], atol=0.03)
    np.testing.assert_allclose(draws.std(0), [1.0, 0.5], atol=0.03)


def test_gaussian_policy_has_no_uniform_counterpart():
    with pytest.raises(KlexpError, match="no uniform"):
        DiagGaussianDistribution(1).uniform(torch.zeros(()))


def test_action_distribution_follows_the_action_space():
    assert isinstance(make_proba_distribution(gym.spaces.Discrete(3)), CategoricalDistribution)
    assert isinstance(make_proba_distribution(gym.spaces.Box(-2, 2, (1,))), DiagGaussianDistribution)
    with pytest.raises(KlexpError, match="action spaces"):
        make_proba_distribution(gym.spaces.MultiBinary(3))


def test_the_numpy_snapshot_computes_what_the_actor_computes():
    torch.manual_seed(0)
    for policy in (CategoricalDistribution(2), DiagGaussianDistribution(1)):
        actor = Actor(4, policy, [64, 64], "tanh", init_log_std=-0.5)
        obs = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
        expected = actor(torch.from_numpy(obs)).detach().numpy()
        np.testing.assert_allclose(actor.snapshot()(obs), expected, atol=1e-5)
    with pytest.raises(TypeError, match="supports Linear"):
        NumpyMLP(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.GELU()))


def test_entropy_bonus_as_kl_to_uniform_has_the_gradient_of_minus_entropy():
    # KL(π ‖ uniform) = log K − H(π): weight · KL and −weight · H have the same gradient
    torch.manual_seed(0)
    policy = CategoricalDistribution(3)
    logits = torch.randn(16, 3, requires_grad=True)
    term = KLTerm("uniform_kl", p="policy", q="uniform", weight=0.01)
    loss_kl = term({"policy": policy.distribution(logits), "uniform": policy.uniform(logits)}, "train", 0)
    (grad_kl,) = torch.autograd.grad(loss_kl, logits)
    (grad_entropy,) = torch.autograd.grad(-0.01 * policy.entropy(logits).mean(), logits)
    torch.testing.assert_close(grad_kl, grad_entropy)
    entropy = policy.entropy(logits).mean().detach()
    torch.testing.assert_close(loss_kl.detach(), 0.01 * (math.log(3) - entropy))


# ------------------------------------------------------------------------- adaptive β, target KL


def test_adaptive_beta_doubles_and_halves_exactly_per_the_ppo_rule():
    schedule = AdaptiveBeta(target=0.01, initial=1.0)
    # ×2 strictly above 1.5 · target = 0.015, ÷2 strictly below target / 1.5 = 0.00667, else kept
    for measured, expected in [(0.016, 2.0), (0.015, 2.0), (0.0067, 2.0), (0.0066, 1.0),
                               (0.006, 0.5), (0.01, 0.5), (0.02, 1.0), (0.001, 0.5)]:
        schedule.update(measured)
        assert schedule.value() == expected


def test_target_kl_judges_at_its_granularity_and_records_where_the_task_stopped():
    term = TargetKL("target_kl", p="old_policy", q="policy", target=0.01, estimator=OnSamples("actions"))
    term.latest = 0.02
    assert not term.exceeded("epoch")  # it checks minibatches
    assert term.exceeded("minibatch")
    term.latest = 0.01
    assert not term.exceeded("minibatch")  # the target itself is allowed
    term.stopped_at(epoch=1, minibatch=2)
    assert (term.stop_point, term.stops_total) == ((1, 2), 1)
    by_epoch = TargetKL("target_kl", p="old_policy", q="policy", target=0.01, check="epoch")
    by_epoch.latest = 0.011
    assert not by_epoch.exceeded("minibatch")
    assert by_epoch.exceeded("epoch")
    with pytest.raises(ConfigValueError, match="target"):
        TargetKL("target_kl", p="old_policy", q="policy", target=0.0)


def test_target_kl_remembers_the_latest_value_it_measured():
    torch.manual_seed(0)
    old, new = torch.randn(64, 2), torch.randn(64, 2)
    actions = Categorical(logits=old).sample()
    outputs = {"old_policy": Categorical(logits=old), "policy": Categorical(logits=new),
               "actions": actions}
    term = TargetKL("target_kl", p="old_policy", q="policy", target=0.01, estimator=OnSamples("actions"))
    given, _ = term.take(outputs, "train", 0)
    logratio = Categorical(logits=new).log_prob(actions) - Categorical(logits=old).log_prob(actions)
    assert float(term.latest) == pytest.approx(divergences.monte_carlo_terms(logratio, "k3").mean().item())
    assert given is None  # it only measures: total_loss adds nothing for it


# ------------------------------------------------------------------------------ env factory


def test_env_seeds_derive_from_the_run_seed_rank_and_stream():
    factory = VectorEnvFactory("CartPole-v1", num_envs=4, seed=3)
    seeds = factory.env_seeds(rank=0)
    assert len(set(seeds)) == 4
    assert seeds == VectorEnvFactory("CartPole-v1", num_envs=4, seed=3).env_seeds(rank=0)
    assert seeds != factory.env_seeds(rank=1)
    assert seeds != factory.env_seeds(rank=0, stream=EVAL_STREAM)
    assert seeds != VectorEnvFactory("CartPole-v1", num_envs=4, seed=4).env_seeds(rank=0)
    assert len({TRAIN_STREAM, EVAL_STREAM, ACTION_STREAM}) == 3


def test_env_factory_makes_sync_or_async_vector_envs_with_episode_statistics():
    for mode, kind in (("sync", gym.vector.SyncVectorEnv), ("async", gym.vector.AsyncVectorEnv)):
        envs = VectorEnvFactory("CartPole-v1", num_envs=2, vectorization_mode=mode).make()
        try:
            assert isinstance(envs, gym.wrappers.vector.RecordEpisodeStatistics)
            assert isinstance(envs.unwrapped, kind)
            assert envs.num_envs == 2
        finally:
            envs.close()


def test_env_factory_rejects_bad_config():
    with pytest.raises(ConfigValueError, match="not a registered"):
        VectorEnvFactory("CartPole-v99")
    with pytest.raises(ConfigValueError, match="vectorization_mode"):
        VectorEnvFactory("CartPole-v1", vectorization_mode="threads")
    with pytest.raises(ConfigValueError, match="num_envs"):
        VectorEnvFactory("CartPole-v1", num_envs=0)


# --------------------------------------------------------------------- the Gymnasium 1.x rollout


def rollout_task(**overrides) -> PPOTask:
    env = VectorEnvFactory("CartPole-v1", num_envs=3, seed=0, max_episode_steps=30)
    task = PPOTask(env, **{"total_timesteps": 1200, "num_steps": 100, **overrides})
    task.configure_model()
    task.on_train_start()
    return task


def test_rollout_leaves_out_the_autoreset_step_and_keeps_final_observations():
    task = rollout_task()
    episodes = task.collect_rollout()
    buffer = task.rollout_state.buffer
    done = buffer.terminated | buffer.truncated
    assert buffer.truncated.any() and buffer.terminated.any()  # 30-step limit; CartPole falls
    # the step after an episode ends is the autoreset step: reward 0, never itself an end
    assert (buffer.autoreset[1:] == done[:-1]).all()
    assert (buffer.rewards[buffer.autoreset] == 0).all()
    assert not done[buffer.autoreset].any()
    # RecordEpisodeStatistics saw every finished episode; its lengths exclude autoreset steps
    assert len(episodes) == done.sum()
    assert sum(length for _, length in episodes) == (~buffer.autoreset).sum() - unfinished_steps(buffer)

    batch = task.process_rollout()
    kept = ~buffer.autoreset.reshape(-1)
    assert len(batch.obs) == kept.sum()
    assert torch.equal(batch.obs, torch.from_numpy(buffer.obs.reshape(-1, 4)[kept]))
    logprobs = task.action_dist.log_prob(task.actor(batch.obs), batch.actions)
    torch.testing.assert_close(batch.logprobs, logprobs)
    task.rollout_state.envs.close()


def unfinished_steps(buffer) -> int:
    """Steps of the episodes still running when this first rollout ends."""
    done = buffer.terminated | buffer.truncated
    steps = done.shape[0]
    total = 0
    for env in range(done.shape[1]):
        ends = np.flatnonzero(done[:, env])
        total += steps if len(ends) == 0 else max(0, steps - ends[-1] - 2)
    return total


def test_truncated_steps_bootstrap_from_the_final_observation():
    task = rollout_task()
    task.collect_rollout()
    buffer = task.rollout_state.buffer
    with torch.no_grad():
        obs = torch.from_numpy(buffer.obs.reshape(-1, 4))
        values = task.critic(torch.cat([obs, torch.from_numpy(buffer.next_obs)])).view(101, 3).numpy()
    advantages, _ = gae(buffer.rewards, values, buffer.terminated, buffer.truncated, task.gamma,
                        task.gae_lambda)
    step, env = map(int, np.argwhere(buffer.truncated & (np.arange(100)[:, None] < 99))[0])
    # at a truncation the advantage is the TD error towards V(final observation) = V(obs[t + 1])
    expected = buffer.rewards[step, env] + task.gamma * values[step + 1, env] - values[step, env]
    assert advantages[step, env] == pytest.approx(expected, rel=1e-5)
    assert buffer.autoreset[step + 1, env]
    task.rollout_state.envs.close()


def test_iteration_indices_resume_after_the_last_iteration_handed_out():
    indices = StepIndices(5)
    iterator = iter(indices)
    assert [next(iterator), next(iterator)] == [0, 1]
    state = indices.state_dict()
    resumed = StepIndices(5)
    resumed.load_state_dict(state)
    assert list(resumed) == [2, 3, 4]
    assert list(resumed) == [0, 1, 2, 3, 4]


def test_explained_variance():
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(returns, returns) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 2.5), returns) == pytest.approx(0.0)
    assert math.isnan(explained_variance(returns, torch.ones(4)))


def test_batch_select_takes_the_same_rows_of_every_field():
    n = 6
    rows = torch.arange(n * 2.0).view(n, 2)
    column = torch.arange(float(n))
    batch = Batch(rows, column, column, rows, column, column, column, reference_params=None)
    mb = batch.select(torch.tensor([4, 1]))
    assert mb.obs.tolist() == [[8.0, 9.0], [2.0, 3.0]]
    assert mb.returns.tolist() == [4.0, 1.0]
    assert mb.reference_params is None


def test_task_rejects_inconsistent_sizes():
    env = VectorEnvFactory("CartPole-v1", num_envs=4)
    with pytest.raises(ConfigValueError, match="total_timesteps"):
        PPOTask(env, total_timesteps=100, num_steps=128)
    with pytest.raises(ConfigValueError, match="gamma"):
        PPOTask(env, gamma=1.5)


@pytest.mark.parametrize(("override", "message"), [
    ("task.actor.hidden=[-1]", "task.actor.hidden: expected a list of positive layer widths, got [-1]"),
    ("task.critic.hidden=[64,0]",
     "task.critic.hidden: expected a list of positive layer widths, got [64, 0]"),
])
def test_a_bad_network_argument_is_one_line_at_its_full_key_before_anything_is_built(
        override, message, tmp_path, monkeypatch):
    # (it used to come from building the networks, as `hidden: …`, naming neither task nor network)
    from helpers import run_experiment

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__} was built")

    monkeypatch.setattr(pl.Trainer, "__init__", refuse)
    with pytest.raises(KlexpError) as error:
        run_experiment(["experiment=ppo", override], tmp_path / "run")
    assert str(error.value) == message
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_the_task_checks_its_networks_as_it_is_made_and_draws_no_random_numbers_doing_so():
    env = VectorEnvFactory("CartPole-v1")
    with pytest.raises(ConfigValueError) as error:
        PPOTask(env, actor=functools.partial(Actor, hidden=[8, 0]))
    assert (error.value.key, error.value.message) == (
        "actor.hidden", "expected a list of positive layer widths, got [8, 0]")
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    task = PPOTask(env)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)
    assert task.actor is None  # the networks themselves are built by configure_model


# ------------------------------------------------------------------- networks and experiments


PPO_EXPERIMENTS = ("ppo", "ppo_kl_adaptive", "ppo_kl_fixed", "ppo_pendulum", "ppo_ref_kl", "ppo_target_kl",
                   "ppo_tokens")


def test_every_ppo_experiment_inherits_ppo_and_keeps_its_shared_settings():
    from helpers import REPO, compose_config
    from omegaconf import OmegaConf

    base = compose_config(["experiment=ppo"])
    for name in PPO_EXPERIMENTS[1:]:
        assert OmegaConf.load(REPO / "klexp" / "conf" / "experiment" / f"{name}.yaml").defaults[0] == "ppo"
        cfg = compose_config([f"experiment={name}"])
        assert cfg.experiment_name == name
        for key in ("threads", "callbacks.lr_monitor", "trainer.max_epochs", "data", "task._target_",
                    "task.actor", "task.critic", "task.max_grad_norm"):
            assert OmegaConf.select(cfg, key) == OmegaConf.select(base, key), (name, key)


def test_actor_and_critic_come_from_config_with_the_envs_shapes():
    from helpers import compose_config
    from hydra.utils import instantiate

    cfg = compose_config(["experiment=ppo_pendulum", "task.actor.hidden=[32]", "task.critic.hidden=[16, 8]",
                          "task.actor.init_log_std=-1.0"])
    task = instantiate(cfg.task)
    task.configure_model()
    assert [m.out_features for m in task.actor.net if isinstance(m, torch.nn.Linear)] == [32, 1]
    assert task.actor.net[0].in_features == 3  # Pendulum's observation
    torch.testing.assert_close(task.actor.log_std.detach(), torch.tensor([-1.0]))
    assert [m.out_features for m in task.critic if isinstance(m, torch.nn.Linear)] == [16, 8, 1]


def test_the_default_networks_draw_the_parameters_they_always_drew():
    # the actor (out gain 0.01) then the critic (out gain 1), from the global torch generator
    torch.manual_seed(0)
    expected = [orthogonal_mlp(4, [64, 64], 2, "tanh", out_std=0.01),
                orthogonal_mlp(4, [64, 64], 1, "tanh", out_std=1.0)]
    torch.manual_seed(0)
    task = PPOTask(VectorEnvFactory("CartPole-v1"))
    task.configure_model()
    for net, built in zip(expected, (task.actor.net, task.critic), strict=True):
        for p, q in zip(net.parameters(), built.parameters(), strict=True):
            assert torch.equal(p, q)


def linear_actor(obs_dim: int, action_dist) -> torch.nn.Module:
    return torch.nn.Linear(obs_dim, action_dist.net_outputs)


def test_any_module_factory_can_be_the_actor_and_acts_through_torch():
    task = rollout_task(actor=linear_actor, critic=lambda obs_dim: torch.nn.Linear(obs_dim, 1))
    task.collect_rollout()
    batch = task.process_rollout()
    logprobs = task.action_dist.log_prob(task.actor(batch.obs), batch.actions)
    torch.testing.assert_close(batch.logprobs, logprobs)
    assert "hidden" not in policy_spec("CartPole-v1", task.obs_dim, task.action_dist, task.actor)
    task.rollout_state.envs.close()


def test_checking_terms_changes_nothing():
    task = PPOTask(VectorEnvFactory("CartPole-v1"))
    before = dict(vars(task))
    task.check_terms([KLTerm("uniform_kl", p="policy", q="uniform", weight=0.01)])
    assert dict(vars(task)) == before
    with pytest.raises(KlexpError, match=r"needs task\.reference_checkpoint"):
        task.check_terms([KLTerm("reference_kl", p="policy", q="reference")])


def test_the_rollout_state_round_trips_through_its_state_dict():
    task = rollout_task()
    state = task.rollout_state
    task.collect_rollout()
    state.solved_at = 42
    saved = state.state_dict()
    draws = state.rng.random(3)
    resumed = RolloutState.start(task.env, 0, task.num_steps, task.obs_dim, task.action_dist, saved)
    assert (resumed.env_steps, resumed.solved_at) == (300, 42)
    np.testing.assert_array_equal(resumed.rng.random(3), draws)
    for envs in (state.envs, resumed.envs):
        envs.close()


def test_a_resumed_run_with_nothing_left_to_train_logs_its_test_at_the_checkpoints_env_steps():
    # (it used to fail in test_step: the step count was born only when training started)
    task = PPOTask(VectorEnvFactory("CartPole-v1"))
    assert task.log_step() == 0
    task.on_load_checkpoint({CHECKPOINT_PROGRESS_KEY: {"env_steps": 1024, "solved_at": None}})
    assert task.log_step() == 1024
