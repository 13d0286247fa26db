"""``jigsaw``: solving jigsaw puzzles (Noroozi & Favaro, ECCV 2016)."""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import rgb_to_grayscale

from ssl_bench.plots import image_rows
from ssl_bench.registry import TASKS
from tasks.base import (BackboneFactory, Logs, OptimConfig, PretextTask, check_range,
                        count_parameters, require_family)
from tasks.decoders import probe_feature_map

GRID = 3
TILES = GRID * GRID
NUM_ALL_PERMUTATIONS = math.factorial(TILES)  # 9! = 362,880
MIN_TILE_STD = 1.0 / 255.0  # one 8-bit grey level: the quantisation noise floor


@functools.cache
def _all_permutations() -> np.ndarray:
    """All 9! permutations of 0…8 in lexicographic order, ``(9, 9!)`` int8 (one row per
    position, so each Hamming update below runs over contiguous memory)."""
    return np.ascontiguousarray(np.array(list(itertools.permutations(range(TILES))),
                                         dtype=np.int8).T)


def max_hamming_permutations(count: int, seed: int) -> np.ndarray:
    """A permutation set of maximal average Hamming distance (Noroozi & Favaro 2016,
    §4.1, Algorithm 1).

    Start from a permutation drawn uniformly from all 9!; then repeatedly add the
    candidate whose summed (equivalently average) Hamming distance to the permutations
    chosen so far is largest, until ``count`` are chosen. Chosen permutations leave
    the candidate pool; ties go to the first candidate in lexicographic order (the
    paper's ``argmax``). Each step updates the running sums over all 9! candidates
    at once, so N = 100 takes about a second.

    Args:
        count: N, the number of permutations, 1…9!.
        seed: seeds the first permutation (``numpy.random.default_rng``).

    Returns:
        ``(count, 9)`` int64; row k lists, for each puzzle position, the grid cell
        (row-major, 0…8) whose tile is placed there.

    Raises:
        OptionError: if ``count`` is not in 1…9!.
    """
    check_range("num_permutations", count, 1, NUM_ALL_PERMUTATIONS)
    candidates = _all_permutations()
    chosen = [int(np.random.default_rng(seed).integers(NUM_ALL_PERMUTATIONS))]
    taken = np.zeros(NUM_ALL_PERMUTATIONS, dtype=bool)
    distance_sums = np.zeros(NUM_ALL_PERMUTATIONS, dtype=np.int64)
    for _ in range(count - 1):
        taken[chosen[-1]] = True
        last = candidates[:, chosen[-1]]
        for position in range(TILES):
            distance_sums += candidates[position] != last[position]
        chosen.append(int(np.where(taken, -1, distance_sums).argmax()))
    return candidates[:, chosen].T.astype(np.int64)


def hamming_statistics(permutations: np.ndarray) -> tuple[float, int]:
    """Mean and minimum Hamming distance over all pairs of distinct rows of a
    permutation set ``(N, 9)``, N ≥ 2 (the statistics of the paper's Table 3)."""
    distances = (permutations[:, None, :] != permutations[None, :, :]).sum(axis=-1)
    pairs = distances[np.triu_indices(len(permutations), k=1)]
    return float(pairs.mean()), int(pairs.min())


def tile_geometry(image_size: int, tile_ratio: float) -> tuple[int, int]:
    """Cell and tile sides in pixels for a 3×3 puzzle on ``image_size`` px images:
    cell = ⌊image_size / 3⌋, tile = round(cell · ``tile_ratio``), at least 1
    (32 px → 10, 8; 28 px → 9, 7; 96 px → 32, 24 at the paper's 64/85)."""
    cell = image_size // GRID
    return cell, min(cell, max(1, round(cell * tile_ratio)))


