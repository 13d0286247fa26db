"""Throughput of training steps in fp32 and bf16 on CPU (pytest-benchmark).

Run::

    python -m pytest tests/benchmarks/test_throughput.py --benchmark-enable

and read the table printed at the end (``--benchmark-json FILE`` keeps the same numbers:
each benchmark's ``extra_info``). Without ``--benchmark-enable`` (the default) every
benchmark runs once on :data:`SMOKE_BATCH` images as a smoke test and no table is printed.

Everything runs on the CPU with torch's thread count (``torch.get_num_threads()``, shown
in the table's title) on :data:`BATCH` random RGB 32×32 images:

* ``test_matmul_peak``: a 2048×2048 by 2048×2048 matmul, the machine's matmul peak; the
  bf16 one is the denominator of every "peak %".
* ``test_backbone_step``: forward + backward of convnet, resnet18 and vit_tiny (loss: the
  mean square of the pooled features), no optimizer.
* ``test_pretext_training_step``: one ``training_step`` (forward, backward, optimizer
  step) of every pretraining task on convnet (vit_tiny for tasks that need a ViT).
* ``test_mae_against_lightly``: lightly's MAE recipe and ours at the same sizes, one
  after the other (skipped without lightly: ``pip install -e '.[bench]'``).

Each runs in two precisions: ``fp32`` (no autocast, NCHW) and ``bf16`` (under
:func:`ssl_bench.core.precision.autocast`, model and batch in channels_last, as the
training loop runs it). Columns:

* images/s: batch / mean step time.
* bf16×: bf16 images/s / fp32 images/s of the same row (the goal for convnet: ≥ 1.8).
* ratio: mean step time / mean time of the task's own backbone's forward + backward on
  the same batch, precision and layout (rotation's four rotations cost about 4; MAE's
  encoder sees a quarter of the patches).
* GFLOP/s: FLOPs of one step (``FlopCounterMode``: matmuls, convolutions and attention,
  forward and backward) / mean step time.
* peak %: GFLOP/s / the bf16 matmul GFLOP/s of this session (blank when
  ``test_matmul_peak`` did not run).
* vs lightly: our MAE's images/s / lightly's (the goal: ≥ 1.2).

The machine may be shared: compare rows measured close together (the two precisions of
a row run one after the other; each bf16× and vs-lightly pair too). When other jobs keep
the cores busy, ``OMP_NUM_THREADS=1`` gives far steadier numbers: with more threads than
free cores, every parallel kernel waits for its slowest thread.
"""

from __future__ import annotations

import time
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from backbones import build_backbone
from conftest import RGB32
from ssl_bench.build import build_task
from ssl_bench.core.errors import IncompatibleError
from ssl_bench.core.precision import autocast
from ssl_bench.core.registry import TASKS
from summary_table import SummaryTable

BATCH = 64
SMOKE_BATCH = 8  # benchmarks disabled: one quick step that checks the code runs
PEAK_SIDE = 2048  # square matmul of the peak measurement
REFERENCE_ROUNDS = 5  # timed backbone passes behind each "ratio"
CPU = torch.device("cpu")
PRECISIONS = ["fp32", "bf16"]
PRETRAINING_TASKS = [n for n in TASKS.names() if TASKS.get(n).pretrains]

#: Speed of the rows measured so far in this session, which later rows divide by: images/s,
#: GFLOP/s for the matmuls (the bf16 one is the peak).
_MEASURED: dict[tuple[str, ...], float] = {}


def _flash_attention_flops(query, key, value, *args, **kwargs) -> int:
    """FLOPs of attention forward from the shapes of q, k, v (torch's formula)."""
    return sdpa_flop_count(query, key, value)


def _flash_attention_backward_flops(grad_out, query, key, value, *args, **kwargs) -> int:
    """FLOPs of attention backward from the shapes of dO, q, k, v (torch's formula)."""
    return sdpa_backward_flop_count(grad_out, query, key, value)


