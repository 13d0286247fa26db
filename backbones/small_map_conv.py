"""A 3×3 convolution that turns into one matrix product on maps of a few pixels.

Jigsaw and relative-patch tiles, which the backbone sees at 17 px, shrink to 5×5 and
3×3 maps in a CNN's last stages (at their source size of 7–10 px they would reach
2×2 and 1×1). There many of a kernel's taps fall on the zero padding, and oneDNN's
convolution (its backward above all, and bf16 worst) runs at a small fraction of
the machine's matmul speed. Written as a dense ``(Ho·Wo·O, H·W·C)`` matrix, the
same convolution is one matmul with no more multiply-adds than the kernel's
k²·C·O per output pixel whenever H·W ≤ k². Measured on 1,152 tiles (one thread
per core, 2 cores, forward + backward): 256→256 channels on 1×1 maps 25.9 → 7.5 ms
in fp32 and 54 → 7.3 ms in bf16; 128→128 on 2×2 maps 32 → 18 ms and 44 → 10 ms.

Training under bf16 autocast on a CPU, the dense product also pays on 4×4 maps with few
channels, although it does 16/9 of the multiply-adds: oneDNN's bf16 backward there is
slower still (forward + backward on 1,152 tiles: 64→64 channels 31 → 24 ms, 64→128 at
stride 2 33 → 12 ms; 512 images, 128→256 at stride 2: 35 → 18 ms). It does not pay
without gradients (forward only), in fp32, or once the dense matrix is large (256→256
on 4×4: 86 → 194 ms), so :data:`DENSE_ENTRIES_MAX` bounds it there.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

#: Largest dense matrix (entries, Ho·Wo·O × H·W·C) built for maps above k² pixels.
DENSE_ENTRIES_MAX = 2 ** 21


def _output_side(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@functools.lru_cache(maxsize=64)
def _tap_indices(height: int, width: int, kernel: int, stride: int, padding: int,
                 device: torch.device) -> tuple[torch.Tensor, int, int]:
    """For each (output row, output column, input row, input column), in that order:
    the flat index ``row · (k+1) + column`` of the kernel tap that connects them in a
    kernel zero-padded to ``(k+1) × (k+1)``, or of a padding (zero) tap where none does.

    Returns:
        ``(taps, Ho, Wo)``: ``taps`` ``(Ho·Wo·H·W,)`` int64 on ``device``.
    """
    def one_axis(size: int) -> torch.Tensor:
        out = _output_side(size, kernel, stride, padding)
        tap = (torch.arange(size)[None, :] - torch.arange(out)[:, None] * stride
               + padding)                                              # (out, size)
        return torch.where((tap >= 0) & (tap < kernel), tap, kernel)

    rows, cols = one_axis(height), one_axis(width)                     # (Ho, H), (Wo, W)
    taps = rows[:, None, :, None] * (kernel + 1) + cols[None, :, None, :]  # (Ho, Wo, H, W)
    return taps.flatten().to(device), rows.shape[0], cols.shape[0]


class SmallMapConv2d(nn.Conv2d):
    """``nn.Conv2d`` (square kernel, zero padding, no dilation or groups) that runs as
    a dense matrix product when the input map has at most ``kernel_size²`` pixels.

    Same parameters, state-dict keys and result (up to float summation order) as
    ``nn.Conv2d``; larger maps go through ``nn.Conv2d.forward`` unchanged, except
    maps of up to (k+1)² pixels when training under CPU bf16 autocast (see the module
    docstring). Inputs ``(N, C, H, W)`` float, any memory format; the dense path
    returns a channels-last ``(N, O, Ho, Wo)`` tensor of the input's (or autocast's)
    dtype.

    Raises:
        ValueError: for non-square kernels, dilation, groups or non-zero padding modes.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        kernel, stride, padding = self.kernel_size, self.stride, self.padding
        if (isinstance(padding, str) or kernel[0] != kernel[1] or stride[0] != stride[1]
                or padding[0] != padding[1] or self.dilation != (1, 1) or self.groups != 1
                or self.padding_mode != "zeros"):
            raise ValueError("SmallMapConv2d takes square kernels, strides and paddings "
                             "with zero padding, no dilation and no groups")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        k = self.kernel_size[0]
        if not self._runs_dense(x):
            return super().forward(x)
        taps, ho, wo = _tap_indices(h, w, k, self.stride[0], self.padding[0], x.device)
        padded = F.pad(self.weight, (0, 1, 0, 1))                 # (O, C, k+1, k+1), zero taps
        by_tap = padded.flatten(2).permute(2, 0, 1)               # ((k+1)², O, C)
        dense = by_tap.index_select(0, taps).view(ho, wo, h, w, self.out_channels, c)
        dense = dense.permute(0, 1, 4, 2, 3, 5).reshape(ho * wo * self.out_channels,
                                                        h * w * c)  # (Ho·Wo·O, H·W·C)
        flat = x.permute(0, 2, 3, 1).reshape(n, h * w * c)        # (N, H·W·C), pixel-major
        bias = None if self.bias is None else self.bias.repeat(ho * wo)  # (Ho·Wo·O,)
        out = F.linear(flat, dense, bias)                         # (N, Ho·Wo·O)
        return out.reshape(n, ho, wo, -1).permute(0, 3, 1, 2)     # (N, O, Ho, Wo)

    def _runs_dense(self, x: torch.Tensor) -> bool:
        """Whether the dense product is the faster way for input ``x`` ``(N, C, H, W)``."""
        _, c, h, w = x.shape
        k, stride, padding = self.kernel_size[0], self.stride[0], self.padding[0]
        if h * w <= k * k:
            return True
        if not (h * w <= (k + 1) ** 2 and x.device.type == "cpu" and torch.is_grad_enabled()
                and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            return False
        out_pixels = _output_side(h, k, stride, padding) * _output_side(w, k, stride, padding)
        return out_pixels * self.out_channels * h * w * c <= DENSE_ENTRIES_MAX
