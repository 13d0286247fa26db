"""Shared fixtures: tiny data specs, real-data locations, a task builder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_bench.build import build_task
from ssl_bench.core.spec import DataSpec
from ssl_bench.core.errors import IncompatibleError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR10_ROOT = SHARED_DATA / "cifar10"
MNIST_ROOT = SHARED_DATA / "mnist"

needs_cifar10 = pytest.mark.skipif(not (CIFAR10_ROOT / "train").is_dir(),
                                   reason=f"real CIFAR-10 copy not found at {CIFAR10_ROOT}")
needs_mnist = pytest.mark.skipif(not (MNIST_ROOT / "MNIST" / "raw").is_dir(),
                                 reason=f"real MNIST copy not found at {MNIST_ROOT}")

RGB32 = DataSpec("rgb32", channels=3, image_size=32, mean=(0.5, 0.5, 0.5),
                 std=(0.25, 0.25, 0.25), hflip=True)
GRAY28 = DataSpec("gray28", channels=1, image_size=28, mean=(0.13,), std=(0.3,), hflip=False)


def build_small_task(task: str, spec: DataSpec, **task_options):
    """The task on a tiny convnet (width 8), or on vit_tiny when the task needs a ViT."""
    try:
        return build_task(task, "convnet", spec, task_options, {"width": 8})
    except IncompatibleError as exc:
        if "VIT" not in str(exc).upper():
            raise
        return build_task(task, "vit_tiny", spec, task_options)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def smooth_images(n: int, spec: DataSpec, seed: int = 0) -> torch.Tensor:
    """Natural-ish images ``(n, C, S, S)`` in [0, 1]: upsampled 4×4 noise (no
    rotational symmetry, smooth enough for a decoder to learn quickly)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, spec.channels, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=spec.image_size, mode="bilinear",
                                           align_corners=False)


def digits_random_init_features() -> dict:
    """Fixed real features for probe checks: the pooled output and the deepest stage
    (pooled to ≤ 4096 dims) of a seed-0 random-init convnet on scikit-learn's digits
    (1,347 train and 450 test images, 10 classes)."""
    from eval.features import extract_features_and_stages
    from ssl_bench.datasets import load_dataset

    data = load_dataset("digits")
    torch.manual_seed(0)
    task = build_task("random-init", "convnet", data.spec()).eval()
    (train, train_stages), (test, test_stages) = (
        extract_features_and_stages(task.features_and_stages, images)
        for images in (data.train_images, data.test_images))
    return {"pooled": (train, test), "stage": (train_stages[-1], test_stages[-1]),
            "train_labels": data.train_labels, "test_labels": data.test_labels}


def sklearn_reference(features, labels, l2):
    """scikit-learn's L-BFGS logistic regression of the same objective, in float64, run
    to a tight tolerance: C = 1 / (λ N) turns its summed loss into our mean loss."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0 / (l2 * len(features)), tol=1e-10, max_iter=100_000)
    return model.fit(features.double().numpy(), labels.numpy())