#: FlopCounterMode has no formula for the CPU kernels of scaled_dot_product_attention.
_CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _flash_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        _flash_attention_backward_flops,
}


@pytest.fixture(scope="session")
def table(pytestconfig) -> SummaryTable:
    """The table of the module docstring, printed at the end of the session."""
    columns = [("bench", "benchmark", "{}"), ("name", "name", "{}"),
               ("backbone", "backbone", "{}"), ("precision", "precision", "{}"),
               ("images_per_s", "images/s", "{:.1f}"), ("speedup_vs_fp32", "bf16×", "{:.2f}"),
               ("step_over_backbone", "ratio", "{:.2f}"), ("gflop_per_s", "GFLOP/s", "{:.1f}"),
               ("peak_percent", "peak %", "{:.1f}"), ("speedup_vs_lightly", "vs lightly", "{:.2f}")]
    summary = SummaryTable(f"throughput, batch {BATCH}, {torch.get_num_threads()} threads",
                           columns)
    pytestconfig.pluginmanager.register(summary, "throughput-table")
    return summary


def _batch(benchmark) -> int:
    """Images per step: :data:`BATCH`, or :data:`SMOKE_BATCH` when benchmarks are off."""
    return BATCH if benchmark.enabled else SMOKE_BATCH


def _layout(module: nn.Module, images: torch.Tensor, precision: str):
    """The module and ``(N, C, H, W)`` images as the training loop lays them out:
    channels_last under bf16 (oneDNN's fast layout), unchanged under fp32."""
    if precision == "bf16":
        return (module.to(memory_format=torch.channels_last),
                images.contiguous(memory_format=torch.channels_last))
    return module, images


def _count_flops(step: Callable[[], object]) -> int:
    """FLOPs of one call of ``step`` (which also warms it up)."""
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION_FLOPS) as counter:
        step()
    return counter.get_total_flops()


def _mean_seconds(step: Callable[[], object], rounds: int) -> float:
    """Mean wall time of ``rounds`` calls of ``step`` (seconds), after one untimed call."""
    step()
    start = time.perf_counter()
    for _ in range(rounds):
        step()
    return (time.perf_counter() - start) / rounds


def _backbone_pass(backbone: nn.Module, images: torch.Tensor, precision: str):
    """A step of forward + backward of ``backbone`` on ``images``; the loss is the mean
    square of the pooled features (float32)."""
    def step():
        backbone.zero_grad(set_to_none=True)
        with autocast(precision, CPU):
            features = backbone(images)  # (N, D)
        features.float().square().mean().backward()
    return step


def _record(benchmark, table: SummaryTable, key: tuple[str, ...], row: dict,
            flops: int | None = None, reference_s: float | None = None) -> None:
    """Derive the columns of the module docstring from the benchmark's mean step time,
    store them in ``extra_info`` and add the row to the table. Benchmarks disabled: the
    row's description only."""
    benchmark.extra_info.update(row)
    if benchmark.stats is None:
        return
    mean_s = benchmark.stats.stats.mean
    derived: dict[str, float | None] = {}
    if "batch_size" in row:
        derived["images_per_s"] = row["batch_size"] / mean_s
    if flops is not None:
        derived["gflop_per_s"] = flops / mean_s / 1e9
    _MEASURED[key] = derived.get("images_per_s") or derived["gflop_per_s"]
    peak = _MEASURED.get(("matmul", "bf16"))
    if peak and flops is not None:
        derived["peak_percent"] = 100 * derived["gflop_per_s"] / peak
    if reference_s is not None:
        derived["step_over_backbone"] = mean_s / reference_s
    fp32 = _MEASURED.get(key[:-1] + ("fp32",))
    if key[-1] == "bf16" and fp32:
        derived["speedup_vs_fp32"] = _MEASURED[key] / fp32
    benchmark.extra_info.update(derived)
    table.add({**row, **derived})


