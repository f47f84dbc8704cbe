"""Specification of ``klexp/TokenSequence-v0`` (``klexp.tasks.ppo.token_env``): the environment
steps as documented, and every exact quantity agrees with a brute-force enumeration in float64
written here with ``itertools`` and ``math`` on a tiny case."""

from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from omegaconf import OmegaConf

from klexp.errors import ConfigValueError
from klexp.tasks.ppo import VectorEnvFactory, token_env
from klexp.tasks.ppo.token_env import (
    ENV_ID,
    TokenSequenceEnv,
    TokenSequenceProblem,
    optimal_prefix_logits,
    prefix_count,
    sequence_log_probs,
    symmetry_reward,
)

F64 = torch.float64
CONFIG = Path(__file__).resolve().parents[1] / "klexp" / "conf" / "env" / "token_sequence.yaml"
PROPERTY = settings(max_examples=40, deadline=None)
TINY = {"vocab_size": 2, "length": 3}


# ------------------------------------------------------------------ brute force, by enumeration


def all_prefixes(vocab_size: int, length: int) -> list[tuple[int, ...]]:
    """Prefixes by length, then lexicographically: the documented row order."""
    return [p for t in range(length) for p in itertools.product(range(vocab_size), repeat=t)]


def all_sequences(vocab_size: int, length: int) -> list[tuple[int, ...]]:
    return list(itertools.product(range(vocab_size), repeat=length))


def brute_reward(y: tuple[int, ...]) -> float:
    half = len(y) // 2
    return sum(y[i] == y[len(y) - 1 - i] for i in range(half)) / half


def brute_log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    normaliser = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - normaliser for v in row]


def brute_sequence_probs(logits: torch.Tensor, vocab_size: int, length: int) -> dict[tuple[int, ...], float]:
    row = {p: i for i, p in enumerate(all_prefixes(vocab_size, length))}
    table = [brute_log_softmax(r) for r in logits.tolist()]
    return {y: math.exp(sum(table[row[y[:t]]][y[t]] for t in range(length)))
            for y in all_sequences(vocab_size, length)}


def brute_optimum(problem: TokenSequenceProblem, beta: float) -> tuple[dict[tuple[int, ...], float], float]:
    """``π*(y) = π_ref(y)·exp(r(y)/β) / Z`` and ``J* = β·log Z``."""
    reference = brute_sequence_probs(problem.reference_prefix_logits, problem.vocab_size, problem.length)
    weights = {y: p * math.exp(brute_reward(y) / beta) for y, p in reference.items()}
    z = sum(weights.values())
    return {y: w / z for y, w in weights.items()}, beta * math.log(z)


def brute_objective(policy: dict, reference: dict, beta: float) -> tuple[float, float, float]:
    """``E_π[r]``, ``KL(π ‖ π_ref)`` and ``J(π) = E_π[r] − β·KL``."""
    reward = sum(p * brute_reward(y) for y, p in policy.items())
    kl = sum(p * math.log(p / reference[y]) for y, p in policy.items() if p > 0)
    return reward, kl, reward - beta * kl


def as_tensor(probs: dict[tuple[int, ...], float]) -> torch.Tensor:
    return torch.tensor([probs[y] for y in sorted(probs)], dtype=F64)


def tiny_logits(vocab_size: int, length: int):
    return arrays(np.float64, (prefix_count(vocab_size, length), vocab_size),
                  elements=st.floats(-4.0, 4.0)).map(torch.from_numpy)


betas = st.floats(0.05, 5.0)


def play(env: gym.Env, tokens: list[int]) -> list[tuple]:
    env.reset(seed=0)
    return [env.step(token) for token in tokens]


# ------------------------------------------------------------------ the environment


def test_the_observation_is_the_one_hot_prefix_and_the_reward_comes_with_the_last_token():
    env = TokenSequenceEnv(vocab_size=4, length=6)
    first, info = env.reset(seed=0)
    assert first.shape == (24,) and first.dtype == np.float32 and not first.any() and info == {}
    tokens = [0, 1, 2, 2, 1, 0]
    steps = play(env, tokens)
    for t, (observation, reward, terminated, truncated, _) in enumerate(steps):
        expected = np.zeros((6, 4), np.float32)
        expected[np.arange(t + 1), tokens[: t + 1]] = 1.0
        np.testing.assert_array_equal(observation, expected.reshape(-1))
        assert terminated == (t == 5) and truncated is False
        assert reward == (1.0 if t == 5 else 0.0)