def sample_tile_positions(batch: int, channels: int, image_size: int, cell: int, tile: int,
                          jitter: int, device: torch.device | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random puzzle geometry for a batch (Noroozi & Favaro 2016, §3.2).

    A random 3·cell square window of each image is split into a 3×3 grid of cells;
    each cell holds one tile at a uniformly random offset, so neighbouring tiles are
    separated by a random gap (0 to 2·(cell − tile) px). Each colour channel of a
    tile is shifted by a further uniform ±``jitter`` px, clamped to stay inside its
    cell, against chromatic-aberration shortcuts.

    Args:
        batch: N.
        channels: C; jitter applies only when C > 1.
        image_size: image side in pixels (≥ 3·cell).
        cell, tile: from :func:`tile_geometry`.
        jitter: the per-channel shift bound in pixels.
        device: where to put the results.

    Returns:
        ``cell_origins`` ``(N, 9, 2)`` and ``tile_corners`` ``(N, 9, C, 2)``, int64
        (y, x) pixel coordinates of each cell's and each tile channel's top-left
        corner; cells in row-major order.
    """
    window = torch.randint(0, image_size - GRID * cell + 1, (batch, 1, 2), device=device)
    grid = torch.arange(GRID, device=device) * cell
    cells = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1).view(1, TILES, 2)
    origins = window + cells
    offsets = torch.randint(0, cell - tile + 1, (batch, TILES, 1, 2), device=device)
    if jitter > 0 and channels > 1:
        shifts = torch.randint(-jitter, jitter + 1, (batch, TILES, channels, 2), device=device)
        offsets = (offsets + shifts).clamp(0, cell - tile)
    else:
        offsets = offsets.expand(batch, TILES, channels, 2)
    return origins, origins[:, :, None] + offsets


def gather_tiles(images: torch.Tensor, corners: torch.Tensor, tile: int) -> torch.Tensor:
    """Cut tiles out of a batch by advanced indexing.

    Args:
        images: ``(N, C, H, W)``.
        corners: ``(N, T, C, 2)`` int64 (y, x) top-left corner of each tile channel.
        tile: tile side in pixels.

    Returns:
        ``(N, T, C, tile, tile)``, same dtype as ``images``.
    """
    n, c = images.shape[:2]
    steps = torch.arange(tile, device=images.device)
    rows = (corners[..., 0, None] + steps)[..., :, None]  # (N, T, C, tile, 1)
    cols = (corners[..., 1, None] + steps)[..., None, :]  # (N, T, C, 1, tile)
    batch_index = torch.arange(n, device=images.device).view(n, 1, 1, 1, 1)
    channel_index = torch.arange(c, device=images.device).view(1, 1, c, 1, 1)
    return images[batch_index, channel_index, rows, cols]


def standardize(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Subtract the mean and divide by the standard deviation over ``dims`` (std floored
    at one grey level so that flat tiles do not blow up); same shape and dtype."""
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True).clamp_min(MIN_TILE_STD)
    return (x - mean) / std


