"""split-brain: Lab conversion, bins, soft encoding, rebalancing, shapes, learning, and
the 1-channel refusal."""

import pytest
import torch
import torch.nn.functional as F

from backbones import build_backbone
from ssl_bench.build import build_task
from ssl_bench.core.errors import IncompatibleError, OptionError
from ssl_bench.core.spec import DataSpec
from tasks.base import count_parameters
from tasks.ab_bins_313 import AB_BINS_313
from tasks.color import (in_gamut_ab_bins, lab_to_rgb, quantize_ab, quantize_l, rebalance_weights,
                         rgb_to_lab, smoothed_distribution, soft_encode_ab, zhang_ab_bins)
from tasks.split_brain import SplitBrain

RGB = DataSpec("test", channels=3, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, hflip=True)
GRAY = DataSpec("gray", channels=1, image_size=28, mean=(0.5,), std=(0.25,), hflip=False)
TINY = {"width": 8}


def make(options=None, spec=RGB):
    return build_task("split-brain", "convnet", spec, options or {}, TINY)


BIN_SETS = {"zhang313": zhang_ab_bins, "derived": lambda: in_gamut_ab_bins(10.0)}


def smooth_images(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=size, mode="bilinear",
                         align_corners=False)


@pytest.mark.parametrize("rgb, lab", [
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((1.0, 0.0, 0.0), (53.24, 80.09, 67.20)),
    ((0.0, 1.0, 0.0), (87.73, -86.18, 83.18)),
    ((0.0, 0.0, 1.0), (32.30, 79.19, -107.86)),
])
def test_known_lab_values(rgb, lab):
    got = rgb_to_lab(torch.tensor(rgb).view(1, 3, 1, 1)).flatten()
    assert torch.allclose(got, torch.tensor(lab), atol=0.01)


def test_lab_round_trip_is_identity():
    rgb = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-3)


def test_lab_stays_float32_under_bf16_autocast():
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lab = rgb_to_lab(rgb)
    assert lab.dtype == torch.float32
    assert torch.allclose(lab, rgb_to_lab(rgb), atol=1e-4)


def test_in_gamut_ab_bins_are_deterministic_and_plausible():
    centres, lookup, origin = in_gamut_ab_bins(10.0)
    in_gamut_ab_bins.cache_clear()
    again, _, _ = in_gamut_ab_bins(10.0)
    assert torch.equal(centres, again)
    assert 200 <= len(centres) <= 400  # Zhang et al. 2016 keep 313
    assert torch.all(centres.remainder(10.0) == 0)
    assert lookup.min() >= 0 and lookup.max() < len(centres)


@pytest.mark.parametrize("bin_set", sorted(BIN_SETS))
def test_every_srgb_pixel_falls_in_its_own_in_gamut_bin(bin_set):
    centres, lookup, origin = BIN_SETS[bin_set]()
    rgb = torch.randint(0, 256, (1, 3, 64, 64), generator=torch.Generator().manual_seed(2)) / 255
    ab = rgb_to_lab(rgb)[:, 1:]
    bins = quantize_ab(ab, lookup, origin, 10.0)
    assert bins.min() >= 0 and bins.max() < len(centres)
    distance = (ab - centres[bins].permute(0, 3, 1, 2)).abs()
    assert distance.max() <= 5.0 + 1e-4  # the bin is the pixel's own grid cell


def test_default_bins_are_the_313_released_bins_on_the_10_grid():
    centres, lookup, origin = zhang_ab_bins()
    assert centres.shape == (313, 2) and len(set(AB_BINS_313)) == 313
    assert torch.all(centres.remainder(10.0) == 0)
    assert centres.tolist() == sorted(centres.tolist())  # released order: a, then b
    assert centres.min() == -110 and centres.max() == 100
    derived = {tuple(c) for c in in_gamut_ab_bins(10.0)[0].tolist()}
    assert len(derived) == 261 and derived < {tuple(c) for c in centres.tolist()}
    assert make().summary()["ab_bins"] == 313
    assert torch.equal(make().ab_centres, centres)


@pytest.mark.parametrize("bin_set", sorted(BIN_SETS))
def test_quantising_a_bin_centre_returns_that_bin(bin_set):
    centres, lookup, origin = BIN_SETS[bin_set]()
    ab = centres.T.reshape(1, 2, -1, 1)  # (1, 2, K, 1)
    everyone = torch.arange(len(centres)).view(1, -1, 1)
    assert torch.equal(quantize_ab(ab, lookup, origin, 10.0), everyone)
    assert torch.equal(quantize_ab(ab + 4.9, lookup, origin, 10.0), everyone)  # same cell
    index, weight = soft_encode_ab(ab, centres)
    assert torch.equal(index[:, 0], everyone)


