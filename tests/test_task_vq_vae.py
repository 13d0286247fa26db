"""The VQ-VAE (van den Oord et al. 2017): quantisation, straight-through gradient, codebook
updates (loss and EMA), dead-code restarts, perplexity, shapes and options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import GRAY28, RGB32, build_small_task

from ssl_bench.core.errors import OptionError
from ssl_bench.core.spec import DataSpec
from tasks.vq_vae import code_perplexity, laplace_smoothed, nearest_codes, positions

RGB16 = DataSpec("rgb16", channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, hflip=True)
MODES = ["loss", "ema"]
NO_RESTARTS = 1e-9  # restart_below: only codes unused in the first step (N = 0) restart


def smooth_images(n: int, spec: DataSpec, seed: int = 0) -> torch.Tensor:
    """Images with structure: 4×4 noise upsampled bilinearly, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, spec.channels, 4, 4, generator=g)
    return F.interpolate(coarse, size=spec.image_size, mode="bilinear", align_corners=False)


def gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance of each row of ``a`` to its nearest row of ``b``, computed exactly
    (``torch.cdist`` goes through a matrix product and is off by ~1e-3 near 0)."""
    return (a.detach()[:, None, :] - b.detach()[None, :, :]).norm(dim=-1).min(dim=1).values


def trained_once(mode: str, images: torch.Tensor, **options):
    """A task on RGB16 after one training step on ``images`` (which initialises the codebook)."""
    task = build_small_task("vq-vae", RGB16, codebook_update=mode, **options).train()
    optimizers = task.configure_optimizers(task.default_optim(len(images)))
    task.training_step(images, optimizers)
    return task, optimizers


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", [RGB32, GRAY28], ids=["rgb32", "gray28"])
def test_shapes_logs_and_summary(spec, mode):
    task = build_small_task("vq-vae", spec, codebook_update=mode, num_codes=32, code_dim=16)
    x = smooth_images(4, spec)
    z_e = task.encode(x)
    assert z_e.shape == (4, 16, 4, 4) and z_e.dtype == torch.float32
    z_q, codes = task.quantize(z_e)
    assert z_q.shape == z_e.shape and codes.shape == (4, 4, 4) and codes.dtype == torch.int64
    assert task.decode(z_q).shape == x.shape
    task.eval()
    assert task.features(x).shape == (4, task.backbone.num_features)
    expected = {"loss", "recon_loss", "commitment_loss", "psnr_db", "perplexity"}
    expected |= {"codebook_loss"} if mode == "loss" else set()  # EMA mode drops the term
    assert set(task.pretext_metrics(x)) == expected
    summary = task.summary()
    assert summary["latent_shape"] == [4, 4] and summary["bits_per_image"] == 16 * 5
    assert summary["parameters"].get("codebook", 0) == (32 * 16 if mode == "loss" else 0)
    assert ("codebook" in dict(task.named_parameters())) == (mode == "loss")


@pytest.mark.parametrize("mode", MODES)
def test_loss_falls_on_a_fixed_batch(mode):
    x = smooth_images(8, RGB16)
    task = build_small_task("vq-vae", RGB16, codebook_update=mode, num_codes=16, decoder_width=8,
                            restart_below=NO_RESTARTS)  # else restarts fit codes to the batch
    optimizers = task.configure_optimizers(task.default_optim(len(x)))
    task.train()
    losses = [float(task.training_step(x, optimizers)["loss"]) for _ in range(30)]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])


def test_quantisation_picks_the_nearest_embedding():
    g = torch.Generator().manual_seed(1)
    z, codebook = torch.randn(200, 8, generator=g), torch.randn(50, 8, generator=g)
    codes = nearest_codes(z, codebook)
    distances = ((z[:, None, :] - codebook[None, :, :]) ** 2).sum(dim=-1)  # (200, 50)
    assert torch.equal(codes, distances.argmin(dim=1))
    task = build_small_task("vq-vae", RGB16, num_codes=16, code_dim=4)
    z_e = task.encode(smooth_images(3, RGB16))
    z_q, codes = task.quantize(z_e)
    flat, chosen = positions(z_e), positions(z_q)  # (12, 4) each
    assert torch.equal(chosen, task.codebook[codes.flatten()])
    torch.testing.assert_close((flat - chosen).norm(dim=1), gap(flat, task.codebook))


def test_perplexity_is_k_for_uniform_usage_and_1_for_a_single_code():
    assert float(code_perplexity(torch.arange(16).repeat(3), 16)) == pytest.approx(16.0)
    assert float(code_perplexity(torch.full((5, 2, 2), 7), 16)) == pytest.approx(1.0)
    assert float(code_perplexity(torch.tensor([0, 0, 1, 1]), 10)) == pytest.approx(2.0)
    p = torch.tensor([0.5, 0.25, 0.25])
    assert float(code_perplexity(torch.tensor([0, 0, 1, 2]), 3)) == pytest.approx(
        math.exp(-(p * p.log()).sum().item()))


def test_straight_through_gradient_reaches_the_encoder():
    """With β = 0 and EMA codebook the loss is the reconstruction alone; its gradient
    reaches every backbone layer, and z_e gets exactly the decoder input's gradient."""
    task = build_small_task("vq-vae", RGB16, codebook_update="ema", beta=0.0).train()
    captured = {}

    def keep(name):
        def hook(module, inputs, output=None):
            tensor = inputs[0] if output is None else output
            tensor.retain_grad()
            captured[name] = tensor
        return hook

    task.project.register_forward_hook(keep("z_e"))
    task.decoder.register_forward_pre_hook(keep("decoder_input"))
    loss, logs = task.loss(smooth_images(4, RGB16))
    assert float(loss.detach()) == pytest.approx(float(logs["recon_loss"]))
    loss.backward()
    for name, p in task.backbone.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert captured["z_e"].grad.abs().sum() > 0
    torch.testing.assert_close(captured["z_e"].grad, captured["decoder_input"].grad)


