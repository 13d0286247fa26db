"""``relative-patch``: predict where each of a centre patch's 8 neighbours lies (ICCV 2015)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.core.errors import IncompatibleError, OptionError
from ssl_bench.core.figures import image_rows
from ssl_bench.core.registry import TASKS
from tasks.base import BackboneFactory, Logs, OptimConfig, PretextTask
from tasks.options import option
from tasks.blocks import center_channels, crop_squares, device_tensor, resize_tiles, tile_backbone
from tasks.pixelation import pixelate

# (row, column) offset of each neighbour from the centre patch, by label (paper's Fig. 2).
NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
GREEN_MAGENTA = (-1.0, 2.0, -1.0)  # the colour axis of chromatic aberration (§3.1)
MIN_PATCH = 4
NORM_EPS = 1e-2  # added to the std of the per-patch (and per-image) normalisation


@dataclass(frozen=True)
class Geometry:
    """The 3×3 grid in pixels: patch side, gap between neighbours, ±jitter in x and y."""

    patch: int
    gap: int
    jitter: int

    @property
    def span(self) -> int:
        """Side of the unjittered 3×3 grid: ``3 p + 2 gap``."""
        return 3 * self.patch + 2 * self.gap


def patch_geometry(image_size: int, patch_size: int = 0, gap_ratio: float = 0.5,
                   jitter_ratio: float = 7 / 96) -> Geometry:
    """Scale the paper's layout (96 px patches, 48 px gaps, ±7 px jitter; §3.1, §4) to
    ``image_size``: ``patch_size = 0`` picks the largest p whose jittered grid, 3 p +
    2 gap + 2 jitter, fits; gap = ⌊gap_ratio p⌋, jitter = ⌈jitter_ratio p⌉ lowered to
    stay inside (p/gap/jitter 6/3/1 at 28 px, 7/3/1 at 32 px, 23/11/2 at 96 px).

    Raises:
        OptionError: an explicit ``patch_size`` below 4 px or whose grid does not fit.
        IncompatibleError: images too small for 4 px patches."""
    p = patch_size or math.floor(image_size / (3 + 2 * gap_ratio + 2 * jitter_ratio))
    if p < MIN_PATCH:
        if patch_size:
            raise OptionError(f"--set patch_size={patch_size} is below {MIN_PATCH} px")
        raise IncompatibleError(f"relative-patch needs images of at least "
                                f"{math.ceil(MIN_PATCH * (3 + 2 * gap_ratio))} px for "
                                f"{MIN_PATCH} px patches; got {image_size} px")
    gap = math.floor(gap_ratio * p)
    if 3 * p + 2 * gap > image_size:
        raise OptionError(f"--set patch_size={p}: a 3×3 grid of {p} px patches with {gap} px "
                          f"gaps spans {3 * p + 2 * gap} px, more than the {image_size} px image")
    jitter = min(math.ceil(jitter_ratio * p), (image_size - 3 * p - 2 * gap) // 2)
    return Geometry(p, gap, jitter)


def sample_grid(images: torch.Tensor, geometry: Geometry) -> tuple[torch.Tensor, ...]:
    """Cut the whole 3×3 grid from each ``(N, C, H, W)`` image (§3, Fig. 2), placed
    uniformly where all its patches fit, each patch jittered on its own (global RNG).

    Returns:
        ``patches`` ``(N, 9, C, p, p)``: centre, then neighbours in :data:`NEIGHBOUR_OFFSETS`
        order; ``labels`` ``(N, 8)`` int64, 0…7 in each row (pair k: centre, neighbour k);
        ``corners`` ``(N, 9, C, 2)`` int64 (row, column) of each top-left pixel, per channel."""
    g, (n, c, height, width), device = geometry, images.shape, images.device
    low, high = g.jitter, min(height, width) - g.span - g.jitter
    origin = torch.randint(low, high + 1, (n, 1, 2), device=device)            # (N, 1, 2)
    cells = device_tensor(((0, 0),) + NEIGHBOUR_OFFSETS, device, torch.int64) + 1  # (9, 2)
    jitter = torch.randint(-g.jitter, g.jitter + 1, (n, 9, 2), device=device)  # (N, 9, 2)
    corners = origin + cells * (g.patch + g.gap) + jitter                      # (N, 9, 2)
    corners = corners[:, :, None].expand(n, 9, c, 2)                           # (N, 9, C, 2)
    labels = torch.arange(len(NEIGHBOUR_OFFSETS), device=device).expand(n, -1)  # (N, 8)
    return crop_squares(images, corners, g.patch), labels, corners             # (N, 9, C, p, p)


def drop_color(patches: torch.Tensor, noise_ratio: float) -> torch.Tensor:
    """Colour dropping (§3.1) on ``(M, 3, p, p)`` patches: keep one random channel of
    each, replace the others by Gaussian noise of ``noise_ratio`` (paper: about 1/100)
    times the kept channel's std in that patch."""
    m = patches.shape[0]
    keep = torch.randint(0, 3, (m,), device=patches.device)                     # (M,)
    kept = patches[torch.arange(m, device=patches.device), keep][:, None]       # (M, 1, p, p)
    std = kept.flatten(1).std(dim=1).view(m, 1, 1, 1)                           # (M, 1, 1, 1)
    noise = torch.randn_like(patches) * std * noise_ratio                       # (M, 3, p, p)
    is_kept = torch.arange(3, device=patches.device)[None, :] == keep[:, None]  # (M, 3)
    return torch.where(is_kept[:, :, None, None], patches, noise)               # (M, 3, p, p)


