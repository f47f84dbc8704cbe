"""PPO's networks, injected from config (``task.actor``, ``task.critic``; Hydra ``_partial_: true``
nodes the task completes with the shapes the env decides): the actor (observation → the action
distribution's parameters) and its numpy snapshot for acting, the critic (observation → ``V(s)``),
the greedy policy for evaluation, and loading a frozen (reference) actor from a checkpoint.

A factory from config is called as ``actor(obs_dim, action_dist)`` and ``critic(obs_dim)``; any
``nn.Module`` they return will do (an actor other than ``Actor`` acts through torch, not numpy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from klexp.errors import KlexpError
from klexp.nets.frozen import first_mismatch, load_frozen, read_checkpoint
from klexp.nets.mlp import mlp
from klexp.tasks.ppo.distributions import ActionDistribution, DiagGaussianDistribution
from klexp.tasks.ppo.envs import within_bounds

# where a PPO checkpoint describes its actor
CHECKPOINT_POLICY_KEY = "klexp_policy"

ActorFactory = Callable[[int, ActionDistribution], nn.Module]
CriticFactory = Callable[[int], nn.Module]


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
    """The policy network: observation → the action distribution's parameters (logits, or
    ``[μ, log σ]`` with a state-independent learned ``log σ`` starting at ``init_log_std``)."""

    def __init__(self, obs_dim: int, action_dist: ActionDistribution, hidden: Sequence[int] = (64, 64),
                 activation: Literal["tanh", "relu"] = "tanh", init_log_std: float = 0.0) -> None:
        super().__init__()
        self.hidden, self.activation = list(hidden), activation
        self.net = orthogonal_mlp(obs_dim, hidden, action_dist.net_outputs, activation, out_std=0.01)
        gaussian = isinstance(action_dist, DiagGaussianDistribution)
        self.log_std = (nn.Parameter(torch.full((action_dist.net_outputs,), float(init_log_std)))
                        if gaussian else None)

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


def critic_mlp(obs_dim: int, hidden: Sequence[int] = (64, 64),
               activation: Literal["tanh", "relu"] = "tanh") -> nn.Sequential:
    """The value network: observation → ``V(s)`` (one output, orthogonal init with gain 1)."""
    return orthogonal_mlp(obs_dim, hidden, 1, activation, out_std=1.0)


def acting_function(actor: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """The actor frozen for one rollout, numpy in and out: ``Actor.snapshot`` (numpy arithmetic,
    several times faster at small batches), or a no-grad torch call for any other network."""
    if isinstance(actor, Actor):
        return actor.snapshot()
    parameter = next(actor.parameters())

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return actor(torch.from_numpy(obs).to(parameter)).cpu().numpy()
    return act


def greedy_policy(actor: nn.Module, action_dist: ActionDistribution,
                  action_space: gym.Space) -> Callable[[np.ndarray], np.ndarray]:
    """The actor's most likely action (the argmax, or the Gaussian's mean) within the action
    space's bounds, numpy in and out, for the greedy evaluation."""
    act = acting_function(actor)
    return lambda obs: within_bounds(action_dist.mode(act(obs)), action_space)


def policy_spec(env_id: str, obs_dim: int, action_dist: ActionDistribution,
                actor: nn.Module) -> dict[str, Any]:
    """What a checkpoint says of its actor, for ``load_policy``: the env and action family it acts
    in, and the architecture of an ``Actor``."""
    architecture = ({"hidden": actor.hidden, "activation": actor.activation} if isinstance(actor, Actor)
                    else {})
    return {"env_id": env_id, "obs_size": obs_dim, "family": action_dist.checkpoint_name,
            "net_outputs": action_dist.net_outputs, **architecture}


def load_policy(path: str, obs_dim: int, action_dist: ActionDistribution,
                make_actor: ActorFactory | None = None) -> nn.Module:
    """The frozen actor of a PPO checkpoint, checked against the env it is used with. An ``Actor``
    is rebuilt from the checkpoint's own description; any other network by ``make_actor``."""
    key = "task.reference_checkpoint"
    checkpoint, spec = read_checkpoint(path, key, CHECKPOINT_POLICY_KEY, "PPO")
    family = action_dist.checkpoint_name
    if (spec["obs_size"], spec["family"], spec["net_outputs"]) != (obs_dim, family, action_dist.net_outputs):
        raise KlexpError(
            f"{key}: {Path(path).expanduser()} holds a {spec['family']} policy for {spec['env_id']} "
            f"({spec['obs_size']} observations, {spec['net_outputs']} outputs); this env needs a "
            f"{family} with {obs_dim} observations and {action_dist.net_outputs} outputs"
        )
    if "hidden" in spec:
        actor = Actor(obs_dim, action_dist, spec["hidden"], spec["activation"])
    elif make_actor is not None:
        actor = make_actor(obs_dim, action_dist)
    else:
        raise KlexpError(f"{key}: {Path(path).expanduser()} holds a custom actor; rebuild it with "
                         "the task.actor of the run that trained it")
    return load_frozen(actor, checkpoint, "actor", key, path)


def start_from_reference(actor: nn.Module, reference: nn.Module | None) -> None:
    """``task.init_from_reference``: the actor starts from the frozen reference's weights, which
    must be those of the same network (a stage may fill in ``task.reference_checkpoint``: checked
    only when the networks are built)."""
    if reference is None:
        raise KlexpError("task.init_from_reference needs task.reference_checkpoint")
    problem = first_mismatch(actor.state_dict(), reference.state_dict(), where="the reference")
    if problem is not None:
        raise KlexpError("task.init_from_reference: the reference network differs from this task's "
                         f"(task.actor): {problem}")
    actor.load_state_dict(reference.state_dict())
