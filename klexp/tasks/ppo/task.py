"""Proximal Policy Optimization (Schulman et al. 2017, "Proximal Policy Optimization Algorithms")
on Gymnasium vector environments, run by the Lightning Trainer.

One ``training_step`` is one PPO iteration, read top to bottom:

1. ``collect_rollout``: ``num_steps`` steps in each of the ``num_envs`` envs with the actor frozen
   as a numpy snapshot (acting at batch 4 is dominated by per-call dispatch), into preallocated
   numpy buffers. Gymnasium 1.x next-step autoreset: the step on which an env resets is no
   transition and is left out (``Rollout.autoreset``); truncated episodes bootstrap from the value
   of their final observation.
2. ``process_rollout``: one batched torch pass for the values, the old policy's parameters and
   log-probabilities (and the reference policy's); KL terms placed in the reward subtract
   ``β·k(s_t, a_t)`` from the rewards (``klexp.reward_penalty``); then GAE (``rollout.gae``).
3. ``update``: ``update_epochs`` epochs over ``num_minibatches`` shuffled minibatches of PPO's loss
   (``loss.ppo_loss``) plus the KL terms placed in the loss (``klexp.total_loss``); manual
   optimisation with gradient-norm clipping; the learning rate anneals linearly per iteration. The
   phase talks to its KL terms through ``klexp.UpdatePhase``: they measure themselves on the whole
   batch before and after it (controllers adapt to one of these), and a ``TargetKL`` term can stop
   it early.

Lightning carries the loop (the task's own train dataloader yields iteration indices), logging,
checkpoints, callbacks and strategies. Training scalars are written against environment steps
(``log_step``), every ``trainer.log_every_n_steps`` iterations and on the last.

Outputs for KL terms (``conf/kl/*.yaml``), on the minibatch states (in the reward: on the rollout):

* ``policy``     — ``π_θ(·|s)``, with gradient (at rollout time, the policy that acted);
* ``old_policy`` — ``π_old(·|s)``, the policy that collected the rollout (``KL(old_policy ‖ policy)``
  is the PPO paper's penalty, fixed β or adaptive β, sec. 4);
* ``reference``  — ``π_ref(·|s)``, a frozen policy from ``reference_checkpoint`` or the env's own
  (``reference_from_env``) (``KL(policy ‖ reference)`` as in KL-regularised fine-tuning, Ziegler
  et al. 2019);
* ``uniform``    — the uniform policy over discrete actions (``KL(policy ‖ uniform) = log K − H``,
  the entropy bonus as a KL: the same gradient as ``−H``);
* ``actions``    — the rollout's actions, draws from ``π_old`` (``samples_from: old_policy``).

Measured every minibatch whatever the config, logged as mean and max over the update phase:
``ppo/kl_k1``, ``ppo/kl_k3`` (Schulman's estimators of ``KL(π_old ‖ π_θ)`` from the log-ratio of
the rollout's actions, http://joschu.net/blog/kl-approx.html) and ``ppo/kl_exact`` (the closed form
on the batch states), so the estimators can be compared with the truth; with a reference policy,
``ppo/kl_reference``, the exact ``KL(π_θ ‖ π_ref)`` on the batch states after the update, whatever
the estimator and placement of the run's own term. On an exactly solvable env
(``klexp/TokenSequence-v0``), ``exact/*``: the regularised objective of the current policy, its gap
to the optimum and its KL to the optimum and to the reference, by enumeration.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from klexp.core.estimate import OnSamples
from klexp.data.step_indices import StepIndices
from klexp.errors import (
    ConfigValueError,
    KlexpError,
    require,
    require_finite,
    require_finite_non_negative,
    require_finite_positive,
    require_non_negative,
    require_positive_int,
)
from klexp.lightning.logging import LOG_STEP_KEY, log_metrics, logs_now
from klexp.lightning.loss import reward_penalty, terms_in_loss, total_loss
from klexp.lightning.phase import UpdatePhase
from klexp.lightning.term import KLMeasure, kl_terms_of
from klexp.nets.frozen import first_mismatch
from klexp.tasks.base import OptimizerFactory, SchedulerFactory, Task
from klexp.tasks.ppo.envs import (
    ACTION_STREAM,
    EVAL_STREAM,
    TRAIN_STREAM,
    VectorEnvFactory,
    episode_statistics,
)
from klexp.tasks.ppo.loss import LossSettings, MinibatchStats, phase_summary, ppo_loss
from klexp.tasks.ppo.policies import CHECKPOINT_POLICY_KEY, Actor, load_policy, orthogonal_mlp, policy_for
from klexp.tasks.ppo.rollout import Batch, Rollout, explained_variance, gae

CHECKPOINT_PROGRESS_KEY = "klexp_ppo_progress"
PPO_OUTPUTS = frozenset({"policy", "old_policy", "reference", "uniform", "actions"})
#: where the rollout's actions come from, for KL terms that use them as Monte-Carlo draws
SAMPLE_SOURCES = {"actions": "old_policy"}


class PPOTask(Task):
    """PPO with GAE, advantage normalisation, the clipped surrogate, optional value clipping, an
    entropy bonus, gradient-norm clipping and linear learning-rate annealing (via ``lr_scheduler``).

    Args:
        env: the vector-env factory (``conf/env/*.yaml``).
        total_timesteps: env steps to train for, over all ranks: ``total_timesteps //
            (num_envs · num_steps · ranks)`` iterations.
        num_steps: steps per env per rollout.
        num_minibatches, update_epochs: each update phase makes ``update_epochs`` passes over the
            rollout in ``num_minibatches`` shuffled minibatches.
        gamma, gae_lambda: discount γ and GAE's λ.
        norm_adv: normalise advantages per minibatch (each minibatch then needs ≥ 2 states).
        clip: use the clipped surrogate ``min(r·A, clip(r, 1 − ε, 1 + ε)·A)``; false gives ``r·A``
            (then a KL term is the trust region, as in the paper's KL-penalty variant).
        clip_coef: ε.
        clip_vloss: clip the value update around the rollout's values by ``clip_coef``.
        ent_coef, vf_coef: weights of the entropy bonus and the value loss.
        max_grad_norm: clip the global gradient norm (null: no clipping).
        hidden, activation, init_log_std: separate actor and critic MLPs (orthogonal init) and the
            initial log-σ of a Gaussian policy.
        reference_checkpoint: a PPO checkpoint whose actor becomes the frozen ``reference`` policy.
        reference_from_env: take the frozen ``reference`` policy from an exactly solvable env
            (its ``problem.reference_logits``) instead.
        init_from_reference: start the actor from the reference checkpoint's weights (fine-tuning,
            as in Ziegler et al. 2019, where ``KL(π_θ ‖ π_ref)`` starts at 0).
        exact_beta: on an exactly solvable env, the β of the objective
            ``J(π) = E[r] − β·KL(π ‖ π_ref)`` whose exact metrics are logged (null: none logged);
            set it to the weight of the run's KL to the reference.
        eval_episodes: greedy episodes in the final evaluation (the test step).
    """

    output_names = PPO_OUTPUTS
    sample_sources = SAMPLE_SOURCES

    def __init__(
        self,
        env: VectorEnvFactory,
        total_timesteps: int = 500_000,
        num_steps: int = 128,
        num_minibatches: int = 4,
        update_epochs: int = 4,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        norm_adv: bool = True,
        clip: bool = True,
        clip_coef: float = 0.2,
        clip_vloss: bool = True,
        ent_coef: float = 0.01,
        vf_coef: float = 0.5,
        max_grad_norm: float | None = 0.5,
        hidden: Sequence[int] = (64, 64),
        activation: Literal["tanh", "relu"] = "tanh",
        init_log_std: float = 0.0,
        reference_checkpoint: str | None = None,
        reference_from_env: bool = False,
        init_from_reference: bool = False,
        exact_beta: float | None = None,
        eval_episodes: int = 10,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
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
        require_finite("init_log_std", init_log_std)
        if exact_beta is not None:
            require_finite_positive("exact_beta", exact_beta)
        require(all(isinstance(h, int) and h > 0 for h in hidden), "hidden",
                "a list of positive layer widths", list(hidden))
        batch_size = env.num_envs * num_steps
        if total_timesteps < batch_size:
            raise ConfigValueError("total_timesteps", f"must be at least one rollout "
                                   f"(num_envs · num_steps = {batch_size}), got {total_timesteps}")
        if num_minibatches > batch_size // (2 if norm_adv else 1):
            raise ConfigValueError("num_minibatches", _minibatch_limit(batch_size, norm_adv, num_minibatches))
        if reference_from_env and (reference_checkpoint is not None or init_from_reference):
            raise ConfigValueError("reference_from_env", "the reference comes from the env or from "
                                   "task.reference_checkpoint (with init_from_reference), not both")
        self.env = env
        self.total_timesteps, self.num_steps = total_timesteps, num_steps
        self.rollout_size = batch_size
        self.num_minibatches, self.update_epochs = num_minibatches, update_epochs
        self.gamma, self.gae_lambda = float(gamma), float(gae_lambda)
        self.loss_settings = LossSettings(clip=clip, clip_coef=float(clip_coef), clip_vloss=clip_vloss,
                                          ent_coef=float(ent_coef), vf_coef=float(vf_coef),
                                          norm_adv=norm_adv)
        self.max_grad_norm = max_grad_norm
        self.hidden, self.activation, self.init_log_std = list(hidden), activation, float(init_log_std)
        self.reference_checkpoint, self.init_from_reference = reference_checkpoint, init_from_reference
        self.reference_from_env, self.exact_beta = reference_from_env, exact_beta
        self.eval_episodes = eval_episodes
        self.automatic_optimization = False
        self.actor: Actor | None = None
        self.critic: nn.Module | None = None
        self.reference: Any = None
        self.problem: Any = None
        self._uniform_needed = False

    # ------------------------------------------------------------------ building

    def configure_model(self) -> None:
        if self.actor is not None:
            return
        observation_space, action_space = self.env.spaces()
        if not (isinstance(observation_space, gym.spaces.Box) and len(observation_space.shape) == 1):
            raise KlexpError(f"env: PPO needs a flat Box observation space, got {observation_space}")
        self.obs_size = int(observation_space.shape[0])
        self.action_space = action_space
        self.policy = policy_for(action_space)
        self.actor = Actor(self.obs_size, self.hidden, self.activation, self.policy, self.init_log_std)
        self.critic = orthogonal_mlp(self.obs_size, self.hidden, 1, self.activation, out_std=1.0)
        if self.reference_from_env or self.exact_beta is not None:
            self.problem = self.env.problem()
            if self.problem is None:
                key = "reference_from_env" if self.reference_from_env else "exact_beta"
                raise KlexpError(f"task.{key}: env {self.env.id} has no exactly solvable problem "
                                 "(klexp/TokenSequence-v0 has one)")
        if self.reference_from_env:
            self.reference = self.problem.reference_logits
        elif self.reference_checkpoint is not None:
            self.reference = load_policy(self.reference_checkpoint, self.obs_size, self.policy)
            if self.init_from_reference:
                problem = first_mismatch(self.actor.state_dict(), self.reference.state_dict(),
                                         where="the reference")
                if problem is not None:
                    raise KlexpError("task.init_from_reference: the reference network differs from "
                                     f"this task's (task.hidden, task.activation): {problem}")
                self.actor.load_state_dict(self.reference.state_dict())
        elif self.init_from_reference:
            raise KlexpError("task.init_from_reference needs task.reference_checkpoint")

    def policy_spec(self) -> dict[str, Any]:
        """What a checkpoint needs to rebuild the actor (``load_policy``)."""
        return {"env_id": self.env.id, "obs_size": self.obs_size,
                "family": type(self.policy).__name__, "net_outputs": self.policy.net_outputs,
                "hidden": self.hidden, "activation": self.activation}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_POLICY_KEY] = self.policy_spec()
        if hasattr(self, "env_steps"):
            # the action sampler's state travels too (as text: weights_only loading takes no
            # 128-bit integers), so a resumed run does not replay the first rollouts' noise
            checkpoint[CHECKPOINT_PROGRESS_KEY] = {
                "env_steps": self.env_steps, "solved_at": self.solved_at,
                "action_rng": json.dumps(self.rng.bit_generator.state)}
            checkpoint[LOG_STEP_KEY] = self.env_steps + 1

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._progress = checkpoint.get(CHECKPOINT_PROGRESS_KEY)

    def train_dataloader(self) -> StepIndices:
        """One index per iteration; under DDP every rank collects its own rollout, so the run's
        ``total_timesteps`` are shared among the ranks."""
        return StepIndices(max(1, self.total_timesteps // (self.rollout_size * self.ranks)))

    @property
    def ranks(self) -> int:
        """Processes collecting rollouts side by side (DDP world size; 1 outside a trainer)."""
        return self._trainer.world_size if self._trainer is not None else 1

    def test_dataloader(self) -> StepIndices:
        return StepIndices(1)

    def log_step(self) -> int:
        """The x-axis of every training scalar: environment steps over all ranks."""
        return self.env_steps

    def on_fit_start(self) -> None:
        self.check_terms(kl_terms_of(self.trainer))

    def on_train_start(self) -> None:
        rank = self.global_rank
        self.envs = self.env.make()
        self.rng = np.random.default_rng(self.env.seed_sequence(rank, ACTION_STREAM))
        self.next_obs, _ = self.envs.reset(seed=self.env.env_seeds(rank, TRAIN_STREAM))
        self.next_autoreset = np.zeros(self.env.num_envs, bool)
        self.buffer = Rollout.allocate(self.num_steps, self.env.num_envs, (self.obs_size,),
                                       self.policy.action_shape, self.policy.action_dtype)
        # a resumed run continues its step count (its envs restart from a fresh reset)
        progress = getattr(self, "_progress", None) or {"env_steps": 0, "solved_at": None}
        self.env_steps, self.solved_at = progress["env_steps"], progress["solved_at"]
        if "action_rng" in progress:
            self.rng.bit_generator.state = json.loads(progress["action_rng"])
        self.unlogged_episodes: list[tuple[float, int]] = []
        self.start_time = time.perf_counter()

    def on_train_end(self) -> None:
        self.envs.close()

    # ------------------------------------------------------------------ one PPO iteration

    def training_step(self, iteration: int, batch_idx: int) -> None:
        phase = UpdatePhase(self)
        episodes = self.collect_rollout()
        batch = self.process_rollout()
        learning_rate = self.optimizers().param_groups[0]["lr"]
        if phase.terms:
            with torch.no_grad():
                phase.start(self.outputs(batch.old_params, batch))
        stats = self.update(batch, phase)

        # Measure every KL term once more on the whole batch with the final π_θ; controllers adapt
        # to this (the PPO paper computes d = Ê[KL[π_old, π_θ]] after the epochs of updates).
        with torch.no_grad():
            params = self.actor(batch.obs)
            stats["ppo/kl_after_update"] = self.policy.kl(batch.old_params, params).mean().item()
            if batch.reference_params is not None:
                stats["ppo/kl_reference"] = self.policy.kl(params, batch.reference_params).mean().item()
            if phase.terms:
                phase.end(self.outputs(params, batch))
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

        self.note_if_solved()
        self.unlogged_episodes += episodes
        if logs_now(self) or batch_idx + 1 == self.trainer.num_training_batches:
            elapsed = time.perf_counter() - self.start_time
            metrics = {**stats, "ppo/learning_rate": learning_rate,
                       "ppo/explained_variance": explained_variance(batch.values, batch.returns),
                       "time/env_steps": float(self.env_steps), "time/sps": self.env_steps / elapsed,
                       **self.episode_metrics(self.unlogged_episodes), **self.exact_metrics("exact")}
            log_metrics(self, metrics, stage="train")
            self.unlogged_episodes = []

    def collect_rollout(self) -> list[tuple[float, int]]:
        """Act ``num_steps`` times in every env; returns (return, length) of finished episodes."""
        act = self.actor.snapshot()
        buffer, episodes = self.buffer, []
        for step in range(self.num_steps):
            buffer.obs[step] = self.next_obs
            buffer.autoreset[step] = self.next_autoreset
            action = self.policy.sample(act(self.next_obs), self.rng)
            buffer.actions[step] = action
            self.next_obs, reward, terminated, truncated, info = self.envs.step(self.env_action(action))
            buffer.rewards[step], buffer.terminated[step], buffer.truncated[step] = (
                reward, terminated, truncated)
            self.next_autoreset = terminated | truncated
            if "episode" in info:  # RecordEpisodeStatistics, at the step an episode ends
                finished = info["_episode"]
                episodes += zip(info["episode"]["r"][finished].tolist(),
                                info["episode"]["l"][finished].tolist(), strict=True)
        buffer.next_obs[:] = self.next_obs
        self.env_steps += self.num_steps * self.env.num_envs * self.ranks
        return episodes

    @torch.no_grad()
    def process_rollout(self) -> Batch:
        """Values, the old (and reference) policy and GAE for the rollout, in one batched pass;
        KL terms placed in the reward lower the rewards first; autoreset steps are dropped."""
        buffer, steps, envs = self.buffer, self.num_steps, self.env.num_envs
        # the rollout lives in numpy (float32) on the host; learning, on the module's device and dtype
        device, floats = self.device, {"device": self.device, "dtype": self.dtype}
        obs = torch.from_numpy(buffer.obs.reshape(steps * envs, -1)).to(**floats)
        next_obs = torch.from_numpy(buffer.next_obs).to(**floats)
        values = self.critic(torch.cat([obs, next_obs])).view(steps + 1, envs).cpu().numpy()
        valid = torch.from_numpy(~buffer.autoreset.reshape(-1)).to(device)
        obs = obs[valid]
        actions = torch.from_numpy(buffer.actions.reshape(steps * envs, *self.policy.action_shape))
        actions = actions.to(**floats if actions.is_floating_point() else {"device": device})[valid]
        old_params = self.actor(obs)
        batch = Batch(obs=obs, actions=actions, logprobs=self.policy.log_prob(old_params, actions),
                      old_params=old_params, advantages=obs.new_empty(0), returns=obs.new_empty(0),
                      values=torch.from_numpy(values[:-1].reshape(-1)).to(**floats)[valid],
                      reference_params=self.reference(obs) if self.reference is not None else None)
        rewards = buffer.rewards
        penalty = reward_penalty(self, self.outputs(old_params, batch))
        if penalty is not None:
            per_step = torch.zeros(steps * envs, dtype=penalty.dtype, device=device)
            per_step[valid] = penalty.to(per_step.dtype)
            rewards = rewards - per_step.view(steps, envs).cpu().numpy().astype(rewards.dtype)
        advantages, returns = gae(rewards, values, buffer.terminated, buffer.truncated,
                                  self.gamma, self.gae_lambda)
        batch.advantages = torch.from_numpy(advantages.reshape(-1)).to(**floats)[valid]
        batch.returns = torch.from_numpy(returns.reshape(-1)).to(**floats)[valid]
        return batch

    def update(self, b: Batch, phase: UpdatePhase) -> dict[str, float]:
        """The update phase: epochs of minibatch steps on PPO's loss plus the KL terms."""
        optimizer = self.optimizers()
        stats: list[MinibatchStats] = []
        steps, stopped = 0, False
        for epoch in range(self.update_epochs):
            minibatches = np.array_split(self.rng.permutation(len(b.obs)), self.num_minibatches)
            for index, indices in enumerate(minibatches):
                self.check_minibatch(len(indices), len(b.obs))
                mb = b.select(torch.from_numpy(indices).to(self.device))
                params = self.actor(mb.obs)
                logratio = self.policy.log_prob(params, mb.actions) - mb.logprobs
                loss_parts = ppo_loss(logratio, self.policy.entropy(params), self.critic(mb.obs).view(-1),
                                      mb.advantages, mb.returns, mb.values, self.loss_settings)
                outputs = self.outputs(params, mb) if phase.terms else {}
                loss = total_loss(self, {"loss": loss_parts.task, **outputs}, log=False)
                with torch.no_grad():
                    stats.append(MinibatchStats.measure(loss_parts, loss, logratio,
                                                        self.policy.kl(mb.old_params, params),
                                                        self.loss_settings.clip_coef))

                # A TargetKL term measured this minibatch: stop before stepping past its target
                if phase.should_stop(epoch, index, "minibatch"):
                    stopped = True
                    break
                optimizer.zero_grad()
                self.manual_backward(loss)
                if self.max_grad_norm is not None:
                    self.clip_gradients(optimizer, self.max_grad_norm, "norm")
                optimizer.step()
                steps += 1
            if stopped or phase.should_stop(epoch, index, "epoch"):
                break

        means, maxima = phase_summary(stats)
        # loss/total only when a KL term adds to the loss (else it repeats loss/task)
        total = {"loss/total": means["total_loss"]} if terms_in_loss(self.trainer) else {}
        return {
            "loss/policy": means["policy_loss"], "loss/value": means["value_loss"],
            "loss/entropy": -self.loss_settings.ent_coef * means["entropy"],
            "loss/task": means["task_loss"], **total,
            "ppo/entropy": means["entropy"],
            "ppo/kl_k1": means["kl_k1"], "ppo/kl_k1_max": maxima["kl_k1"],
            "ppo/kl_k3": means["kl_k3"], "ppo/kl_k3_max": maxima["kl_k3"],
            "ppo/kl_exact": means["kl_exact"], "ppo/kl_exact_max": maxima["kl_exact"],
            "ppo/clipfrac": means["clipfrac"], "ppo/update_steps": float(steps),
        }

    def check_minibatch(self, size: int, states: int) -> None:
        """Autoreset steps are dropped from the rollout, which can leave a minibatch too small for
        advantage normalisation (its standard deviation needs two states)."""
        if size < (2 if self.loss_settings.norm_adv else 1):
            raise KlexpError(f"task.num_minibatches: {self.num_minibatches} minibatches of the "
                             f"{states} states left once autoreset steps were dropped give one of "
                             f"{size}; use fewer minibatches or longer rollouts (task.num_steps)")

    def outputs(self, params: Tensor, b: Batch) -> dict[str, Any]:
        """The distributions KL terms read, on the states ``b.obs`` (π_θ's parameters ``params``)."""
        outputs: dict[str, Any] = {
            "policy": self.policy.distribution(params),
            "old_policy": self.policy.distribution(b.old_params),
            "actions": b.actions,
        }
        if self._uniform_needed:
            outputs["uniform"] = self.policy.uniform(params)
        if b.reference_params is not None:
            outputs["reference"] = self.policy.distribution(b.reference_params)
        return outputs

    @torch.no_grad()
    def exact_metrics(self, prefix: str) -> dict[str, float]:
        """On an exactly solvable env with ``exact_beta`` set: the current policy's ``J`` and
        ``E[r]``, the optimum's ``J*``, the gap ``J* − J = β·KL(π ‖ π*)``, ``KL(π ‖ π*)`` and the
        sequence-level ``KL(π ‖ π_ref)``, by enumeration."""
        if self.problem is None or self.exact_beta is None:
            return {}
        observations = self.problem.prefix_observations(dtype=self.dtype, device=self.device)
        values = self.problem.metrics(self.actor(observations), self.exact_beta)
        names = {"reward": "reward", "kl_reference": "kl_reference", "objective": "objective",
                 "optimal_objective": "optimal_objective", "gap": "gap", "kl_optimum": "kl_optimum"}
        return {f"{prefix}/{tag}": float(getattr(values, field)) for field, tag in names.items()}

    # ------------------------------------------------------------------ acting and evaluating

    def env_action(self, action: np.ndarray) -> np.ndarray:
        """What the env receives: Gaussian draws are clipped to the action bounds (their
        log-probability stays that of the unclipped draw, which is what the policy chose)."""
        if isinstance(self.action_space, gym.spaces.Box):
            return np.clip(action, self.action_space.low, self.action_space.high)
        return action

    def note_if_solved(self) -> None:
        """Note when the mean return of the recent episodes first reached the env's reward
        threshold (Gymnasium's spec: 475 for CartPole-v1)."""
        recent = episode_statistics(self.envs).return_queue
        threshold = self.env.reward_threshold
        if (self.solved_at is None and threshold is not None and len(recent) == recent.maxlen
                and np.mean(recent) >= threshold):
            self.solved_at = self.env_steps

    def episode_metrics(self, episodes: list[tuple[float, int]]) -> dict[str, float]:
        """Mean return and length of the episodes finished since the last log, the mean return of
        the recent ones (env.stats_window of them), and the env step at which that mean first
        reached the reward threshold."""
        metrics: dict[str, float] = {}
        if episodes:
            returns, lengths = zip(*episodes, strict=True)
            metrics["episode/return"] = float(np.mean(returns))
            if returns != lengths:  # on CartPole (1 a step) the length would repeat the return
                metrics["episode/length"] = float(np.mean(lengths))
        recent = episode_statistics(self.envs).return_queue
        if recent:
            metrics["episode/return_recent"] = float(np.mean(recent))
        if self.solved_at is not None:
            metrics["episode/solved_at_step"] = float(self.solved_at)
        return metrics

    def test_step(self, batch: int, batch_idx: int) -> None:
        returns, lengths = self.evaluate(self.eval_episodes)
        log_metrics(self, {"test/return_mean": float(returns.mean()), "test/return_std": float(returns.std()),
                           "test/return_min": float(returns.min()), "test/length_mean": float(lengths.mean()),
                           **self.exact_metrics("test/exact")},
                    batch_size=1, stage="test")

    @torch.inference_mode()
    def evaluate(self, episodes: int) -> tuple[np.ndarray, np.ndarray]:
        """Return and length of ``episodes`` greedy episodes (argmax action, or the Gaussian's
        mean), one per env copy, on the env's raw rewards."""
        envs = self.env.make(num_envs=episodes, vectorization_mode="sync", wrap=False)
        act = self.actor.snapshot()
        obs, _ = envs.reset(seed=self.env.env_seeds(self.global_rank, EVAL_STREAM, episodes))
        returns, lengths = np.zeros(episodes), np.zeros(episodes, int)
        running = np.ones(episodes, bool)
        while running.any():
            obs, reward, terminated, truncated, _ = envs.step(self.env_action(self.policy.mode(act(obs))))
            returns += reward * running
            lengths += running
            running &= ~(terminated | truncated)
        envs.close()
        return returns, lengths

    # ------------------------------------------------------------------ config checks and charts

    def check_terms(self, terms: Sequence[KLMeasure]) -> None:
        """The outputs a KL term reads must exist for this env and config: ``uniform`` only for
        discrete actions, ``reference`` only with a reference policy; the rollout's ``actions``
        are draws from ``old_policy``. klexp's runner calls this before building anything;
        fitting calls it again."""
        policy = policy_for(self.env.spaces()[1])
        has_reference = self.reference_checkpoint is not None or self.reference_from_env
        self._uniform_needed = False
        for term in terms:
            for role in ("p", "q"):
                key = getattr(term, role)
                if key == "uniform":
                    try:
                        policy.uniform(torch.zeros(()))
                    except KlexpError as error:
                        raise KlexpError(f"kl.{term.name}.{role}: {error}") from None
                    self._uniform_needed = True
                if key == "reference" and not has_reference:
                    raise KlexpError(f"kl.{term.name}.{role}: the term reads 'reference', which needs "
                                     "task.reference_checkpoint (or a stage that trains it) or "
                                     "task.reference_from_env")
            drawn = term.estimator if isinstance(term.estimator, OnSamples) else None
            source = SAMPLE_SOURCES.get(drawn.samples) if drawn is not None else None
            if drawn is not None and source is not None and drawn.samples_from != source:
                raise KlexpError(f"kl.{term.name}.samples_from: '{drawn.samples}' are draws from "
                                 f"'{source}'; set samples_from: {source} (got {drawn.samples_from!r})")

    def custom_scalars(self) -> dict[str, dict[str, list[str]]]:
        """One chart a quantity (``klexp.Dashboards`` leaves out those the run does not write):
        the return first, then each loss on its own scale (the value loss is ~100× the others)."""
        return {"PPO": {
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


def _minibatch_limit(rollout: int, norm_adv: bool, asked: int) -> str:
    if norm_adv:
        return (f"must be ≤ {rollout // 2}: advantage normalisation needs ≥ 2 states a minibatch and "
                f"a rollout has {rollout} (num_envs · num_steps), got {asked}")
    return f"must be ≤ the rollout size {rollout}, got {asked}"
