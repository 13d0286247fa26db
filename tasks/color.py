"""sRGB ↔ CIE Lab on batched tensors, and the quantised Lab output spaces of
colour-prediction pretext tasks (Zhang et al., ECCV 2016, §3.1; CVPR 2017, §3).

Lab is CIE 1976 L*a*b* relative to the D65 white point, from sRGB as defined in
IEC 61966-2-1 (piecewise gamma, then the sRGB→XYZ matrix). L lies in [0, 100];
a and b of sRGB colours lie within about [-87, 99] and [-108, 95].
"""

from __future__ import annotations

import functools
import math

import torch

from tasks.ab_bins_313 import AB_BINS_313
from tasks.blocks import device_tensor

# sRGB primaries with the D65 white point, linear RGB → XYZ (IEC 61966-2-1).
_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
               (0.2126729, 0.7151522, 0.0721750),
               (0.0193339, 0.1191920, 0.9503041))
_XYZ_TO_RGB = tuple(map(tuple, torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64))
                        .tolist()))
_D65_WHITE = (0.95047, 1.0, 1.08883)
_DELTA = 6.0 / 29.0  # where CIE's f(t) switches from linear to cube root
ZHANG_GRID = 10.0  # ab bin side of the released 313 bins (Zhang et al. 2016, §2.1)


def _full_precision(x: torch.Tensor) -> torch.autocast:
    """Run colour maths in float32 even under bf16 autocast (a matmul would be cast)."""
    return torch.autocast(x.device.type, enabled=False)


def _mix(m: tuple, x: torch.Tensor) -> torch.Tensor:
    """Apply the 3×3 matrix ``m`` (nested tuples) to the channel axis of ``(N, 3, H, W)``
    ``x``."""
    return torch.einsum("ij,njhw->nihw", device_tensor(m, x.device, x.dtype), x)


def rgb_to_luma(rgb: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma of ``(N, 3, H, W)`` RGB in [0, 1]: ``(N, 1, H, W)``, 0.2989 R +
    0.587 G + 0.114 B, the weights of torchvision's ``rgb_to_grayscale`` (written out
    because importing torchvision costs a CPU run 2 s of start-up)."""
    r, g, b = rgb.unbind(dim=1)                                # (N, H, W) each
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)   # (N, 1, H, W)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] → CIE Lab (D65).

    Args:
        rgb: ``(N, 3, H, W)`` float, values in [0, 1] (clamped).

    Returns:
        ``(N, 3, H, W)`` float32: L in [0, 100], then a and b (about ±110).

    Raises:
        ValueError: if ``rgb`` does not have 3 channels on axis 1.
    """
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"rgb_to_lab expects (N, 3, H, W) images, got shape {tuple(rgb.shape)}")
    with _full_precision(rgb):
        c = rgb.float().clamp(0, 1)
        linear = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        white = device_tensor(_D65_WHITE, c.device, c.dtype).view(1, 3, 1, 1)
        t = _mix(_RGB_TO_XYZ, linear) / white
        f = torch.where(t > _DELTA ** 3, t.clamp_min(_DELTA ** 3) ** (1 / 3),
                        t / (3 * _DELTA ** 2) + 4 / 29)
        fx, fy, fz = f.unbind(1)
        return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab (D65) → sRGB, the inverse of :func:`rgb_to_lab`.

    Args:
        lab: ``(N, 3, H, W)`` float, L in [0, 100], a and b in CIE units.

    Returns:
        ``(N, 3, H, W)`` float32 sRGB, clamped to [0, 1] (out-of-gamut colours clip).
    """
    with _full_precision(lab):
        lab = lab.float()
        fy = (lab[:, 0] + 16) / 116
        f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], dim=1)
        t = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4 / 29))
        white = device_tensor(_D65_WHITE, lab.device, lab.dtype).view(1, 3, 1, 1)
        linear = _mix(_XYZ_TO_RGB, t * white).clamp(0, 1)
        rgb = torch.where(linear <= 0.0031308, 12.92 * linear,
                          1.055 * linear.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)
        return rgb.clamp(0, 1)


@functools.lru_cache(maxsize=4)
def in_gamut_ab_bins(grid: float = 10.0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The ab bins that sRGB colours occupy, on a square grid of side ``grid``.

    Bin centres are the multiples of ``grid`` (as in Zhang et al. 2016, §2.1,
    whose grid of 10 keeps 313 bins). A bin is in gamut when some 8-bit sRGB
    colour falls in it; only the cube's six faces are converted, since the ab
    projection of the gamut solid is that of its surface (every vertical L line
    through the solid leaves it through the surface; converting the whole cube
    gives the same set). This gives 261 bins at grid 10, a subset of the 313 that
    Zhang et al. released (:func:`zhang_ab_bins`), who do not say how they drew
    their gamut.

    Returns:
        ``centres`` float32 ``(K, 2)`` (a, b) of the in-gamut bins, in
        row-major grid order, and the ``lookup`` and ``origin`` of
        :func:`ab_bin_lookup`.
    """
    levels = torch.arange(256, dtype=torch.float32) / 255
    u, v = torch.meshgrid(levels, levels, indexing="ij")
    u, v = u.flatten(), v.flatten()
    faces = []
    for axis in range(3):
        for value in (0.0, 1.0):
            rest = [u, v]
            rest.insert(axis, torch.full_like(u, value))
            faces.append(torch.stack(rest))
    rgb = torch.cat(faces, dim=1).view(1, 3, -1, 1)
    ab = rgb_to_lab(rgb)[0, 1:, :, 0]
    cells = torch.unique(torch.round(ab / grid).long().T, dim=0)  # (K, 2), sorted rows
    centres = cells.float().mul(grid)
    return (centres, *ab_bin_lookup(centres, grid))


