"""On-policy rollouts: the state carried from one rollout to the next, preallocated buffers, the
rewards lowered by KL terms placed in the reward, GAE, and the rollout as a batch of tensors.

Layout of a rollout of ``T`` steps in ``N`` envs (Gymnasium 1.x, next-step autoreset): at step ``t``
the agent sees ``obs[t]``, takes ``actions[t]`` and the env answers ``rewards[t]``,
``terminated[t]``, ``truncated[t]`` and the next observation, stored as ``obs[t + 1]`` (or
``next_obs`` after the last step). When an episode ends at step ``t``, ``obs[t + 1]`` is its *final*
observation; at step ``t + 1`` the env ignores the action and resets, so ``autoreset[t + 1]`` is
True and that step is no transition: it is left out of learning. The final observation is exactly
what a truncated episode must bootstrap from, so truncation needs no extra bookkeeping:
``V(obs[t + 1])`` is computed with every other value.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from klexp.tasks.ppo.distributions import ActionDistribution
from klexp.tasks.ppo.envs import ACTION_STREAM, TRAIN_STREAM, VectorEnvFactory, episode_statistics


@dataclass
class Rollout:
    """Numpy buffers for one rollout, allocated once and overwritten every iteration."""

    obs: np.ndarray  # (T, N, *obs_shape)
    actions: np.ndarray  # (T, N) integers, or (T, N, action_dim) floats
    rewards: np.ndarray  # (T, N)
    terminated: np.ndarray  # (T, N) bool: the episode ended in a terminal state
    truncated: np.ndarray  # (T, N) bool: the episode was cut (time limit)
    autoreset: np.ndarray  # (T, N) bool: the env resets on this step; not a transition
    next_obs: np.ndarray  # (N, *obs_shape): the observation after the last step

    @classmethod
    def allocate(cls, num_steps: int, num_envs: int, obs_shape: tuple[int, ...],
                 action_shape: tuple[int, ...], action_dtype: np.dtype) -> Rollout:
        return cls(
            obs=np.zeros((num_steps, num_envs, *obs_shape), np.float32),
            actions=np.zeros((num_steps, num_envs, *action_shape), action_dtype),
            rewards=np.zeros((num_steps, num_envs), np.float32),
            terminated=np.zeros((num_steps, num_envs), bool),
            truncated=np.zeros((num_steps, num_envs), bool),
            autoreset=np.zeros((num_steps, num_envs), bool),
            next_obs=np.zeros((num_envs, *obs_shape), np.float32),
        )


@dataclass
class RolloutState:
    """What one PPO iteration hands to the next: the envs where they stopped, the action sampler,
    the buffers, and the run's progress. Created once when training starts (``start``); its
    ``state_dict`` is what a checkpoint keeps of it (a resumed run's envs restart from a fresh
    reset, its step count, solved-at step and action noise continue)."""

    envs: gym.vector.VectorEnv
    rng: np.random.Generator  # the action sampler (and the minibatch shuffles)
    buffer: Rollout
    next_obs: np.ndarray  # what the envs show now
    next_autoreset: np.ndarray  # which envs reset on their next step
    env_steps: int = 0  # over all ranks
    solved_at: int | None = None  # env step at which the recent mean return reached the threshold
    unlogged_episodes: list[tuple[float, int]] = field(default_factory=list)  # (return, length)
    start_time: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, env: VectorEnvFactory, rank: int, num_steps: int, obs_dim: int,
              action_dist: ActionDistribution, resumed: dict[str, Any] | None = None) -> RolloutState:
        """Make and reset this rank's envs, seed its sampler, allocate the buffers; continue the
        progress of a checkpoint's ``state_dict`` when resuming."""
        envs = env.make()
        rng = np.random.default_rng(env.seed_sequence(rank, ACTION_STREAM))
        next_obs, _ = envs.reset(seed=env.env_seeds(rank, TRAIN_STREAM))
        buffer = Rollout.allocate(num_steps, env.num_envs, (obs_dim,), action_dist.action_shape,
                                  action_dist.action_dtype)
        state = cls(envs, rng, buffer, next_obs, np.zeros(env.num_envs, bool))
        if resumed is not None:
            state.env_steps, state.solved_at = resumed["env_steps"], resumed["solved_at"]
            if "action_rng" in resumed:
                rng.bit_generator.state = json.loads(resumed["action_rng"])
        return state

    def state_dict(self) -> dict[str, Any]:
        """The progress a checkpoint keeps; the sampler's state as text (``weights_only`` loading
        takes no 128-bit integers), so a resumed run does not replay the first rollouts' noise."""
        return {"env_steps": self.env_steps, "solved_at": self.solved_at,
                "action_rng": json.dumps(self.rng.bit_generator.state)}

    def note_if_solved(self, threshold: float | None) -> None:
        """Note when the mean return of the recent episodes first reached the env's reward
        threshold (Gymnasium's spec: 475 for CartPole-v1)."""
        recent = episode_statistics(self.envs).return_queue
        if (self.solved_at is None and threshold is not None and len(recent) == recent.maxlen
                and np.mean(recent) >= threshold):
            self.solved_at = self.env_steps

    def episode_metrics(self) -> dict[str, float]:
        """Mean return and length of the episodes finished since the last log (then forgotten),
        the mean return of the recent ones (env.stats_window of them), and the env step at which
        that mean first reached the reward threshold."""
        metrics: dict[str, float] = {}
        if self.unlogged_episodes:
            returns, lengths = zip(*self.unlogged_episodes, strict=True)
            metrics["episode/return"] = float(np.mean(returns))
            if returns != lengths:  # on CartPole (1 a step) the length would repeat the return
                metrics["episode/length"] = float(np.mean(lengths))
        recent = episode_statistics(self.envs).return_queue
        if recent:
            metrics["episode/return_recent"] = float(np.mean(recent))
        if self.solved_at is not None:
            metrics["episode/solved_at_step"] = float(self.solved_at)
        self.unlogged_episodes = []
        return metrics


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous Control
    Using Generalized Advantage Estimation", eq. 16), returning ``(advantages, returns)``.

    ``values`` has one row more than ``rewards``: ``V(s_0), …, V(s_T)``. Per step,
    ``δ_t = r_t + γ · V(s_{t+1}) · (1 − terminated_t) − V(s_t)`` and
    ``A_t = δ_t + γλ · (1 − done_t) · A_{t+1}`` with ``done_t = terminated_t or truncated_t``:
    a terminal state is worth 0, a truncated episode bootstraps from the value of its final
    observation ``s_{t+1}``, and no advantage flows across an episode boundary. ``returns = A + V``
    are the value targets.
    """
    num_steps = len(rewards)
    advantages = np.zeros_like(rewards)
    not_terminal = 1.0 - terminated.astype(rewards.dtype)
    not_done = 1.0 - (terminated | truncated).astype(rewards.dtype)
    last = np.zeros_like(rewards[0])
    for t in reversed(range(num_steps)):
        delta = rewards[t] + gamma * values[t + 1] * not_terminal[t] - values[t]
        last = delta + gamma * gae_lambda * not_done[t] * last
        advantages[t] = last
    return advantages, advantages + values[:-1]


def penalised(rewards: np.ndarray, penalty: Tensor | None, valid: Tensor) -> np.ndarray:
    """``r_t − β·k(s_t, a_t)`` with the penalty of the KL terms placed in the reward
    (``klexp.reward_penalty``), one value per ``valid`` step of the flattened rollout (autoreset
    steps keep their rewards); ``rewards`` as they are when no term is placed there."""
    if penalty is None:
        return rewards
    per_step = torch.zeros(rewards.size, dtype=penalty.dtype, device=valid.device)
    per_step[valid] = penalty.to(per_step.dtype)
    return rewards - per_step.view(rewards.shape).cpu().numpy().astype(rewards.dtype)


@dataclass
class Batch:
    """One rollout, flattened over (step, env), autoreset steps removed, as torch tensors."""

    obs: Tensor
    actions: Tensor
    logprobs: Tensor  # log π_old(a|s)
    old_params: Tensor  # π_old's parameters on obs
    advantages: Tensor
    returns: Tensor
    values: Tensor  # V(s) when the rollout was scored
    reference_params: Tensor | None

    def select(self, indices: Tensor) -> Batch:
        """The minibatch at ``indices``."""
        return Batch(self.obs[indices], self.actions[indices], self.logprobs[indices],
                     self.old_params[indices], self.advantages[indices], self.returns[indices],
                     self.values[indices],
                     None if self.reference_params is None else self.reference_params[indices])


def explained_variance(values: Tensor, returns: Tensor) -> float:
    """``1 − Var[returns − values] / Var[returns]``: 1 is a perfect critic, ≤ 0 no better than a
    constant (NaN when the returns do not vary)."""
    variance = returns.var().item()
    return float("nan") if variance == 0 else 1.0 - (returns - values).var().item() / variance
