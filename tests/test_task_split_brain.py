"""split-brain: Lab conversion, bins, shapes, learning, and the 1-channel refusal."""

import pytest
import torch
import torch.nn.functional as F

from backbones import build_backbone
from ssl_bench.build import build_task
from ssl_bench.core.errors import IncompatibleError, OptionError
from ssl_bench.core.spec import DataSpec
from tasks.base import count_parameters
from tasks.color import in_gamut_ab_bins, lab_to_rgb, quantize_ab, quantize_l, rgb_to_lab
from tasks.split_brain import SplitBrain

RGB = DataSpec("test", channels=3, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, hflip=True)
GRAY = DataSpec("gray", channels=1, image_size=28, mean=(0.5,), std=(0.25,), hflip=False)
TINY = {"width": 8}


def make(options=None, spec=RGB):
    return build_task("split-brain", "convnet", spec, options or {}, TINY)


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


def test_every_srgb_pixel_falls_in_its_own_in_gamut_bin():
    centres, lookup, origin = in_gamut_ab_bins(10.0)
    rgb = torch.randint(0, 256, (1, 3, 64, 64), generator=torch.Generator().manual_seed(2)) / 255
    ab = rgb_to_lab(rgb)[:, 1:]
    bins = quantize_ab(ab, lookup, origin, 10.0)
    assert bins.min() >= 0 and bins.max() < len(centres)
    distance = (ab - centres[bins].permute(0, 3, 1, 2)).abs()
    assert distance.max() <= 5.0 + 1e-4  # the bin is the pixel's own grid cell


def test_l_bins_are_50_bins_of_2_units():
    lightness = torch.tensor([0.0, 1.99, 2.0, 50.0, 99.9, 100.0]).view(1, 1, 1, 6)
    assert quantize_l(lightness, 50).flatten().tolist() == [0, 0, 1, 25, 49, 49]
    task = make()
    assert task.l_head.out_channels == 50
    assert task.ab_head.out_channels == len(in_gamut_ab_bins(10.0)[0])


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
    assert summary["l_bins"] == 50 and summary["ab_bins"] == len(in_gamut_ab_bins(10.0)[0])
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


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    task = make()
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
    ("temperature", 2.0),
])
def test_bad_options_raise(key, value):
    with pytest.raises(OptionError, match=key):
        make({key: value})
