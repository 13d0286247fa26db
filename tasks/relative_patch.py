"""``relative-patch``: context prediction (Doersch, Gupta & Efros, ICCV 2015)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.errors import IncompatibleError, OptionError
from ssl_bench.plots import to_display
from ssl_bench.registry import TASKS
from tasks.base import (BackboneFactory, Logs, OptimConfig, PretextTask, check_choice,
                        check_range, count_parameters, require_family)

# (row, column) offset of each neighbour from the centre patch, by label, in the
# paper's Fig. 2 order: top-left 0, top 1, top-right 2, left 3, right 4,
# bottom-left 5, bottom 6, bottom-right 7.
NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
POSITION_NAMES = ("top-left", "top", "top-right", "left", "right", "bottom-left", "bottom",
                  "bottom-right")
# The green–magenta colour axis along which chromatic aberration shifts colours (§3.1).
GREEN_MAGENTA = (-1.0, 2.0, -1.0)
MIN_PATCH = 4


@dataclass(frozen=True)
class Geometry:
    """Patch layout of the 3×3 grid, in pixels.

    Attributes:
        patch: patch side p.
        gap: gap between neighbouring patches.
        jitter: each patch moves by up to ±jitter in x and y.
    """

    patch: int
    gap: int
    jitter: int

    @property
    def span(self) -> int:
        """Side of the unjittered 3×3 grid: ``3 p + 2 gap``."""
        return 3 * self.patch + 2 * self.gap


def patch_geometry(image_size: int, patch_size: int = 0, gap_ratio: float = 0.5,
                   jitter_ratio: float = 7 / 96) -> Geometry:
    """Scale the paper's layout (96 px patches, 48 px gaps, ±7 px jitter; §3.1, §4)
    to ``image_size``.

    With ``patch_size = 0`` the patch is the largest for which the jittered grid,
    ``3 p + 2 gap + 2 jitter``, fits in the image; ``gap = floor(gap_ratio p)`` and
    ``jitter = ceil(jitter_ratio p)``, lowered if needed to stay inside. This
    gives p/gap/jitter = 6/3/1 at 28 px, 7/3/1 at 32 px and 23/11/2 at 96 px.

    Raises:
        OptionError: if an explicit ``patch_size`` is below 4 px or its grid does
            not fit in the image.
        IncompatibleError: if images are too small for 4 px patches.
    """
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


def sample_pairs(images: torch.Tensor, geometry: Geometry
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut a (centre, neighbour) patch pair from each image (§3, Fig. 2).

    The 3×3 grid is placed uniformly at random where all its jittered patches fit;
    the neighbour is one of the 8 outer cells, uniformly; each of the two patches
    is jittered independently. Randomness comes from torch's global RNG.

    Args:
        images: ``(N, C, H, W)`` float.
        geometry: from :func:`patch_geometry` for this image size.

    Returns:
        ``patches`` ``(2, N, C, p, p)`` (centres, then neighbours), ``labels``
        ``(N,)`` int64 in [0, 8) (see :data:`NEIGHBOUR_OFFSETS`) and ``corners``
        ``(2, N, 2)`` int64 (row, column) of each patch's top-left pixel.
    """
    n, _, height, width = images.shape
    g, device = geometry, images.device
    low, high = g.jitter, min(height, width) - g.span - g.jitter
    origin = torch.randint(low, high + 1, (n, 2), device=device)
    labels = torch.randint(0, len(NEIGHBOUR_OFFSETS), (n,), device=device)
    offsets = torch.tensor(NEIGHBOUR_OFFSETS, device=device)[labels]
    cells = torch.stack([torch.ones_like(offsets), offsets + 1])  # grid cells (row, col)
    jitter = torch.randint(-g.jitter, g.jitter + 1, (2, n, 2), device=device)
    corners = origin + cells * (g.patch + g.gap) + jitter
    return crop(images, corners, g.patch), labels, corners


