#!/usr/bin/env bash
# Re-runs the sequence-distillation study and the GKD β plot; rewrites results/ and gkd_beta.*.
set -euo pipefail
cd "$(dirname "$0")/../.."
python experiments/distill_seq/gkd_beta.py --out experiments/distill_seq
python experiments/distill_seq/study.py --out experiments/distill_seq/results "$@"
