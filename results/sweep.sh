#!/usr/bin/env bash
# The CIFAR-10 sweep behind results/README.md: every pretext task, the random-init,
# supervised and pixels references, 3 seeds each, at a CPU budget (about an hour on
# 2 cores). The two sweeps run side by side, one CPU thread each. Re-running this
# script skips finished runs and resumes interrupted ones. For a GPU-scale benchmark
# raise --train-subset/--epochs and drop the --*-subset and --layer-dims limits.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10}
BUDGET="--datasets cifar10 --data-root $DATA --seeds 0 1 2 --train-subset 10000 --epochs 1 \
--warmup-epochs 0.1 --eval-train-subset 10000 --test-subset 5000 --layer-dims 2048 --out runs/sweep"
export OMP_NUM_THREADS=1
ssl-bench sweep --tasks pixels random-init supervised denoising context-encoder split-brain \
  relative-patch jigsaw vae --backbones convnet $BUDGET > runs/sweep-convnet.log 2>&1 &
ssl-bench sweep --tasks random-init mae --backbones vit_tiny $BUDGET > runs/sweep-vit.log 2>&1 &
wait
ssl-bench report runs/sweep -o results \
  --sweep-command "ssl-bench sweep --tasks pixels random-init supervised denoising context-encoder split-brain relative-patch jigsaw vae --backbones convnet $BUDGET" \
  --sweep-command "ssl-bench sweep --tasks random-init mae --backbones vit_tiny $BUDGET"
