"""What PPO logs besides its losses, and its charts.

Measured every minibatch whatever the config, logged as mean and max over the update phase
(``loss.MinibatchStats``): ``ppo/kl_k1``, ``ppo/kl_k3`` (Schulman's estimators of
``KL(π_old ‖ π_θ)`` from the log-ratio of the rollout's actions, http://joschu.net/blog/kl-approx.html)
and ``ppo/kl_exact`` (the closed form on the batch states), so the estimators can be compared with
the truth; after the update, ``ppo/kl_after_update`` and, with a reference policy,
``ppo/kl_reference``, the exact ``KL(π_θ ‖ π_ref)`` on the batch states, whatever the estimator and
placement of the run's own term. Per logged iteration (``iteration_metrics``): the learning rate,
the critic's explained variance, env steps and their rate, the episodes finished. On an exactly
solvable env (``klexp/TokenSequence-v0``), ``exact/*`` (``exact_metrics``): the regularised
objective of the current policy, its gap to the optimum and its KL to the optimum and to the
reference, by enumeration.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from klexp.tasks.ppo.rollout import Batch, RolloutState, explained_variance

#: one chart a quantity (``klexp.Dashboards`` leaves out those the run does not write): the return
#: first, then each loss on its own scale (the value loss is ~100× the others)
PPO_CHARTS = {"PPO": {
    "episodic return": [r"^episode/return$", r"^episode/return_recent$"],
    "policy loss (clipped surrogate)": [r"^loss/policy$"],
    "value loss": [r"^loss/value$"],
    "entropy bonus": [r"^loss/entropy$"],
    "KL(π_old ‖ π_θ)": [r"^ppo/kl_(k1|k3|exact)$", r"^ppo/kl_after_update$"],
    "KL(π_θ ‖ π_ref), exact": [r"^ppo/kl_reference$"],
    "exact: gap to the optimum J* − J": [r"^exact/gap$"],
    "exact: KL(π ‖ π*)": [r"^exact/kl_optimum$"],
    "exact: objective J and its optimum J*": [r"^exact/(objective|optimal_objective)$"],
}}


def iteration_metrics(stats: dict[str, float], learning_rate: float, b: Batch,
                      state: RolloutState) -> dict[str, float]:
    """One logged iteration: the update phase's ``stats``, the learning rate it used, the critic's
    explained variance on the rollout ``b``, env steps and their rate, and the episodes finished
    since the last log (``RolloutState.episode_metrics``, which then forgets them)."""
    elapsed = time.perf_counter() - state.start_time
    return {**stats, "ppo/learning_rate": learning_rate,
            "ppo/explained_variance": explained_variance(b.values, b.returns),
            "time/env_steps": float(state.env_steps), "time/sps": state.env_steps / elapsed,
            **state.episode_metrics()}


def evaluation_metrics(returns: np.ndarray, lengths: np.ndarray) -> dict[str, float]:
    """The greedy evaluation's scalars, from its episodes' returns and lengths."""
    return {"test/return_mean": float(returns.mean()), "test/return_std": float(returns.std()),
            "test/return_min": float(returns.min()), "test/length_mean": float(lengths.mean())}


@torch.no_grad()
def exact_metrics(problem: Any, beta: float | None, actor: nn.Module, prefix: str, dtype: torch.dtype,
                  device: torch.device) -> dict[str, float]:
    """On an exactly solvable env with ``exact_beta`` set: the current policy's ``J`` and ``E[r]``,
    the optimum's ``J*``, the gap ``J* − J = β·KL(π ‖ π*)``, ``KL(π ‖ π*)`` and the sequence-level
    ``KL(π ‖ π_ref)``, by enumeration (the actor's inputs of ``dtype`` on ``device``); else
    nothing."""
    if problem is None or beta is None:
        return {}
    observations = problem.prefix_observations(dtype=dtype, device=device)
    return problem.metrics(actor(observations), beta).scalars(prefix)