def test_soft_encoding_sums_to_one_and_weighs_the_nearest_bin_most():
    centres = zhang_ab_bins()[0]
    ab = (torch.rand(2, 2, 6, 6, generator=torch.Generator().manual_seed(3)) - 0.5) * 160
    index, weight = soft_encode_ab(ab, centres, neighbours=5, sigma=5.0)
    assert index.shape == weight.shape == (2, 5, 6, 6)
    dense = torch.zeros(2, len(centres), 6, 6).scatter_(1, index, weight)  # (N, K, H, W)
    torch.testing.assert_close(dense.sum(1), torch.ones(2, 6, 6))
    distance = torch.cdist(ab.permute(0, 2, 3, 1).reshape(-1, 2), centres)  # (P, K)
    nearest = distance.argmin(1).view(2, 6, 6)
    assert torch.equal(dense.argmax(1), nearest) and torch.equal(index[:, 0], nearest)
    assert torch.all(weight[:, :1] >= weight[:, 1:])
    # Gaussian of σ = 5: the weight ratio of two bins is exp((d2² − d1²) / 50)
    d = distance.gather(1, index.permute(0, 2, 3, 1).reshape(-1, 5))  # (P, 5)
    w = weight.permute(0, 2, 3, 1).reshape(-1, 5)  # (P, 5)
    torch.testing.assert_close(w[:, 0] / w[:, 1], torch.exp((d[:, 1] ** 2 - d[:, 0] ** 2) / 50),
                               rtol=1e-3, atol=0)


def test_rebalancing_weights_average_one_and_favour_rare_bins():
    centres = zhang_ab_bins()[0]
    counts = torch.zeros(313, dtype=torch.float64)
    counts[150:170] = torch.arange(1.0, 21.0) ** 3  # a few common bins, all others unseen
    weights = rebalance_weights(counts, centres, mix=0.5, sigma=5.0)
    prior = smoothed_distribution(counts, centres, sigma=5.0)
    torch.testing.assert_close(float((prior * weights.double()).sum()), 1.0)
    assert weights[169] < weights[150] < weights[0]  # rarer → heavier
    assert torch.all(torch.diff(weights[prior.argsort()]) <= 1e-6)  # decreasing in p̃
    ratio = (0.5 * prior.max() + 0.5 / 313) / (0.5 * prior.min() + 0.5 / 313)
    torch.testing.assert_close(float(weights.max() / weights.min()), float(ratio),
                               rtol=1e-4, atol=0)
    assert torch.equal(rebalance_weights(torch.zeros(313), centres), torch.ones(313))


def test_rebalancing_counts_training_batches_only():
    task = make({"rebalance": True})
    x = smooth_images(4)
    task.held_out_metrics([x])
    task.eval()
    task.loss(x)
    assert float(task.ab_counts.sum()) == 0  # neither held-out nor eval-mode images count
    task.train()
    with torch.no_grad():
        task.loss(x)
    assert float(task.ab_counts.sum()) == 0
    optimizers = task.configure_optimizers(task.default_optim(4))
    task.training_step(x, optimizers)
    ab_target, _ = task.targets(rgb_to_lab(x))
    assert torch.equal(task.ab_counts, torch.bincount(ab_target.flatten(), minlength=313).double())
    assert task.summary()["rebalance_pixels"] == 4 * 8 * 8
    assert "ab_counts" in task.state_dict() and "ab_counts" not in make().state_dict()


def test_soft_and_rebalanced_ab_losses_are_the_weighted_cross_entropies():
    task = make({"soft_encoding": True, "rebalance": True})
    x = smooth_images(4)
    task.ab_counts += torch.arange(313, dtype=torch.float64)  # some training histogram
    task.eval()
    with torch.no_grad():
        _, logs = task.loss(x)
        ab_logits, _ = task.predict(task.normalize(x))
    small = F.adaptive_avg_pool2d(rgb_to_lab(x), 8)
    index, weight = soft_encode_ab(small[:, 1:], task.ab_centres)
    soft = torch.zeros_like(ab_logits).scatter_(1, index, weight)  # (N, K, s, s) probabilities
    per_pixel = F.cross_entropy(ab_logits, soft, reduction="none")  # (N, s, s)
    w = rebalance_weights(task.ab_counts, task.ab_centres)[task.targets(small)[0]]
    torch.testing.assert_close(float(logs["ab_loss"]), float((w * per_pixel).mean()))


def test_l_bins_are_50_bins_of_2_units():
    lightness = torch.tensor([0.0, 1.99, 2.0, 50.0, 99.9, 100.0]).view(1, 1, 1, 6)
    assert quantize_l(lightness, 50).flatten().tolist() == [0, 0, 1, 25, 49, 49]
    task = make()
    assert task.l_head.out_channels == 50
    assert task.ab_head.out_channels == 313
    assert make({"ab_bin_set": "derived"}).ab_head.out_channels == len(in_gamut_ab_bins(10.0)[0])