@pytest.mark.parametrize("precision", PRECISIONS)
def test_matmul_peak(benchmark, table, precision):
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(2, PEAK_SIDE, PEAK_SIDE, dtype=dtype)
    flops = 2 * PEAK_SIDE ** 3
    torch.mm(a, b)  # warm-up: oneDNN creates its kernel on the first call
    benchmark(torch.mm, a, b)
    _record(benchmark, table, ("matmul", precision),
            {"bench": "matmul", "name": f"{PEAK_SIDE}²", "precision": precision}, flops)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("backbone_name", ["convnet", "resnet18", "vit_tiny"])
def test_backbone_step(benchmark, table, backbone_name, precision):
    torch.manual_seed(0)
    batch = _batch(benchmark)
    backbone, images = _layout(build_backbone(backbone_name, 3, 32),
                               torch.rand(batch, 3, 32, 32), precision)
    step = _backbone_pass(backbone, images, precision)
    flops = _count_flops(step)
    benchmark(step)
    assert all(torch.isfinite(p.grad).all() for p in backbone.parameters() if p.grad is not None)
    _record(benchmark, table, ("backbone", backbone_name, precision),
            {"bench": "backbone fwd+bwd", "name": backbone_name, "backbone": backbone_name,
             "precision": precision, "batch_size": batch}, flops)


def _task(name: str):
    """The task on convnet, or on vit_tiny when it needs a ViT, and that backbone's name."""
    try:
        return build_task(name, "convnet", RGB32), "convnet"
    except IncompatibleError:
        return build_task(name, "vit_tiny", RGB32), "vit_tiny"


def _training_step(task, precision: str, batch: int):
    """``task``'s training step (a callable that returns its logs) on ``batch`` random
    images laid out for ``precision``, and those ``(batch, 3, 32, 32)`` images."""
    task, images = _layout(task.train(), torch.rand(batch, 3, 32, 32), precision)
    optimizers = task.configure_optimizers(task.default_optim(batch))
    labels = {"labels": torch.randint(0, 10, (batch,))} if task.uses_labels else {}

    def step():
        with autocast(precision, CPU):
            return task.training_step(images, optimizers, **labels)
    return step, images


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", PRETRAINING_TASKS)
def test_pretext_training_step(benchmark, table, name, precision):
    torch.manual_seed(0)
    batch = _batch(benchmark)
    task, backbone_name = _task(name)
    step, images = _training_step(task, precision, batch)
    flops = _count_flops(step)
    logs = benchmark(step)
    assert torch.isfinite(torch.as_tensor(float(logs["loss"])))
    rounds = REFERENCE_ROUNDS if benchmark.enabled else 1
    reference_s = _mean_seconds(_backbone_pass(task.backbone, images, precision), rounds)
    _record(benchmark, table, ("task", name, precision),
            {"bench": "training step", "name": name, "backbone": backbone_name,
             "precision": precision, "batch_size": batch}, flops, reference_s)


