"""Policies for PPO: the categorical and diagonal-Gaussian action families, the actor network and
its numpy snapshot for acting, and loading a frozen (reference) actor from a checkpoint."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from klexp import core as divergences
from klexp.errors import KlexpError
from klexp.nets.frozen import load_frozen, read_checkpoint
from klexp.nets.mlp import mlp

# where a PPO checkpoint describes its actor
CHECKPOINT_POLICY_KEY = "klexp_policy"


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

    def uniform(self, like: Tensor) -> Distribution:
        """The uniform policy, on the device and in the dtype of ``like``:
        ``KL(π ‖ uniform) = log K − H(π)``."""
        return Categorical(logits=like.new_zeros(self.num_actions), validate_args=False)


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

    def uniform(self, like: Tensor) -> Distribution:
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


def orthogonal_mlp(in_features: int, hidden: Sequence[int], out_features: int,
                   activation: Literal["tanh", "relu"], out_std: float) -> nn.Sequential:
    """An MLP with orthogonal weights (gain √2 in hidden layers, ``out_std`` in the last) and zero
    biases, the initialisation of the PPO implementations (Engstrom et al. 2020, "Implementation
    Matters in Deep Policy Gradients")."""
    net = mlp(in_features, hidden, out_features, activation)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for layer in linears:
        nn.init.orthogonal_(layer.weight, out_std if layer is linears[-1] else np.sqrt(2))
        nn.init.zeros_(layer.bias)
    return net


class Actor(nn.Module):
    """The policy network: observation → distribution parameters (logits, or ``[μ, log σ]``)."""

    def __init__(self, obs_size: int, hidden: Sequence[int], activation: Literal["tanh", "relu"],
                 policy: Policy, init_log_std: float = 0.0) -> None:
        super().__init__()
        self.net = orthogonal_mlp(obs_size, hidden, policy.net_outputs, activation, out_std=0.01)
        gaussian = isinstance(policy, GaussianPolicy)
        self.log_std = nn.Parameter(torch.full((policy.net_outputs,), init_log_std)) if gaussian else None

    def forward(self, obs: Tensor) -> Tensor:
        out = self.net(obs)
        if self.log_std is None:
            return out
        return torch.cat([out, self.log_std.expand_as(out)], -1)

    def snapshot(self) -> Callable[[np.ndarray], np.ndarray]:
        """The same function in numpy with the current weights, for acting."""
        net = NumpyMLP(self.net)
        if self.log_std is None:
            return net
        log_std = self.log_std.detach().cpu().numpy().copy()
        return lambda obs: np.concatenate([mean := net(obs), np.broadcast_to(log_std, mean.shape)], -1)


def load_policy(path: str, obs_size: int, policy: Policy) -> Actor:
    """The frozen actor of a PPO checkpoint, checked against the env it is used with."""
    key = "task.reference_checkpoint"
    checkpoint, spec = read_checkpoint(path, key, CHECKPOINT_POLICY_KEY, "PPO")
    if (spec["obs_size"], spec["family"], spec["net_outputs"]) != (
            obs_size, type(policy).__name__, policy.net_outputs):
        raise KlexpError(
            f"{key}: {Path(path).expanduser()} holds a {spec['family']} policy for {spec['env_id']} "
            f"({spec['obs_size']} observations, {spec['net_outputs']} outputs); this env needs a "
            f"{type(policy).__name__} with {obs_size} observations and {policy.net_outputs} outputs"
        )
    actor = Actor(obs_size, spec["hidden"], spec["activation"], policy)
    return load_frozen(actor, checkpoint, "actor", key, path)
