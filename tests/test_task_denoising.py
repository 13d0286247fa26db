"""Tests of the denoising autoencoder task and the shared ConvDecoder."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import smooth_images
from ssl_bench.build import build_task
from ssl_bench.core.errors import OptionError
from ssl_bench.core.spec import DataSpec
from tasks.blocks import ConvDecoder, psnr_db
from tasks.denoising import corrupt

RGB32 = DataSpec("test", channels=3, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, hflip=True)
RGB16 = DataSpec("test", channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, hflip=True)
GRAY28 = DataSpec("test", channels=1, image_size=28, mean=(0.5,), std=(0.25,), hflip=False)


def make_task(spec=RGB32, **options):
    return build_task("denoising", "convnet", spec, options, {"width": 8})



@pytest.mark.parametrize("spec", [RGB32, GRAY28], ids=["rgb32", "gray28"])
def test_shapes(spec):
    task = make_task(spec)
    x = smooth_images(4, spec)
    assert task.decode(x).shape == x.shape
    task.eval()
    recon = task.reconstruct(x)
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1
    assert task.features(x).shape == (4, task.backbone.num_features)
    assert set(task.pretext_metrics(x)) == {"loss", "psnr_db", "input_psnr_db"}
    assert task.summary()["parameters"]["decoder"] > 0


@pytest.mark.parametrize("in_size,out_size,stages",
                         [(4, 32, 3), (4, 28, 3), (8, 32, 2), (32, 32, 0)])
def test_conv_decoder_sizes(in_size, out_size, stages):
    decoder = ConvDecoder(16, in_size, 3, out_size, width=4)
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in decoder.modules()) == stages
    assert decoder(torch.randn(2, 16, in_size, in_size)).shape == (2, 3, out_size, out_size)
    with pytest.raises(ValueError):
        ConvDecoder(16, in_size, 3, out_size, width=0)


def test_probe_keeps_batchnorm_statistics_and_mode():
    task = make_task()
    task.backbone.train()
    before = {k: v.clone() for k, v in task.backbone.state_dict().items()}
    assert task.backbone.feature_map_shape() == (task.backbone.feature_channels, 4, 4)
    assert task.backbone.training
    for k, v in task.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("loss,noise", [("mse", "gaussian"), ("bce", "masking")])
def test_loss_falls_and_denoises_fixed_batch(loss, noise):
    torch.manual_seed(0)
    task = make_task(RGB16, loss=loss, noise=noise)
    x = smooth_images(8, RGB16)
    floor = F.binary_cross_entropy(x, x).item() if loss == "bce" else 0.0  # entropy of x
    optimizers = task.configure_optimizers(task.default_optim(len(x)))
    losses = [float(task.training_step(x, optimizers)["loss"]) - floor for _ in range(25)]
    assert sum(losses[-5:]) < 0.75 * sum(losses[:5])
    metrics = task.held_out_metrics([x])
    assert metrics["psnr_db"] > metrics["input_psnr_db"] + 1.0


def test_bce_reconstruction_is_sigmoid_of_logits():
    task = make_task(loss="bce").eval()
    x = smooth_images(2, RGB32)
    assert torch.allclose(task.reconstruct(x), task.decode(x).sigmoid())


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_loss_logs_psnr_of_reconstruction_and_input(loss):
    task = make_task(loss=loss).eval()
    x = smooth_images(4, RGB32)
    torch.manual_seed(3)
    _, logs = task.loss(x)
    torch.manual_seed(3)
    corrupted = task.corrupt(x)  # the same draws as inside loss
    with torch.no_grad():
        expected = psnr_db(task.reconstruct(corrupted), x).mean()
    torch.testing.assert_close(logs["psnr_db"], expected)
    torch.testing.assert_close(logs["input_psnr_db"], psnr_db(corrupted, x).mean())
    assert not logs["psnr_db"].requires_grad


@pytest.mark.parametrize("noise", ["gaussian", "masking", "salt-and-pepper"])
def test_held_out_metrics_are_deterministic(noise):
    task = make_task(RGB16, noise=noise)
    x = smooth_images(6, RGB16)
    first = task.held_out_metrics([x[:4], x[4:]])
    torch.rand(100)  # advance the global RNG
    assert task.held_out_metrics([x[:4], x[4:]]) == first
    assert set(first) == {"loss", "psnr_db", "input_psnr_db"}
    assert task.training  # held_out_metrics restores the mode


def test_masking_zeroes_exactly_fraction_of_pixels():
    torch.manual_seed(0)
    x = torch.full((16, 3, 10, 10), 0.5)
    out = corrupt(x, "masking", sigma=0.0, fraction=0.25)
    zeroed = out == 0
    assert torch.equal(zeroed.all(dim=1), zeroed.any(dim=1))  # whole pixels, all channels
    assert (zeroed[:, 0].sum(dim=(1, 2)) == 25).all()  # round(0.25 · 100) per image
    assert torch.equal(out[~zeroed], x[~zeroed])
    # different pixels in different images
    assert not torch.equal(zeroed[0], zeroed[1])


def test_salt_and_pepper_sets_fraction_to_zero_or_one_half_each():
    torch.manual_seed(0)
    x = torch.full((64, 1, 16, 16), 0.5)
    out = corrupt(x, "salt-and-pepper", sigma=0.0, fraction=0.25)
    salt, pepper = (out == 1).sum().item(), (out == 0).sum().item()
    assert ((out != 0.5).sum(dim=(1, 2, 3)) == 64).all()  # round(0.25 · 256) per image
    assert abs(salt / (salt + pepper) - 0.5) < 0.03
    rgb = corrupt(torch.full((4, 3, 8, 8), 0.5), "salt-and-pepper", 0.0, 0.5)
    assert (rgb.amax(dim=1) == rgb.amin(dim=1)).all()  # corrupted pixels are black or white


def test_gaussian_noise_is_clipped_and_has_sigma():
    torch.manual_seed(0)
    x = torch.full((8, 3, 32, 32), 0.5)
    heavy = corrupt(x, "gaussian", sigma=0.5, fraction=0.0)
    assert heavy.min() == 0.0 and heavy.max() == 1.0
    assert (heavy == 0).float().mean() > 0.1  # P(ε < -1) ≈ 16 % clipped to 0
    light = corrupt(x, "gaussian", sigma=0.05, fraction=0.0)
    assert abs((light - x).std().item() - 0.05) < 0.005


def test_corrupt_rejects_unknown_noise():
    with pytest.raises(OptionError):
        corrupt(torch.zeros(1, 1, 4, 4), "speckle", 0.1, 0.1)


def test_psnr_matches_hand_computed_values():
    target = torch.full((2, 1, 4, 4), 0.1)
    prediction = target.clone()
    prediction[0] = 0.0  # MSE 0.01 → 20 dB
    prediction[1, :, :2] += 0.2  # half the pixels off by 0.2: MSE 0.02 → 10·log10(50)
    assert torch.allclose(psnr_db(prediction, target),
                          torch.tensor([20.0, 10 * math.log10(50)]), atol=1e-4)
    assert psnr_db(target, target).tolist() == pytest.approx([100.0, 100.0])


@pytest.mark.parametrize("options", [{"noise": "speckle"}, {"fraction": 1.5}, {"sigma": -0.1},
                                     {"loss": "l1"}, {"decoder_width": 0}])
def test_bad_options_raise(options):
    with pytest.raises(OptionError):
        make_task(**options)
