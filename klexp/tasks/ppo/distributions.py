"""PPO's action distributions: how the actor's output parameterises ``π(a|s)``, as Stable-Baselines3
names them (``CategoricalDistribution``, ``DiagGaussianDistribution``, ``make_proba_distribution``).

``params`` is one tensor (or numpy array) per state, so the old and reference policies are stored
as plain tensors and made ``torch.distributions`` objects only when a KL term asks for one.
Sampling and the greedy mode work on numpy arrays (acting is done in numpy, see
``klexp.tasks.ppo.actor``); log-probabilities, entropies and KLs on tensors.
"""

from __future__ import annotations

import math
from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, Independent, Normal

from klexp import core as divergences
from klexp.errors import KlexpError


class CategoricalDistribution:
    """``π(a|s) = softmax(logits)_a`` over ``num_actions`` discrete actions; params are the logits."""

    #: the family's name in checkpoints (written as such since the first release: kept so that
    #: older reference checkpoints still load)
    checkpoint_name: ClassVar[str] = "CategoricalPolicy"
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

    def uniform(self, like: Tensor) -> Distribution:
        """The uniform policy, on the device and in the dtype of ``like``:
        ``KL(π ‖ uniform) = log K − H(π)``."""
        return Categorical(logits=like.new_zeros(self.num_actions), validate_args=False)


class DiagGaussianDistribution:
    """A diagonal Gaussian ``π(a|s) = N(μ(s), diag σ²)`` with a state-independent learned
    ``log σ``; params are ``[μ, log σ]`` (2·D numbers per state). Actions are sampled unbounded;
    the env receives them clipped to its bounds."""

    checkpoint_name: ClassVar[str] = "GaussianPolicy"
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

    def uniform(self, like: Tensor) -> Distribution:
        raise KlexpError("a Gaussian policy over an unbounded action space has no uniform "
                         "counterpart (KL(π ‖ uniform) is infinite); use task.ent_coef instead")


ActionDistribution = CategoricalDistribution | DiagGaussianDistribution


def make_proba_distribution(action_space: gym.Space) -> ActionDistribution:
    """The action distribution that fits an action space: categorical for ``Discrete``, diagonal
    Gaussian for a 1-D ``Box``."""
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalDistribution(int(action_space.n))
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return DiagGaussianDistribution(int(action_space.shape[0]))
    raise KlexpError(f"env: PPO supports Discrete and 1-D Box action spaces, got {action_space}")