class LightlyMAE(nn.Module):
    """lightly's MAE recipe (its ``examples/pytorch/mae.py``, lightly 1.6 API) at our
    MAE's sizes: lightly's masked timm ViT encodes the class token and the visible
    patches, a linear layer embeds them into the decoder width, lightly's decoder fills
    the masked positions with its mask token and adds its fixed sin-cos embedding, and a
    linear head predicts the masked patches only. Target: each patch normalised by its
    own mean and variance (our ``norm_pix_loss``; the recipe's example uses raw pixels).

    Args:
        vit: a timm VisionTransformer with one class token.
        decoder_dim, decoder_depth, decoder_heads, mask_ratio: as our MAE's options.
    """

    def __init__(self, vit: nn.Module, decoder_dim: int, decoder_depth: int,
                 decoder_heads: int, mask_ratio: float) -> None:
        super().__init__()
        from lightly.models.modules import (MaskedVisionTransformerDecoderTIMM,
                                            MaskedVisionTransformerTIMM)
        from lightly.models.modules.masked_vision_transformer_timm import init_weights

        self.mask_ratio = mask_ratio
        self.patch_size = vit.patch_embed.patch_size[0]
        self.encoder = MaskedVisionTransformerTIMM(vit=vit)
        self.decoder_embed = nn.Linear(vit.embed_dim, decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=vit.patch_embed.num_patches, embed_dim=decoder_dim,
            depth=decoder_depth, num_heads=decoder_heads, num_prefix_tokens=1)
        channels = vit.patch_embed.proj.in_channels
        self.prediction_head = nn.Linear(decoder_dim, self.patch_size ** 2 * channels)
        self.decoder_embed.apply(init_weights)
        self.prediction_head.apply(init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The MSE loss (float32) of normalised ``(N, C, H, W)`` images."""
        from lightly.models import utils

        length = self.encoder.sequence_length  # 1 + L
        keep, masked = utils.random_token_mask((images.shape[0], length), self.mask_ratio,
                                               device=images.device)  # (N, 1 + V), (N, L - V)
        latent = self.decoder_embed(self.encoder.encode(images, idx_keep=keep))  # (N, 1 + V, D')
        tokens = latent.new_zeros(images.shape[0], length, latent.shape[-1])  # (N, 1 + L, D')
        tokens = utils.set_at_index(tokens, keep, latent)  # (N, 1 + L, D')
        decoded = self.decoder(tokens, idx_mask=masked)  # (N, 1 + L, D')
        pred = self.prediction_head(utils.get_at_index(decoded, masked))  # (N, L - V, p²·C)
        patches = utils.patchify(images, self.patch_size)  # (N, L, p²·C)
        target = utils.normalize_mean_var(utils.get_at_index(patches, masked - 1))
        return F.mse_loss(pred.float(), target)  # ()


def _lightly_step(precision: str, batch: int):
    """A training step (a callable that returns ``{"loss": ...}``) of :class:`LightlyMAE`
    with our MAE's defaults (decoder, mask ratio, AdamW settings, no decay of biases and
    norms) on ``batch`` random images laid out for ``precision``."""
    from timm.optim import param_groups_weight_decay

    ours = build_task("mae", "vit_tiny", RGB32)
    options = ours.options
    model = LightlyMAE(build_backbone("vit_tiny", 3, 32).vit, options.decoder_dim,
                       options.decoder_depth, options.decoder_heads, options.mask_ratio).train()
    model, images = _layout(model, torch.rand(batch, 3, 32, 32), precision)
    (config,) = ours.default_optim(batch)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, config.weight_decay),
                                  lr=config.lr, betas=config.betas)
    mean, std = torch.tensor(RGB32.mean).view(1, 3, 1, 1), torch.tensor(RGB32.std).view(1, 3, 1, 1)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, CPU):
            loss = model((images - mean) / std)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach()}
    return step


@pytest.mark.parametrize("impl", ["lightly", "ours"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_mae_against_lightly(benchmark, table, impl, precision):
    pytest.importorskip("lightly", minversion="1.6",
                        reason="lightly is not installed: pip install -e '.[bench]'")
    torch.manual_seed(0)
    batch = _batch(benchmark)
    if impl == "lightly":
        step = _lightly_step(precision, batch)
    else:
        step, _ = _training_step(build_task("mae", "vit_tiny", RGB32), precision, batch)
    flops = _count_flops(step)
    logs = benchmark(step)
    assert torch.isfinite(logs["loss"])
    row = {"bench": "MAE vit_tiny", "name": impl, "backbone": "vit_tiny",
           "precision": precision, "batch_size": batch}
    if impl == "ours" and benchmark.stats is not None:
        lightly = _MEASURED.get(("mae", "lightly", precision))
        row["speedup_vs_lightly"] = lightly and batch / benchmark.stats.stats.mean / lightly
    _record(benchmark, table, ("mae", impl, precision), row, flops)
