"""``jigsaw``: solving jigsaw puzzles (Noroozi & Favaro, ECCV 2016).

Nine tiles cut from a 3×3 grid are shuffled by one permutation of a fixed set; the
context-free network (CFN, §3) embeds each tile with one shared backbone and
classifies the permutation from the nine embeddings side by side.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.core.figures import image_rows
from ssl_bench.core.registry import TASKS
from tasks.base import BackboneFactory, Logs, OptimConfig, PretextTask
from tasks.options import check_range, option, refuse_at_image_size
from tasks.blocks import crop_squares, resize_tiles, standardize, tile_backbone
from tasks.color import rgb_to_luma

GRID = 3
TILES = GRID * GRID
NUM_ALL_PERMUTATIONS = math.factorial(TILES)  # 9! = 362,880
MIN_TILE_STD = 1.0 / 255.0  # one 8-bit grey level: the quantisation noise floor
# Smallest tile side, px: one whole 3×3 convolution window (a 1 px tile's std is NaN)
MIN_TILE = 3


@functools.cache
def _all_permutations() -> np.ndarray:
    """All 9! permutations of 0…8 in lexicographic order, ``(9, 9!)`` int8 (one row per
    position, so each Hamming update below runs over contiguous memory)."""
    flat = np.fromiter(itertools.chain.from_iterable(itertools.permutations(range(TILES))),
                       dtype=np.int8, count=TILES * NUM_ALL_PERMUTATIONS)
    return np.ascontiguousarray(flat.reshape(NUM_ALL_PERMUTATIONS, TILES).T)


def max_hamming_permutations(count: int, seed: int) -> np.ndarray:
    """A permutation set of maximal average Hamming distance (§4.1, Algorithm 1).

    The first permutation is drawn uniformly from all 9! (``numpy.random.default_rng(
    seed)``); then the candidate with the largest summed (equivalently average) Hamming
    distance to those chosen is added until ``count`` are chosen. Chosen permutations
    leave the pool; ties go to the first in lexicographic order (the paper's argmax).
    The running sums cover all 9! candidates at once: N = 100 takes 0.2 s.

    Returns:
        ``(count, 9)`` int64; row k lists, for each puzzle position, the grid cell
        (row-major, 0…8) whose tile is placed there.

    Raises:
        OptionError: if ``count`` is not in 1…9!.
    """
    check_range("num_permutations", count, 1, NUM_ALL_PERMUTATIONS)
    candidates = _all_permutations()
    chosen = [int(np.random.default_rng(seed).integers(NUM_ALL_PERMUTATIONS))]
    distance_sums = np.zeros(NUM_ALL_PERMUTATIONS, dtype=np.int32)  # ≤ 9 · count
    for _ in range(count - 1):
        last = candidates[:, chosen[-1]]
        distance_sums += (candidates != last[:, None]).sum(axis=0, dtype=np.int32)
        distance_sums[chosen] = -1  # chosen ones leave the pool
        chosen.append(int(distance_sums.argmax()))
    return candidates[:, chosen].T.astype(np.int64)


def hamming_statistics(permutations: np.ndarray) -> tuple[float, int]:
    """Mean and minimum Hamming distance over all pairs of distinct rows of a
    permutation set ``(N, 9)``, N ≥ 2 (the statistics of the paper's Table 3)."""
    distances = (permutations[:, None, :] != permutations[None, :, :]).sum(axis=-1)
    pairs = distances[np.triu_indices(len(permutations), k=1)]
    return float(pairs.mean()), int(pairs.min())


def tile_geometry(image_size: int, tile_ratio: float) -> tuple[int, int]:
    """Cell and tile sides in pixels for a 3×3 puzzle on ``image_size`` px images:
    cell = ⌊image_size / 3⌋, tile = round(cell · ``tile_ratio``)
    (32 px → 10, 8; 28 px → 9, 7; 96 px → 32, 24 at the paper's 64/85). Raises
    OptionError for a tile below :data:`MIN_TILE` px."""
    cell = image_size // GRID
    tile = round(cell * tile_ratio)
    if tile < MIN_TILE:
        refuse_at_image_size("tile_ratio", tile_ratio, f"{tile} px tiles (< {MIN_TILE} px)",
                             image_size, MIN_TILE / cell, 1)
    return cell, tile


def sample_tile_positions(batch: int, channels: int, image_size: int, cell: int, tile: int,
                          jitter: int, device: torch.device | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random puzzle geometry (§3.2): a random 3·cell window of each image is split
    into 3×3 cells; each holds one tile at a uniform offset, so neighbouring tiles are
    0 to 2·(cell − tile) px apart. When ``channels`` > 1 each colour channel of a tile
    moves by a further uniform ±``jitter`` px, clamped to its cell, against
    chromatic-aberration shortcuts.

    Returns:
        ``cell_origins`` ``(N, 9, 2)`` and ``tile_corners`` ``(N, 9, C, 2)``, int64
        (row, column) of each cell's and each tile channel's top-left pixel; cells
        in row-major order.
    """
    window = torch.randint(0, image_size - GRID * cell + 1, (batch, 1, 2), device=device)
    grid = torch.arange(GRID, device=device) * cell                             # (3,)
    cells = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1).view(1, TILES, 2)
    origins = window + cells                                                    # (N, 9, 2)
    offsets = torch.randint(0, cell - tile + 1, (batch, TILES, 1, 2), device=device)
    if jitter > 0 and channels > 1:
        shifts = torch.randint(-jitter, jitter + 1, (batch, TILES, channels, 2), device=device)
        offsets = (offsets + shifts).clamp(0, cell - tile)                      # (N, 9, C, 2)
    else:
        offsets = offsets.expand(batch, TILES, channels, 2)                     # (N, 9, C, 2)
    return origins, origins[:, :, None] + offsets                       # (N, 9, 2), (N, 9, C, 2)


@TASKS.register("jigsaw")
class Jigsaw(PretextTask):
    """Solve 3×3 jigsaw puzzles: classify which permutation shuffled nine tiles.

    Noroozi & Favaro, "Unsupervised learning of visual representations by solving
    jigsaw puzzles", ECCV 2016. The classes are a permutation set of maximal average
    Hamming distance (§4.1, :func:`max_hamming_permutations`). Shortcut guards (§3.2):
    random gaps between tiles, per-tile mean/std normalisation, a share of RGB images
    turned to grayscale and per-channel jitter (:func:`sample_tile_positions`).
    Geometry is scaled from the paper's 64 px tiles in 85 px cells.

    Head: the CFN's fc6 (per tile, 1024) → fc7 (4096) → fc8, scaled down by 8: a
    shared per-tile linear layer to ``tile_dim`` = 128 with ReLU, the nine
    concatenated (1152) → ``hidden_dim`` = 512 with ReLU → N logits, so the head stays
    smaller than the backbone it trains (convnet: D = 256).

    ``backbone_family = "cnn"``: the backbone sees tiles enlarged to ``input_size``
    (:func:`tasks.blocks.tile_backbone`: 8 → 17 px on convnet, so no stage has maps
    under 3×3) and is evaluated on whole images (``features``: ``(N, D)``, each
    standardised by its own mean and std as tiles are), which a ViT cannot take."""

    paper = "Noroozi & Favaro, ECCV 2016, §3, §4.1"
    tune_knob = ({}, {"num_permutations": 30})  # puzzle difficulty (Table 3 compares set sizes)
    backbone_family = "cnn"
    min_image_size = GRID * MIN_TILE  # 3×3 cells of at least MIN_TILE px

    @dataclass
    class Options:
        """Jigsaw hyperparameters; the paper's values in brackets."""

        # N, the permutation set size (classes) [1000 on ImageNet; Table 3 compares sets
        # down to 100]: 100 suits short runs on small images (chance 1 %)
        num_permutations: int = option(100, low=2, high=NUM_ALL_PERMUTATIONS)
        permutation_seed: int = option(0, low=0, high=2**63 - 1)  # first permutation of Alg. 1
        tile_ratio: float = option(64 / 85, low=0.1, high=1.0)  # tile side / cell side [64/85]
        grayscale_prob: float = option(0.3, low=0.0, high=1.0)  # RGB images made gray [30 %]
        # per-channel jitter bound in px [0–2 px on 64 px tiles]; 1 px on 7–10 px tiles
        channel_jitter: int = option(1, low=0, high=8)
        tile_dim: int = option(128, low=1, high=65536)  # shared per-tile layer [fc6]
        hidden_dim: int = option(512, low=1, high=65536)  # over the concatenated tiles [fc7]

    def __init__(self, make_backbone: BackboneFactory, spec, options: Options) -> None:
        super().__init__(make_backbone, spec, options)
        self.cell_size, self.tile_size = tile_geometry(spec.image_size, options.tile_ratio)
        self.backbone = tile_backbone(self, make_backbone, self.tile_size)
        self.input_size = self.backbone.img_size  # s, the side the backbone sees tiles at
        permutations = max_hamming_permutations(options.num_permutations, options.permutation_seed)
        self.register_buffer("permutations", torch.from_numpy(permutations))  # (N_perm, 9)
        self.tile_fc = nn.Sequential(nn.Linear(self.backbone.num_features, options.tile_dim),
                                     nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(TILES * options.tile_dim, options.hidden_dim),
                                        nn.ReLU(inplace=True),
                                        nn.Linear(options.hidden_dim, options.num_permutations))

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """SGD, momentum 0.9, weight decay 5e-4 as in the paper (§3.3: lr 0.01 at batch
        256); the lr is raised to 0.05·batch/256 (linear scaling, Goyal et al. 2017)
        because our BatchNorm backbones train far fewer steps than the paper's 350k."""
        return [OptimConfig(name="sgd", lr=0.05 * batch_size / 256, momentum=0.9,
                            weight_decay=5e-4)]

    def make_puzzles(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Puzzles from ``(N, C, H, W)`` images in [0, 1]: ``tiles`` ``(N, 9, C, t, t)``
        in [0, 1] (not standardised) whose position i holds the tile of cell
        ``permutations[label][i]``, and ``labels`` ``(N,)`` int64 in 0…N_perm − 1."""
        n, c = images.shape[:2]
        if c == 3 and self.options.grayscale_prob > 0:
            gray = torch.rand(n, device=images.device) < self.options.grayscale_prob  # (N,)
            grayscale = rgb_to_luma(images).expand(-1, 3, -1, -1)    # (N, 3, H, W), R = G = B
            images = torch.where(gray.view(n, 1, 1, 1), grayscale, images)  # (N, 3, H, W)
        _, corners = sample_tile_positions(n, c, images.shape[-1], self.cell_size,
                                           self.tile_size, self.options.channel_jitter,
                                           images.device)                     # (N, 9, C, 2)
        tiles = crop_squares(images, corners, self.tile_size)  # (N, 9, C, t, t), cell order
        labels = torch.randint(len(self.permutations), (n,), device=images.device)  # (N,)
        order = self.permutations[labels]                      # (N, 9): cell at each position
        batch = torch.arange(n, device=images.device)[:, None]
        return tiles[batch, order], labels                     # (N, 9, C, t, t), (N,)

    def logits(self, tiles: torch.Tensor) -> torch.Tensor:
        """Permutation logits ``(N, N_perm)`` of shuffled tiles ``(N, 9, C, t, t)`` in [0, 1]:
        one backbone call on all N·9 tiles, each enlarged to s px and standardised alone."""
        n = tiles.shape[0]
        tiles = resize_tiles(tiles.flatten(0, 1), self.input_size)  # (N·9, C, s, s)
        tiles = standardize(tiles, MIN_TILE_STD)                # (N·9, C, s, s)
        features = self.backbone(tiles)                         # (N·9, D_backbone)
        per_tile = self.tile_fc(features)                       # (N·9, D), D = tile_dim
        puzzles = per_tile.view(n, -1)                          # (N, 9·D), positions in order
        return self.classifier(puzzles)                         # (N, N_perm)

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """Cross-entropy (nats) of the permutation index; logs ``top1`` (%, chance
        100 / N_perm)."""
        tiles, labels = self.make_puzzles(images)               # (N, 9, C, t, t), (N,)
        logits = self.logits(tiles)                             # (N, N_perm)
        top1 = (logits.argmax(dim=1) == labels).float().mean() * 100
        return F.cross_entropy(logits.float(), labels), {"top1": top1.detach()}

    def pretext_chance(self) -> dict[str, float]:
        return {"top1": 100.0 / len(self.permutations)}

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Each ``(N, C, H, W)`` image in [0, 1] standardised by its own mean and std,
        as tiles are in training; ``features`` and ``feature_stages`` use it."""
        return standardize(images, MIN_TILE_STD)                # (N, C, H, W)

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """Up to six original images above their shuffled tiles (white gaps), each
        puzzle labelled with its true and its predicted permutation index."""
        images = images[:6]
        tiles, labels = self.make_puzzles(images)
        predicted = self.logits(tiles).argmax(dim=1)
        n, _, c, t, _ = tiles.shape
        side = t + 2
        framed = F.pad(tiles, (1, 1, 1, 1), value=1.0).view(n, GRID, GRID, c, side, side)
        puzzles = framed.permute(0, 3, 1, 4, 2, 5).reshape(n, c, GRID * side, GRID * side)
        fig = image_rows([("image", images), ("puzzle", puzzles)],
                         title=f"jigsaw: {len(self.permutations)} permutations")
        for ax, label, guess in zip(fig.axes[n:], labels.tolist(), predicted.tolist()):
            ax.set_xlabel(f"perm {label}, pred {guess}", fontsize=7)
        return fig

    def summary(self) -> dict:
        """Adds the permutation set's mean/minimum pairwise Hamming distance and the
        puzzle geometry in pixels (``input_size``: the side the backbone sees tiles at)."""
        mean, minimum = hamming_statistics(self.permutations.cpu().numpy())
        return {**super().summary(), "num_permutations": len(self.permutations),
                "hamming_mean": mean, "hamming_min": minimum, "cell_size": self.cell_size,
                "tile_size": self.tile_size, "input_size": self.input_size}
