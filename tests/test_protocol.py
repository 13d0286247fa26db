"""The evaluation protocol: per-layer features and probes, low-shot subsets."""

from __future__ import annotations

import pytest
import torch

from conftest import RGB32
from eval.features import extract_features_and_stages
from eval.linear import LinearProbe
from eval.protocol import Protocol, lowshot_sizes
from eval.knn import KNNEvaluator
from eval.protocol import MIN_LOWSHOT_PER_CLASS, lowshot_key
from ssl_bench.build import build_task
from ssl_bench.core.subsets import balanced_subset_indices
from ssl_bench.core.errors import OptionError


def _images(n: int = 6) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)


@pytest.mark.parametrize("backbone, names, dims", [
    # convnet maps (32,32,32) (64,16,16) (128,8,8) (256,4,4) pooled to ≤ 4096 features
    ("convnet", ["stage1", "stage2", "stage3", "stage4"], [32 * 11 ** 2, 64 * 8 ** 2,
                                                           128 * 5 ** 2, 256 * 4 ** 2]),
    # vit_tiny at 32 px: patch 4, 8×8 tokens of width 192 from blocks 3, 6, 9, 12 → 4×4 grid
    ("vit_tiny", ["block3", "block6", "block9", "block12"], [192 * 4 ** 2] * 4),
])
def test_per_layer_features_have_expected_shapes(backbone, names, dims):
    task = build_task("random-init", backbone, RGB32, {}, {}).eval()
    features, stages = extract_features_and_stages(task.features_and_stages, _images(), 4)
    assert task.backbone.stage_names == names
    assert features.shape == (6, task.backbone.num_features) and features.dtype == torch.float32
    assert [tuple(s.shape) for s in stages] == [(6, d) for d in dims]


def test_one_pass_equals_separate_features():
    task = build_task("random-init", "convnet", RGB32, {}, {"width": 8}).eval()
    images = _images()
    features, _ = extract_features_and_stages(task.features_and_stages, images, 4)
    torch.testing.assert_close(features, task.features(images.float() / 255))


def test_lowshot_subset_is_class_balanced_and_deterministic():
    labels = torch.arange(10).repeat_interleave(100)[torch.randperm(1000)]
    a = balanced_subset_indices(labels, 50, seed=0, option="--lowshot 5pct")
    b = balanced_subset_indices(labels, 50, seed=0, option="--lowshot 5pct")
    assert torch.equal(a, b)
    assert torch.bincount(labels[a], minlength=10).tolist() == [5] * 10
    assert len(set(a.tolist())) == 50
    assert not torch.equal(a, balanced_subset_indices(labels, 50, seed=1))


def test_lowshot_sizes_are_percentages_of_the_train_split():
    assert lowshot_sizes([1, 10], 50_000, 10_000, 10) == {"1pct": 500, "10pct": 5000}
    assert lowshot_key(0.5) == "0.5pct"
    # too few labels per class for a validation split: left out, not an error
    assert lowshot_sizes([1], 1347, 1347, 10) == {}
    assert round(0.01 * 1347) < MIN_LOWSHOT_PER_CLASS * 10
    with pytest.raises(OptionError, match="--eval-train-subset"):
        lowshot_sizes([10], 50_000, 2_000, 10)
    with pytest.raises(OptionError, match="--lowshot 0"):
        lowshot_sizes([0], 50_000, 2_000, 10)


def _blobs(n_per_class: int, num_classes: int = 4, dim: int = 8, seed: int = 0):
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(0)) * 4
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    noise = torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed + 1))
    return centres[labels] + noise, labels


def test_protocol_reports_full_lowshot_and_per_layer_metrics():
    train_x, train_y = _blobs(100)
    test_x, test_y = _blobs(25, seed=1)
    noise = torch.randn_like(train_x), torch.randn_like(test_x)  # a layer without signal
    protocol = Protocol({"knn": KNNEvaluator(ks=(20,)), "linear": LinearProbe()},
                        lowshot={"10pct": 40}, layer_probe=LinearProbe())
    result = protocol.evaluate(train_x, train_y, test_x, test_y, 4, seed=0,
                               train_stages=[noise[0], train_x], test_stages=[noise[1], test_x],
                               stage_names=["noise", "signal"])
    metrics, layers = result.metrics, result.layers
    assert metrics["linear_top1"] > 95 and metrics["knn_top1_k20"] > 95
    assert metrics["linear_top1_10pct"] > 90 and "knn_top1_k20_10pct" in metrics
    assert [(r["name"], r["depth"], r["dims"]) for r in layers] == [("noise", 1, 8),
                                                                    ("signal", 2, 8)]
    assert layers[0]["linear_top1"] < 50 < layers[1]["linear_top1"]
    assert metrics["layer_best_linear_top1"] == metrics["layer_last_linear_top1"] \
        == layers[1]["linear_top1"]
    assert result.layer_best == "signal"


