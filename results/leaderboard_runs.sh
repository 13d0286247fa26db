#!/usr/bin/env bash
# The runs behind results/leaderboard.csv (2 CPU cores). Each row's exact command is
# also in the CSV's `command` column.
# Budget per pretraining run: a fixed 10,000-image subset of the train split x 5 epochs
# (50,000 images seen, batch 128, each task's default optimizer); evaluators: k-NN and
# linear probe on a fixed class-balanced 10,000-image subset of the labelled train split,
# scored on the full test split.
# The CIFAR-10 pretext-task rows were made with --overwrite: they replaced a first pass
# whose held-out pretext metrics had used the first 2,048 test images (two classes only,
# as the ImageFolder test split is sorted by class); the baselines and MNIST rows have no
# such dependence and kept their first-pass runs (--resume).
set -euo pipefail
CIFAR="--dataset cifar10 --data-root ../shared/data/cifar10"
MNIST="--dataset mnist --data-root ../shared/data/mnist"
BUDGET="--train-subset 10000 --epochs 5 --eval-train-subset 10000 --out runs/leaderboard"

ssl-bench run --task random-init --backbone convnet $CIFAR $BUDGET --resume
ssl-bench run --task random-init --backbone convnet $MNIST $BUDGET --resume
ssl-bench run --task denoising --backbone convnet $MNIST $BUDGET --resume
ssl-bench run --task random-init --backbone vit_tiny $CIFAR $BUDGET --resume
for spec in "jigsaw convnet" "split-brain convnet" "relative-patch convnet" \
            "context-encoder convnet" "vae convnet" "denoising convnet" "mae vit_tiny"; do
  set -- $spec
  ssl-bench run --task "$1" --backbone "$2" $CIFAR $BUDGET --overwrite
done

ssl-bench leaderboard runs/leaderboard -o results/leaderboard.csv
