"""On-policy rollouts: preallocated buffers, a numpy snapshot of the actor, and GAE.

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

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from klexp import divergences
from klexp.errors import KlexpError


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


_NUMPY_ACTIVATIONS = {nn.Tanh: np.tanh, nn.ReLU: lambda x: np.maximum(x, 0.0)}


class NumpyMLP:
    """A frozen copy of a ``Linear``/``Tanh``/``ReLU`` stack, evaluated in numpy.

    Acting at batch 4 is dominated by per-call dispatch, not arithmetic: a torch forward costs
    several times a numpy one there. The weights are copied once per rollout (``W`` transposed
    so that ``x @ W + b`` needs no copy per call).
    """

    def __init__(self, net: nn.Sequential) -> None:
        self.layers: list[tuple[np.ndarray, np.ndarray] | object] = []
        for module in net:
            if isinstance(module, nn.Linear):
                self.layers.append((module.weight.detach().cpu().numpy().T.copy(),
                                    module.bias.detach().cpu().numpy().copy()))
            elif type(module) in _NUMPY_ACTIVATIONS:
                self.layers.append(_NUMPY_ACTIVATIONS[type(module)])
            else:
                raise TypeError(f"NumpyMLP supports Linear, Tanh and ReLU layers, got {module}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            if isinstance(layer, tuple):
                weight, bias = layer
                x = x @ weight + bias
            else:
                x = layer(x)
        return x


# ------------------------------------------------------------------------------------------------
# Policy families: how the actor's output parameterises π(a|s). ``params`` is one tensor (or array)
# per state, so old and reference policies are stored as plain tensors and made distributions only
# when a KL term asks for one.
# ------------------------------------------------------------------------------------------------


class CategoricalPolicy:
    """``π(a|s) = softmax(logits)_a`` over ``num_actions`` discrete actions; params are the logits."""

    action_shape: tuple[int, ...] = ()
    action_dtype = np.int64

    def __init__(self, num_actions: int) -> None:
        self.num_actions = num_actions
        self.net_outputs = num_actions

    def sample(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One draw per row by the Gumbel-max trick: ``argmax(logits + G)``, ``G ~ Gumbel(0, 1)``
        i.i.d. (Gumbel 1954; Maddison et al. 2014, "A* Sampling")."""
        return np.argmax(logits + rng.gumbel(size=logits.shape), axis=-1)

    def mode(self, logits: np.ndarray) -> np.ndarray:
        """The greedy action ``argmax_a π(a|s)``."""
        return np.argmax(logits, axis=-1)

    def log_prob(self, logits: Tensor, actions: Tensor) -> Tensor:
        """``log π(a|s) = log_softmax(logits)_a``."""
        return torch.log_softmax(logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)

    def entropy(self, logits: Tensor) -> Tensor:
        """``H(π(·|s)) = −Σ_a π(a|s) log π(a|s)`` in nats."""
        return divergences.categorical_entropy(logits)

    def kl(self, p_logits: Tensor, q_logits: Tensor) -> Tensor:
        """Exact ``KL(p ‖ q)`` per state, in log space."""
        return divergences.categorical_kl(p_logits, q_logits)

    def distribution(self, logits: Tensor) -> Distribution:
        return Categorical(logits=logits, validate_args=False)

    def uniform(self) -> Distribution:
        """The uniform policy: ``KL(π ‖ uniform) = log K − H(π)``."""
        return Categorical(logits=torch.zeros(self.num_actions), validate_args=False)


class GaussianPolicy:
    """A diagonal Gaussian ``π(a|s) = N(μ(s), diag σ²)`` with a state-independent learned
    ``log σ``; params are ``[μ, log σ]`` (2·D numbers per state). Actions are sampled unbounded;
    the env receives them clipped to its bounds."""

    action_dtype = np.float32

    def __init__(self, action_dim: int) -> None:
        self.action_dim = action_dim
        self.action_shape = (action_dim,)
        self.net_outputs = action_dim

    def split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        return params[..., : self.action_dim], params[..., self.action_dim :]

    def sample(self, params: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``a = μ + σ · ε``, ``ε ~ N(0, I)``."""
        mean, log_std = params[..., : self.action_dim], params[..., self.action_dim :]
        return (mean + np.exp(log_std) * rng.standard_normal(mean.shape)).astype(np.float32)

    def mode(self, params: np.ndarray) -> np.ndarray:
        """The greedy action: the mean ``μ(s)``."""
        return params[..., : self.action_dim]

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        """``log π(a|s) = Σ_i −(a_i − μ_i)² / (2σ_i²) − log σ_i − ½ log 2π``."""
        mean, log_std = self.split(params)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self, params: Tensor) -> Tensor:
        """``H = Σ_i log σ_i + ½ log(2πe)`` in nats."""
        _, log_std = self.split(params)
        return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)

    def kl(self, p_params: Tensor, q_params: Tensor) -> Tensor:
        """Exact ``KL(p ‖ q)`` per state (the closed form torch registers for Normal pairs)."""
        return divergences.kl(self.distribution(p_params), self.distribution(q_params))

    def distribution(self, params: Tensor) -> Distribution:
        mean, log_std = self.split(params)
        return Independent(Normal(mean, log_std.exp(), validate_args=False), 1, validate_args=False)

    def uniform(self) -> Distribution:
        raise KlexpError("a Gaussian policy over an unbounded action space has no uniform "
                         "counterpart (KL(π ‖ uniform) is infinite); use task.ent_coef instead")


Policy = CategoricalPolicy | GaussianPolicy


def policy_for(action_space: gym.Space) -> Policy:
    """The policy family that fits an action space: categorical for ``Discrete``, diagonal
    Gaussian for a 1-D ``Box``."""
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalPolicy(int(action_space.n))
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return GaussianPolicy(int(action_space.shape[0]))
    raise KlexpError(f"env: PPO supports Discrete and 1-D Box action spaces, got {action_space}")