def test_a_code_is_scored_by_every_evaluator_with_all_labels_under_its_prefix():
    train_x, train_y = _blobs(100)
    test_x, test_y = _blobs(25, seed=1)
    evaluators = {"knn": KNNEvaluator(ks=(20,)), "linear": LinearProbe()}
    protocol = Protocol(evaluators, lowshot={"10pct": 40}, layer_probe=LinearProbe())
    code = protocol.evaluate_code(train_x, train_y, test_x, test_y, 4, seed=0)
    all_labels = Protocol(evaluators).evaluate(train_x, train_y, test_x, test_y, 4, seed=0)
    assert code == {f"code_{k}": v for k, v in all_labels.metrics.items()}  # no low-shot, no layers


def test_lowshot_of_every_labelled_image_reuses_the_all_label_scores(monkeypatch):
    """A low-shot percentage that covers the whole evaluation subset (10 % of CIFAR-10's
    train split with --eval-train-subset 5000) is scored once: its metrics are the
    all-label ones, which a second fit on the same images would repeat exactly."""
    train_x, train_y = _blobs(30)
    test_x, test_y = _blobs(10, seed=1)
    evaluators = {"knn": KNNEvaluator(ks=(5,)), "linear": LinearProbe()}
    every = balanced_subset_indices(train_y, 120, seed=0)
    for evaluator in evaluators.values():  # what the skipped fits would have given
        assert evaluator.evaluate(train_x[every], train_y[every], test_x, test_y, 4) == \
            evaluator.evaluate(train_x, train_y, test_x, test_y, 4)
    refitted = Protocol(evaluators, lowshot={"small": 40}).evaluate(
        train_x, train_y, test_x, test_y, 4, seed=0).metrics
    calls = []

    def counted(evaluate):
        def wrapper(features, *args, **kwargs):
            calls.append(len(features))
            return evaluate(features, *args, **kwargs)
        return wrapper

    for evaluator in evaluators.values():
        monkeypatch.setattr(evaluator, "evaluate", counted(evaluator.evaluate))
    metrics = Protocol(evaluators, lowshot={"all": 120, "small": 40}).evaluate(
        train_x, train_y, test_x, test_y, 4, seed=0).metrics
    assert calls == [120, 120, 40, 40]  # all labels, then the 40-image subset; never 120 again
    for name in ("linear_top1", "linear_l2", "knn_top1_k5"):
        assert metrics[f"{name}_all"] == metrics[name]
        assert metrics[f"{name}_small"] == refitted[f"{name}_small"]


def _choices(result) -> dict:
    """Everything the protocol chose: probe settings (all labels, low-shot, per layer),
    validation scores and the best layer."""
    def chosen(key: str) -> bool:
        return any(part in key for part in ("_l2", "_val_", "_lr", "_wd"))

    picked = {k: v for k, v in result.metrics.items() if chosen(k)}
    assert {"linear_l2", "linear_l2_20pct"} <= set(picked)
    picked["layers"] = [{k: v for k, v in r.items() if chosen(k)} for r in result.layers]
    return {**picked, "layer_best": result.layer_best}


def test_shuffled_test_labels_change_no_choice():
    """The test split takes part in no choice: with the test labels permuted, every
    setting and the chosen layer stay the same, while test accuracy collapses."""
    train_x, train_y = _blobs(60)
    test_x, test_y = _blobs(25, seed=1)
    weak = train_x[:, :2] + 3 * torch.randn(len(train_x), 2), test_x[:, :2] + 3 * torch.randn(
        len(test_x), 2)  # a weaker layer, so the layer choice is not trivial
    protocol = Protocol({"knn": KNNEvaluator(ks=(20,)), "linear": LinearProbe()},
                        lowshot={"20pct": 48}, layer_probe=LinearProbe())
    runs = [protocol.evaluate(train_x, train_y, test_x, labels, 4, seed=0,
                              train_stages=[train_x, weak[0]], test_stages=[test_x, weak[1]],
                              stage_names=["strong", "weak"])
            for labels in (test_y, test_y[torch.randperm(len(test_y))])]
    assert _choices(runs[0]) == _choices(runs[1])
    assert runs[0].layer_best == "strong"
    assert runs[1].metrics["linear_top1"] < runs[0].metrics["linear_top1"] - 40
