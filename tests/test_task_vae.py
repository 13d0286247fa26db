"""The VAE (Kingma & Welling 2014): ELBO terms, likelihoods, features and metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from conftest import GRAY28, RGB32, build_small_task
from ssl_bench.core.errors import OptionError
from tasks.vae import LOGVAR_FLOOR, dequantize, gaussian_kl, gaussian_nll


def smooth_images(n: int, channels: int, size: int) -> torch.Tensor:
    """8-bit-valued images with structure: 4×4 noise upsampled bilinearly."""
    x = F.interpolate(torch.rand(n, channels, 4, 4), size=(size, size), mode="bilinear",
                      align_corners=False)
    return torch.round(x * 255) / 255


@pytest.mark.parametrize("spec,likelihood,out_channels",
                         [(RGB32, "gaussian", 6), (GRAY28, "bernoulli", 1)],
                         ids=["rgb32", "gray28"])
def test_shapes_and_auto_likelihood(spec, likelihood, out_channels):
    task = build_small_task("vae", spec, latent_dim=16)
    assert task.likelihood == likelihood
    images = torch.rand(4, spec.channels, spec.image_size, spec.image_size)
    mu, logvar = task.encode(images)
    assert mu.shape == logvar.shape == (4, 16)
    out, out_logvar = task.decode(mu)
    assert out.shape == (4, spec.channels, spec.image_size, spec.image_size)
    assert task.decoder(mu).shape[1] == out_channels
    assert (out_logvar is None) == (likelihood == "bernoulli")
    task.eval()
    assert task.task_features(images).shape == (4, 16)
    assert set(task.pretext_metrics(images)) == {"loss", "recon_nats", "kl_nats",
                                                 "neg_elbo_nats", "bits_per_dim"}
    assert task.summary()["likelihood"] == likelihood


@pytest.mark.parametrize("spec", [RGB32, GRAY28], ids=["gaussian", "bernoulli"])
def test_loss_falls_on_a_fixed_batch(spec):
    images = smooth_images(8, spec.channels, spec.image_size)
    if spec.channels == 1:  # binary images: the Bernoulli loss is then a true NLL, floor 0
        images = (images > 0.5).float()
    task = build_small_task("vae", spec, latent_dim=16, decoder_width=8)
    optimizers = task.configure_optimizers(task.default_optim(len(images)))
    task.train()
    losses = [float(task.training_step(images, optimizers)["loss"]) for _ in range(30)]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.96 * first  # ≈ 8% lower after 30 steps; the constant D·ln 256 dominates


def test_closed_form_kl_matches_torch_distributions():
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    reference = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)),
                              Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(dim=1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), reference)
    assert torch.all(gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)) == 0)


def test_gaussian_nll_has_all_constants_on_the_256_level_scale():
    mean, logvar = torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    x = torch.rand(2, 3, 4, 4)
    density = Normal(mean, torch.exp(0.5 * logvar)).log_prob(x).flatten(1).sum(dim=1)
    torch.testing.assert_close(gaussian_nll(mean, logvar, x), -density + 48 * math.log(256))


def test_dequantization_stays_in_the_pixel_bin():
    images = torch.randint(0, 256, (4, 3, 8, 8)).float() / 255
    levels = torch.round(images * 255)
    x = dequantize(images)
    assert torch.all(x >= levels / 256) and torch.all(x < (levels + 1) / 256)


def test_decoder_logvar_has_a_soft_floor():
    task = build_small_task("vae", RGB32, latent_dim=8)
    with torch.no_grad():
        task.decoder.decoder.to_image.bias[3:] = -1e4  # drive the raw log-variance far down
    _, logvar = task.decode(torch.randn(2, 8))
    assert torch.all(logvar >= LOGVAR_FLOOR) and torch.all(logvar < LOGVAR_FLOOR + 1e-3)


@pytest.mark.parametrize("beta", [0.0, 1.0, 4.0])
def test_loss_is_reconstruction_plus_beta_kl(beta):
    task = build_small_task("vae", GRAY28, beta=beta)
    loss, logs = task.loss(torch.rand(4, 1, 28, 28))
    torch.testing.assert_close(loss, logs["recon_nats"] + beta * logs["kl_nats"])
    if beta == 0:
        assert torch.equal(loss.detach(), logs["recon_nats"])
    assert logs["kl_nats"] > 0
    # the logged negative ELBO is β = 1 whatever β trains
    torch.testing.assert_close(logs["neg_elbo_nats"], logs["recon_nats"] + logs["kl_nats"])
    assert not any(v.requires_grad for v in logs.values())


def test_neg_elbo_draws_from_the_global_rng():
    task = build_small_task("vae", RGB32, latent_dim=8)
    task.eval()
    images = smooth_images(3, 3, 32)
    with torch.no_grad():
        torch.manual_seed(5)
        first = task.neg_elbo(images)
        second = task.neg_elbo(images)
        torch.manual_seed(5)
        again = task.neg_elbo(images)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], second[0])  # fresh ε and dequantisation noise


def test_task_features_are_the_posterior_mean_and_deterministic():
    task = build_small_task("vae", RGB32, latent_dim=12)
    task.eval()
    images = torch.rand(4, 3, 32, 32)
    features = task.task_features(images)
    assert torch.equal(features, task.task_features(images))
    with torch.no_grad():
        assert torch.equal(features, task.encode(images)[0])


@pytest.mark.parametrize("spec", [RGB32, GRAY28], ids=["gaussian", "bernoulli"])
def test_bits_per_dim_relation_and_deterministic_metrics(spec):
    task = build_small_task("vae", spec, beta=4.0)
    images = smooth_images(6, spec.channels, spec.image_size)
    metrics = task.held_out_metrics([images[:4], images[4:]])
    dims = spec.channels * spec.image_size**2
    bits = metrics["neg_elbo_nats"] / (dims * math.log(2))
    assert metrics["bits_per_dim"] == pytest.approx(bits)
    assert metrics["neg_elbo_nats"] == pytest.approx(metrics["recon_nats"] + metrics["kl_nats"])
    assert metrics["loss"] == pytest.approx(metrics["recon_nats"] + 4.0 * metrics["kl_nats"])
    torch.rand(100)  # advance the global RNG: the held-out pass seeds its own draws
    assert task.held_out_metrics([images[:4], images[4:]]) == metrics
    assert task.training  # held_out_metrics restores the mode


@pytest.mark.parametrize("key,value", [("likelihood", "poisson"), ("latent_dim", 0),
                                       ("beta", -1.0), ("decoder_width", 0)])
def test_bad_options_raise(key, value):
    with pytest.raises(OptionError):
        build_small_task("vae", RGB32, **{key: value})


def test_checkpoints_from_before_the_shared_decoder_still_load():
    """Runs saved with the decoder as ``project`` + ``decoder`` resume and re-evaluate."""
    task = build_small_task("vae", RGB32)
    legacy = {}
    for key, value in task.state_dict().items():
        if key.startswith("decoder.project."):
            key = key[len("decoder."):]
        elif key.startswith("decoder.decoder."):
            key = key[len("decoder."):]
        legacy[key] = value.clone() + 1.0 if value.is_floating_point() else value.clone()
    clone = build_small_task("vae", RGB32)
    clone.load_state_dict(legacy)
    torch.testing.assert_close(clone.decoder.project[0].weight,
                               task.decoder.project[0].weight + 1.0)
