"""The undercomplete autoencoder and the shared LatentDecoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import GRAY28, RGB32, build_small_task
from ssl_bench.core.errors import OptionError
from ssl_bench.core.spec import DataSpec
from tasks.autoencoder import reconstruction_loss
from tasks.blocks import LatentDecoder, psnr_db

RGB16 = DataSpec("rgb16", channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, hflip=True)


def smooth_images(n: int, spec: DataSpec, seed: int = 0) -> torch.Tensor:
    """Images with structure: 4×4 noise upsampled bilinearly, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, spec.channels, 4, 4, generator=g)
    return F.interpolate(coarse, size=spec.image_size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("spec,loss", [(RGB32, "mse"), (GRAY28, "bce")], ids=["rgb32", "gray28"])
def test_shapes_and_auto_loss(spec, loss):
    task = build_small_task("autoencoder", spec, code_dim=12)
    assert task.loss_kind == loss and task.summary()["loss"] == loss
    images = smooth_images(4, spec)
    code = task.encode(images)
    assert code.shape == (4, 12)
    assert task.decoder(code).shape == images.shape
    task.eval()
    recon = task.reconstruct(images)
    assert recon.shape == images.shape and recon.min() >= 0 and recon.max() <= 1
    assert task.task_features(images).shape == (4, 12)
    assert set(task.pretext_metrics(images)) == {"loss", "recon_loss", "psnr_db"}
    parameters = task.summary()["parameters"]
    assert parameters["bottleneck"] == task.backbone.num_features * 12 + 12
    assert parameters["decoder"] > 0


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_loss_falls_on_a_fixed_batch(loss):
    torch.manual_seed(0)
    task = build_small_task("autoencoder", RGB16, loss=loss, decoder_width=8)
    images = smooth_images(8, RGB16)
    # the cross-entropy of grey levels is bounded below by their entropy, not by 0
    entropy = F.binary_cross_entropy(images, images, reduction="sum").item() / len(images)
    floor = entropy if loss == "bce" else 0.0
    optimizers = task.configure_optimizers(task.default_optim(len(images)))
    losses = [float(task.training_step(images, optimizers)["loss"]) - floor for _ in range(30)]
    assert sum(losses[-5:]) < 0.75 * sum(losses[:5])


@pytest.mark.parametrize("task_name", ["autoencoder", "sparse-autoencoder",
                                       "contractive-autoencoder"])
def test_decoder_without_batchnorm_sees_the_codes_scale(task_name):
    """With ``decoder_norm=false`` doubling the code changes the reconstruction in
    train mode; a BatchNorm decoder normalises the factor 2 away (exactly once its
    projection's bias, which the factor does not scale, is zero)."""
    task = build_small_task(task_name, RGB16, code_dim=6, decoder_width=8,
                            decoder_norm=False).train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in task.decoder.modules())
    code = task.encode(smooth_images(8, RGB16)).detach()  # (8, 6)
    with torch.no_grad():
        change = (task.decoder(2 * code) - task.decoder(code)).abs().mean()
        spread = task.decoder(code).std(dim=0).mean()  # how much images differ at init
    assert change > 0.3 * spread
    batch_norm = LatentDecoder(6, 3, 16, width=8, norm=True).train()
    with torch.no_grad():
        batch_norm.project[0].bias.zero_()
        torch.testing.assert_close(batch_norm(2 * code), batch_norm(code), rtol=1e-3, atol=1e-4)


def test_reconstruction_loss_is_summed_per_image():
    out = torch.randn(3, 2, 4, 4)
    images = torch.rand(3, 2, 4, 4)
    bce = F.binary_cross_entropy(out.sigmoid(), images, reduction="none").sum(dim=(1, 2, 3))
    torch.testing.assert_close(reconstruction_loss(out, images, "bce"), bce)
    torch.testing.assert_close(reconstruction_loss(out, images, "mse"),
                               (out - images).pow(2).sum(dim=(1, 2, 3)))


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_loss_is_the_reconstruction_and_logs_its_psnr(loss):
    task = build_small_task("autoencoder", RGB32, loss=loss).eval()
    images = smooth_images(4, RGB32)
    total, logs = task.loss(images)
    with torch.no_grad():
        recon = task.reconstruct(images)
        expected = reconstruction_loss(task.decoder(task.encode(images)), images, loss).mean()
    torch.testing.assert_close(total.detach(), expected)
    torch.testing.assert_close(logs["recon_loss"], expected)
    torch.testing.assert_close(logs["psnr_db"], psnr_db(recon, images).mean())
    assert not any(v.requires_grad for v in logs.values())
    if loss == "bce":
        assert torch.allclose(recon, task.decoder(task.encode(images)).sigmoid())


def test_the_code_is_the_task_features():
    task = build_small_task("autoencoder", GRAY28, code_dim=10).eval()
    images = smooth_images(3, GRAY28)
    with torch.no_grad():
        torch.testing.assert_close(task.task_features(images), task.encode(images))


@pytest.mark.parametrize("norm", [True, False], ids=["batchnorm", "no-norm"])
@pytest.mark.parametrize("size,side,upsamplings", [(32, 4, 3), (28, 7, 2), (96, 6, 4), (8, 4, 1),
                                                  (3, 3, 0)])
def test_latent_decoder_geometry(size, side, upsamplings, norm):
    decoder = LatentDecoder(5, 2, size, width=4, norm=norm)
    batch_norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in decoder.modules())
    assert batch_norms == (1 + upsamplings if norm else 0)
    # without BatchNorm to shift them, the up-convolutions need their own bias
    assert all((m.bias is None) == norm for m in decoder.modules()
               if isinstance(m, torch.nn.ConvTranspose2d))
    assert decoder.project[1].unflattened_size[1:] == (side, side)
    assert decoder.project[1].unflattened_size[0] == 4 * 2**upsamplings
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in decoder.modules()) == upsamplings
    assert decoder(torch.randn(2, 5)).shape == (2, 2, size, size)
    with pytest.raises(ValueError):
        LatentDecoder(0, 2, size)


@pytest.mark.parametrize("key,value", [("code_dim", 0), ("loss", "l1"), ("decoder_width", 0)])
def test_bad_options_raise(key, value):
    with pytest.raises(OptionError):
        build_small_task("autoencoder", RGB32, **{key: value})