@functools.lru_cache(maxsize=1)
def zhang_ab_bins() -> tuple[torch.Tensor, torch.Tensor, int]:
    """The 313 ab bins of Zhang et al. 2016 (§2.1), grid 10, as released with their
    code (``pts_in_hull.npy``; provenance in :mod:`tasks.ab_bins_313`).

    Returns:
        ``centres`` float32 ``(313, 2)`` in the released order (a, then b
        ascending) and the ``lookup`` and ``origin`` of :func:`ab_bin_lookup`.
    """
    centres = torch.tensor(AB_BINS_313, dtype=torch.float32)  # (313, 2)
    return (centres, *ab_bin_lookup(centres, ZHANG_GRID))


def ab_bin_lookup(centres: torch.Tensor, grid: float) -> tuple[torch.Tensor, int]:
    """Grid-cell → bin table for :func:`quantize_ab`, for bin ``centres`` ``(K, 2)``
    that are multiples of ``grid``.

    Returns:
        ``lookup`` int64 ``(G, G)`` mapping every grid cell (a index, b index,
        offset by ``origin``) to the bin nearest its centre, so any colour gets a
        valid class and a colour in a bin's own cell gets that bin; and
        ``origin``, the cell index of a = 0 (and b = 0). The grid spans the
        centres and |a|, |b| up to 128 (all of Lab's usual range).
    """
    origin = math.ceil(max(float(centres.abs().max()), 128.0) / grid) + 1
    side = 2 * origin + 1
    ia, ib = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    cell_ab = torch.stack([ia, ib], dim=-1).reshape(-1, 2).float().sub(origin).mul(grid)
    lookup = torch.cdist(cell_ab, centres).argmin(dim=1).view(side, side)
    return lookup, origin


def quantize_ab(ab: torch.Tensor, lookup: torch.Tensor, origin: int, grid: float) -> torch.Tensor:
    """Class index of the ab bin of each pixel.

    Args:
        ab: ``(N, 2, H, W)`` float a, b values.
        lookup, origin: from :func:`ab_bin_lookup` with the same ``grid``.
        grid: bin side in ab units.

    Returns:
        ``(N, H, W)`` int64 indices into the in-gamut bin centres.
    """
    side = lookup.shape[0]
    cells = torch.round(ab / grid).long().add(origin).clamp(0, side - 1)
    return lookup[cells[:, 0], cells[:, 1]]


