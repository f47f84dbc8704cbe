"""PPO's minibatch loss as a pure function, and the statistics of one minibatch as named values.

The loss of Schulman et al. (2017) on a minibatch of the rollout, with ``r = π_θ(a|s)/π_old(a|s)``
and advantages ``A`` (normalised per minibatch when asked):

* policy:   ``L^CLIP = −mean(min(r·A, clip(r, 1 − ε, 1 + ε)·A))`` (eq. 7), or ``−mean(r·A)``
  without clipping (then a KL term is the trust region, as in the paper's KL-penalty variant);
* value:    ``½·mean(max((V − R)², (V_clip − R)²))`` with ``V_clip = V_old + clip(V − V_old, −ε, ε)``,
  or ``½·mean((V − R)²)``;
* entropy:  ``mean H(π_θ(·|s))``, a bonus;
* task loss = policy − ent_coef · entropy + vf_coef · value. The KL terms of the config are added
  to it by ``klexp.total_loss``.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

import torch
from torch import Tensor

from klexp.core.estimators import monte_carlo_terms


@dataclass(frozen=True)
class LossSettings:
    """The hyperparameters of the loss (see the module docstring).

    Args:
        clip: use the clipped surrogate ``min(r·A, clip(r, 1 − ε, 1 + ε)·A)``; false gives ``r·A``
            (then a KL term is the trust region, as in the paper's KL-penalty variant).
        clip_coef: ε.
        clip_vloss: clip the value update around the rollout's values by ``clip_coef``.
        ent_coef, vf_coef: weights of the entropy bonus and the value loss.
        norm_adv: normalise advantages per minibatch (each minibatch then needs ≥ 2 states).
    """

    clip: bool = True
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    norm_adv: bool = True


@dataclass(frozen=True)
class PPOLoss:
    """The task loss and its parts on one minibatch (tensors, with gradient)."""

    task: Tensor
    policy: Tensor
    value: Tensor
    entropy: Tensor


def normalise(advantages: Tensor) -> Tensor:
    """``(A − mean A) / (std A + 1e-8)``, as the PPO implementations normalise per minibatch."""
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def ppo_loss(logratio: Tensor, entropy: Tensor, new_values: Tensor, advantages: Tensor,
             returns: Tensor, old_values: Tensor, settings: LossSettings) -> PPOLoss:
    """PPO's loss on a minibatch (see the module docstring), from ``log r`` per state, the
    policy's entropy per state, the critic's values now and when the rollout was scored, the
    advantages and the returns."""
    ratio = logratio.exp()
    if settings.norm_adv:
        advantages = normalise(advantages)
    policy_loss = -advantages * ratio
    if settings.clip:
        clipped = -advantages * torch.clamp(ratio, 1 - settings.clip_coef, 1 + settings.clip_coef)
        policy = torch.max(policy_loss, clipped).mean()
    else:
        policy = policy_loss.mean()
    if settings.clip_vloss:
        unclipped = (new_values - returns).square()
        clipped_values = old_values + torch.clamp(new_values - old_values, -settings.clip_coef,
                                                  settings.clip_coef)
        value = 0.5 * torch.max(unclipped, (clipped_values - returns).square()).mean()
    else:
        value = 0.5 * (new_values - returns).square().mean()
    entropy_mean = entropy.mean()
    task = policy - settings.ent_coef * entropy_mean + settings.vf_coef * value
    return PPOLoss(task=task, policy=policy, value=value, entropy=entropy_mean)


@dataclass(frozen=True)
class MinibatchStats:
    """What one minibatch measured, before its step (0-d tensors, no gradient). ``kl_k1`` and
    ``kl_k3`` are Schulman's estimators of ``KL(π_old ‖ π_θ)`` from the log-ratio of the rollout's
    actions (http://joschu.net/blog/kl-approx.html); ``kl_exact`` is the closed form on the states;
    ``clipfrac`` the share of ratios outside ``[1 − ε, 1 + ε]``."""

    policy_loss: Tensor
    value_loss: Tensor
    entropy: Tensor
    task_loss: Tensor
    total_loss: Tensor
    kl_k1: Tensor
    kl_k3: Tensor
    kl_exact: Tensor
    clipfrac: Tensor

    @classmethod
    def measure(cls, loss: PPOLoss, total: Tensor, logratio: Tensor, kl_exact: Tensor,
                clip_coef: float) -> MinibatchStats:
        """CleanRL's ``old_approx_kl`` is ``kl_k1``, its ``approx_kl`` ``kl_k3``, its ``clipfracs``
        entry ``clipfrac``."""
        with torch.no_grad():
            ratio = logratio.exp()
            return cls(policy_loss=loss.policy.detach(), value_loss=loss.value.detach(),
                       entropy=loss.entropy.detach(), task_loss=loss.task.detach(),
                       total_loss=total.detach(),
                       kl_k1=monte_carlo_terms(logratio, "k1").mean(),
                       kl_k3=monte_carlo_terms(logratio, "k3").mean(),
                       kl_exact=kl_exact.mean(),
                       clipfrac=((ratio - 1.0).abs() > clip_coef).float().mean())


def phase_metrics(stats: list[MinibatchStats], ent_coef: float, with_total: bool) -> dict[str, float]:
    """The update phase's scalars: the mean of each statistic over its minibatches (and the
    maximum of each KL estimate), as floats with one device-to-host copy for all of them;
    ``loss/total`` only ``with_total`` (when a KL term adds to the loss, else it repeats
    ``loss/task``)."""
    table = torch.stack([torch.stack(astuple(s)) for s in stats])
    names = [f.name for f in fields(MinibatchStats)]
    means = dict(zip(names, table.mean(0).tolist(), strict=True))
    maxima = dict(zip(names, table.amax(0).tolist(), strict=True))
    total = {"loss/total": means["total_loss"]} if with_total else {}
    return {
        "loss/policy": means["policy_loss"], "loss/value": means["value_loss"],
        "loss/entropy": -ent_coef * means["entropy"], "loss/task": means["task_loss"], **total,
        "ppo/entropy": means["entropy"],
        "ppo/kl_k1": means["kl_k1"], "ppo/kl_k1_max": maxima["kl_k1"],
        "ppo/kl_k3": means["kl_k3"], "ppo/kl_k3_max": maxima["kl_k3"],
        "ppo/kl_exact": means["kl_exact"], "ppo/kl_exact_max": maxima["kl_exact"],
        "ppo/clipfrac": means["clipfrac"],
    }
