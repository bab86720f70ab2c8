#!/bin/sh
# Regenerates benchmarks/results/paper_settings_neural.{jsonl,md}: the invariant autoencoder with its
# default options on every paper setting, n = 3000 per environment, one torch thread:
# 3 seeds of every setting at K = 2 and 3, then seeds 3-9 at K = 2 (10 in all).
# Each fit is appended to the JSONL as it finishes and --skip-done resumes a cut run, so the
# committed table states how many seeds each cell got. About 30 min + 25 min on the 2-core box.
set -e
PY=${PYTHON:-python}
OUT=benchmarks/results/paper_settings_neural.md
B="$PY benchmarks/neural_settings.py --threads 1 --n-per-env 3000 --out $OUT"
$B --skip-done --envs 2,3 --seeds 3 --methods invariant_autoencoder,tsls_all_env
$B --skip-done --envs 2 --first-seed 3 --seeds 7 --methods invariant_autoencoder,tsls_all_env
$B --summarise-only --command "sh benchmarks/neural_settings_schedule.sh"