def quantize_l(lightness: torch.Tensor, bins: int) -> torch.Tensor:
    """Class index of the L bin of each pixel: ``bins`` equal bins over [0, 100].

    Args:
        lightness: ``(N, 1, H, W)`` or ``(N, H, W)`` float L values.
        bins: number of bins (50 gives bins of 2 L units).

    Returns:
        int64 indices in [0, bins), with the channel axis dropped.
    """
    if lightness.ndim == 4:
        lightness = lightness[:, 0]
    return (lightness * (bins / 100.0)).floor().long().clamp(0, bins - 1)


def soft_encode_ab(ab: torch.Tensor, centres: torch.Tensor, neighbours: int = 5,
                   sigma: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft encoding of ab over the nearest bins (Zhang et al. 2016, §2.1): each
    pixel's ``neighbours`` nearest bin centres, weighted by a Gaussian of the
    distance to them (``sigma`` in ab units) and normalised to sum to 1.

    Args:
        ab: ``(N, 2, H, W)`` float a, b values.
        centres: ``(K, 2)`` float bin centres.

    Returns:
        ``index`` int64 ``(N, k, H, W)``, the bins nearest first, and ``weight``
        float32 ``(N, k, H, W)``, largest first, summing to 1 over axis 1.
    """
    n, _, h, w = ab.shape
    with _full_precision(ab):
        points = ab.float().permute(0, 2, 3, 1).reshape(-1, 2)  # (P, 2)
        dist = torch.cdist(points, centres.float(),
                           compute_mode="donot_use_mm_for_euclid_dist")  # (P, K)
        near, index = dist.topk(neighbours, dim=1, largest=False)  # (P, k) each, ascending
        weight = torch.softmax(-near.square() / (2 * sigma ** 2), dim=1)  # (P, k) Gaussian / sum
    shape = (n, h, w, neighbours)
    return index.view(shape).permute(0, 3, 1, 2), weight.view(shape).permute(0, 3, 1, 2)


def smoothed_distribution(counts: torch.Tensor, centres: torch.Tensor,
                          sigma: float = 5.0) -> torch.Tensor:
    """The bins' empirical distribution ``p̃`` of Zhang et al. 2016 (§2.2): ``counts``
    ``(Q,)`` normalised, smoothed with a Gaussian of ``sigma`` (ab units) over the
    bin centres ``(Q, 2)``, normalised again; ``(Q,)`` float64 summing to 1."""
    kernel = torch.exp(-torch.cdist(centres.double(), centres.double()).square()
                       / (2 * sigma ** 2))  # (Q, Q)
    smooth = kernel @ (counts.double() / counts.sum())  # (Q,)
    return smooth / smooth.sum()


def rebalance_weights(counts: torch.Tensor, centres: torch.Tensor, mix: float = 0.5,
                      sigma: float = 5.0) -> torch.Tensor:
    """Class weights that boost rare colours (Zhang et al. 2016, §2.2, eq. 4):
    ``w ∝ ((1 − λ) p̃ + λ / Q)⁻¹`` normalised so that ``Σ_q p̃_q w_q = 1``, where
    ``p̃`` is :func:`smoothed_distribution`, ``λ = mix`` and ``Q`` the number of bins.

    Args:
        counts: ``(Q,)`` float pixel counts per bin (training images only).
        centres: ``(Q, 2)`` float bin centres.

    Returns:
        ``(Q,)`` float32 weights; all 1 while ``counts`` is empty (chosen on the device:
        no host read of the total).
    """
    smooth = smoothed_distribution(counts, centres, sigma)  # (Q,), NaN while empty
    weight = 1.0 / ((1 - mix) * smooth + mix / len(centres))  # (Q,)
    weight = (weight / (smooth * weight).sum()).float()  # (Q,)
    return torch.where(counts.sum() > 0, weight, torch.ones_like(weight))  # (Q,)
