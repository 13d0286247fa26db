"""sRGB ↔ CIE Lab on batched tensors, and the quantised Lab output spaces of
colour-prediction pretext tasks (Zhang et al., ECCV 2016, §3.1; CVPR 2017, §3).

Lab is CIE 1976 L*a*b* relative to the D65 white point, from sRGB as defined in
IEC 61966-2-1 (piecewise gamma, then the sRGB→XYZ matrix). L lies in [0, 100];
a and b of sRGB colours lie within about [-87, 99] and [-108, 95].
"""

from __future__ import annotations

import functools

import torch

# sRGB primaries with the D65 white point, linear RGB → XYZ (IEC 61966-2-1).
_RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)
_D65_WHITE = (0.95047, 1.0, 1.08883)
_DELTA = 6.0 / 29.0  # where CIE's f(t) switches from linear to cube root


def _full_precision(x: torch.Tensor) -> torch.autocast:
    """Run colour maths in float32 even under bf16 autocast (a matmul would be cast)."""
    return torch.autocast(x.device.type, enabled=False)


def _mix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply the 3×3 matrix ``m`` to the channel axis of ``(N, 3, H, W)`` ``x``."""
    return torch.einsum("ij,njhw->nihw", m.to(x.device, x.dtype), x)


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
        white = torch.tensor(_D65_WHITE, device=c.device).view(1, 3, 1, 1)
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
        white = torch.tensor(_D65_WHITE, device=lab.device).view(1, 3, 1, 1)
        linear = _mix(_XYZ_TO_RGB, t * white).clamp(0, 1)
        rgb = torch.where(linear <= 0.0031308, 12.92 * linear,
                          1.055 * linear.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)
        return rgb.clamp(0, 1)


@functools.lru_cache(maxsize=4)
def in_gamut_ab_bins(grid: float = 10.0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The ab bins that sRGB colours occupy, on a square grid of side ``grid``.

    Bin centres are the multiples of ``grid`` (as in Zhang et al. 2016, §3.1,
    whose grid of 10 keeps 313 bins). A bin is in gamut when some 8-bit sRGB
    colour falls in it; only the cube's six faces are converted, since the ab
    projection of the gamut solid is that of its surface (every vertical L line
    through the solid leaves it through the surface; converting the whole cube
    gives the same set). This gives 261 bins at grid 10, fewer than the 313 of
    Zhang et al., who do not say how they drew their gamut.

    Returns:
        ``centres`` float32 ``(K, 2)`` (a, b) of the in-gamut bins, in
        row-major grid order; ``lookup`` int64 ``(G, G)`` mapping a grid cell
        (a index, b index, offset by ``origin``) to the nearest in-gamut bin;
        and ``origin``, the cell index of a = 0 (and b = 0).
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
    origin = int(torch.ceil(ab.abs().max() / grid)) + 1
    side = 2 * origin + 1
    cells = torch.round(ab / grid).long() + origin
    occupied = torch.zeros(side * side, dtype=torch.bool)
    occupied[cells[0] * side + cells[1]] = True
    kept = occupied.nonzero()[:, 0]
    centres = torch.stack([kept // side, kept % side], dim=1).float().sub(origin).mul(grid)
    # Every cell points at its nearest in-gamut bin, so any colour gets a valid class.
    ia, ib = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    cell_ab = torch.stack([ia, ib], dim=-1).reshape(-1, 2).float().sub(origin).mul(grid)
    lookup = torch.cdist(cell_ab, centres).argmin(dim=1).view(side, side)
    return centres, lookup, origin


def quantize_ab(ab: torch.Tensor, lookup: torch.Tensor, origin: int, grid: float) -> torch.Tensor:
    """Class index of the ab bin of each pixel.

    Args:
        ab: ``(N, 2, H, W)`` float a, b values.
        lookup, origin: from :func:`in_gamut_ab_bins` with the same ``grid``.
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