def test_shapes_and_features_are_both_halves():
    task = make()
    x = smooth_images(4)
    ab_logits, l_logits = task.predict(task.normalize(x))
    assert ab_logits.shape == (4, task.summary()["ab_bins"], 8, 8)
    assert l_logits.shape == (4, 50, 8, 8)
    ab_target, l_target = task.targets(rgb_to_lab(x))
    assert ab_target.shape == l_target.shape == (4, 8, 8)
    task.eval()
    halves = task.backbone.l_net.num_features + task.backbone.ab_net.num_features
    assert task.backbone.num_features == halves
    assert task.features(x).shape == (4, halves)
    stages = task.feature_stages(x)
    assert len(stages) == len(task.backbone.l_net.stage_names)
    assert stages[-1].shape[:2] == (4, task.backbone.feature_channels)
    assert set(task.pretext_metrics(x)) == {"loss", "ab_loss", "l_loss", "ab_top1", "l_top1"}


def test_loss_logs_its_terms_and_per_pixel_accuracies():
    task = make()
    x = smooth_images(4)
    loss, logs = task.loss(x)
    torch.testing.assert_close(loss.detach(), logs["ab_loss"] + logs["l_loss"])
    assert loss.requires_grad and all(not v.requires_grad for v in logs.values())
    with torch.no_grad():
        ab_logits, l_logits = task.predict(task.normalize(x))
    ab_target, l_target = task.targets(rgb_to_lab(x))
    torch.testing.assert_close(float(logs["ab_loss"]), float(F.cross_entropy(ab_logits, ab_target)))
    for key, logits, target in (("ab_top1", ab_logits, ab_target), ("l_top1", l_logits, l_target)):
        hits = (logits.argmax(1) == target).float().mean()
        torch.testing.assert_close(float(logs[key]), 100.0 * float(hits))
        assert 0.0 <= float(logs[key]) <= 100.0


def test_halves_are_half_width_and_see_their_channels():
    task = make()
    full = build_backbone("convnet", 3, 32, **TINY)
    assert task.backbone.l_net.num_features == full.num_features // 2
    assert task.backbone.l_net.in_chans == 1 and task.backbone.ab_net.in_chans == 2
    summary = task.summary()
    assert summary["width_multiplier"] == 0.5 and summary["target_size"] == 8
    assert summary["l_bins"] == 50 and summary["ab_bins"] == 313
    halves = count_parameters(task.backbone.l_net) + count_parameters(task.backbone.ab_net)
    assert summary["parameters"]["backbone"] == halves > 0
    assert set(summary["parameters"]) == {"backbone", "ab_head", "l_head"}


def test_falls_back_to_full_width_when_the_backbone_cannot_scale():
    def factory(in_chans=None, img_size=None, width_multiplier=1.0):
        if width_multiplier != 1.0:
            raise IncompatibleError("cannot scale")
        return build_backbone("convnet", in_chans or 3, img_size or 32, **TINY)

    task = SplitBrain(factory, RGB, SplitBrain.Options())
    assert task.summary()["width_multiplier"] == 1.0
    assert task.backbone.l_net.in_chans == 1 and task.backbone.ab_net.in_chans == 2


def test_full_width_failure_is_not_retried():
    def factory(in_chans=None, img_size=None, width_multiplier=1.0):
        raise IncompatibleError("never")

    with pytest.raises(IncompatibleError, match="never"):
        SplitBrain(factory, RGB, SplitBrain.Options(width_multiplier=1.0))


@pytest.mark.parametrize("options", [
    {}, {"ab_bin_set": "derived"}, {"soft_encoding": True}, {"rebalance": True},
    {"soft_encoding": True, "rebalance": True},
], ids=["default", "derived", "soft", "rebalance", "soft+rebalance"])
def test_loss_falls_on_a_fixed_batch(options):
    torch.manual_seed(0)
    task = make(options)
    optimizers = task.configure_optimizers(task.default_optim(16))
    x = smooth_images(16)
    losses = [task.training_step(x, optimizers)["loss"].item() for _ in range(30)]
    assert losses[-1] < 0.9 * losses[0]


def test_render_returns_a_figure():
    task = make().eval()
    fig = task.render(smooth_images(3))
    assert len(fig.axes) == 4 * 3


def test_grayscale_data_is_refused():
    with pytest.raises(IncompatibleError, match="3 channel"):
        make(spec=GRAY)


@pytest.mark.parametrize("key, value", [
    ("ab_grid", 0.0), ("l_bins", 1), ("target_scale", 0.0), ("width_multiplier", 0.0),
    ("temperature", 2.0), ("ab_bin_set", "lab"), ("ab_grid", 5.0),
])
def test_bad_options_raise(key, value):
    with pytest.raises(OptionError, match=key):
        make({key: value})


def test_other_grids_need_the_derived_bins():
    assert make({"ab_bin_set": "derived", "ab_grid": 20.0}).summary()["ab_bins"] < 261
