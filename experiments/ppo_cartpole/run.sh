#!/usr/bin/env bash
# Re-runs the PPO CartPole study and regenerates its table and plots in results/:
#   bash experiments/ppo_cartpole/run.sh
# Runs go to outputs/studies/ppo_cartpole/ (replaced on every re-run), two at a time.
set -euo pipefail
cd "$(dirname "$0")/../.."
KLEXP=${KLEXP:-.venv/bin/klexp}
runs=outputs/studies/ppo_cartpole
rm -rf "$runs"
# the four trust regions, all at the same update: lr 1e-3 and 10 epochs per rollout (the KL
# experiments' own values; `ppo` alone defaults to 2.5e-4 and 4 epochs, so the override changes it)
"$KLEXP" -m experiment=ppo,ppo_kl_fixed,ppo_kl_adaptive,ppo_target_kl \
    ++task.optimizer.lr=1e-3 ++task.update_epochs=10 seed=1,2,3 \
    launcher=joblib callbacks.progress_bar=null "hydra.sweep.dir=$runs"
# reference: clipped PPO at its own (CleanRL) defaults, lr 2.5e-4 and 4 epochs
"$KLEXP" -m experiment=ppo seed=1,2,3 \
    launcher=joblib callbacks.progress_bar=null "hydra.sweep.dir=$runs/ppo_defaults"
"$KLEXP" report "$runs" --metrics test/return_mean episode/return_recent episode/solved_at_step \
    mean:ppo/kl_exact mean:ppo/kl_k3 mean:ppo/kl_k1 mean:ppo/update_steps \
    --tags episode/return_recent ppo/kl_exact ppo/kl_k3 kl/old_policy_kl/weight \
    --out experiments/ppo_cartpole/results
