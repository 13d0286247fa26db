"""The context encoder (Pathak et al. 2016): masks, CW-FC layer, two-optimizer training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import GRAY28, RGB32, build_small_task
from ssl_bench.core.errors import OptionError
from tasks.base import OptimConfig, held_out_rng
from tasks.blocks import psnr_db
from tasks.context_encoder import ChannelWiseFC, loss_weights, make_masks


def smooth_images(n: int, size: int = 32) -> torch.Tensor:
    """Images with structure that context predicts: 4×4 noise upsampled bilinearly."""
    return F.interpolate(torch.rand(n, 3, 4, 4), size=(size, size), mode="bilinear",
                         align_corners=False)


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _changed(params, before) -> bool:
    return any(not torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize("spec", [RGB32, GRAY28], ids=["rgb32", "gray28"])
def test_shapes(spec):
    task = build_small_task("context-encoder", spec)
    images = torch.rand(4, spec.channels, spec.image_size, spec.image_size)
    mask, masked, out = task.fill_holes(images)
    assert mask.shape == (4, 1, spec.image_size, spec.image_size) and mask.dtype == torch.bool
    assert masked.shape == out.shape == images.shape and 0 <= out.min() and out.max() <= 1
    task.eval()
    assert task.features(images).shape == (4, task.backbone.num_features)
    assert set(task.pretext_metrics(images)) == {"loss", "rec_loss", "adv_loss", "psnr_db",
                                                 "input_psnr_db"}


def test_hidden_pixels_hold_the_dataset_mean():
    task = build_small_task("context-encoder", RGB32)
    images = torch.rand(2, 3, 32, 32)
    mask, masked, _ = task.fill_holes(images)
    assert torch.equal(masked[mask.expand_as(masked)].view(-1).unique(), torch.tensor([0.5]))
    assert torch.equal(masked[~mask.expand_as(masked)], images[~mask.expand_as(images)])


@pytest.mark.parametrize("adversarial", [True, False])
def test_reconstruction_loss_falls_on_a_fixed_batch(adversarial):
    images = smooth_images(8)
    task = build_small_task("context-encoder", RGB32, mask="center", adversarial=adversarial,
                            decoder_width=8, disc_width=8)
    optimizers = task.configure_optimizers(task.default_optim(len(images)))
    task.train()
    losses = [float(task.training_step(images, optimizers)["rec_loss"]) for _ in range(25)]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_cwfc_has_m_n4_weights_plus_a_bias_per_unit_and_mixes_no_channels():
    m, n = 5, 3
    layer = ChannelWiseFC(m, n)
    assert sum(p.numel() for p in layer.parameters()) == m * n**4 + m * n**2
    x = torch.randn(2, m, n, n)
    bumped = x.clone()
    bumped[:, 2] += torch.randn(2, n, n)
    diff = (layer(bumped) - layer(x)).abs().amax(dim=(0, 2, 3))
    assert diff[2] > 0 and torch.all(diff[[0, 1, 3, 4]] == 0)


def test_cwfc_is_built_for_the_backbone_feature_map():
    task = build_small_task("context-encoder", RGB32)
    m, n = task.backbone.feature_channels, 4  # width-8 convnet: 64 channels of 4×4 at 32 px
    assert task.summary()["parameters"]["cwfc"] == m * n**4 + m * n**2


@pytest.mark.parametrize("size", [28, 32, 96])
def test_mask_area_fractions(size):
    torch.manual_seed(0)
    area = {kind: make_masks(kind, 64, size).float().mean(dim=(1, 2, 3))
            for kind in ("center", "random-block", "random-region")}
    assert torch.all(area["center"] == 0.25)
    assert torch.all(area["random-block"] > 0) and torch.all(area["random-block"] <= 0.25)
    assert torch.all(area["random-region"] >= 0.2) and torch.all(area["random-region"] <= 0.3)
    assert make_masks("random-region", 64, size).shape == (64, 1, size, size)


@pytest.mark.parametrize("kind", ["random-block", "random-region"])
def test_masks_repeat_under_the_same_global_seed(kind):
    draw = []
    for _ in range(2):
        torch.manual_seed(3)
        draw.append(make_masks(kind, 8, 32))
    assert torch.equal(*draw)
    assert not torch.equal(draw[0], make_masks(kind, 8, 32))


def test_overlap_border_is_weighted_ten_times():
    mask = make_masks("center", 1, 32)  # 16×16 hole in rows/cols 8..23
    weights = loss_weights(mask, overlap_px=1, overlap_weight=10.0)[0, 0]
    assert weights[8:24, 8:24].eq(1).all()
    assert weights[7, 7:25].eq(10).all() and weights[7:25, 24].eq(10).all()
    assert weights.sum() == 16 * 16 + 10 * (18 * 18 - 16 * 16)
    assert torch.equal(loss_weights(mask, 0, 10.0), mask.float())


def test_overlap_scales_with_the_image_side_around_the_centre_hole_only():
    centre = {"mask": "center"}
    assert build_small_task("context-encoder", RGB32, **centre).overlap_px == 1  # 4 px of 128
    assert build_small_task("context-encoder", GRAY28, overlap=8 / 128, **centre).overlap_px == 2
    assert build_small_task("context-encoder", RGB32, **centre).summary()["overlap_px"] == 1
    # random holes get no border: it would weight pixels the encoder sees (released code)
    for mask in ("random-region", "random-block"):
        assert build_small_task("context-encoder", RGB32, mask=mask).overlap_px == 0


def test_psnr_logs_are_taken_over_the_hole():
    task = build_small_task("context-encoder", RGB32, mask="center").eval()
    images = torch.full((2, 3, 32, 32), 0.6)  # the mean fill is off by 0.1: 20 dB in the hole
    _, logs = task.loss(images)
    torch.testing.assert_close(float(logs["input_psnr_db"]), 20.0, atol=1e-3, rtol=0)
    mask, _, prediction = task.fill_holes(images)
    torch.testing.assert_close(logs["psnr_db"], psnr_db(prediction, images, mask).mean())


def test_two_optimizers_partition_the_parameters():
    task = build_small_task("context-encoder", RGB32)
    gen_opt, disc_opt = task.configure_optimizers(task.default_optim(8))
    gen = {id(p) for g in gen_opt.param_groups for p in g["params"]}
    disc = {id(p) for g in disc_opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in task.parameters() if p.requires_grad}
    assert not gen & disc and gen | disc == trainable
    assert disc == {id(p) for p in task.discriminator.parameters()}
    assert gen_opt.param_groups[0]["lr"] == 10 * disc_opt.param_groups[0]["lr"]
    assert gen_opt.param_groups[0]["betas"][0] == 0.5 == disc_opt.param_groups[0]["betas"][0]


@pytest.mark.parametrize("frozen", ["none", "generator", "discriminator"])
def test_each_network_changes_only_through_its_own_optimizer(frozen):
    task = build_small_task("context-encoder", RGB32)
    gen_cfg, disc_cfg = task.default_optim(8)
    if frozen == "generator":
        gen_cfg.lr = 0.0
    elif frozen == "discriminator":
        disc_cfg.lr = 0.0
    optimizers = task.configure_optimizers([gen_cfg, disc_cfg])
    disc_params = list(task.discriminator.parameters())
    gen_params = [p for p in task.parameters() if all(p is not q for q in disc_params)]
    gen_before, disc_before = _snapshot(gen_params), _snapshot(disc_params)
    task.train()
    task.training_step(torch.rand(8, 3, 32, 32), optimizers)
    assert _changed(gen_params, gen_before) == (frozen != "generator")
    assert _changed(disc_params, disc_before) == (frozen != "discriminator")


def test_reconstruction_only_has_no_discriminator():
    task = build_small_task("context-encoder", RGB32, adversarial=False)
    assert task.discriminator is None and len(task.default_optim(8)) == 1
    logs = task.training_step(torch.rand(4, 3, 32, 32),
                              task.configure_optimizers(task.default_optim(8)))
    assert torch.equal(logs["loss"], logs["rec_loss"]) and "adv_loss" not in logs
    assert "discriminator" not in task.summary()["parameters"]
    assert "adv_loss" not in task.loss(torch.rand(4, 3, 32, 32))[1]
    with pytest.raises(OptionError):
        task.configure_optimizers([OptimConfig(), OptimConfig()])


def test_joint_loss_weights():
    task = build_small_task("context-encoder", RGB32)
    logs = task.training_step(torch.rand(4, 3, 32, 32),
                              task.configure_optimizers(task.default_optim(8)))
    expected = 0.999 * logs["rec_loss"] + 0.001 * logs["adv_loss"]
    torch.testing.assert_close(logs["loss"], expected)


def test_loss_is_the_encoder_decoder_objective_of_the_training_step():
    task = build_small_task("context-encoder", RGB32)
    twin = copy.deepcopy(task)
    images = torch.rand(4, 3, 32, 32)
    task.train()
    twin.train()
    torch.manual_seed(5)
    loss, logs = task.loss(images)
    torch.manual_seed(5)
    step_logs = twin.training_step(images, twin.configure_optimizers(twin.default_optim(4)))
    for key in ("rec_loss", "psnr_db", "input_psnr_db"):  # D moved in between: adv_loss differs
        assert torch.equal(logs[key], step_logs[key])
    expected = 0.999 * logs["rec_loss"] + 0.001 * logs["adv_loss"]
    torch.testing.assert_close(loss.detach(), expected)
    assert loss.requires_grad and all(not v.requires_grad for v in logs.values())


def test_render_under_the_held_out_rng_is_deterministic_and_leaves_the_global_rng_alone():
    import matplotlib.pyplot as plt

    task = build_small_task("context-encoder", RGB32).eval()
    images = torch.rand(3, 3, 32, 32)
    state = torch.get_rng_state()
    figures = []
    for _ in range(2):
        with held_out_rng():  # as the runner draws every task's picture
            figures.append(task.render(images))
    assert torch.equal(torch.get_rng_state(), state)
    assert len(figures[0].axes) == 3 * 3
    pixels = [[ax.images[0].get_array() for ax in fig.axes] for fig in figures]
    assert all((a == b).all() for a, b in zip(*pixels))
    for fig in figures:
        plt.close(fig)


@pytest.mark.parametrize("key,value", [("mask", "square"), ("adv_weight", 1.5),
                                       ("overlap", -0.1), ("overlap_weight", -1.0),
                                       ("decoder_width", 0), ("disc_width", 0)])
def test_bad_options_raise(key, value):
    with pytest.raises(OptionError):
        build_small_task("context-encoder", RGB32, **{key: value})
