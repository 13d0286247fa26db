"""Tests of the linear probe, its solver and its validation split."""

import pytest
import torch
import torch.nn.functional as F

from eval.features import extract_features, extract_features_and_stages, stage_grid
from eval.linear import LinearProbe, Standardizer, fit_logistic_regression, validation_split
from ssl_bench.core.errors import DataError, OptionError, SslBenchError
from ssl_bench.core.registry import EVALUATORS

from conftest import digits_random_init_features, sklearn_reference

METRICS = {"linear_top1", "linear_top5", "linear_val_top1", "linear_l2"}


def blobs(num_classes, per_class, dim=32, spread=1.0, seed=0, scale=1.0):
    """Gaussian blobs around centres that lie ~14 standard deviations apart."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123)) * 10
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return scale * features, labels


def test_separable_blobs_give_100_percent():
    train, train_labels = blobs(10, 40, seed=0)
    test, test_labels = blobs(10, 20, seed=1)
    metrics = LinearProbe().evaluate(train, train_labels, test, test_labels, 10)
    assert set(metrics) == METRICS
    assert metrics["linear_top1"] == 100.0 and metrics["linear_val_top1"] == 100.0


@pytest.mark.parametrize("scale", [1e-6, 1e4])
def test_metrics_do_not_depend_on_feature_scale(scale):
    # Overlapping blobs, so a probe whose standardisation swamped tiny features
    # would score lower than a converged one.
    train, train_labels = blobs(10, 40, spread=20.0, seed=0)
    test, test_labels = blobs(10, 40, spread=20.0, seed=1)
    reference = LinearProbe().evaluate(train, train_labels, test, test_labels, 10)
    scaled = LinearProbe().evaluate(scale * train, train_labels, scale * test, test_labels, 10)
    assert reference["linear_top1"] < 95.0
    assert scaled["linear_l2"] == reference["linear_l2"]
    assert scaled["linear_top1"] == pytest.approx(reference["linear_top1"], abs=0.5)


def test_standardizer_uses_the_fitted_features_statistics():
    g = torch.Generator().manual_seed(0)
    features = 50.0 + torch.randn(1000, 8, generator=g) * torch.arange(1.0, 9.0)
    features[:, 3] = 7.0  # a dead unit
    z = Standardizer(features)(features)
    live = [i for i in range(8) if i != 3]
    assert torch.allclose(z[:, live].mean(dim=0), torch.zeros(7), atol=1e-4)
    assert torch.allclose(z[:, live].std(dim=0, unbiased=False), torch.ones(7), atol=1e-3)
    assert torch.equal(z[:, 3], torch.zeros(1000))
    other = Standardizer(features)(features[:10] + 1.0)  # other rows: the same μ and σ
    assert torch.allclose(other[:, 0], z[:10, 0] + 1.0 / features[:, 0].std(unbiased=False),
                          atol=1e-3)


def test_solver_matches_scikit_learn():
    train, labels = blobs(4, 50, spread=12.0, seed=0)
    z = Standardizer(train)(train)
    weight, bias, _ = fit_logistic_regression(z, labels, 4, 0.01, tolerance=1e-6)
    reference = sklearn_reference(z, labels, 0.01)
    # multinomial logits are defined up to a shared shift per feature: compare centred weights
    ours = weight - weight.mean(dim=0)
    theirs = torch.from_numpy(reference.coef_).float()
    assert torch.allclose(ours, theirs - theirs.mean(dim=0), atol=2e-3)
    assert torch.equal(F.linear(z, weight, bias).argmax(1),
                       torch.from_numpy(reference.predict(z.double().numpy())))


def test_warm_start_changes_the_cost_not_the_answer():
    train, labels = blobs(5, 40, spread=9.0, seed=0)
    z = Standardizer(train)(train)
    cold, cold_bias, _ = fit_logistic_regression(z, labels, 5, 0.05, tolerance=1e-6)
    start = (torch.randn(5, 32), torch.randn(5))
    warm, warm_bias, _ = fit_logistic_regression(z, labels, 5, 0.05, start, tolerance=1e-6)
    assert torch.allclose(F.softmax(F.linear(z, cold, cold_bias), 1),
                          F.softmax(F.linear(z, warm, warm_bias), 1), atol=1e-3)


def test_random_labels_give_chance():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(2000, 32, generator=g), torch.randn(2000, 32, generator=g)
    metrics = LinearProbe().evaluate(train, torch.randint(0, 10, (2000,), generator=g), test,
                                     torch.randint(0, 10, (2000,), generator=g), 10)
    # Chance is 10 % top-1 and 50 % top-5; ±4 points is over 5 standard errors.
    assert 6.0 < metrics["linear_top1"] < 14.0
    assert 46.0 < metrics["linear_top5"] < 54.0


def test_top5_at_least_top1_and_top_c_for_few_classes():
    train, train_labels = blobs(8, 30, spread=12.0, seed=0)
    test, test_labels = blobs(8, 30, spread=12.0, seed=1)
    metrics = LinearProbe().evaluate(train, train_labels, test, test_labels, 8)
    assert metrics["linear_top5"] >= metrics["linear_top1"]
    assert metrics["linear_top1"] < 100.0  # overlapping blobs, so the check above can fail

    three, three_labels = blobs(3, 30, spread=12.0, seed=2)
    metrics = LinearProbe().evaluate(three, three_labels, three, three_labels, 3)
    assert metrics["linear_top5"] == 100.0


def test_deterministic_for_a_seed():
    train, train_labels = blobs(5, 40, spread=8.0, seed=0)
    test, test_labels = blobs(5, 40, spread=8.0, seed=1)
    probe = LinearProbe()
    first = probe.evaluate(train, train_labels, test, test_labels, 5, seed=3)
    torch.manual_seed(12345)  # the global RNG state must not matter
    assert probe.evaluate(train, train_labels, test, test_labels, 5, seed=3) == first


def test_selection_never_sees_test_data(monkeypatch):
    train, train_labels = blobs(5, 60, spread=9.0, seed=0)
    test, test_labels = blobs(5, 60, spread=9.0, seed=1)
    probe = LinearProbe(l2s=(10.0, 0.1, 1e-4))
    honest = probe.evaluate(train, train_labels, test, test_labels, 5)

    # Test labels that reward the worst classifier, and test features that are noise.
    adversarial = probe.evaluate(train, train_labels, torch.randn_like(test) * 50,
                                 (test_labels + 1) % 5, 5)
    for key in ("linear_l2", "linear_val_top1"):
        assert adversarial[key] == honest[key]
    assert adversarial["linear_top1"] != honest["linear_top1"]

    # The grid is fitted on train rows outside the validation part; only the final
    # fit uses the whole train split; test rows are never fitted on.
    fitted = []
    original_fit = LinearProbe.fit

    def spy(self, features, labels, *args, **kwargs):
        fitted.append(features.clone())
        return original_fit(self, features, labels, *args, **kwargs)

    monkeypatch.setattr(LinearProbe, "fit", spy)
    probe.evaluate(train, train_labels, test, test_labels, 5)
    fit_idx, _ = validation_split(train_labels, probe.val_fraction, 0)
    assert len(fitted) == 2
    assert torch.equal(fitted[0], train[fit_idx])
    assert torch.equal(fitted[1], train)


def test_validation_split_is_stratified_disjoint_and_seeded():
    labels = torch.arange(4).repeat_interleave(torch.tensor([100, 50, 30, 1]))
    train_idx, val_idx = validation_split(labels, 0.1, seed=0)

    assert torch.equal(torch.cat([train_idx, val_idx]).sort().values, torch.arange(len(labels)))
    assert torch.bincount(labels[val_idx], minlength=4).tolist() == [10, 5, 3, 0]
    again = validation_split(labels, 0.1, seed=0)
    assert torch.equal(again[0], train_idx) and torch.equal(again[1], val_idx)
    assert not torch.equal(validation_split(labels, 0.1, seed=1)[1], val_idx)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_validation_split_rejects_bad_fractions(fraction):
    with pytest.raises(OptionError):
        validation_split(torch.zeros(50, dtype=torch.long), fraction, 0)


def test_too_few_images_for_a_validation_split():
    with pytest.raises(DataError, match="too few"):
        validation_split(torch.arange(5), 0.1, 0)


def test_non_finite_features_raise():
    train, train_labels = blobs(3, 20)
    train[4, 0] = float("nan")
    with pytest.raises(SslBenchError, match="diverged"):
        LinearProbe().evaluate(train, train_labels, train[:5].nan_to_num(), train_labels[:5], 3)


@pytest.mark.parametrize("options", [
    {"l2s": ()}, {"l2s": (0.1, -1.0)}, {"l2s": (float("inf"),)}, {"tolerance": 0.0},
    {"max_iter": 0}, {"val_fraction": 0.0}, {"val_fraction": 1.0}, {"l2s": ("strong",)},
    {"max_iter": "many"},
])
def test_bad_options_raise(options):
    with pytest.raises(OptionError):
        LinearProbe(**options)


def test_registered_and_constructible_without_arguments():
    probe = EVALUATORS.get("linear")()
    assert probe.name == "linear" and probe.l2s == (1.0, 0.1, 0.01, 1e-3, 1e-4)
    assert probe.val_fraction == 0.1
    assert EVALUATORS.get("linear")(l2s=0.1).l2s == (0.1,)


# ---------------------------------------------------------------- feature extraction (probe inputs)


def uint8_images(n=10, channels=3, size=8):
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def test_extract_features_batches_in_unit_range_without_grad():
    images = uint8_images()
    seen = []

    def encode(x):
        seen.append((len(x), x.dtype, torch.is_grad_enabled(), float(x.min()), float(x.max())))
        return x.mean(dim=(2, 3))

    features = extract_features(encode, images, batch_size=4)
    assert [s[0] for s in seen] == [4, 4, 2]
    assert all(dtype == torch.float32 and not grad and 0.0 <= lo and hi <= 1.0
               for _, dtype, grad, lo, hi in seen)
    assert features.dtype == torch.float32 and features.device.type == "cpu"
    assert torch.allclose(features, images.float().div(255).mean(dim=(2, 3)))


def test_extract_features_autocast_returns_float32():
    weight = torch.randn(3 * 8 * 8, 5)

    def encode(x):
        out = x.flatten(1) @ weight
        assert out.dtype == torch.bfloat16
        return out

    features = extract_features(encode, uint8_images(), autocast_dtype=torch.bfloat16)
    assert features.shape == (10, 5) and features.dtype == torch.float32


def test_extract_features_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        extract_features(lambda x: x.flatten(1), torch.rand(4, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(n, D\)"):
        extract_features(lambda x: x, uint8_images())


@pytest.mark.parametrize("shape,grid", [((32, 32, 32), 11), ((256, 4, 4), 4), ((512, 4, 4), 2),
                                        ((192, 2, 2), 2), ((8192, 2, 2), 1)])
def test_stage_grid_keeps_stage_features_at_most_4096_wide(shape, grid):
    assert stage_grid(*shape) == grid
    if shape[0] <= 4096:
        assert shape[0] * grid ** 2 <= 4096


def test_extract_features_and_stages_pools_each_stage():
    images = uint8_images(n=6, size=16)

    def encode(x):  # pooled features, a 24-channel 16×16 map and a 1800-channel 4×4 map
        return x.mean(dim=(2, 3)), [x.repeat(1, 8, 1, 1), x[:, :, :4, :4].repeat(1, 600, 1, 1)]

    pooled, (first, second) = extract_features_and_stages(encode, images, batch_size=4,
                                                          max_dims=1200)
    x = images.float().div(255)
    assert torch.allclose(pooled, x.mean(dim=(2, 3)))
    # 24 · 7² = 1176 ≤ 1200; 1800 channels alone exceed 1200, so the map is averaged globally.
    assert torch.allclose(first, F.adaptive_avg_pool2d(x.repeat(1, 8, 1, 1), 7).flatten(1))
    assert torch.allclose(second, x[:, :, :4, :4].mean(dim=(2, 3)).repeat(1, 600))


# ---------------------------------------------------------------- against a converged reference


def test_probe_matches_a_converged_lbfgs_reference_on_real_features():
    """On fixed real features (random-init convnet, digits) the probe's test top-1 is
    within a point of scikit-learn's L-BFGS logistic regression run to convergence on
    the same standardised features with the same chosen penalty (the benchmark in
    tests/benchmarks/test_probe.py records the exact gap)."""
    data = digits_random_init_features()
    train, test = data["pooled"]
    metrics = LinearProbe().evaluate(train, data["train_labels"], test, data["test_labels"], 10)
    standardize = Standardizer(train)
    reference = sklearn_reference(standardize(train), data["train_labels"], metrics["linear_l2"])
    reference_top1 = 100.0 * (reference.predict(standardize(test).double().numpy())
                              == data["test_labels"].numpy()).mean()
    assert metrics["linear_top1"] == pytest.approx(reference_top1, abs=1.0)
