"""Gymnasium vector environments for the RL tasks, described by config and built per rank.

``VectorEnvFactory`` holds what ``klexp/conf/env/*.yaml`` says (the id, how many copies, sync or async)
and makes the vector env when the task needs it, on the rank that needs it:
``gymnasium.make_vec(id, num_envs, vectorization_mode)`` wrapped in ``RecordEpisodeStatistics``
(episodic return and length of every finished episode), then any extra vector wrappers (reward
normalisation…), which therefore never distort the recorded returns.

Seeds are derived, never typed in twice: ``numpy.random.SeedSequence(seed, spawn_key=(rank, stream))``
gives every rank and every use (training envs, evaluation envs, action sampling) its own,
well-separated stream, all fixed by the run's ``seed``.

Gymnasium 1.x vector envs autoreset on the *next* step (``AutoresetMode.NEXT_STEP``): the step that
ends an episode returns its final observation, and the following call to ``step`` ignores the action,
resets that sub-environment and returns the first observation of the next episode with reward 0.
The task must not learn from that step as a transition (see ``klexp/tasks/rollout.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium.wrappers.vector import RecordEpisodeStatistics

from klexp.errors import ConfigValueError, KlexpError, require, require_in, require_positive_int

VectorizationMode = Literal["sync", "async"]
VECTORIZATION_MODES: tuple[str, ...] = ("sync", "async")
VectorWrapper = Callable[[gym.vector.VectorEnv], gym.vector.VectorEnv]

# Independent random streams per rank (see ``VectorEnvFactory.seed_sequence``).
TRAIN_STREAM, EVAL_STREAM, ACTION_STREAM = 0, 1, 2


class VectorEnvFactory:
    """Makes ``num_envs`` copies of a Gymnasium environment as one vector env.

    Args:
        id: a registered Gymnasium id (``CartPole-v1``, ``Pendulum-v1``…).
        num_envs: copies stepped together.
        vectorization_mode: ``sync`` (one process; fastest for cheap envs) or ``async`` (one
            subprocess per copy; pays off when one step of the env is expensive).
        seed: the run's seed; every rank and stream derives its own seeds from it.
        stats_window: how many recent episodes ``RecordEpisodeStatistics`` keeps (the task reports
            their mean return as ``episode/return_recent``).
        max_episode_steps: override the registered time limit (truncation), or null.
        kwargs: keyword arguments of the environment's constructor.
        wrappers: vector wrappers applied over the statistics wrapper, each a factory taking the
            vector env (Hydra ``_partial_: true``), e.g. ``gymnasium.wrappers.vector.NormalizeReward``.
    """

    def __init__(
        self,
        id: str,
        num_envs: int = 4,
        vectorization_mode: VectorizationMode = "sync",
        seed: int = 0,
        stats_window: int = 20,
        max_episode_steps: int | None = None,
        kwargs: Mapping[str, Any] | None = None,
        wrappers: Sequence[VectorWrapper] | None = None,
    ) -> None:
        require(isinstance(id, str) and id != "", "id", "a Gymnasium environment id", id)
        if id not in gym.registry:
            raise ConfigValueError("id", f"{id!r} is not a registered Gymnasium environment")
        require_positive_int("num_envs", num_envs)
        require_in("vectorization_mode", vectorization_mode, VECTORIZATION_MODES)
        require(isinstance(seed, int) and seed >= 0, "seed", "an integer ≥ 0", seed)
        require_positive_int("stats_window", stats_window)
        if max_episode_steps is not None:
            require_positive_int("max_episode_steps", max_episode_steps)
        self.id, self.num_envs, self.vectorization_mode = id, num_envs, vectorization_mode
        self.seed, self.stats_window, self.max_episode_steps = seed, stats_window, max_episode_steps
        self.kwargs = dict(kwargs or {})
        self.wrappers = list(wrappers or [])

    @property
    def reward_threshold(self) -> float | None:
        """The return at which Gymnasium's spec calls the task solved (475 for CartPole-v1)."""
        return gym.spec(self.id).reward_threshold

    def spaces(self) -> tuple[gym.Space, gym.Space]:
        """The observation and action space of one copy of the environment."""
        env = self._make_one()
        try:
            return env.observation_space, env.action_space
        finally:
            env.close()

    def problem(self) -> Any:
        """The exactly solvable problem behind the environment, when it has one: the
        ``problem`` attribute of the unwrapped env (``klexp/TokenSequence-v0`` has a
        ``TokenSequenceProblem``: its reference policy and exact metrics); else None."""
        env = self._make_one()
        try:
            return getattr(env.unwrapped, "problem", None)
        finally:
            env.close()

    def _make_one(self) -> gym.Env:
        """One copy of the environment; a package it needs that is not installed, or a keyword
        argument its constructor rejects, is one line naming the key."""
        try:
            return gym.make(self.id, **self._make_kwargs())
        except gym.error.DependencyNotInstalled as error:
            raise KlexpError(f"env.id: {self.id!r} needs a package that is not installed: "
                             f"{_first_line(error)}") from None
        except Exception as error:
            kwargs = self._make_kwargs()
            # Gymnasium appends the id and kwargs, which the line already names
            reason = _first_line(error).split(" was raised from the environment creator")[0]
            if not kwargs:
                raise KlexpError(f"env.id: cannot make {self.id!r}: {reason}") from None
            raise KlexpError(f"env.kwargs: {self.id!r} cannot be made with {kwargs}: {reason} "
                             "(expected arguments its constructor takes)") from None

    def seed_sequence(self, rank: int, stream: int) -> np.random.SeedSequence:
        """The random stream ``stream`` of rank ``rank``: ``SeedSequence(seed, spawn_key=(rank, stream))``."""
        return np.random.SeedSequence(self.seed, spawn_key=(rank, stream))

    def env_seeds(self, rank: int, stream: int = TRAIN_STREAM, num_envs: int | None = None) -> list[int]:
        """One reset seed per copy, for ``envs.reset(seed=...)``."""
        count = self.num_envs if num_envs is None else num_envs
        return [int(s) for s in self.seed_sequence(rank, stream).generate_state(count, np.uint32)]

    def make(self, num_envs: int | None = None, vectorization_mode: VectorizationMode | None = None,
             wrap: bool = True) -> gym.vector.VectorEnv:
        """A new vector env: ``make_vec`` → ``RecordEpisodeStatistics`` → the configured wrappers
        (``wrap=False`` leaves those out, e.g. for a greedy evaluation on raw rewards)."""
        try:
            envs = gym.make_vec(
                self.id,
                num_envs=self.num_envs if num_envs is None else num_envs,
                vectorization_mode=vectorization_mode or self.vectorization_mode,
                **self._make_kwargs(),
            )
        except gym.error.Error as error:
            raise KlexpError(f"env: cannot make {self.id!r} ({error})") from None
        envs = RecordEpisodeStatistics(envs, buffer_length=self.stats_window)
        if wrap:
            for wrapper in self.wrappers:
                envs = wrapper(envs)
        return envs

    def _make_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.kwargs)
        if self.max_episode_steps is not None:
            kwargs["max_episode_steps"] = self.max_episode_steps
        return kwargs

    def __repr__(self) -> str:
        return f"VectorEnvFactory({self.id!r}, num_envs={self.num_envs}, {self.vectorization_mode})"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def episode_statistics(envs: gym.vector.VectorEnv) -> RecordEpisodeStatistics:
    """The ``RecordEpisodeStatistics`` layer of a vector env made by ``VectorEnvFactory``."""
    layer: Any = envs
    while not isinstance(layer, RecordEpisodeStatistics):
        if not hasattr(layer, "env"):
            raise TypeError(f"{envs} has no RecordEpisodeStatistics wrapper")
        layer = layer.env
    return layer


def within_bounds(action: np.ndarray, space: gym.Space) -> np.ndarray:
    """What the env receives: continuous draws clipped to a ``Box``'s bounds (their
    log-probability stays that of the unclipped draw, which is what the policy chose)."""
    if isinstance(space, gym.spaces.Box):
        return np.clip(action, space.low, space.high)
    return action


def greedy_episodes(env: VectorEnvFactory, act: Callable[[np.ndarray], np.ndarray], rank: int,
                    episodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Return and length of ``episodes`` episodes of the deterministic policy ``act`` (observations
    → env actions), one per env copy, on the env's raw rewards (no extra wrappers), seeded from
    the evaluation stream of ``rank``."""
    envs = env.make(num_envs=episodes, vectorization_mode="sync", wrap=False)
    obs, _ = envs.reset(seed=env.env_seeds(rank, EVAL_STREAM, episodes))
    returns, lengths = np.zeros(episodes), np.zeros(episodes, int)
    running = np.ones(episodes, bool)
    while running.any():
        obs, reward, terminated, truncated, _ = envs.step(act(obs))
        returns += reward * running
        lengths += running
        running &= ~(terminated | truncated)
    envs.close()
    return returns, lengths
