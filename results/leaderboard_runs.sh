#!/usr/bin/env bash
# The runs behind results/leaderboard.csv, in the order they were made (2 CPU cores).
# Budget per pretraining run: a fixed 10,000-image subset of the train split x 5 epochs
# (50,000 images seen, batch 128); evaluators: k-NN and linear probe on a fixed
# class-balanced 10,000-image subset of the labelled train split, scored on the full test split.
set -euo pipefail
CIFAR="--dataset cifar10 --data-root ../shared/data/cifar10"
MNIST="--dataset mnist --data-root ../shared/data/mnist"
BUDGET="--train-subset 10000 --epochs 5 --eval-train-subset 10000 --out runs/leaderboard"
run() { echo "+ ssl-bench run $*"; ssl-bench run "$@" --resume; }

run --task random-init --backbone convnet $CIFAR $BUDGET
run --task jigsaw --backbone convnet $CIFAR $BUDGET
run --task random-init --backbone convnet $MNIST $BUDGET
run --task denoising --backbone convnet $MNIST $BUDGET
run --task split-brain --backbone convnet $CIFAR $BUDGET
run --task relative-patch --backbone convnet $CIFAR $BUDGET
run --task context-encoder --backbone convnet $CIFAR $BUDGET
run --task vae --backbone convnet $CIFAR $BUDGET
run --task random-init --backbone vit_tiny $CIFAR $BUDGET
run --task mae --backbone vit_tiny $CIFAR $BUDGET
run --task denoising --backbone convnet $CIFAR $BUDGET

ssl-bench leaderboard runs/leaderboard -o results/leaderboard.csv