def test_codebook_gradient_pulls_each_used_code_to_the_mean_of_its_encoder_outputs():
    task, _ = trained_once("loss", smooth_images(8, RGB16), restart_below=NO_RESTARTS)
    x = smooth_images(8, RGB16, seed=1)
    z_e = task.encode(x).detach()
    z_q, codes = task.quantize(z_e)
    task.zero_grad()
    F.mse_loss(z_q, z_e).backward()  # the codebook term of eq. 3
    flat, codes = positions(z_e), codes.flatten()
    counts = torch.bincount(codes, minlength=len(task.codebook)).float()  # (K,)
    sums = torch.zeros_like(task.codebook).index_add_(0, codes, flat)  # (K, D)
    # d/de_k of mean ‖e − z‖² over M·D elements: 2·n_k·(e_k − mean_k) / (M·D)
    expected = 2 * (counts[:, None] * task.codebook - sums) / flat.numel()
    torch.testing.assert_close(task.codebook.grad, expected)


@pytest.mark.parametrize("mode", MODES)
def test_one_step_moves_each_used_code_towards_its_encoder_outputs(mode):
    task, optimizers = trained_once(mode, smooth_images(8, RGB16), restart_below=NO_RESTARTS)
    x = smooth_images(8, RGB16, seed=1)
    with torch.no_grad():  # the same z_e and codes as the step's (train-mode BatchNorm)
        z_e = positions(task.encode(x))
        codes = task.quantize(task.encode(x))[1].flatten()
    used = codes.unique()
    means = torch.stack([z_e[codes == k].mean(dim=0) for k in used])  # (U, D)
    before = (task.codebook[used].detach() - means).norm(dim=1)
    task.training_step(x, optimizers)
    after = (task.codebook[used].detach() - means).norm(dim=1)
    assert (after < before).all()
    if mode == "ema":  # e = m / Laplace-smoothed N after every step
        smoothed = laplace_smoothed(task.cluster_size, task.options.epsilon)
        torch.testing.assert_close(task.codebook, task.code_sums / smoothed[:, None])


@pytest.mark.parametrize("mode", MODES)
def test_codebook_changes_only_in_training_mode(mode):
    task, _ = trained_once(mode, smooth_images(8, RGB16))
    state = {k: v.clone() for k, v in task.state_dict().items() if "backbone" not in k}
    task.held_out_metrics([smooth_images(8, RGB16, seed=2)])
    task.eval()
    task.loss(smooth_images(8, RGB16, seed=3))
    for key, value in state.items():
        assert torch.equal(task.state_dict()[key], value), key


