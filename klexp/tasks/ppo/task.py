"""Proximal Policy Optimization (Schulman et al. 2017, "Proximal Policy Optimization Algorithms")
on Gymnasium vector environments, run by the Lightning Trainer.

One ``training_step`` is one PPO iteration, read top to bottom:

1. ``collect_rollout``: ``num_steps`` steps in each of the ``num_envs`` envs with the actor frozen
   as a numpy snapshot (acting at batch 4 is dominated by per-call dispatch), into the preallocated
   numpy buffers of the ``RolloutState`` (what one iteration hands to the next, created when
   training starts and checkpointed as one value). Gymnasium 1.x next-step autoreset: the step on
   which an env resets is no transition and is left out (``Rollout.autoreset``); truncated episodes
   bootstrap from the value of their final observation.
2. ``process_rollout``: one batched torch pass for the values, the old policy's parameters and
   log-probabilities (and the reference policy's); KL terms placed in the reward subtract
   ``β·k(s_t, a_t)`` from the rewards (``klexp.reward_penalty``); then GAE (``rollout.gae``).
3. ``update``: ``update_epochs`` epochs over ``num_minibatches`` shuffled minibatches of PPO's loss
   (``loss.ppo_loss``, on ``evaluate_actions(obs, actions) → (log_prob, entropy, value)`` as in
   Stable-Baselines3) plus the KL terms placed in the loss (``klexp.total_loss``); manual
   optimisation with gradient-norm clipping; the learning rate anneals linearly per iteration. The
   phase talks to its KL terms through ``klexp.UpdatePhase``: they measure themselves on the whole
   batch before and after it (controllers adapt to one of these), and a ``TargetKL`` term can stop
   it early.

Lightning carries the loop (the task's own train dataloader yields iteration indices), logging,
checkpoints, callbacks and strategies. Training scalars are written against environment steps
(``log_step``), every ``trainer.log_every_n_steps`` iterations and on the last. Beside this module:
the networks from config (``actor``), the action distribution of the env's action space
(``distributions``), what KL terms read (``outputs``), what is logged (``metrics``), the checks of
the config (``checks``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from klexp.data.step_indices import StepIndices
from klexp.lightning.internals import trainer_of
from klexp.lightning.logging import LOG_STEP_KEY, log_metrics, logs_now
from klexp.lightning.loss import Term, reward_penalty, terms_in_loss, total_loss
from klexp.lightning.phase import UpdatePhase
from klexp.lightning.term import kl_terms_of
from klexp.tasks.base import OptimizerFactory, SchedulerFactory, Task
from klexp.tasks.ppo.actor import (
    CHECKPOINT_POLICY_KEY,
    Actor,
    ActorFactory,
    CriticFactory,
    acting_function,
    critic_mlp,
    greedy_policy,
    load_policy,
    policy_spec,
    start_from_reference,
)
from klexp.tasks.ppo.checks import check_arguments, check_env, check_minibatch, check_networks, check_terms
from klexp.tasks.ppo.distributions import make_proba_distribution
from klexp.tasks.ppo.envs import VectorEnvFactory, greedy_episodes, within_bounds
from klexp.tasks.ppo.loss import LossSettings, MinibatchStats, phase_metrics, ppo_loss
from klexp.tasks.ppo.metrics import PPO_CHARTS, evaluation_metrics, exact_metrics, iteration_metrics
from klexp.tasks.ppo.outputs import PPO_OUTPUTS, SAMPLE_SOURCES, policy_outputs
from klexp.tasks.ppo.rollout import Batch, RolloutState, gae, penalised

CHECKPOINT_PROGRESS_KEY = "klexp_ppo_progress"


class ActionEvaluation(NamedTuple):
    """``evaluate_actions``' answer: Stable-Baselines3's three, and π_θ's parameters for KL terms."""

    log_prob: Tensor  # log π_θ(a|s)
    entropy: Tensor  # H(π_θ(·|s))
    value: Tensor  # V(s)
    params: Tensor  # π_θ's distribution parameters on the states