@pytest.mark.parametrize(("tokens", "reward"), [
    ((0, 1, 2, 2, 1, 0), 1.0),        # a palindrome
    ((0, 1, 2, 3, 1, 0), 2 / 3),      # the inner pair differs
    ((1, 0, 0, 0, 0, 0), 2 / 3),      # the outer pair differs
    ((0, 1, 2, 3, 3, 3), 0.0),        # (0, 3), (1, 3), (2, 3): no pair matches
    ((0, 1, 2, 1, 0), 1.0),           # odd length: the middle token pairs with nothing
    ((0, 1, 2, 0, 1), 0.0),
    ((1, 1), 1.0),
])
def test_the_reward_is_the_share_of_mirrored_pairs_that_match(tokens, reward):
    assert symmetry_reward(torch.tensor(tokens)).item() == pytest.approx(reward, abs=1e-15)
    env = TokenSequenceEnv(vocab_size=4, length=len(tokens))
    assert play(env, list(tokens))[-1][1] == pytest.approx(reward, abs=1e-15)


def test_a_finished_sequence_needs_a_reset_and_a_token_must_be_in_the_vocabulary():
    env = TokenSequenceEnv(**TINY)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(0)
    play(env, [0, 1, 0])
    with pytest.raises(gym.error.ResetNeeded):
        env.step(0)
    env.reset()
    with pytest.raises(ValueError, match="action"):
        env.step(2)


@pytest.mark.parametrize("kwargs", [{}, TINY, {"vocab_size": 3, "length": 5, "reference_seed": 7}])
def test_gymnasiums_env_checker_passes_without_a_warning(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make(ENV_ID, **kwargs).unwrapped)


def test_the_env_is_made_by_id_with_its_keyword_arguments():
    env = gym.make(ENV_ID, vocab_size=3, length=4)
    assert env.observation_space.shape == (12,) and env.action_space.n == 3
    assert env.spec.max_episode_steps is None