def test_first_training_step_initialises_the_codebook_from_encoder_outputs():
    task = build_small_task("vq-vae", RGB16, num_codes=16).train()
    x = smooth_images(8, RGB16)  # 8·2·2 = 32 positions ≥ 16 codes: all distinct
    with torch.no_grad():
        z_e = task.encode(x)  # BatchNorm in train mode: the same z_e as in loss
        before = F.mse_loss(z_e, task.quantize(z_e)[0])  # with the random codebook
        _, logs = task.loss(x)
        z_e = positions(z_e)
    torch.testing.assert_close(logs["commitment_loss"], before)  # restarts come after
    assert gap(task.codebook, z_e).max() < 1e-6
    assert len(torch.unique(task.codebook.detach(), dim=0)) == 16


@pytest.mark.parametrize("mode", MODES)
def test_restart_moves_only_dead_codes_to_encoder_outputs(mode):
    task = build_small_task("vq-vae", RGB16, codebook_update=mode, num_codes=16)
    z = torch.randn(10, task.options.code_dim)
    with torch.no_grad():
        task.cluster_size.copy_(torch.linspace(0.0, 3.0, 16))  # < 1 for codes 0…4, =1 at 5
        kept = task.codebook[5:].clone()
        task.restart_dead_codes(z)
    restarted = task.codebook[:5].detach()
    assert gap(restarted, z).max() < 1e-6
    assert len(torch.unique(restarted, dim=0)) == 5  # drawn without replacement
    assert torch.equal(task.codebook[5:].detach(), kept)
    assert torch.equal(task.cluster_size[:6], torch.ones(6))
    if mode == "ema":  # m = e·N with N = 1
        assert torch.equal(task.code_sums[:5], restarted)


def test_more_dead_codes_than_outputs_reuse_a_random_order_of_the_outputs():
    """The r-th dead code takes z[order[r mod M]] for one random permutation ``order``:
    without replacement up to M codes, then the same order again."""
    task = build_small_task("vq-vae", RGB16, num_codes=16)
    z = torch.randn(6, task.options.code_dim)
    with torch.no_grad():
        task.cluster_size.copy_(torch.tensor([0.0, 5.0] * 8))  # the even codes are dead
        live = task.codebook[1::2].clone()
        torch.manual_seed(3)
        task.restart_dead_codes(z)
    torch.manual_seed(3)
    order = torch.randperm(6)
    torch.testing.assert_close(task.codebook[::2].detach(), z[order[torch.arange(8) % 6]])
    assert torch.equal(task.codebook[1::2].detach(), live)
    assert torch.equal(task.cluster_size, torch.tensor([1.0, 5.0] * 8))


def test_laplace_smoothing_keeps_the_total_and_lifts_empty_clusters():
    counts = torch.tensor([0.0, 3.0, 1.0])
    smoothed = laplace_smoothed(counts, 0.5)
    torch.testing.assert_close(smoothed, (counts + 0.5) / 5.5 * 4)
    assert smoothed.sum().item() == pytest.approx(4.0) and smoothed.min() > 0


def test_render_shows_input_reconstruction_and_code_map():
    task = build_small_task("vq-vae", RGB32, num_codes=32).eval()
    codes = torch.tensor([[[0, 1], [1, 31]]])
    colours = task.code_colours(codes)
    assert colours.shape == (1, 3, 2, 2)
    assert torch.equal(colours[0, :, 0, 1], colours[0, :, 1, 0])
    assert not torch.equal(colours[0, :, 0, 0], colours[0, :, 0, 1])
    figure = task.render(smooth_images(3, RGB32))
    assert len(figure.axes) == 9 and figure.axes[6].get_xlabel().endswith("codes")
    import matplotlib.pyplot as plt

    plt.close(figure)


@pytest.mark.parametrize("options", [{"codebook_update": "kmeans"}, {"num_codes": 1},
                                     {"code_dim": 0}, {"beta": -0.1}, {"decay": 1.0},
                                     {"decay": 0.0}, {"epsilon": 0.0}, {"restart_below": 0.0},
                                     {"decoder_width": 0}])
def test_bad_options_raise(options):
    with pytest.raises(OptionError):
        build_small_task("vq-vae", RGB16, **options)
