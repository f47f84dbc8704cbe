"""Benchmark: klexp's PPO (inside the Lightning Trainer) against a plain single-file PyTorch PPO.

Both train PPO on CartPole-v1 with the same hyperparameters (4 envs × 128 steps, 4 minibatches ×
4 epochs, Adam 2.5e-4 annealed, γ 0.99, λ 0.95, clip 0.2, entropy 0.01, value 0.5, max grad norm
0.5, separate 64-64 tanh actor and critic, orthogonal init), the same Gymnasium 1.x handling
(``RecordEpisodeStatistics`` on the vector env, the autoreset step left out, truncation
bootstrapped) and one torch thread, for the same number of env steps.

``plain_ppo`` below is written the way the best-known single-file implementation (CleanRL's
``ppo.py``) is: an ``Agent`` whose ``get_action_and_value`` builds a ``Categorical`` each call, a
torch forward per env step, torch storage tensors, a TensorBoard scalar per finished episode and
per iteration, ``torch.optim.Adam`` with its defaults. klexp runs ``experiment=ppo`` through the
same runner as ``klexp experiment=ppo`` (logger, checkpoint and LR monitor on; progress bar off).

Reported per implementation (median over interleaved repeats, so drift in the load of this shared
machine hits both alike):

* training-loop SPS — env steps / wall seconds from the first rollout to the last update (klexp's
  ``time/sps``, the same measure in the plain loop);
* end-to-end CPU SPS — env steps / CPU seconds of the whole call (for klexp: config, Trainer
  set-up, training, checkpoint and the final greedy evaluation), robust to other processes.

Run: ``python experiments/benchmarks/bench_ppo.py [--total-timesteps 500000 --repeats 3 --seed 1]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from gymnasium.wrappers.vector import RecordEpisodeStatistics
from torch.distributions.categorical import Categorical
from torch.utils.tensorboard import SummaryWriter

from klexp.app.in_process import run_overrides

# ------------------------------------------------------------------------------------------------
# The plain single-file PPO (CleanRL style)
# ------------------------------------------------------------------------------------------------


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, envs: gym.vector.VectorEnv) -> None:
        super().__init__()
        obs_size = np.array(envs.single_observation_space.shape).prod()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_size, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_size, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, envs.single_action_space.n), std=0.01),
        )

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        logits = self.actor(x)
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


def plain_ppo(total_timesteps: int, seed: int, log_dir: str) -> dict[str, float]:
    """PPO on CartPole-v1, top to bottom; returns SPS and the mean return of the last 20 episodes."""
    num_envs, num_steps, num_minibatches, update_epochs = 4, 128, 4, 4
    learning_rate, gamma, gae_lambda = 2.5e-4, 0.99, 0.95
    clip_coef, ent_coef, vf_coef, max_grad_norm = 0.2, 0.01, 0.5, 0.5
    batch_size = num_envs * num_steps
    num_iterations = total_timesteps // batch_size

    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    writer = SummaryWriter(log_dir)

    envs = gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="sync")
    envs = RecordEpisodeStatistics(envs, buffer_length=20)
    agent = Agent(envs)
    optimizer = optim.Adam(agent.parameters(), lr=learning_rate, eps=1e-5)

    obs = torch.zeros((num_steps, num_envs, *envs.single_observation_space.shape))
    actions = torch.zeros((num_steps, num_envs), dtype=torch.long)
    logprobs = torch.zeros((num_steps, num_envs))
    rewards = torch.zeros((num_steps, num_envs))
    terminations = torch.zeros((num_steps, num_envs))
    truncations = torch.zeros((num_steps, num_envs))
    autoresets = torch.zeros((num_steps, num_envs), dtype=torch.bool)
    values = torch.zeros((num_steps, num_envs))

    global_step = 0
    start_time = time.time()
    next_obs, _ = envs.reset(seed=seed)
    next_obs = torch.Tensor(next_obs)
    next_autoreset = torch.zeros(num_envs, dtype=torch.bool)

    for iteration in range(1, num_iterations + 1):
        frac = 1.0 - (iteration - 1.0) / num_iterations
        optimizer.param_groups[0]["lr"] = frac * learning_rate

        for step in range(num_steps):
            global_step += num_envs
            obs[step] = next_obs
            autoresets[step] = next_autoreset
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob

            next_obs, reward, terminations_, truncations_, infos = envs.step(action.numpy())
            rewards[step] = torch.tensor(reward)
            terminations[step] = torch.Tensor(terminations_)
            truncations[step] = torch.Tensor(truncations_)
            # Gymnasium 1.x: the env resets on the next step, which is then no transition
            next_autoreset = torch.tensor(np.logical_or(terminations_, truncations_))
            next_obs = torch.Tensor(next_obs)
            if "episode" in infos:
                for i in np.flatnonzero(infos["_episode"]):
                    writer.add_scalar("charts/episodic_return", infos["episode"]["r"][i], global_step)
                    writer.add_scalar("charts/episodic_length", infos["episode"]["l"][i], global_step)

        # bootstrap value if not done; a truncated episode bootstraps from its final observation,
        # which is the next step's observation
        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            next_values = torch.cat([values[1:], next_value])
            advantages = torch.zeros_like(rewards)
            lastgaelam = 0
            for t in reversed(range(num_steps)):
                nextnonterminal = 1.0 - terminations[t]
                nextnondone = 1.0 - torch.maximum(terminations[t], truncations[t])
                delta = rewards[t] + gamma * next_values[t] * nextnonterminal - values[t]
                advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnondone * lastgaelam
            returns = advantages + values

        # flatten the batch, leaving out the autoreset steps
        valid = ~autoresets.reshape(-1)
        b_obs = obs.reshape((-1, *envs.single_observation_space.shape))[valid]
        b_logprobs = logprobs.reshape(-1)[valid]
        b_actions = actions.reshape(-1)[valid]
        b_advantages = advantages.reshape(-1)[valid]
        b_returns = returns.reshape(-1)[valid]
        b_values = values.reshape(-1)[valid]

        # Optimizing the policy and value network
        b_inds = np.arange(len(b_obs))
        clipfracs = []
        for _epoch in range(update_epochs):
            np.random.shuffle(b_inds)
            for mb_inds in np.array_split(b_inds, num_minibatches):
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                    b_obs[mb_inds], b_actions[mb_inds])
                logratio = newlogprob - b_logprobs[mb_inds]
                ratio = logratio.exp()

                with torch.no_grad():
                    # calculate approx_kl http://joschu.net/blog/kl-approx.html
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs += [((ratio - 1.0).abs() > clip_coef).float().mean().item()]

                mb_advantages = b_advantages[mb_inds]
                mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                # Policy loss
                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()

                # Value loss
                newvalue = newvalue.view(-1)
                v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                v_clipped = b_values[mb_inds] + torch.clamp(
                    newvalue - b_values[mb_inds], -clip_coef, clip_coef)
                v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()

                entropy_loss = entropy.mean()
                loss = pg_loss - ent_coef * entropy_loss + v_loss * vf_coef

                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
                optimizer.step()

        y_pred, y_true = b_values.numpy(), b_returns.numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy_loss.item(), global_step)
        writer.add_scalar("losses/old_approx_kl", old_approx_kl.item(), global_step)
        writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
        writer.add_scalar("losses/clipfrac", np.mean(clipfracs), global_step)
        writer.add_scalar("losses/explained_variance", explained_var, global_step)
        writer.add_scalar("charts/SPS", int(global_step / (time.time() - start_time)), global_step)

    sps = global_step / (time.time() - start_time)
    envs.close()
    writer.close()
    return {"sps": sps, "return_recent": float(np.mean(envs.return_queue))}


# ------------------------------------------------------------------------------------------------
# klexp's PPO, through the same runner as `klexp experiment=ppo`
# ------------------------------------------------------------------------------------------------


def klexp_ppo(total_timesteps: int, seed: int, run_dir: str) -> dict[str, float]:
    overrides = ["experiment=ppo", f"seed={seed}", f"task.total_timesteps={total_timesteps}",
                 "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
                 "trainer.enable_model_summary=false"]
    with contextlib.redirect_stdout(io.StringIO()):  # the runner's final table
        summary = run_overrides(overrides, run_dir)
    metrics = summary["metrics"]
    return {"sps": metrics["time/sps"], "return_recent": metrics["episode/return_recent"]}


# ------------------------------------------------------------------------------------------------


def timed(function, *args) -> dict[str, float]:
    cpu = time.process_time()
    result = function(*args)
    result["cpu_seconds"] = time.process_time() - cpu
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-timesteps", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the config's `threads: 1`; the same for both
    steps = args.total_timesteps // 512 * 512

    results: dict[str, list[dict[str, float]]] = {"plain": [], "klexp": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            order = ["plain", "klexp"] if repeat % 2 == 0 else ["klexp", "plain"]
            for name in order:
                out = str(Path(tmp) / f"{name}-{repeat}")
                if name == "plain":
                    result = timed(plain_ppo, args.total_timesteps, args.seed, out)
                else:
                    result = timed(klexp_ppo, args.total_timesteps, args.seed, out)
                results[name].append(result)
                print(f"[{repeat + 1}/{args.repeats}] {name:5s}: {result['sps']:7.0f} SPS (loop), "
                      f"{steps / result['cpu_seconds']:7.0f} SPS (end-to-end CPU), "
                      f"recent return {result['return_recent']:.1f}", file=sys.stderr, flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    loop = {name: median(name, "sps") for name in results}
    cpu = {name: steps / median(name, "cpu_seconds") for name in results}
    print(f"\nPPO on CartPole-v1, {steps:,} env steps, seed {args.seed}, "
          f"median of {args.repeats} interleaved repeats, 1 torch thread")
    print(f"{'':28s}{'plain PyTorch':>15s}{'klexp':>12s}{'ratio':>9s}")
    print(f"{'training-loop SPS (wall)':28s}{loop['plain']:15.0f}{loop['klexp']:12.0f}"
          f"{loop['klexp'] / loop['plain']:8.2f}×")
    print(f"{'end-to-end SPS (CPU time)':28s}{cpu['plain']:15.0f}{cpu['klexp']:12.0f}"
          f"{cpu['klexp'] / cpu['plain']:8.2f}×")
    ratio = loop["klexp"] / loop["plain"]
    print(f"target klexp ≥ 1.2× plain: {'met' if ratio >= 1.2 else 'NOT met'} ({ratio:.2f}×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