class PPOTask(Task):
    """PPO with GAE, advantage normalisation, the clipped surrogate, optional value clipping, an
    entropy bonus, gradient-norm clipping and linear learning-rate annealing (via ``lr_scheduler``).

    Args:
        env: the vector-env factory (``klexp/conf/env/*.yaml``).
        total_timesteps: env steps to train for, over all ranks: ``total_timesteps //
            (num_envs · num_steps · ranks)`` iterations.
        num_steps: steps per env per rollout.
        num_minibatches, update_epochs: each update phase makes ``update_epochs`` passes over the
            rollout in ``num_minibatches`` shuffled minibatches.
        gamma, gae_lambda: discount γ and GAE's λ.
        norm_adv, clip, clip_coef, clip_vloss, ent_coef, vf_coef: PPO's loss (``loss.LossSettings``).
        max_grad_norm: clip the global gradient norm (null: no clipping).
        actor, critic: network factories called as ``actor(obs_dim, action_dist)`` and
            ``critic(obs_dim)`` (Hydra ``_partial_: true``); by default separate 64-64 tanh MLPs
            with orthogonal init (``Actor``, ``critic_mlp``).
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
        actor: ActorFactory = Actor,
        critic: CriticFactory = critic_mlp,
        reference_checkpoint: str | None = None,
        reference_from_env: bool = False,
        init_from_reference: bool = False,
        exact_beta: float | None = None,
        eval_episodes: int = 10,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        check_arguments(env.num_envs, total_timesteps=total_timesteps, num_steps=num_steps,
                        num_minibatches=num_minibatches, update_epochs=update_epochs,
                        eval_episodes=eval_episodes, gamma=gamma, gae_lambda=gae_lambda, norm_adv=norm_adv,
                        clip_coef=clip_coef, ent_coef=ent_coef, vf_coef=vf_coef, max_grad_norm=max_grad_norm,
                        exact_beta=exact_beta, reference_checkpoint=reference_checkpoint,
                        reference_from_env=reference_from_env, init_from_reference=init_from_reference)
        self.env = env
        self.total_timesteps, self.num_steps = total_timesteps, num_steps
        self.rollout_size = env.num_envs * num_steps
        self.num_minibatches, self.update_epochs = num_minibatches, update_epochs
        self.gamma, self.gae_lambda = float(gamma), float(gae_lambda)
        self.loss_settings = LossSettings(clip=clip, clip_coef=float(clip_coef), clip_vloss=clip_vloss,
                                          ent_coef=float(ent_coef), vf_coef=float(vf_coef),
                                          norm_adv=norm_adv)
        self.max_grad_norm = max_grad_norm
        self.make_actor, self.make_critic = actor, critic
        self.reference_checkpoint, self.init_from_reference = reference_checkpoint, init_from_reference
        self.reference_from_env, self.exact_beta = reference_from_env, exact_beta
        self.eval_episodes = eval_episodes
        self.automatic_optimization = False
        observation_space, self.action_space = env.spaces()
        # the env's exactly solvable problem, when one is used
        self.problem = env.problem() if reference_from_env or exact_beta is not None else None
        check_env(env.id, observation_space, self.problem, reference_from_env, exact_beta)
        self.obs_dim = int(observation_space.shape[0])
        self.action_dist = make_proba_distribution(self.action_space)
        check_networks(actor, critic, self.obs_dim, self.action_dist)
        self.actor: nn.Module | None = None
        self.critic: nn.Module | None = None
        # π_ref's parameters per state: the env's logits, or a frozen actor (built with the networks)
        self.reference: Any = self.problem.reference_logits if reference_from_env else None
        self.reads_uniform = False  # whether a KL term reads the `uniform` output (set at fit start)
        self.rollout_state: RolloutState | None = None  # created when training starts
        self.resumed_progress: dict[str, Any] | None = None  # a checkpoint's RolloutState.state_dict

    # ------------------------------------------------------------------ building

    def configure_model(self) -> None:
        if self.actor is not None:
            return
        self.actor = self.make_actor(self.obs_dim, self.action_dist)
        self.critic = self.make_critic(self.obs_dim)
        if self.reference_checkpoint is not None:
            self.reference = load_policy(self.reference_checkpoint, self.obs_dim, self.action_dist,
                                         self.make_actor)
        if self.init_from_reference:
            start_from_reference(self.actor, self.reference)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_POLICY_KEY] = policy_spec(self.env.id, self.obs_dim, self.action_dist,
                                                        self.actor)
        if self.rollout_state is not None:
            checkpoint[CHECKPOINT_PROGRESS_KEY] = self.rollout_state.state_dict()
            checkpoint[LOG_STEP_KEY] = self.rollout_state.env_steps + 1

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.resumed_progress = checkpoint.get(CHECKPOINT_PROGRESS_KEY)

    def train_dataloader(self) -> StepIndices:
        """One index per iteration; under DDP every rank collects its own rollout, so the run's
        ``total_timesteps`` are shared among the ranks."""
        return StepIndices(max(1, self.total_timesteps // (self.rollout_size * self.ranks)))

    @property
    def ranks(self) -> int:
        """Processes collecting rollouts side by side (DDP world size; 1 outside a trainer)."""
        trainer = trainer_of(self)
        return trainer.world_size if trainer is not None else 1

    def test_dataloader(self) -> StepIndices:
        return StepIndices(1)

    def log_step(self) -> int:
        """The x-axis of every scalar: environment steps over all ranks (a resumed run that has
        nothing left to train tests at its checkpoint's)."""
        if self.rollout_state is not None:
            return self.rollout_state.env_steps
        return self.resumed_progress["env_steps"] if self.resumed_progress is not None else 0

    def on_fit_start(self) -> None:
        terms = kl_terms_of(self.trainer)
        self.check_terms(terms)
        self.reads_uniform = any("uniform" in (term.p, term.q) for term in terms)

    def on_train_start(self) -> None:
        self.rollout_state = RolloutState.start(self.env, self.global_rank, self.num_steps, self.obs_dim,
                                                self.action_dist, self.resumed_progress)

    def on_train_end(self) -> None:
        self.rollout_state.envs.close()

    # ------------------------------------------------------------------ one PPO iteration

    def training_step(self, iteration: int, batch_idx: int) -> None:
        state = self.rollout_state
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
            stats["ppo/kl_after_update"] = self.action_dist.kl(batch.old_params, params).mean().item()
            if batch.reference_params is not None:
                stats["ppo/kl_reference"] = self.action_dist.kl(params, batch.reference_params).mean().item()
            if phase.terms:
                phase.end(self.outputs(params, batch))
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

        state.note_if_solved(self.env.reward_threshold)
        state.unlogged_episodes += episodes
        if logs_now(self) or batch_idx + 1 == self.trainer.num_training_batches:
            log_metrics(self, {**iteration_metrics(stats, learning_rate, batch, state),
                               **self.exact_metrics("exact")}, stage="train")

    def collect_rollout(self) -> list[tuple[float, int]]:
        """Act ``num_steps`` times in every env; returns (return, length) of finished episodes."""
        state, act = self.rollout_state, acting_function(self.actor)
        buffer, episodes = state.buffer, []
        for step in range(self.num_steps):
            buffer.obs[step] = state.next_obs
            buffer.autoreset[step] = state.next_autoreset
            action = self.action_dist.sample(act(state.next_obs), state.rng)
            buffer.actions[step] = action
            state.next_obs, reward, terminated, truncated, info = state.envs.step(
                within_bounds(action, self.action_space))
            buffer.rewards[step], buffer.terminated[step], buffer.truncated[step] = (
                reward, terminated, truncated)
            state.next_autoreset = terminated | truncated
            if "episode" in info:  # RecordEpisodeStatistics, at the step an episode ends
                finished = info["_episode"]
                episodes += zip(info["episode"]["r"][finished].tolist(),
                                info["episode"]["l"][finished].tolist(), strict=True)
        buffer.next_obs[:] = state.next_obs
        state.env_steps += self.num_steps * self.env.num_envs * self.ranks
        return episodes

    @torch.no_grad()
    def process_rollout(self) -> Batch:
        """Values, the old (and reference) policy and GAE for the rollout, in one batched pass;
        KL terms placed in the reward lower the rewards first; autoreset steps are dropped."""
        buffer, steps, envs = self.rollout_state.buffer, self.num_steps, self.env.num_envs
        # the rollout lives in numpy (float32) on the host; learning, on the module's device and dtype
        device, floats = self.device, {"device": self.device, "dtype": self.dtype}
        b_obs = torch.from_numpy(buffer.obs.reshape(steps * envs, -1)).to(**floats)
        next_obs = torch.from_numpy(buffer.next_obs).to(**floats)
        values = self.critic(torch.cat([b_obs, next_obs])).view(steps + 1, envs).cpu().numpy()
        valid = torch.from_numpy(~buffer.autoreset.reshape(-1)).to(device)
        b_obs = b_obs[valid]
        b_actions = torch.from_numpy(buffer.actions.reshape(steps * envs, *self.action_dist.action_shape))
        b_actions = b_actions.to(**floats if b_actions.is_floating_point() else {"device": device})[valid]
        old_params = self.actor(b_obs)
        b = Batch(obs=b_obs, actions=b_actions, logprobs=self.action_dist.log_prob(old_params, b_actions),
                  old_params=old_params, advantages=b_obs.new_empty(0), returns=b_obs.new_empty(0),
                  values=torch.from_numpy(values[:-1].reshape(-1)).to(**floats)[valid],
                  reference_params=self.reference(b_obs) if self.reference is not None else None)
        rewards = penalised(buffer.rewards, reward_penalty(self, self.outputs(old_params, b)), valid)
        advantages, returns = gae(rewards, values, buffer.terminated, buffer.truncated,
                                  self.gamma, self.gae_lambda)
        b.advantages = torch.from_numpy(advantages.reshape(-1)).to(**floats)[valid]
        b.returns = torch.from_numpy(returns.reshape(-1)).to(**floats)[valid]
        return b

    def update(self, b: Batch, phase: UpdatePhase) -> dict[str, float]:
        """The update phase: epochs of minibatch steps on PPO's loss plus the KL terms."""
        optimizer, rng = self.optimizers(), self.rollout_state.rng
        stats: list[MinibatchStats] = []
        update_steps, stopped = 0, False
        for epoch in range(self.update_epochs):
            minibatches = np.array_split(rng.permutation(len(b.obs)), self.num_minibatches)
            for index, mb_inds in enumerate(minibatches):
                check_minibatch(len(mb_inds), len(b.obs), self.num_minibatches, self.loss_settings.norm_adv)
                mb = b.select(torch.from_numpy(mb_inds).to(self.device))
                newlogprob, entropy, newvalue, params = self.evaluate_actions(mb.obs, mb.actions)
                logratio = newlogprob - mb.logprobs
                loss_parts = ppo_loss(logratio, entropy, newvalue, mb.advantages, mb.returns, mb.values,
                                      self.loss_settings)
                outputs = self.outputs(params, mb) if phase.terms else {}
                loss = total_loss(self, {"loss": loss_parts.task, **outputs}, log=False)
                with torch.no_grad():
                    stats.append(MinibatchStats.measure(loss_parts, loss, logratio,
                                                        self.action_dist.kl(mb.old_params, params),
                                                        self.loss_settings.clip_coef))

                # A TargetKL term measured this minibatch: stop before stepping past its target
                stopped = phase.should_stop(epoch, index, "minibatch")
                if stopped:
                    break
                optimizer.zero_grad()
                self.manual_backward(loss)
                if self.max_grad_norm is not None:
                    self.clip_gradients(optimizer, self.max_grad_norm, "norm")
                optimizer.step()
                update_steps += 1
            if stopped or phase.should_stop(epoch, self.num_minibatches - 1, "epoch"):
                break

        return {**phase_metrics(stats, self.loss_settings.ent_coef, terms_in_loss(self.trainer)),
                "ppo/update_steps": float(update_steps)}

    def evaluate_actions(self, obs: Tensor, actions: Tensor) -> ActionEvaluation:
        """``log π_θ(a|s)``, ``H(π_θ(·|s))`` and ``V(s)`` for the states and actions of a minibatch
        (Stable-Baselines3's ``evaluate_actions``), and π_θ's parameters for the KL terms."""
        params = self.actor(obs)
        return ActionEvaluation(self.action_dist.log_prob(params, actions), self.action_dist.entropy(params),
                                self.critic(obs).view(-1), params)

    def outputs(self, params: Tensor, b: Batch) -> dict[str, Any]:
        """The distributions KL terms read, on the states ``b.obs`` (``klexp.tasks.ppo.outputs``)."""
        return policy_outputs(self.action_dist, params, b, self.reads_uniform)

    def exact_metrics(self, prefix: str) -> dict[str, float]:
        """``exact/*`` on an exactly solvable env (``klexp.tasks.ppo.metrics.exact_metrics``)."""
        return exact_metrics(self.problem, self.exact_beta, self.actor, prefix, self.dtype, self.device)

    # ------------------------------------------------------------------ evaluating

    def test_step(self, batch: int, batch_idx: int) -> None:
        returns, lengths = self.evaluate(self.eval_episodes)
        log_metrics(self, {**evaluation_metrics(returns, lengths), **self.exact_metrics("test/exact")},
                    batch_size=1, stage="test")

    @torch.inference_mode()
    def evaluate(self, episodes: int) -> tuple[np.ndarray, np.ndarray]:
        """Return and length of ``episodes`` greedy episodes (argmax action, or the Gaussian's
        mean), one per env copy, on the env's raw rewards."""
        act = greedy_policy(self.actor, self.action_dist, self.action_space)
        return greedy_episodes(self.env, act, self.global_rank, episodes)

    # ------------------------------------------------------------------ config checks and charts

    def check_terms(self, terms: Sequence[Term]) -> None:
        """The outputs each KL term reads exist for this env and config (``checks.check_terms``).
        klexp's runner calls this before building anything; fitting calls it again."""
        check_terms(terms, self.action_dist, self.reference_checkpoint is not None or self.reference_from_env)

    def custom_scalars(self) -> dict[str, dict[str, list[str]]]:
        """The PPO charts (``PPO_CHARTS``)."""
        return PPO_CHARTS

