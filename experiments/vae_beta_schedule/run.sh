#!/usr/bin/env bash
# Re-runs the VAE β × schedule study and regenerates its table and plots in results/:
#   bash experiments/vae_beta_schedule/run.sh
# Runs go to outputs/studies/vae_beta_schedule/ (replaced on every re-run), two at a time.
set -euo pipefail
cd "$(dirname "$0")/../.."
KLEXP=${KLEXP:-.venv/bin/klexp}
runs=outputs/studies/vae_beta_schedule
rm -rf "$runs"
# schedule = experiment (vae: constant, vae_annealed: linear warm-up, vae_cyclical: cyclical);
# β = kl.prior.weight, which each schedule multiplies
"$KLEXP" -m experiment=vae,vae_annealed,vae_cyclical kl.prior.weight=0.5,1,4 seed=0,1,2 \
    launcher=joblib callbacks.progress_bar=null "hydra.sweep.dir=$runs"
"$KLEXP" report "$runs" --metrics test/elbo test/iw_nll test/recon_nll test/kl test/active_units \
    --tags val/elbo val/kl val/active_units kl/prior/weight --out experiments/vae_beta_schedule/results