@TASKS.register("jigsaw")
class Jigsaw(PretextTask):
    """Solve 3×3 jigsaw puzzles: classify which permutation shuffled nine tiles.

    Follows Noroozi & Favaro, "Unsupervised learning of visual representations by
    solving jigsaw puzzles", ECCV 2016: the context-free network (CFN, §3) runs the
    backbone on each tile with shared weights, concatenates the nine tile features
    and classifies the permutation index from a set chosen for maximal average
    Hamming distance (§4.1, Algorithm 1; :func:`max_hamming_permutations`).
    Shortcut prevention (§3.2): random gaps between tiles, per-tile mean/std
    normalisation, a share of RGB images turned to grayscale and per-channel
    spatial jitter (:func:`sample_tile_positions`). Geometry is scaled from the
    paper's 64 px tiles in 85 px cells.

    The head scales the CFN's fc6 (shared per tile, 1024) → fc7 (4096) → fc8 down
    by 8: a shared per-tile linear layer to ``tile_dim`` = 128 with ReLU, the nine
    concatenated (1152) → ``hidden_dim`` = 512 with ReLU → N logits, so the head
    stays smaller than the backbone it trains (convnet: D = 256).

    The backbone is built for tiles (``img_size`` = tile side) and evaluated on whole
    images, each standardised by its own mean and std as the tiles were:
    ``features`` gives ``(N, D)``. CNNs are size-agnostic; a ViT's position
    embeddings fix its input size, so ViT backbones raise ``IncompatibleError``.
    """

    name = "jigsaw"
    paper = "Noroozi & Favaro, ECCV 2016, §3, §4.1"

    @dataclass
    class Options:
        """Hyperparameters of the jigsaw puzzle task.

        Attributes:
            num_permutations: N, the size of the permutation set (classes). The
                paper uses 1000 on ImageNet and compares smaller sets down to 100
                (Table 3); 100 suits short runs on small images (chance 1 %).
            permutation_seed: seeds the first permutation of Algorithm 1.
            tile_ratio: tile side / cell side; 64/85 as in the paper.
            grayscale_prob: share of RGB images converted to grayscale (paper: 30 %).
            channel_jitter: per-channel spatial jitter bound in pixels (paper: 0–2 px
                on 64 px tiles; 1 px on 7–10 px tiles).
            tile_dim: width of the shared per-tile layer (the CFN's fc6).
            hidden_dim: width of the layer over the concatenated tiles (fc7).
        """

        num_permutations: int = 100
        permutation_seed: int = 0
        tile_ratio: float = 64 / 85
        grayscale_prob: float = 0.3
        channel_jitter: int = 1
        tile_dim: int = 128
        hidden_dim: int = 512

        def __post_init__(self) -> None:
            check_range("num_permutations", self.num_permutations, 2, NUM_ALL_PERMUTATIONS)
            check_range("permutation_seed", self.permutation_seed, 0, 2**63 - 1)
            check_range("tile_ratio", self.tile_ratio, 0.1, 1.0)
            check_range("grayscale_prob", self.grayscale_prob, 0.0, 1.0)
            check_range("channel_jitter", self.channel_jitter, 0, 8)
            check_range("tile_dim", self.tile_dim, 1, 65536)
            check_range("hidden_dim", self.hidden_dim, 1, 65536)

    def __init__(self, make_backbone: BackboneFactory, spec, options: Options) -> None:
        super().__init__(make_backbone, spec, options)
        self.cell_size, self.tile_size = tile_geometry(spec.image_size, options.tile_ratio)
        self.backbone = make_backbone(img_size=self.tile_size)
        require_family(self.name, self.backbone, "cnn",
                       hint=f"jigsaw builds the backbone for {self.tile_size} px tiles and "
                            "evaluates it on whole images, which a ViT's fixed position "
                            "embeddings cannot take")
        probe_feature_map(self.backbone, spec.channels, self.tile_size)
        permutations = max_hamming_permutations(options.num_permutations,
                                                options.permutation_seed)
        self.register_buffer("permutations", torch.from_numpy(permutations))
        self.tile_fc = nn.Sequential(nn.Linear(self.backbone.num_features, options.tile_dim),
                                     nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(TILES * options.tile_dim, options.hidden_dim),
                                        nn.ReLU(inplace=True),
                                        nn.Linear(options.hidden_dim, options.num_permutations))

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """SGD with momentum 0.9 and weight decay 5e-4 as in the paper (§3.3, lr 0.01
        at batch 256); the lr is raised to 0.05·batch/256 (linear scaling, Goyal
        et al. 2017) because our BatchNorm backbones train for far fewer steps than
        the paper's 350k iterations."""
        return [OptimConfig(name="sgd", lr=0.05 * batch_size / 256, momentum=0.9,
                            weight_decay=5e-4)]

    def make_puzzles(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shuffled tiles and their permutation indices.

        Args:
            images: ``(N, C, H, W)`` float in [0, 1].

        Returns:
            ``tiles`` ``(N, 9, C, t, t)`` in [0, 1] (not yet standardised), where
            position i holds the tile of cell ``permutations[label][i]``, and
            ``labels`` ``(N,)`` int64 in 0…num_permutations − 1.
        """
        n, c = images.shape[:2]
        if c == 3 and self.options.grayscale_prob > 0:
            gray = torch.rand(n, device=images.device) < self.options.grayscale_prob
            images = torch.where(gray.view(n, 1, 1, 1), rgb_to_grayscale(images, 3), images)
        _, corners = sample_tile_positions(n, c, images.shape[-1], self.cell_size,
                                           self.tile_size, self.options.channel_jitter,
                                           images.device)
        tiles = gather_tiles(images, corners, self.tile_size)
        labels = torch.randint(len(self.permutations), (n,), device=images.device)
        order = self.permutations[labels]
        return tiles[torch.arange(n, device=images.device)[:, None], order], labels

    def classify(self, tiles: torch.Tensor) -> torch.Tensor:
        """Permutation logits ``(N, num_permutations)`` of shuffled tiles ``(N, 9, C, t, t)``
        in [0, 1]; one backbone call over all N·9 tiles, each standardised on its own."""
        n = tiles.shape[0]
        tiles = standardize(tiles.flatten(0, 1), dims=(1, 2, 3))
        per_tile = self.tile_fc(self.backbone(tiles))
        return self.classifier(per_tile.view(n, -1))

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """Cross-entropy of the permutation index, and the batch's top-1 in %."""
        tiles, labels = self.make_puzzles(images)
        logits = self.classify(tiles)
        top1 = (logits.argmax(dim=1) == labels).float().mean() * 100
        return F.cross_entropy(logits.float(), labels), {"pretext_top1": top1.detach()}

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Each ``(N, C, H, W)`` image in [0, 1] standardised by its own mean and std,
        as tiles are in training; the base class's ``features`` and ``feature_stages``
        (pooled ``(N, D)`` and per-stage maps) use it."""
        return standardize(images, dims=(1, 2, 3))

    @torch.no_grad()
    def pretext_metrics(self, images: torch.Tensor) -> dict[str, float]:
        """``pretext_top1``: permutation accuracy (%) on puzzles made from test images;
        chance is 100 / num_permutations."""
        tiles, labels = self.make_puzzles(images)
        return {"pretext_top1": (self.classify(tiles).argmax(dim=1) == labels)
                .float().mean().item() * 100}

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """Up to six original images above their shuffled tiles (white gaps), each
        puzzle labelled with its true and its predicted permutation index."""
        images = images[:6]
        tiles, labels = self.make_puzzles(images)
        predicted = self.classify(tiles).argmax(dim=1)
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
        """Permutation-set statistics (mean/minimum pairwise Hamming distance, chance
        top-1 in %), puzzle geometry in pixels and parameter counts."""
        mean_distance, min_distance = hamming_statistics(self.permutations.cpu().numpy())
        return {"num_permutations": len(self.permutations),
                "hamming_mean": mean_distance, "hamming_min": min_distance,
                "chance_top1": 100.0 / len(self.permutations),
                "cell_size": self.cell_size, "tile_size": self.tile_size,
                "backbone_parameters": count_parameters(self.backbone),
                "head_parameters": (count_parameters(self.tile_fc)
                                    + count_parameters(self.classifier))}
