#!/usr/bin/env bash
# Re-runs the GAN divergence × data set study and regenerates its table and plots in results/:
#   bash experiments/gan_toys/run.sh
# 8 divergences × 2 data sets × 5 seeds = 80 runs, two at a time, into outputs/studies/gan_toys/
# (replaced on every re-run).
set -euo pipefail
cd "$(dirname "$0")/../.."
KLEXP=${KLEXP:-.venv/bin/klexp}
PYTHON=${PYTHON:-.venv/bin/python}
runs=outputs/studies/gan_toys
rm -rf "$runs"
"$KLEXP" -m experiment=gan divergence=kl,reverse_kl,js,gan,gan_ns,pearson,hellinger,wasserstein \
    data=ring,grid seed=0,1,2,3,4 launcher=joblib callbacks.progress_bar=null "hydra.sweep.dir=$runs"
"$KLEXP" report "$runs" --metrics test/modes test/high_quality test/reverse_kl_modes test/kl_modes \
    test/knn_kl --tags val/modes val/high_quality val/knn_kl --out experiments/gan_toys/results
"$PYTHON" experiments/gan_toys/anchors.py "$runs" --out experiments/gan_toys/results
