#!/usr/bin/env bash
# Re-runs the classification study and regenerates its table and plots in results/:
#   bash experiments/classification_kl/run.sh
# Runs go to outputs/studies/classification_kl/ (replaced on every re-run), two at a time.
set -euo pipefail
cd "$(dirname "$0")/../.."
KLEXP=${KLEXP:-.venv/bin/klexp}
runs=outputs/studies/classification_kl
rm -rf "$runs"
# the four losses, each experiment's own settings
"$KLEXP" -m experiment=classification,label_smoothing,distill,confidence_penalty seed=0,1,2 \
    launcher=joblib callbacks.progress_bar=null "hydra.sweep.dir=$runs"
# reference for distill: its student network (128 hidden units, no dropout) trained on labels alone
"$KLEXP" -m experiment=classification 'task.net.hidden=[128]' task.net.dropout=0 seed=0,1,2 \
    launcher=joblib callbacks.progress_bar=null "hydra.sweep.dir=$runs/small_network"
"$KLEXP" report "$runs" --metrics test/acc test/nll test/ece --tags val/nll val/ece \
    --out experiments/classification_kl/results
