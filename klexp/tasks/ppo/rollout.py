"""On-policy rollouts: preallocated buffers, GAE, and the rollout as a batch of tensors.

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

from dataclasses import dataclass

import numpy as np
from torch import Tensor


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