def project_color(patches: torch.Tensor) -> torch.Tensor:
    """Projection (§3.1): remove from each pixel of ``(M, 3, p, p)`` RGB patches its
    component along the green–magenta axis (−1, 2, −1)/√6."""
    axis = device_tensor(GREEN_MAGENTA, patches.device, patches.dtype)          # (3,)
    axis = (axis / axis.norm()).view(1, 3, 1, 1)                                # (1, 3, 1, 1)
    return patches - (patches * axis).sum(dim=1, keepdim=True) * axis           # (M, 3, p, p)


@TASKS.register("relative-patch")
class RelativePatch(PretextTask):
    """Context prediction (Doersch, Gupta & Efros, ICCV 2015, §3, §3.1, §3.2, §4).

    Variant: each image gives its jittered 3×3 grid and the 8 (centre, neighbour k) pairs,
    label k (Fig. 2), not every adjacent pair as in the released code; the centre's
    embedding serves its 8 pairs (9 embeddings per image); images/s counts source images.
    Shortcut guards (§3.1): gaps and jitter (:func:`patch_geometry`) stop edges and
    textures continuing across patches; colour dropping or projection removes chromatic
    aberration (it reveals a patch's place in the lens); some patches are pixelated; each
    is normalised alone. Late fusion (§3.2, Fig. 3): a shared fc6 maps each embedding to
    ``mlp_dim``; fc7–fc9 (paper: 4096, 4096, 8) on the concatenated pair predict the
    position; the MLP's batch norms have no scale or shift (§4). Features: the pooled
    backbone on the whole image, normalised as patches are. ``backbone_family = "cnn"``:
    the backbone sees patches enlarged to ``input_size`` (:func:`tasks.blocks.tile_backbone`:
    7 → 17 px on convnet, so no stage has maps under 3×3) and also takes whole images
    (a ViT cannot)."""

    paper = "Doersch, Gupta & Efros, ICCV 2015, §3–4"
    tune_knob = ({}, {"color_handling": "project"})  # chromatic-aberration guard (§3.1)
    backbone_family = "cnn"

    @dataclass
    class Options:
        """Context-prediction hyperparameters; the paper's values in brackets."""

        patch_size: int = option(0, low=0, high=4096)  # side in px; 0: from the image size
        gap_ratio: float = option(0.5, low=0.0, high=2.0)  # gap / patch side [48/96]
        jitter_ratio: float = option(7 / 96, low=0.0, high=0.5)  # max jitter / patch side [7/96]
        # §3.1 "drop" (colour dropping), "project" (green–magenta axis) or "none"; RGB only
        color_handling: str = option("drop", choices=("drop", "project", "none"))
        drop_noise_ratio: float = option(0.01, low=0.0, high=1.0)  # noise / kept std [≈1/100]
        pixelate_prob: float = option(0.25, low=0.0, high=1.0)  # share pixelated ["some"]
        # smallest kept share of a patch's pixels [100 of 96² pixels]
        pixelate_min_area: float = option(100 / 96 ** 2, low=0.0, high=1.0)
        mlp_dim: int = option(512, low=8, high=16384)  # fc6–fc8 width [4096 on 9216-d pool5]

    def __init__(self, make_backbone: BackboneFactory, spec, options: Options) -> None:
        super().__init__(make_backbone, spec, options)
        self.geometry = patch_geometry(spec.image_size, options.patch_size, options.gap_ratio,
                                       options.jitter_ratio)
        self.backbone = tile_backbone(self, make_backbone, self.geometry.patch)
        self.input_size = self.backbone.img_size  # s, the side the backbone sees patches at
        h = options.mlp_dim
        self.fc6 = nn.Sequential(nn.Linear(self.backbone.num_features, h),
                                 nn.BatchNorm1d(h, affine=False), nn.ReLU(inplace=True))
        self.fusion = nn.Sequential(
            nn.Linear(2 * h, h), nn.BatchNorm1d(h, affine=False), nn.ReLU(inplace=True),
            nn.Linear(h, h), nn.BatchNorm1d(h, affine=False), nn.ReLU(inplace=True),
            nn.Linear(h, len(NEIGHBOUR_OFFSETS)))

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """SGD with momentum 0.9, as the paper's Caffe training (§4); lr 0.05·batch/256
        and weight decay 5e-4 are ours, for short runs."""
        return [OptimConfig(name="sgd", lr=0.05 * batch_size / 256, momentum=0.9,
                            weight_decay=5e-4)]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image ``center_channels`` of ``(N, C, H, W)`` images in [0, 1], as patches."""
        return center_channels(images.float(), NORM_EPS)                 # (N, C, H, W)

    def prepare(self, patches: torch.Tensor) -> torch.Tensor:
        """Shortcut guards of §3.1 on ``(M, C, p, p)`` patches in [0, 1]: pixelation,
        colour handling (3 channels only); then the patches enlarged to ``(M, C, s, s)``,
        s = ``input_size``, and normalised one by one."""
        o = self.options
        patches = pixelate(patches, o.pixelate_prob, o.pixelate_min_area)   # (M, C, p, p)
        if patches.shape[1] == 3 and o.color_handling == "drop":
            patches = drop_color(patches, o.drop_noise_ratio)               # (M, 3, p, p)
        elif patches.shape[1] == 3 and o.color_handling == "project":
            patches = project_color(patches)                                # (M, 3, p, p)
        patches = resize_tiles(patches, self.input_size)                    # (M, C, s, s)
        return center_channels(patches, NORM_EPS)                           # (M, C, s, s)

    def make_grid(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prepared grids ``(N, 9, C, s, s)``, labels ``(N, 8)``, corners ``(N, 9, C, 2)``
        of ``(N, C, H, W)`` images (:func:`sample_grid`, then :meth:`prepare` per patch)."""
        patches, labels, corners = sample_grid(images, self.geometry)    # (N, 9, C, p, p)
        flat = self.prepare(patches.flatten(0, 1))                       # (9N, C, s, s)
        return flat.unflatten(0, patches.shape[:2]), labels, corners     # (N, 9, C, s, s)

    def logits(self, grids: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 8, 8)`` (image, pair k, position) of prepared grids ``(N, 9, C, s,
        s)``: one backbone call on all 9N patches, fc6 each, fc7–fc9 on each pair."""
        embeddings = self.fc6(self.backbone(grids.flatten(0, 1)))        # (9N, h)
        grid = embeddings.unflatten(0, (len(grids), 9))                  # (N, 9, h)
        centre = grid[:, :1].expand(-1, len(NEIGHBOUR_OFFSETS), -1)      # (N, 8, h)
        pairs = torch.cat([centre, grid[:, 1:]], dim=2).flatten(0, 1)    # (8N, 2h)
        return self.fusion(pairs).unflatten(0, (len(grids), -1))         # (8N, 8) → (N, 8, 8)

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """8-way cross-entropy (nats) of each neighbour's position, mean over the 8N pairs
        of ``(N, C, H, W)`` images in [0, 1]; logs ``top1`` over all pairs (%, chance 12.5)."""
        prepared, labels, _ = self.make_grid(images)                     # (N, 9, C, s, s)
        logits = self.logits(prepared)                                   # (N, 8, 8)
        top1 = (logits.argmax(2) == labels).float().mean() * 100
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten()), {"top1": top1.detach()}

    def pretext_chance(self) -> dict[str, float]:
        return {"top1": 100.0 / len(NEIGHBOUR_OFFSETS)}

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """Images with their grid, centre box cyan and neighbour boxes red (solid where
        the position was predicted right, dotted where not) and the count right of 8,
        above the 9 patches as the network sees them, in place (shown as 0.5 + 0.2 x)."""
        from matplotlib.patches import Rectangle

        g = self.geometry
        prepared, labels, corners = self.make_grid(images)              # (N, 9, C, s, s)
        right = self.logits(prepared).argmax(2) == labels               # (N, 8)
        raster = 0.5 + 0.2 * prepared[:, [1, 2, 3, 4, 0, 5, 6, 7, 8]]   # (N, 9, C, s, s) row-major
        framed = F.pad(raster, (1, 1, 1, 1), value=1.0).unflatten(1, (3, 3))  # (N, 3, 3, C, s, s)
        grids = framed.permute(0, 3, 1, 4, 2, 5).flatten(4, 5).flatten(2, 3)   # (N, C, 3s, 3s)
        fig = image_rows([("image", images), ("patches", grids)], title=(
            f"relative-patch: patch {g.patch} px (seen at {self.input_size} px), gap {g.gap} px, "
            f"jitter ±{g.jitter} px"))
        for i, ax in enumerate(fig.axes[:len(images)]):
            for k in range(9):
                row, col = corners[i, k, 0].tolist()
                ax.add_patch(Rectangle((col - 0.5, row - 0.5), g.patch, g.patch, fill=False,
                                       edgecolor="red" if k else "cyan", linewidth=1.2,
                                       linestyle="-" if k == 0 or right[i, k - 1] else ":"))
            ax.set_title(f"{int(right[i].sum())}/8 right", fontsize=7)
        fig.tight_layout()
        return fig

    def summary(self) -> dict:
        """Adds the patch layout in pixels (``input_size``: the side the backbone sees
        patches at)."""
        g = self.geometry
        return {**super().summary(), "patch_size": g.patch, "gap": g.gap, "jitter": g.jitter,
                "input_size": self.input_size}
