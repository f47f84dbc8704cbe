"""PPO's checks of its KL terms and minibatches: they raise one-line errors and change nothing."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from klexp.errors import KlexpError
from klexp.lightning.term import KLTerm
from klexp.tasks.ppo.distributions import ActionDistribution

#: where the rollout's actions come from, for KL terms that use them as Monte-Carlo draws
SAMPLE_SOURCES = {"actions": "old_policy"}


def check_terms(terms: Sequence[KLTerm], action_dist: ActionDistribution, has_reference: bool) -> None:
    """The outputs a KL term reads must exist for this env and config: ``uniform`` only for
    discrete actions, ``reference`` only with a reference policy; the rollout's ``actions`` are
    draws from ``old_policy``."""
    for term in terms:
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
        source = SAMPLE_SOURCES.get(term.samples) if term.monte_carlo else None
        if source is not None and term.samples_from != source:
            raise KlexpError(f"kl.{term.name}.samples_from: '{term.samples}' are draws from "
                             f"'{source}'; set samples_from: {source} (got {term.samples_from!r})")


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
