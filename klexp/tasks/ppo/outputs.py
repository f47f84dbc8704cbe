"""What PPO shows its KL terms (``klexp/conf/kl/*.yaml``): distributions on the minibatch states (for
a term placed in the reward, on the rollout's states).

* ``policy``     — ``π_θ(·|s)``, with gradient (at rollout time, the policy that acted);
* ``old_policy`` — ``π_old(·|s)``, the policy that collected the rollout (``KL(old_policy ‖ policy)``
  is the PPO paper's penalty, fixed β or adaptive β, sec. 4);
* ``reference``  — ``π_ref(·|s)``, a frozen policy from ``reference_checkpoint`` or the env's own
  (``reference_from_env``) (``KL(policy ‖ reference)`` as in KL-regularised fine-tuning, Ziegler
  et al. 2019);
* ``uniform``    — the uniform policy over discrete actions (``KL(policy ‖ uniform) = log K − H``,
  the entropy bonus as a KL: the same gradient as ``−H``);
* ``actions``    — the rollout's actions, draws from ``π_old`` (``samples_from: old_policy``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from klexp.tasks.ppo.distributions import ActionDistribution
from klexp.tasks.ppo.rollout import Batch

PPO_OUTPUTS = frozenset({"policy", "old_policy", "reference", "uniform", "actions"})
#: where the rollout's actions come from, for KL terms that use them as Monte-Carlo draws
SAMPLE_SOURCES = {"actions": "old_policy"}


def policy_outputs(action_dist: ActionDistribution, params: Tensor, b: Batch,
                   with_uniform: bool) -> dict[str, Any]:
    """The outputs on the states ``b.obs``, π_θ's parameters there being ``params``; ``uniform``
    only ``with_uniform`` (when a term reads it), ``reference`` only when the batch has one."""
    outputs: dict[str, Any] = {
        "policy": action_dist.distribution(params),
        "old_policy": action_dist.distribution(b.old_params),
        "actions": b.actions,
    }
    if with_uniform:
        outputs["uniform"] = action_dist.uniform(params)
    if b.reference_params is not None:
        outputs["reference"] = action_dist.distribution(b.reference_params)
    return outputs
