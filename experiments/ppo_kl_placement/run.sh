#!/usr/bin/env bash
# Re-runs the KL-placement study (estimator × placement of KL(π_θ ‖ π_ref) in PPO) and regenerates
# its tables and plots in results/:
#   bash experiments/ppo_kl_placement/run.sh
# Runs go to outputs/studies/ppo_kl_placement/ (replaced on every re-run), two at a time.
set -euo pipefail
cd "$(dirname "$0")/../.."
KLEXP=${KLEXP:-.venv/bin/klexp}
PYTHON=${PYTHON:-.venv/bin/python}
study=experiments/ppo_kl_placement
runs=outputs/studies/ppo_kl_placement
rm -rf "$runs"

sweep() {  # sweep <sweep dir> <overrides...>: every combination × seeds 0, 1, 2, two jobs at a time
    local dir=$1
    shift
    "$KLEXP" -m "$@" seed=0,1,2 launcher=joblib callbacks.progress_bar=null "hydra.sweep.dir=$dir"
}
# the 12 cells; the KL term's defaults are estimator=analytic, placement=loss, importance_weight=true
reward="kl.reference_kl.placement=reward kl.reference_kl.estimator=k1,k2,k3,analytic"
loss="kl.reference_kl.placement=loss kl.reference_kl.importance_weight=false kl.reference_kl.estimator=k1,k2,k3"
loss_rho="kl.reference_kl.placement=loss kl.reference_kl.importance_weight=true kl.reference_kl.estimator=k1,k2,k3,analytic"
both="kl=[reference_kl,reference_kl_reward]"

# 1. The token env (klexp/TokenSequence-v0, exact J* − J), β = 0.1 and 0.3, 50k env steps per run
tokens="experiment=ppo_tokens task.total_timesteps=50000 kl.reference_kl.weight=0.1,0.3"
for cell in reward loss loss_rho both; do
    # shellcheck disable=SC2086  # the cell's overrides are words
    sweep "$runs/tokens/$cell" $tokens ${!cell}
done

# 1b. A longer budget for the plainest contrast, the same exact per-state KL in the loss alone
# (partial gradient) or in the loss and the reward (full gradient): β = 0.1, 200k env steps
sweep "$runs/tokens_long" experiment=ppo_tokens task.total_timesteps=200000 kl.reference_kl.weight=0.1 \
    'kl=[reference_kl],[reference_kl,reference_kl_reward]'

# 2. CartPole-v1: fine-tuning from one frozen PPO policy (100k steps of `ppo`, trained once) under a
# fixed β = 0.1 (the proportional controller of `ppo_ref_kl` switched off), 100k env steps per run
"$KLEXP" experiment=ppo task.total_timesteps=100000 seed=0 callbacks.progress_bar=null \
    "hydra.run.dir=$runs/reference"
cartpole="experiment=ppo_ref_kl stages=null task.reference_checkpoint=$runs/reference/checkpoints/last.ckpt
kl.reference_kl.schedule=null kl.reference_kl.weight=0.1 task.total_timesteps=100000"
for cell in reward loss loss_rho both; do
    # shellcheck disable=SC2086
    sweep "$runs/cartpole/$cell" $cartpole ${!cell}
done

# 3. Where each cell's expected gradient leads (tabular, exact), then the tables and plots
"$PYTHON" $study/fixed_points.py --out $study/results
"$PYTHON" $study/table.py --tokens "$runs/tokens" --tokens-long "$runs/tokens_long" \
    --cartpole "$runs/cartpole" --fixed-points $study/results/fixed_points.csv --out $study/results
