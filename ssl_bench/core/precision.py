"""Numeric precision of pretraining and feature extraction: fp32, or bf16 autocast.

``bf16`` runs the forward passes under ``torch.autocast`` with ``torch.bfloat16``:
matmuls and convolutions compute in bf16 (fp32 accumulation), while parameters,
gradients, optimizer state and the losses autocast keeps in fp32 (softmax,
cross-entropy, reductions) stay fp32. ``auto`` picks bf16 where the hardware
computes it natively — any CUDA device that supports it, and CPUs with AVX512-BF16
or AMX — and fp32 elsewhere, where emulated bf16 would be slower than fp32.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ssl_bench.core.errors import OptionError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI imports this module
    import torch

#: Values of ``--precision``.
PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matmuls natively (CUDA with bf16 support; a CPU
    with AVX512-BF16 or AMX tiles)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # private probes of torch.cpu (torch ≥ 2.3); without them, assume emulated bf16
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"`` for ``--precision`` ``precision`` on ``device``.

    Raises:
        OptionError: ``precision`` not one of :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise OptionError(f"--precision {precision!r} is not valid; choose one of "
                          f"{', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved ``precision`` (``"fp32"``: none)."""
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def attention_kernels(device: torch.device) -> contextlib.AbstractContextManager:
    """The kernels of ``scaled_dot_product_attention`` for ViT blocks (backbones and MAE's
    decoder) on ``device``, for the grad mode at entry. On the CPU while gradients are
    recorded: the math backend (two batched matmuls around a softmax; the same
    function), because the flash kernel's bf16 backward is slow on the short sequences
    of small images (17–65 tokens at 32 px): vit_tiny's forward+backward under bf16
    autocast ran at 27–31 images/s with it and 43–45 with the math backend (batch 64,
    one thread; fp32 22–28 either way), and an MAE step 1.6–1.8× faster. On the CPU
    without gradients (evaluation): the flash kernel, math where it does not apply; in
    bf16 it ran vit_tiny's feature extraction 1.3–1.7× and MAE's held-out pass
    1.35–1.45× as fast as math (batch 512, 2 threads; fp32 about the same).
    Elsewhere torch's own choice."""
    import torch

    if device.type == "cpu":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if torch.is_grad_enabled():
            return sdpa_kernel([SDPBackend.MATH])
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])
    return contextlib.nullcontext()
