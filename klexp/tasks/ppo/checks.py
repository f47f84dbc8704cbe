"""PPO's checks of its arguments, env, networks, KL terms and minibatches: they raise one-line
errors naming the key, and change nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import torch

from klexp.core.estimate import OnSamples
from klexp.errors import (
    ConfigValueError,
    KlexpError,
    require,
    require_finite_non_negative,
    require_finite_positive,
    require_non_negative,
    require_positive_int,
)
from klexp.lightning.loss import Term
from klexp.lightning.term import kl_measures
from klexp.nets.factory import check_net
from klexp.tasks.ppo.actor import ActorFactory, CriticFactory
from klexp.tasks.ppo.distributions import ActionDistribution
from klexp.tasks.ppo.outputs import SAMPLE_SOURCES


def check_arguments(num_envs: int, *, total_timesteps: int, num_steps: int, num_minibatches: int,
                    update_epochs: int, eval_episodes: int, gamma: float, gae_lambda: float,
                    norm_adv: bool, clip_coef: float, ent_coef: float, vf_coef: float,
                    max_grad_norm: float | None, exact_beta: float | None,
                    reference_checkpoint: str | None, reference_from_env: bool,
                    init_from_reference: bool) -> None:
    """``PPOTask``'s arguments, each in its range and all of them consistent (see its docstring)."""
    for key, value in (("total_timesteps", total_timesteps), ("num_steps", num_steps),
                       ("num_minibatches", num_minibatches), ("update_epochs", update_epochs),
                       ("eval_episodes", eval_episodes)):
        require_positive_int(key, value)
    require(isinstance(gamma, (int, float)) and 0 < gamma <= 1, "gamma", "a number in (0, 1]", gamma)
    require(isinstance(gae_lambda, (int, float)) and 0 <= gae_lambda <= 1, "gae_lambda",
            "a number in [0, 1]", gae_lambda)
    for key, value in (("clip_coef", clip_coef), ("ent_coef", ent_coef), ("vf_coef", vf_coef)):
        require_finite_non_negative(key, value)
    if max_grad_norm is not None:
        require_non_negative("max_grad_norm", max_grad_norm)
    if exact_beta is not None:
        require_finite_positive("exact_beta", exact_beta)
    batch_size = num_envs * num_steps
    if total_timesteps < batch_size:
        raise ConfigValueError("total_timesteps", f"must be at least one rollout "
                               f"(num_envs · num_steps = {batch_size}), got {total_timesteps}")
    if num_minibatches > batch_size // (2 if norm_adv else 1):
        raise ConfigValueError("num_minibatches", minibatch_limit(batch_size, norm_adv, num_minibatches))
    if reference_from_env and (reference_checkpoint is not None or init_from_reference):
        raise ConfigValueError("reference_from_env", "the reference comes from the env or from "
                               "task.reference_checkpoint (with init_from_reference), not both")


def check_env(env_id: str, observation_space: gym.Space, problem: Any, reference_from_env: bool,
              exact_beta: float | None) -> None:
    """PPO's networks take flat observations; an exactly solvable problem is there when the config
    reads one (``reference_from_env``, ``exact_beta``)."""
    if not (isinstance(observation_space, gym.spaces.Box) and len(observation_space.shape) == 1):
        raise KlexpError(f"env: PPO needs a flat Box observation space, got {observation_space}")
    if problem is None and (reference_from_env or exact_beta is not None):
        raise ConfigValueError("reference_from_env" if reference_from_env else "exact_beta",
                               f"env {env_id} has no exactly solvable problem "
                               "(klexp/TokenSequence-v0 has one)")


def check_networks(actor: ActorFactory, critic: CriticFactory, obs_dim: int,
                   action_dist: ActionDistribution) -> None:
    """The networks build with the env's shapes: each is built once on the meta device
    (``klexp.nets.factory.check_net``: no memory, no random numbers drawn), so that a wrong
    argument is one line ``task.actor.<argument>: …`` as the task is made, not at the real build."""
    check_net(lambda **_: actor(obs_dim, action_dist), "actor")
    check_net(lambda **_: critic(obs_dim), "critic")


def check_terms(terms: Sequence[Term], action_dist: ActionDistribution, has_reference: bool) -> None:
    """Every term is a KL term, and the outputs it reads exist for this env and config:
    ``uniform`` only for discrete actions, ``reference`` only with a reference policy; the
    rollout's ``actions`` are draws from ``old_policy``."""
    for term in kl_measures(terms, "PPOTask"):
        for role in ("p", "q"):
            key = getattr(term, role)
            if key == "uniform":
                try:
                    action_dist.uniform(torch.zeros(()))
                except KlexpError as error:
                    raise KlexpError(f"kl.{term.name}.{role}: {error}") from None
            if key == "reference" and not has_reference:
                raise KlexpError(f"kl.{term.name}.{role}: the term reads 'reference', which needs "
                                 "task.reference_checkpoint (or a stage that trains it) or "
                                 "task.reference_from_env")
        drawn = term.estimator if isinstance(term.estimator, OnSamples) else None
        source = SAMPLE_SOURCES.get(drawn.samples) if drawn is not None else None
        if drawn is not None and source is not None and drawn.samples_from != source:
            raise KlexpError(f"kl.{term.name}.samples_from: '{drawn.samples}' are draws from "
                             f"'{source}'; set samples_from: {source} (got {drawn.samples_from!r})")


def check_minibatch(size: int, states: int, num_minibatches: int, norm_adv: bool) -> None:
    """Autoreset steps are dropped from the rollout, which can leave a minibatch too small for
    advantage normalisation (its standard deviation needs two states)."""
    if size < (2 if norm_adv else 1):
        raise KlexpError(f"task.num_minibatches: {num_minibatches} minibatches of the {states} "
                         f"states left once autoreset steps were dropped give one of {size}; use "
                         "fewer minibatches or longer rollouts (task.num_steps)")


def minibatch_limit(rollout: int, norm_adv: bool, asked: int) -> str:
    """Why ``num_minibatches = asked`` does not fit a rollout of ``rollout`` states."""
    if norm_adv:
        return (f"must be ≤ {rollout // 2}: advantage normalisation needs ≥ 2 states a minibatch and "
                f"a rollout has {rollout} (num_envs · num_steps), got {asked}")
    return f"must be ≤ the rollout size {rollout}, got {asked}"
