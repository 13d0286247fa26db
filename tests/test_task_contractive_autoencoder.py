"""The contractive autoencoder (Rifai et al. 2011): the Jacobian penalty, exact and
by random projection, on the encoder in eval mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import GRAY28, RGB32, build_small_task
from ssl_bench.core.errors import OptionError
from ssl_bench.core.spec import DataSpec
from tasks.contractive_autoencoder import jacobian_frobenius_sq

GRAY12 = DataSpec("gray12", channels=1, image_size=12, mean=(0.5,), std=(0.25,), hflip=False)
RGB16 = DataSpec("rgb16", channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, hflip=True)


def smooth_images(n: int, spec: DataSpec, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, spec.channels, 4, 4, generator=g)
    return F.interpolate(coarse, size=spec.image_size, mode="bilinear", align_corners=False)


def reference_frobenius_sq(encode, images: torch.Tensor) -> torch.Tensor:
    """Σ over code units and pixels of each image's own block of the full Jacobian."""
    jacobian = torch.autograd.functional.jacobian(encode, images)  # (N, K, N, C, H, W)
    n = len(images)
    return torch.stack([jacobian[i, :, i].pow(2).sum() for i in range(n)])


def tiny_encoders():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, 16), nn.Tanh(), nn.Linear(16, 4))
    conv = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Softplus(), nn.Flatten(), nn.Linear(27, 5),
                         nn.Sigmoid())
    return {"mlp": mlp.double(), "conv": conv.double()}


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_exact_penalty_is_the_squared_frobenius_norm_of_the_jacobian(kind):
    encoder = tiny_encoders()[kind]
    images = torch.rand(3, 2, 5, 5, dtype=torch.float64)
    exact = jacobian_frobenius_sq(encoder, images, "exact")
    torch.testing.assert_close(exact, reference_frobenius_sq(encoder, images).float())


def test_projection_estimate_averages_to_the_exact_value():
    encoder = tiny_encoders()["mlp"]
    images = torch.rand(3, 2, 5, 5, dtype=torch.float64)
    exact = jacobian_frobenius_sq(encoder, images, "exact")
    torch.manual_seed(1)
    one = jacobian_frobenius_sq(encoder, images, "projection", projections=1)
    assert not torch.allclose(one, exact, rtol=0.05)  # one draw is noisy ...
    many = jacobian_frobenius_sq(encoder, images, "projection", projections=4000)
    torch.testing.assert_close(many, exact, rtol=0.08, atol=0.0)  # ... its mean is not biased


def test_task_penalty_is_each_images_own_jacobian_in_eval_mode():
    """In train mode too: the penalty uses the encoder in eval mode, so an image's value
    does not depend on the rest of the batch, and it equals the reference Jacobian."""
    task = build_small_task("contractive-autoencoder", GRAY12, code_dim=3)
    assert task.jacobian == "exact"
    images = smooth_images(3, GRAY12)
    task.train()
    with_first = task.jacobian_frobenius_sq(images[:2])
    with_other = task.jacobian_frobenius_sq(images[[0, 2]])
    assert task.backbone.training  # the mode is restored
    torch.testing.assert_close(with_first[0], with_other[0])
    task.eval()
    reference = reference_frobenius_sq(task.encode, images[:2])
    torch.testing.assert_close(with_first.detach(), reference, rtol=1e-4, atol=1e-12)


def test_penalty_is_trained_through_and_logged():
    task = build_small_task("contractive-autoencoder", RGB32, code_dim=4, weight=1e3)
    images = smooth_images(4, RGB32)
    loss, logs = task.loss(images)
    torch.testing.assert_close(loss.detach(), logs["recon_loss"] + logs["contractive_loss"])
    torch.testing.assert_close(logs["contractive_loss"], 1e3 * logs["jacobian_frobenius_sq"])
    penalty, _ = task.penalty(images, task.encode(images))
    (grad,) = torch.autograd.grad(penalty, task.bottleneck.weight)
    assert grad.abs().sum() > 0  # double backpropagation reaches the encoder
    task.eval()  # (a train-mode forward would move the BatchNorm statistics in between)
    with torch.no_grad():  # held-out metrics: a value without a graph
        code = task.encode(images)
        value, logs = task.penalty(images, code)
        task.bottleneck.weight /= 2  # halve the code: ‖J‖² falls 4-fold, the ratio stays
        task.bottleneck.bias /= 2
        _, halved = task.penalty(images, task.encode(images))
    assert not value.requires_grad and value > 0
    spread = code.var(dim=0, correction=0).sum()
    torch.testing.assert_close(logs["relative_jacobian_sq"], logs["jacobian_frobenius_sq"] / spread)
    torch.testing.assert_close(halved["jacobian_frobenius_sq"], logs["jacobian_frobenius_sq"] / 4)
    torch.testing.assert_close(halved["relative_jacobian_sq"], logs["relative_jacobian_sq"])


def test_auto_is_exact_for_small_codes_only():
    assert build_small_task("contractive-autoencoder", RGB32, code_dim=8).jacobian == "exact"
    task = build_small_task("contractive-autoencoder", RGB32)
    assert task.options.code_dim == 32 and task.jacobian == "projection"
    assert task.summary()["jacobian"] == "projection"
    forced = build_small_task("contractive-autoencoder", RGB32, code_dim=4, jacobian="projection")
    assert forced.jacobian == "projection"


@pytest.mark.parametrize("spec", [RGB32, GRAY28], ids=["rgb32", "gray28"])
def test_shapes_and_metrics(spec):
    task = build_small_task("contractive-autoencoder", spec, code_dim=6).eval()
    images = smooth_images(4, spec)
    assert task.task_features(images).shape == (4, 6)
    assert set(task.pretext_metrics(images)) == {"loss", "recon_loss", "psnr_db",
                                                 "contractive_loss", "jacobian_frobenius_sq",
                                                 "relative_jacobian_sq"}


def test_loss_falls_and_the_penalty_contracts_the_code():
    images = smooth_images(8, RGB16)
    results = {}
    for weight in (0.0, 1e4):
        torch.manual_seed(0)
        task = build_small_task("contractive-autoencoder", RGB16, code_dim=8, decoder_width=8,
                                weight=weight)
        optimizers = task.configure_optimizers(task.default_optim(len(images)))
        logs = [task.training_step(images, optimizers) for _ in range(30)]
        losses = [float(step["recon_loss"]) for step in logs]
        assert sum(losses[-5:]) < 0.75 * sum(losses[:5])
        with torch.no_grad():
            results[weight] = float(task.jacobian_frobenius_sq(images).mean())
    assert results[1e4] < 0.5 * results[0.0]


@pytest.mark.parametrize("key,value", [("jacobian", "finite-difference"), ("projections", 0),
                                       ("weight", -1.0), ("code_dim", 0)])
def test_bad_options_raise(key, value):
    with pytest.raises(OptionError):
        build_small_task("contractive-autoencoder", RGB32, **{key: value})


def test_unknown_method_raises():
    with pytest.raises(OptionError):
        jacobian_frobenius_sq(nn.Flatten(), torch.rand(1, 1, 2, 2), "auto")
