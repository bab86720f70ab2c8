#!/bin/sh
# Regenerates benchmarks/results/paper_settings_neural.{jsonl,md}: the invariant autoencoder with its
# default options on every paper setting, K = 2 and 3, n = 3000 per environment, one torch thread.
# Seed-major: every cell gets seeds 0-2 first, then the in-sample variant, then seeds 3-4,
# the headline cell (poly3, K = 2) last up to 10 seeds. Each fit is appended to the JSONL as it finishes,
# so the schedule can be cut short (the committed table states how many seeds each cell got).
set -e
PY=${PYTHON:-python}
OUT=benchmarks/results/paper_settings_neural.md
B="$PY benchmarks/neural_settings.py --threads 1 --n-per-env 3000 --out $OUT"
$B --skip-done --envs 2,3 --seeds 3 --methods invariant_autoencoder,tsls_all_env
$B --skip-done --settings poly3,linear --envs 2 --seeds 3 --methods invariant_autoencoder_insample
$B --skip-done --envs 2,3 --first-seed 3 --seeds 2 --methods invariant_autoencoder,tsls_all_env
$B --skip-done --settings poly3 --envs 2 --first-seed 5 --seeds 5 --methods invariant_autoencoder,tsls_all_env
$B --summarise-only --command "sh benchmarks/neural_settings_schedule.sh"