def crop(images: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    """Square crops by gathering, one per corner: ``corners`` ``(..., N, 2)`` int64
    (row, column) into ``images`` ``(N, C, H, W)`` → ``(..., N, C, size, size)``."""
    steps = torch.arange(size, device=images.device)
    rows = corners[..., 0, None, None] + steps[:, None]
    cols = corners[..., 1, None, None] + steps[None, :]
    index = torch.arange(images.shape[0], device=images.device)[:, None, None]
    return images[index, :, rows, cols].movedim(-1, -3)


def drop_color(patches: torch.Tensor, noise_ratio: float) -> torch.Tensor:
    """Colour dropping (§3.1): keep one random channel of each patch and replace
    the other two by Gaussian noise whose std is ``noise_ratio`` (paper: about
    1/100) times the kept channel's std in that patch.

    Args:
        patches: ``(M, 3, p, p)`` float.

    Returns:
        ``(M, 3, p, p)`` float; exactly one channel of each patch is unchanged.
    """
    m = patches.shape[0]
    keep = torch.randint(0, 3, (m,), device=patches.device)
    kept = patches[torch.arange(m, device=patches.device), keep][:, None]
    std = kept.flatten(1).std(dim=1).view(m, 1, 1, 1)
    noise = torch.randn_like(patches) * std * noise_ratio
    is_kept = torch.arange(3, device=patches.device)[None, :] == keep[:, None]
    return torch.where(is_kept[:, :, None, None], patches, noise)


def project_color(patches: torch.Tensor) -> torch.Tensor:
    """Projection (§3.1): remove each pixel's component along the green–magenta
    axis (−1, 2, −1)/√6, along which chromatic aberration shifts colours.

    Args:
        patches: ``(M, 3, p, p)`` float RGB. Returns the same shape.
    """
    axis = torch.tensor(GREEN_MAGENTA, device=patches.device, dtype=patches.dtype)
    axis = (axis / axis.norm()).view(1, 3, 1, 1)
    return patches - (patches * axis).sum(dim=1, keepdim=True) * axis


def pixelate(patches: torch.Tensor, prob: float, min_area: float) -> torch.Tensor:
    """Downsample a random ``prob`` share of patches and upsample them back (§3.1:
    "as little as 100 total pixels" of a 96 px patch, i.e. ``min_area`` ≈ 1.1%
    of the patch's pixels), against shortcuts from sampling artefacts.

    The reduced side is uniform between ``round(p √min_area)`` and ``p - 1``,
    but at least 2 px so that a small patch keeps some structure after
    normalisation; area downsampling, bilinear upsampling. The loop runs over the
    distinct sides (at most p), not over patches.

    Args:
        patches: ``(M, C, p, p)`` float. Returns the same shape.
    """
    m, p = patches.shape[0], patches.shape[-1]
    low = max(2, round(p * math.sqrt(min_area)))
    if prob == 0 or low >= p:
        return patches
    chosen = torch.rand(m, device=patches.device) < prob
    sides = torch.randint(low, p, (m,), device=patches.device)
    out = patches.clone()
    for side in sides[chosen].unique().tolist():
        which = chosen & (sides == side)
        small = F.interpolate(patches[which], size=(side, side), mode="area")
        out[which] = F.interpolate(small, size=(p, p), mode="bilinear", align_corners=False)
    return out


def standardize(x: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
    """Per-patch (or per-image) normalisation of ``(M, C, h, w)``: subtract each
    channel's mean, divide by the std over all channels and pixels. One std for
    all channels keeps dropped channels' noise as small as it was made."""
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    return centred / (centred.flatten(1).std(dim=1).view(-1, 1, 1, 1) + eps)


@TASKS.register("relative-patch")
class RelativePatch(PretextTask):
    """Context prediction (Doersch, Gupta & Efros, ICCV 2015, §3, §3.1, §3.2, §4).

    From each image a centre patch and one of its 8 neighbours in a 3×3 grid
    (with gaps and random jitter, :func:`patch_geometry`) are cut; the network
    predicts the neighbour's position, an 8-way classification. Trivial
    shortcuts are blocked as in §3.1: the gap and jitter stop low-level
    continuation of edges and textures across patches; colour dropping (or
    projection) removes chromatic aberration, which reveals a patch's position
    in the lens; some patches are pixelated; every patch is normalised on its
    own (:func:`standardize`).

    Late fusion (§3.2, Fig. 3): one backbone, built at the patch size, embeds
    all 2N patches in one call with shared weights; a shared fc6 maps each
    embedding to ``mlp_dim`` units, the pair is concatenated and fc7, fc8 and
    fc9 (paper: 4096, 4096, 8; here ``mlp_dim``, ``mlp_dim``, 8) predict the
    position. The MLP uses batch normalisation without scale and shift (§4).

    Evaluation features: the pooled backbone on the whole image, standardised
    per image as the patches were, ``(N, D)``.

    Raises:
        IncompatibleError: for ViT backbones: built at the patch size, their
            position embeddings do not cover the whole image that evaluation
            embeds (use a CNN); for CNNs that cannot take patches this small.
    """

    name = "relative-patch"
    paper = "Doersch, Gupta & Efros, ICCV 2015, §3–4"

    @dataclass
    class Options:
        """Context-prediction hyperparameters.

        Attributes:
            patch_size: patch side in px; 0 derives it from the image size
                (:func:`patch_geometry`).
            gap_ratio: gap / patch side (paper: 48/96).
            jitter_ratio: maximal jitter / patch side (paper: 7/96).
            color_handling: ``drop`` (colour dropping), ``project`` (remove
                the green–magenta axis), both from §3.1, or ``none``; ignored
                for 1-channel data.
            drop_noise_ratio: std of the noise in dropped channels relative to
                the kept channel's (paper: about 1/100).
            pixelate_prob: share of patches that are pixelated (the paper says
                "some"; our choice: ¼).
            pixelate_min_area: smallest kept share of a patch's pixels (paper:
                100 of 96² ≈ 0.011).
            mlp_dim: width of fc6–fc8 (paper: 4096 on AlexNet's 9216-d pool5).
        """

        patch_size: int = 0
        gap_ratio: float = 0.5
        jitter_ratio: float = 7 / 96
        color_handling: str = "drop"
        drop_noise_ratio: float = 0.01
        pixelate_prob: float = 0.25
        pixelate_min_area: float = 100 / 96 ** 2
        mlp_dim: int = 512

        def __post_init__(self) -> None:
            check_range("patch_size", self.patch_size, 0, 4096)
            check_range("gap_ratio", self.gap_ratio, 0.0, 2.0)
            check_range("jitter_ratio", self.jitter_ratio, 0.0, 0.5)
            check_choice("color_handling", self.color_handling, ("drop", "project", "none"))
            check_range("drop_noise_ratio", self.drop_noise_ratio, 0.0, 1.0)
            check_range("pixelate_prob", self.pixelate_prob, 0.0, 1.0)
            check_range("pixelate_min_area", self.pixelate_min_area, 0.0, 1.0)
            check_range("mlp_dim", self.mlp_dim, 8, 16384)

    def __init__(self, make_backbone: BackboneFactory, spec,
                 options: "RelativePatch.Options") -> None:
        super().__init__(make_backbone, spec, options)
        self.geometry = patch_geometry(spec.image_size, options.patch_size, options.gap_ratio,
                                       options.jitter_ratio)
        self.backbone = make_backbone(img_size=self.geometry.patch)
        require_family(self.name, self.backbone, "cnn",
                       "a ViT built at the patch size cannot embed the whole image for "
                       "evaluation; use convnet, resnet18 or a timm CNN")
        self._check_patch_fits(spec.channels)
        h = options.mlp_dim
        self.fc6 = nn.Sequential(nn.Linear(self.backbone.num_features, h),
                                 nn.BatchNorm1d(h, affine=False), nn.ReLU(inplace=True))
        self.fusion = nn.Sequential(
            nn.Linear(2 * h, h), nn.BatchNorm1d(h, affine=False), nn.ReLU(inplace=True),
            nn.Linear(h, h), nn.BatchNorm1d(h, affine=False), nn.ReLU(inplace=True),
            nn.Linear(h, len(NEIGHBOUR_OFFSETS)))

    def _check_patch_fits(self, channels: int) -> None:
        p = self.geometry.patch
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with torch.no_grad():
                self.backbone(torch.zeros(1, channels, p, p))
        except RuntimeError as exc:
            raise IncompatibleError(f"backbone {self.backbone.__class__.__name__} cannot embed "
                                    f"{p} px patches ({exc}); use larger images or "
                                    "--set patch_size") from None
        finally:
            self.backbone.train(was_training)

    # ---------------------------------------------------------------- pieces

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image :func:`standardize` of ``(N, C, H, W)`` images in [0, 1], the
        evaluation counterpart of the per-patch normalisation."""
        return standardize(images.float())

    def prepare(self, patches: torch.Tensor) -> torch.Tensor:
        """Shortcut guards of §3.1 on ``(M, C, p, p)`` patches in [0, 1]:
        pixelation, colour handling (3 channels only), per-patch normalisation."""
        o = self.options
        patches = pixelate(patches, o.pixelate_prob, o.pixelate_min_area)
        if patches.shape[1] == 3 and o.color_handling == "drop":
            patches = drop_color(patches, o.drop_noise_ratio)
        elif patches.shape[1] == 3 and o.color_handling == "project":
            patches = project_color(patches)
        return standardize(patches)

    def logits(self, patches: torch.Tensor) -> torch.Tensor:
        """Position logits ``(N, 8)`` of prepared pairs ``(2, N, C, p, p)``
        (centres first): one backbone call over all 2N patches, fc6 per patch,
        then the fused fc7–fc9."""
        pair, n = patches.shape[0], patches.shape[1]
        embeddings = self.fc6(self.backbone(patches.flatten(0, 1))).view(pair, n, -1)
        return self.fusion(torch.cat([embeddings[0], embeddings[1]], dim=1))

    def _pairs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sampled and prepared pairs ``(2, N, C, p, p)``, labels ``(N,)``, corners."""
        patches, labels, corners = sample_pairs(images, self.geometry)
        return self.prepare(patches.flatten(0, 1)).view_as(patches), labels, corners

    # ---------------------------------------------------------------- training

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """SGD with momentum 0.9, as the paper's Caffe training (§4); the learning
        rate 0.05 × batch/256 and weight decay 5e-4 are ours, for short runs."""
        return [OptimConfig(name="sgd", lr=0.05 * batch_size / 256, momentum=0.9,
                            weight_decay=5e-4)]

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """8-way cross-entropy (nats) of the neighbour's position, one pair per image.

        Args:
            images: ``(N, C, H, W)`` float in [0, 1].
        """
        prepared, labels, _ = self._pairs(images)
        logits = self.logits(prepared)
        loss = F.cross_entropy(logits, labels)
        top1 = (logits.argmax(1) == labels).float().mean() * 100
        return loss, {"train_top1": top1.detach()}

    # ---------------------------------------------------------------- evaluation

    @torch.no_grad()
    def pretext_metrics(self, images: torch.Tensor) -> dict[str, float]:
        """``pretext_top1``: held-out position accuracy (%) of one freshly sampled,
        prepared pair per image (chance 12.5%)."""
        prepared, labels, _ = self._pairs(images)
        return {"pretext_top1": 100.0 * (self.logits(prepared).argmax(1) == labels)
                .float().mean().item()}

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """Top: each image with its centre (cyan) and neighbour (red) patch and the
        true / predicted position. Bottom: the pair as the network sees it
        (after colour handling and normalisation, rescaled for display)."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        prepared, labels, corners = self._pairs(images)
        predicted = self.logits(prepared).argmax(1)
        n, p = images.shape[0], self.geometry.patch
        fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
        for i in range(n):
            top, bottom = axes[0][i], axes[1][i]
            top.imshow(to_display(images[i]), cmap="gray", vmin=0, vmax=1,
                       interpolation="nearest")
            for k, colour in enumerate(("cyan", "red")):
                row, col = corners[k, i].tolist()
                top.add_patch(Rectangle((col - 0.5, row - 0.5), p, p, fill=False,
                                        edgecolor=colour, linewidth=1.5))
            top.set_title(f"{labels[i].item()} {POSITION_NAMES[labels[i]]}\n"
                          f"pred {predicted[i].item()}", fontsize=7)
            pair = torch.cat([prepared[0, i], prepared[1, i]], dim=-1)
            pair = (pair - pair.min()) / (pair.max() - pair.min()).clamp_min(1e-6)
            bottom.imshow(to_display(pair), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            for ax in (top, bottom):
                ax.set_xticks([])
                ax.set_yticks([])
        axes[1][0].set_ylabel("centre | neighbour", fontsize=7)
        fig.suptitle(f"relative-patch: patch {p} px, gap {self.geometry.gap} px, "
                     f"jitter ±{self.geometry.jitter} px", fontsize=9)
        fig.tight_layout()
        return fig

    def summary(self) -> dict[str, Any]:
        """Patch layout in px and parameter counts of the backbone and the MLP."""
        return {
            "patch_size": self.geometry.patch,
            "gap": self.geometry.gap,
            "jitter": self.geometry.jitter,
            "params_backbone": count_parameters(self.backbone),
            "params_mlp": count_parameters(self.fc6) + count_parameters(self.fusion),
        }
