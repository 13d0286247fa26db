#!/usr/bin/env bash
# fp32 against bf16 pretraining on CIFAR-10 (results/precision.md): every pretext task at
# its tuned setting (results/tuned.yaml), the comparison's short budget, seed 0, once per
# precision; then the table. Two processes side by side, one thread each.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10}
export OMP_NUM_THREADS=1
BUDGET="--datasets cifar10 --data-root $DATA --train-subset 5000 --epochs 1 --warmup-epochs 0.1 \
--eval-train-subset 5000 --test-subset 2000 --seeds 0 --lowshot --no-layer-probes --no-step0 \
--tuned results/tuned.yaml --out runs/precision"
TASKS="denoising jigsaw context-encoder split-brain relative-patch vae rotation vq-vae \
autoencoder sparse-autoencoder contractive-autoencoder"
for precision in fp32 bf16; do
  ssl-bench sweep --tasks $TASKS --backbones convnet --precision $precision $BUDGET \
    > runs/precision-$precision.log 2>&1 &
done
wait
for precision in fp32 bf16; do
  ssl-bench sweep --tasks mae --backbones vit_tiny --precision $precision $BUDGET
done
python results/precision_table.py runs/precision > results/precision.md
