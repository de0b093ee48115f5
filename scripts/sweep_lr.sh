#!/bin/bash
# Learning-rate sweep at the 10-minute CPU budget (DiT 874 steps x 64, AR 660 steps x 32) on the
# 5,000-clip tiny world, all six runs at once (meant for a GPU; on two CPU cores run fewer at a time).
#
#   bash scripts/sweep_lr.sh CODEC_DIR TEXT_MODEL OUT
#   e.g. bash scripts/sweep_lr.sh src/duogen/assets/reference/codec src/duogen/assets/reference/ar/text.model runs/lr_sweep
#
# then score them all with the probes:
#   duogen compare --out OUT/compare --data OUT/data --n 2 --per-split 16 --steps-sweep 20 \
#     --ar a0=OUT/a0/run/final ... --diffusion d0=OUT/d0/run/final ...
set -euo pipefail
C=$1; TXT=$2; R=$3
mkdir -p "$R/logs"
python3 -m duogen data make shapes --out "$R/data" --seed 0 --overwrite > "$R/logs/data.log" 2>&1
run() { name=$1; kind=$2; shift 2
  python3 -m duogen train "$kind" --data "$R/data" --tokenizer "$C" --text "$TXT" --out "$R/$name/run" --seed 0 "$@" \
    > "$R/logs/$name.log" 2>&1 & }
run d0 diffusion denoiser=dit train.steps=874 train.lr=5e-4
run d1 diffusion denoiser=dit train.steps=874 train.lr=1e-3
run d2 diffusion denoiser=dit train.steps=874 train.lr=2e-3
run a0 ar train.steps=660 train.lr=1e-3
run a1 ar train.steps=660 train.lr=2e-3
run a2 ar train.steps=660 train.lr=3e-3
wait
