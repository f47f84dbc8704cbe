#!/usr/bin/env bash
# Re-runs the mode covering vs mode seeking study and regenerates its table and plots in results/:
#   bash experiments/mode_seeking/run.sh
# Runs go to outputs/studies/mode_seeking/ (replaced on every re-run), two at a time.
set -euo pipefail
cd "$(dirname "$0")/../.."
KLEXP=${KLEXP:-.venv/bin/klexp}
PYTHON=${PYTHON:-.venv/bin/python}
runs=outputs/studies/mode_seeking
results=experiments/mode_seeking/results
rm -rf "$runs"
# both directions of the one KL term, from four starts of q (wide or narrow, between the modes or
# near the lighter one), three seeds each
"$KLEXP" -m experiment=fit_gaussian kl.fit.direction=forward,reverse \
    task.init_mean=0,-1.5 task.init_scale=2,0.5 seed=0,1,2 \
    launcher=joblib callbacks.progress_bar=null 'hydra.sweep.dir='"$runs"
"$KLEXP" report "$runs" \
    --metrics val/mean val/scale val/kl_forward val/kl_reverse val/oracle_mean val/oracle_scale \
    val/oracle_kl_forward --tags fit/mean fit/scale fit/kl_forward fit/kl_reverse --out "$results"
"$PYTHON" experiments/mode_seeking/figure.py "$runs" "$results/fits.png"
