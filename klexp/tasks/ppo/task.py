"""Proximal Policy Optimization (Schulman et al. 2017, "Proximal Policy Optimization Algorithms")
on Gymnasium vector environments, run by the Lightning Trainer.

One ``training_step`` is one PPO iteration, read top to bottom:

1. ``collect_rollout``: ``num_steps`` steps in each of the ``num_envs`` envs with the actor frozen
   as a numpy snapshot (acting at batch 4 is dominated by per-call dispatch), into preallocated
   numpy buffers. Gymnasium 1.x next-step autoreset: the step on which an env resets is no
   transition and is left out (``Rollout.autoreset``); truncated episodes bootstrap from the value
   of their final observation.
2. ``process_rollout``: one batched torch pass for the values, the old policy's parameters and
   log-probabilities (and the reference policy's), then GAE (``rollout.gae``).
3. ``update``: ``update_epochs`` epochs over ``num_minibatches`` shuffled minibatches of the
   clipped surrogate ``L^CLIP`` (eq. 7; ``clip=false`` gives the unclipped ``ratio · A``), the value
   loss, the entropy bonus, plus ``Σ term(outputs)`` over the KL terms in the config; manual
   optimisation with gradient-norm clipping; the learning rate anneals linearly per iteration.

Lightning carries the loop (the task's own train dataloader yields iteration indices), logging,
checkpoints, callbacks and strategies. Statistics are gathered per minibatch as tensors and logged
once per logged iteration (every ``trainer.log_every_n_steps``).

Outputs for KL terms (``conf/kl/*.yaml``), on the minibatch states:

* ``policy``     — ``π_θ(·|s)``, with gradient;
* ``old_policy`` — ``π_old(·|s)``, the policy that collected the rollout (``KL(old_policy ‖ policy)``
  is the PPO paper's penalty, fixed β or adaptive β, sec. 4);
* ``reference``  — ``π_ref(·|s)``, a frozen policy from ``reference_checkpoint`` (``KL(policy ‖
  reference)`` as in KL-regularised fine-tuning, Ziegler et al. 2019);
* ``uniform``    — the uniform policy over discrete actions (``KL(policy ‖ uniform) = log K − H``,
  the entropy bonus as a KL: the same gradient as ``−H``);
* ``actions``    — the rollout's actions, draws from ``π_old`` for Monte-Carlo estimators.

After each update phase every KL term also measures itself on the whole batch with the final
``π_θ`` (``KLTerm.after_update``); a controller adapts to that value, as the PPO paper's rule does.
A ``TargetKL`` term stops the update phase early once the KL it measures exceeds its target.

Measured every minibatch whatever the config, logged as mean and max over the update phase:
``ppo/kl_k1`` and ``ppo/kl_k3`` (Schulman's estimators of ``KL(π_old ‖ π_θ)`` from the log-ratio of
the rollout's actions, http://joschu.net/blog/kl-approx.html) and ``ppo/kl_exact`` (the closed form
on the batch states), so the estimators can be compared with the truth.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from klexp import core as divergences
from klexp.errors import ConfigValueError, KlexpError, require, require_non_negative, require_positive_int
from klexp.lightning.logging import logs_now
from klexp.lightning.loss import total_loss
from klexp.lightning.phase import UpdatePhase
from klexp.lightning.term import KLTerm, kl_terms_of
from klexp.tasks.base import OptimizerFactory, SchedulerFactory, Task
from klexp.tasks.ppo.envs import (
    ACTION_STREAM,
    EVAL_STREAM,
    TRAIN_STREAM,
    VectorEnvFactory,
    episode_statistics,
)
from klexp.tasks.ppo.policies import CHECKPOINT_POLICY_KEY, Actor, load_policy, orthogonal_mlp, policy_for
from klexp.tasks.ppo.rollout import Rollout, gae

CHECKPOINT_PROGRESS_KEY = "klexp_ppo_progress"
PPO_OUTPUTS = frozenset({"policy", "old_policy", "reference", "uniform", "actions"})


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
        norm_adv: normalise advantages per minibatch.
        clip: use the clipped surrogate ``min(r·A, clip(r, 1 − ε, 1 + ε)·A)``; false gives ``r·A``
            (then a KL term is the trust region, as in the paper's KL-penalty variant).
        clip_coef: ε.
        clip_vloss: clip the value update around the rollout's values by ``clip_coef``.
        ent_coef, vf_coef: weights of the entropy bonus and the value loss.
        max_grad_norm: clip the global gradient norm (null: no clipping).
        hidden, activation, init_log_std: separate actor and critic MLPs (orthogonal init) and the
            initial log-σ of a Gaussian policy.
        reference_checkpoint: a PPO checkpoint whose actor becomes the frozen ``reference`` policy.
        init_from_reference: start the actor from the reference's weights (fine-tuning, as in
            Ziegler et al. 2019, where ``KL(π_θ ‖ π_ref)`` starts at 0).
        eval_episodes: greedy episodes in the final evaluation (the test step).
    """

    output_names = PPO_OUTPUTS

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
        init_from_reference: bool = False,
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
            require_non_negative(key, value)
        if max_grad_norm is not None:
            require_non_negative("max_grad_norm", max_grad_norm)
        require(all(isinstance(h, int) and h > 0 for h in hidden), "hidden",
                "a list of positive layer widths", list(hidden))
        batch_size = env.num_envs * num_steps
        if total_timesteps < batch_size:
            raise ConfigValueError("total_timesteps", f"must be at least one rollout "
                                   f"(num_envs · num_steps = {batch_size}), got {total_timesteps}")
        if num_minibatches > batch_size:
            raise ConfigValueError("num_minibatches", f"must be ≤ the rollout size {batch_size}, "
                                   f"got {num_minibatches}")
        self.env = env
        self.total_timesteps, self.num_steps = total_timesteps, num_steps
        self.rollout_size = batch_size
        self.num_minibatches, self.update_epochs = num_minibatches, update_epochs
        self.gamma, self.gae_lambda, self.norm_adv = float(gamma), float(gae_lambda), norm_adv
        self.clip, self.clip_coef, self.clip_vloss = clip, float(clip_coef), clip_vloss
        self.ent_coef, self.vf_coef, self.max_grad_norm = float(ent_coef), float(vf_coef), max_grad_norm
        self.hidden, self.activation, self.init_log_std = list(hidden), activation, float(init_log_std)
        self.reference_checkpoint, self.init_from_reference = reference_checkpoint, init_from_reference
        self.eval_episodes = eval_episodes
        self.automatic_optimization = False
        self.actor: Actor | None = None
        self.critic: nn.Module | None = None
        self.reference: Actor | None = None
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
        if self.reference_checkpoint is not None:
            self.reference = load_policy(self.reference_checkpoint, self.obs_size, self.policy)
            if self.init_from_reference:
                try:
                    self.actor.load_state_dict(self.reference.state_dict())
                except RuntimeError:
                    raise KlexpError("task.init_from_reference: the reference network differs from "
                                     "this task's (task.hidden, task.activation)") from None
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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._progress = checkpoint.get(CHECKPOINT_PROGRESS_KEY)

    def train_dataloader(self) -> IterationIndices:
        """One index per iteration; under DDP every rank collects its own rollout, so the run's
        ``total_timesteps`` are shared among the ranks."""
        return IterationIndices(max(1, self.total_timesteps // (self.rollout_size * self.ranks)))

    @property
    def ranks(self) -> int:
        """Processes collecting rollouts side by side (DDP world size; 1 outside a trainer)."""
        return self._trainer.world_size if self._trainer is not None else 1

    def test_dataloader(self) -> IterationIndices:
        return IterationIndices(1)

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
            if phase.terms:
                phase.end(self.outputs(params, batch))
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

        self.note_if_solved()
        self.unlogged_episodes += episodes
        # Log only on the iterations the trainer writes (every trainer.log_every_n_steps), and the
        # last for the run's summary: in Lightning 2.6 each self.log call costs ~0.5 ms here.
        if logs_now(self) or batch_idx + 1 == self.trainer.num_training_batches:
            elapsed = time.perf_counter() - self.start_time
            metrics = {**stats, "ppo/learning_rate": learning_rate,
                       "ppo/explained_variance": explained_variance(batch.values, batch.returns),
                       "time/env_steps": float(self.env_steps), "time/sps": self.env_steps / elapsed,
                       **self.episode_metrics(self.unlogged_episodes)}
            self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
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
        """Values, GAE and the old (and reference) policy for the rollout, in one batched pass;
        the autoreset steps are dropped here."""
        buffer, steps, envs = self.buffer, self.num_steps, self.env.num_envs
        device = self.device  # the rollout lives in numpy on the host; learning, on the device
        obs = torch.from_numpy(buffer.obs.reshape(steps * envs, -1)).to(device)
        next_obs = torch.from_numpy(buffer.next_obs).to(device)
        values = self.critic(torch.cat([obs, next_obs])).view(steps + 1, envs).cpu().numpy()
        advantages, returns = gae(buffer.rewards, values, buffer.terminated, buffer.truncated,
                                  self.gamma, self.gae_lambda)

        valid = torch.from_numpy(~buffer.autoreset.reshape(-1)).to(device)
        obs = obs[valid]
        actions = torch.from_numpy(
            buffer.actions.reshape(steps * envs, *self.policy.action_shape)).to(device)[valid]
        old_params = self.actor(obs)
        return Batch(
            obs=obs,
            actions=actions,
            logprobs=self.policy.log_prob(old_params, actions),
            old_params=old_params,
            advantages=torch.from_numpy(advantages.reshape(-1)).to(device)[valid],
            returns=torch.from_numpy(returns.reshape(-1)).to(device)[valid],
            values=torch.from_numpy(values[:-1].reshape(-1)).to(device)[valid],
            reference_params=self.reference(obs) if self.reference is not None else None,
        )

    def update(self, b: Batch, phase: UpdatePhase) -> dict[str, float]:
        """The update phase: epochs of minibatch steps on the PPO loss plus the KL terms."""
        optimizer = self.optimizers()
        stats: list[Tensor] = []
        steps, stopped = 0, False
        for epoch in range(self.update_epochs):
            minibatches = np.array_split(self.rng.permutation(len(b.obs)), self.num_minibatches)
            for index, indices in enumerate(minibatches):
                mb = b.select(torch.from_numpy(indices).to(self.device))
                params = self.actor(mb.obs)
                newlogprob = self.policy.log_prob(params, mb.actions)
                entropy = self.policy.entropy(params)
                newvalue = self.critic(mb.obs).view(-1)
                logratio = newlogprob - mb.logprobs
                ratio = logratio.exp()

                mb_advantages = mb.advantages
                if self.norm_adv:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                # Policy loss: −min(r·A, clip(r, 1 − ε, 1 + ε)·A), or −r·A without clipping
                pg_loss1 = -mb_advantages * ratio
                if self.clip:
                    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - self.clip_coef, 1 + self.clip_coef)
                    pg_loss = torch.max(pg_loss1, pg_loss2).mean()
                else:
                    pg_loss = pg_loss1.mean()

                # Value loss, optionally clipped around the values the rollout was scored with
                if self.clip_vloss:
                    v_loss_unclipped = (newvalue - mb.returns).square()
                    v_clipped = mb.values + torch.clamp(newvalue - mb.values, -self.clip_coef, self.clip_coef)
                    v_loss_clipped = (v_clipped - mb.returns).square()
                    v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
                else:
                    v_loss = 0.5 * (newvalue - mb.returns).square().mean()

                entropy_loss = entropy.mean()
                task_loss = pg_loss - self.ent_coef * entropy_loss + self.vf_coef * v_loss
                outputs = self.outputs(params, mb) if phase.terms else {}
                loss = total_loss(self, {"loss": task_loss, **outputs}, log=False)

                with torch.no_grad():
                    # KL(π_old ‖ π_θ) three ways: k1 and k3 from the log-ratio of the rollout's
                    # actions (http://joschu.net/blog/kl-approx.html), and exactly on the states
                    kl_k1 = divergences.monte_carlo_terms(logratio, "k1").mean()
                    kl_k3 = divergences.monte_carlo_terms(logratio, "k3").mean()
                    kl_exact = self.policy.kl(mb.old_params, params).mean()
                    clipfrac = ((ratio - 1.0).abs() > self.clip_coef).float().mean()
                    stats.append(torch.stack([pg_loss, v_loss, entropy_loss, task_loss, loss,
                                              kl_k1, kl_k3, kl_exact, clipfrac]))

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

        table = torch.stack(stats)
        means, maxima = table.mean(0).tolist(), table.amax(0).tolist()
        pg_loss, v_loss, entropy_mean, task_loss, loss, kl_k1, kl_k3, kl_exact, clipfrac = means
        return {
            "loss/policy": pg_loss, "loss/value": v_loss, "loss/entropy": -self.ent_coef * entropy_mean,
            "loss/task": task_loss, "loss/total": loss, "ppo/entropy": entropy_mean,
            "ppo/kl_k1": kl_k1, "ppo/kl_k1_max": maxima[5],
            "ppo/kl_k3": kl_k3, "ppo/kl_k3_max": maxima[6],
            "ppo/kl_exact": kl_exact, "ppo/kl_exact_max": maxima[7],
            "ppo/clipfrac": clipfrac, "ppo/update_steps": float(steps),
        }

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
            metrics["episode/length"] = float(np.mean(lengths))
        recent = episode_statistics(self.envs).return_queue
        if recent:
            metrics["episode/return_recent"] = float(np.mean(recent))
        if self.solved_at is not None:
            metrics["episode/solved_at_step"] = float(self.solved_at)
        return metrics

    def test_step(self, batch: int, batch_idx: int) -> None:
        returns, lengths = self.evaluate(self.eval_episodes)
        self.log_dict({"test/return_mean": float(returns.mean()), "test/return_std": float(returns.std()),
                       "test/return_min": float(returns.min()), "test/length_mean": float(lengths.mean())},
                      batch_size=1, sync_dist=True)

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

    def check_terms(self, terms: Sequence[KLTerm]) -> None:
        """The outputs a KL term reads must exist for this env and config: ``uniform`` only for
        discrete actions, ``reference`` only with a reference policy. klexp's runner calls this
        before building anything; fitting calls it again."""
        policy = policy_for(self.env.spaces()[1])
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
                if key == "reference" and self.reference_checkpoint is None:
                    raise KlexpError(f"kl.{term.name}.{role}: the term reads 'reference', which needs "
                                     "task.reference_checkpoint (or a stage that trains it)")

    def custom_scalars(self) -> dict[str, dict[str, list[str]]]:
        return {"PPO": {
            "KL(π_old ‖ π_θ) estimators": [r"^ppo/kl_(k1|k3|exact)$", r"^ppo/kl_after_update$"],
            "KL maxima over the update phase": [r"^ppo/kl_(k1|k3|exact)_max$"],
            "episodic return": [r"^episode/return(_recent)?$"],
            "losses": [r"^loss/(policy|value|entropy)$"],
        }}


# ---------------------------------------------------------------------------------------------
# The batch, the iteration "data", and explained variance
# ---------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One rollout, flattened over (step, env), autoreset steps removed, as torch tensors."""

    obs: Tensor
    actions: Tensor
    logprobs: Tensor  # log π_old(a|s)
    old_params: Tensor  # π_old's parameters on obs
    advantages: Tensor
    returns: Tensor
    values: Tensor  # V(s) when the rollout was scored
    reference_params: Tensor | None

    def select(self, indices: Tensor) -> Batch:
        """The minibatch at ``indices``."""
        return Batch(self.obs[indices], self.actions[indices], self.logprobs[indices],
                     self.old_params[indices], self.advantages[indices], self.returns[indices],
                     self.values[indices],
                     None if self.reference_params is None else self.reference_params[indices])


class IterationIndices:
    """The task's "data": iteration indices 0 … n−1, one per training step. It saves its position
    in checkpoints, so a resumed run continues with the next iteration."""

    def __init__(self, n: int) -> None:
        self.n, self._start, self._next = n, 0, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        start, self._start = self._start, 0
        for index in range(start, self.n):
            self._next = index + 1
            yield index

    def state_dict(self) -> dict[str, int]:
        return {"next": self._next}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self._start = int(state["next"]) % self.n


def explained_variance(values: Tensor, returns: Tensor) -> float:
    """``1 − Var[returns − values] / Var[returns]``: 1 is a perfect critic, ≤ 0 no better than a
    constant (NaN when the returns do not vary)."""
    variance = returns.var().item()
    return float("nan") if variance == 0 else 1.0 - (returns - values).var().item() / variance