def test_running_the_module_a_second_time_registers_nothing_twice():
    """Gymnasium warns when an id is registered over; executing the module again (as a reload
    does, here in a namespace of its own so this session's classes stay) must not."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source = Path(token_env.__file__).read_text()
        exec(compile(source, token_env.__file__, "exec"), {"__name__": token_env.__name__})
    assert gym.spec(ENV_ID).entry_point == "klexp.tasks.ppo.token_env:TokenSequenceEnv"


def test_same_seed_same_reference_and_the_steps_do_not_depend_on_the_reset_seed():
    a, b = TokenSequenceProblem(reference_seed=3), TokenSequenceProblem(reference_seed=3)
    torch.testing.assert_close(a.reference_prefix_logits, b.reference_prefix_logits, rtol=0, atol=0)
    other = TokenSequenceProblem(reference_seed=4)
    assert not torch.equal(a.reference_prefix_logits, other.reference_prefix_logits)
    env = TokenSequenceEnv()
    runs = []
    for seed in (0, 1, 0):
        first, _ = env.reset(seed=seed)
        runs.append([first, *[env.step(t)[:4] for t in (3, 1, 1, 0, 1, 3)]])
    for run in runs[1:]:
        for step, expected in zip(run, runs[0], strict=True):
            np.testing.assert_equal(step, expected)


def test_the_default_problem_is_pinned():
    """The reference ships with the environment: its draws, and so ``J*``, must not drift."""
    problem = TokenSequenceProblem()
    assert (problem.num_prefixes, problem.num_sequences) == (1365, 4096)
    assert problem.optimal_value(0.1).item() == pytest.approx(0.618382, abs=1e-6)
    reference = problem.metrics(problem.reference_prefix_logits, 0.1)
    assert reference.reward.item() == pytest.approx(0.2761, abs=1e-4)


def test_the_vector_env_factory_makes_it_from_the_shipped_config():
    cfg = OmegaConf.create({"seed": 0, "env": OmegaConf.load(CONFIG)})
    factory = instantiate(cfg.env)
    assert isinstance(factory, VectorEnvFactory) and factory.id == ENV_ID
    observation_space, action_space = factory.spaces()
    assert observation_space.shape == (24,) and action_space.n == 4
    envs = factory.make(num_envs=3)
    try:
        observations, _ = envs.reset(seed=factory.env_seeds(0, num_envs=3))
        assert observations.shape == (3, 24) and not observations.any()
        sequences = np.array([[0, 1, 2, 2, 1, 0], [3, 3, 3, 3, 3, 3], [0, 1, 2, 3, 0, 1]])
        for t in range(6):
            observations, rewards, terminated, truncated, info = envs.step(sequences[:, t])
            assert terminated.all() == (t == 5) and not truncated.any()
        np.testing.assert_allclose(rewards, [1.0, 1.0, 0.0])
        np.testing.assert_allclose(info["episode"]["r"], [1.0, 1.0, 0.0])
        np.testing.assert_array_equal(info["episode"]["l"], [6, 6, 6])
    finally:
        envs.close()


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"vocab_size": 1}, "vocab_size"),
    ({"length": 1}, "length"),
    ({"length": 2.0}, "length"),
    ({"vocab_size": 4, "length": 11}, "length"),     # 4^11 sequences: too many to enumerate
    ({"reference_seed": -1}, "reference_seed"),
    ({"reference_scale": -0.5}, "reference_scale"),
    ({"reference_scale": math.inf}, "reference_scale"),
])
def test_bad_arguments_name_their_key(kwargs, key):
    with pytest.raises(ConfigValueError) as error:
        TokenSequenceEnv(**kwargs)
    assert error.value.key == key


# ------------------------------------------------------------------ prefixes and observations


@pytest.mark.parametrize("kwargs", [TINY, {"vocab_size": 3, "length": 4}])
def test_prefix_observations_are_the_envs_observations_in_the_documented_order(kwargs):
    env = TokenSequenceEnv(**kwargs)
    problem = env.problem
    observations = problem.prefix_observations()
    prefixes = all_prefixes(problem.vocab_size, problem.length)
    assert observations.shape == (len(prefixes), problem.length * problem.vocab_size)
    for row, prefix in enumerate(prefixes):
        seen, _ = env.reset()
        for token in prefix:
            seen = env.step(token)[0]
        np.testing.assert_array_equal(observations[row].numpy(), seen)
    torch.testing.assert_close(problem.prefix_index(observations), torch.arange(len(prefixes)))


def test_reference_logits_read_the_table_row_of_each_observation_in_its_dtype():
    problem = TokenSequenceProblem(**TINY)
    shuffled = torch.tensor([6, 0, 3, 3, 5])
    for dtype in (torch.float32, F64):
        observations = problem.prefix_observations(dtype)[shuffled]
        logits = problem.reference_logits(observations)
        assert logits.dtype == dtype
        torch.testing.assert_close(logits, problem.reference_prefix_logits[shuffled].to(dtype))
    batch = problem.prefix_observations().view(7, 1, 6)  # any leading shape
    assert problem.reference_logits(batch).shape == (7, 1, 2)


def test_logits_of_the_wrong_shape_are_refused_with_their_shape():
    with pytest.raises(ValueError, match=r"\(6, 2\)"):
        sequence_log_probs(torch.zeros(6, 2))
    with pytest.raises(ValueError, match="prefixes, V"):
        sequence_log_probs(torch.zeros(7))
    with pytest.raises(ConfigValueError, match="beta"):
        TokenSequenceProblem(**TINY).optimal_value(0.0)


# ------------------------------------------------------------------ exact quantities


@PROPERTY
@given(logits=tiny_logits(2, 3))
def test_sequence_probabilities_are_products_of_the_per_prefix_probabilities(logits):
    brute = brute_sequence_probs(logits, 2, 3)
    log_probs = sequence_log_probs(logits)
    torch.testing.assert_close(log_probs.exp(), as_tensor(brute), rtol=1e-12, atol=1e-15)
    assert log_probs.exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_sequences_and_rewards_are_enumerated_in_lexicographic_order():
    problem = TokenSequenceProblem(vocab_size=3, length=3)
    sequences = all_sequences(3, 3)
    assert problem.sequences.tolist() == [list(y) for y in sequences]
    torch.testing.assert_close(problem.rewards, torch.tensor([brute_reward(y) for y in sequences], dtype=F64))


@PROPERTY
@given(seed=st.integers(0, 2**16), scale=st.floats(0.0, 3.0), beta=betas)
def test_the_optimum_and_its_value_match_enumeration(seed, scale, beta):
    problem = TokenSequenceProblem(**TINY, reference_seed=seed, reference_scale=scale)
    optimum, value = brute_optimum(problem, beta)
    torch.testing.assert_close(problem.optimal_sequence_log_probs(beta).exp(), as_tensor(optimum),
                               rtol=1e-12, atol=1e-15)
    assert problem.optimal_value(beta).item() == pytest.approx(value, rel=1e-12, abs=1e-14)


@PROPERTY
@given(logits=tiny_logits(2, 3), seed=st.integers(0, 2**16), beta=betas)
def test_the_metrics_of_a_policy_match_enumeration_and_the_gap_is_beta_times_kl_to_the_optimum(
        logits, seed, beta):
    problem = TokenSequenceProblem(**TINY, reference_seed=seed)
    policy = brute_sequence_probs(logits, 2, 3)
    reference = brute_sequence_probs(problem.reference_prefix_logits, 2, 3)
    optimum, optimal_value = brute_optimum(problem, beta)
    reward, kl_reference, objective = brute_objective(policy, reference, beta)
    kl_optimum = sum(p * math.log(p / optimum[y]) for y, p in policy.items() if p > 0)

    metrics = problem.metrics(logits, beta)
    close = {"rel": 1e-9, "abs": 1e-10}
    assert metrics.reward.item() == pytest.approx(reward, **close)
    assert metrics.kl_reference.item() == pytest.approx(kl_reference, **close)
    assert metrics.objective.item() == pytest.approx(objective, **close)
    assert metrics.optimal_objective.item() == pytest.approx(optimal_value, **close)
    assert metrics.kl_optimum.item() == pytest.approx(kl_optimum, **close)
    # J* − J(π) = β·KL(π ‖ π*) ≥ 0: the gap is computed from J* and J(π), the KL on its own
    assert metrics.gap.item() == pytest.approx(beta * metrics.kl_optimum.item(), **close)
    assert metrics.gap.item() >= -1e-12


@PROPERTY
@given(seed=st.integers(0, 2**16), scale=st.floats(0.0, 3.0), beta=betas)
def test_the_soft_bellman_backward_pass_gives_the_conditionals_of_the_optimum(seed, scale, beta):
    problem = TokenSequenceProblem(**TINY, reference_seed=seed, reference_scale=scale)
    optimum, value = brute_optimum(problem, beta)
    # π*(a | s) = Σ_{y extends s a} π*(y) / Σ_{y extends s} π*(y)
    expected = [[sum(p for y, p in optimum.items() if y[: len(s) + 1] == (*s, a))
                 / sum(p for y, p in optimum.items() if y[: len(s)] == s) for a in range(2)]
                for s in all_prefixes(2, 3)]
    log_conditionals = problem.optimal_prefix_logits(beta)
    torch.testing.assert_close(log_conditionals.exp(), torch.tensor(expected, dtype=F64),
                               rtol=1e-10, atol=1e-14)
    at_optimum = problem.metrics(log_conditionals, beta)
    assert at_optimum.objective.item() == pytest.approx(value, rel=1e-10, abs=1e-12)
    assert at_optimum.gap.item() == pytest.approx(0.0, abs=1e-10)
    assert at_optimum.kl_optimum.item() == pytest.approx(0.0, abs=1e-10)


@PROPERTY
@given(logits=tiny_logits(3, 2), beta=betas)
def test_no_policy_beats_the_optimum_and_only_the_optimum_closes_the_gap(logits, beta):
    problem = TokenSequenceProblem(vocab_size=3, length=2)
    metrics = problem.metrics(logits, beta)
    assert metrics.objective.item() <= metrics.optimal_objective.item() + 1e-12
    distance = (sequence_log_probs(logits) - problem.optimal_sequence_log_probs(beta)).abs().max().item()
    if distance > 1e-3:
        assert metrics.gap.item() > 0


def test_the_default_problems_optimum_is_neither_the_reference_nor_one_sequence():
    problem = TokenSequenceProblem()
    for beta in (0.1, 0.3, 1.0):
        optimum = problem.optimal_sequence_log_probs(beta).exp()
        assert problem.metrics(problem.reference_prefix_logits, beta).gap.item() > 0.03
        assert optimum.max().item() < 0.2
    # the optimum's first token differs from the reference's: it looks ahead to the copies
    first_token = optimal_prefix_logits(problem.reference_prefix_logits, problem.rewards, 0.1)[0].exp()
    reference_first = problem.reference_prefix_logits[0].softmax(-1)
    assert (first_token - reference_first).abs().max().item() > 0.05


def test_float32_logits_on_every_prefix_give_float64_metrics():
    problem = TokenSequenceProblem()
    network = torch.nn.Linear(24, 4)
    with torch.no_grad():
        metrics = problem.metrics(network(problem.prefix_observations()), 0.1)
    assert metrics.kl_reference.dtype == F64 and metrics.kl_reference.item() > 0
