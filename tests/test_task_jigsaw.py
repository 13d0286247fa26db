"""Tests of the jigsaw puzzle task: permutation set, tile sampling, model."""

import itertools
import math

import numpy as np
import pytest
import torch

from ssl_bench.build import build_task
from ssl_bench.core.errors import IncompatibleError, OptionError
from ssl_bench.core.spec import DataSpec
from tasks.blocks import crop_squares, standardize
from tasks.jigsaw import (MIN_TILE_STD, hamming_statistics, max_hamming_permutations,
                          sample_tile_positions, tile_geometry)

RGB32 = DataSpec("test", channels=3, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, hflip=True)
GRAY28 = DataSpec("test", channels=1, image_size=28, mean=(0.5,), std=(0.25,), hflip=False)
RGB30 = DataSpec("test", channels=3, image_size=30, mean=(0.5,) * 3, std=(0.25,) * 3, hflip=True)


def make_task(spec=RGB32, backbone="convnet", **options):
    options.setdefault("num_permutations", 10)
    backbone_options = {"width": 8} if backbone == "convnet" else {}
    return build_task("jigsaw", backbone, spec, options, backbone_options)


# ------------------------------------------------------------------ permutation set


def test_permutation_set_is_distinct_valid_and_seeded():
    perms = max_hamming_permutations(30, seed=0)
    assert perms.shape == (30, 9)
    assert (np.sort(perms, axis=1) == np.arange(9)).all()
    assert len({tuple(p) for p in perms}) == 30
    assert np.array_equal(perms, max_hamming_permutations(30, seed=0))
    assert not np.array_equal(perms, max_hamming_permutations(30, seed=1))


def lexicographic_rank(permutation) -> int:
    """Index of a permutation of 0…8 in lexicographic order (its Lehmer code)."""
    rest, rank = list(range(9)), 0
    for i, value in enumerate(permutation):
        rank += rest.index(value) * math.factorial(8 - i)
        rest.remove(value)
    return rank


def test_permutation_set_follows_greedy_max_average_hamming():
    """Each permutation after the first maximises the summed Hamming distance to the
    ones before it over all other 9! permutations, first in lexicographic order on ties
    (Algorithm 1), recomputed here by brute force."""
    perms = max_hamming_permutations(5, seed=3)
    everything = np.array(list(itertools.permutations(range(9))), dtype=np.int8)
    for k in range(1, len(perms)):
        sums = sum((everything != p).sum(axis=1) for p in perms[:k])
        sums[[lexicographic_rank(p) for p in perms[:k]]] = -1
        assert lexicographic_rank(perms[k]) == int(np.argmax(sums))


def test_hamming_statistics_match_brute_force():
    perms = max_hamming_permutations(20, seed=0)
    pairs = [sum(a != b for a, b in zip(p, q)) for p, q in itertools.combinations(perms, 2)]
    mean, minimum = hamming_statistics(perms)
    assert mean == pytest.approx(sum(pairs) / len(pairs))
    assert minimum == min(pairs)


def test_permutation_set_beats_random_set_on_average_hamming():
    chosen = max_hamming_permutations(100, seed=0)
    rng = np.random.default_rng(0)
    random_set = np.array([rng.permutation(9) for _ in range(100)])
    assert hamming_statistics(chosen)[0] > hamming_statistics(random_set)[0] + 0.04


def test_summary_reports_permutation_buffer_statistics():
    task = make_task(num_permutations=12, permutation_seed=5)
    buffer = task.permutations.numpy()
    assert "permutations" in task.state_dict()
    assert np.array_equal(buffer, max_hamming_permutations(12, 5))
    mean, minimum = hamming_statistics(buffer)
    summary = task.summary()
    assert summary["hamming_mean"] == pytest.approx(mean) and summary["hamming_min"] == minimum
    assert task.pretext_chance() == {"top1": pytest.approx(100 / 12)}
    assert (summary["cell_size"], summary["tile_size"]) == (10, 8)
    assert set(summary["parameters"]) == {"backbone", "tile_fc", "classifier"}


# ------------------------------------------------------------------ tiles


@pytest.mark.parametrize("size,cell,tile", [(32, 10, 8), (28, 9, 7), (96, 32, 24)])
def test_tile_geometry_scales_the_paper(size, cell, tile):
    assert tile_geometry(size, 64 / 85) == (cell, tile)


def test_tiles_lie_inside_their_cells():
    torch.manual_seed(0)
    cell, tile = tile_geometry(32, 64 / 85)
    origins, corners = sample_tile_positions(256, 3, 32, cell, tile, jitter=1)
    assert origins.shape == (256, 9, 2) and corners.shape == (256, 9, 3, 2)
    # a 3×3 grid of cells inside the image
    steps = origins - origins[:, :1]
    expected = torch.tensor([(r * cell, c * cell) for r in range(3) for c in range(3)])
    assert torch.equal(steps, expected.expand_as(steps))
    assert origins.min() >= 0 and (origins[:, -1] + cell).max() <= 32
    offsets = corners - origins[:, :, None]
    assert offsets.min() >= 0 and offsets.max() <= cell - tile
    # both extremes of the random gap occur, and channels are jittered by at most ±1 px each
    assert offsets.min() == 0 and offsets.max() == cell - tile
    spread = (corners.amax(dim=2) - corners.amin(dim=2)).max()
    assert spread == 2


def test_grayscale_input_is_not_jittered():
    _, corners = sample_tile_positions(8, 1, 28, 9, 7, jitter=1)
    assert corners.shape == (8, 9, 1, 2)


def test_tiles_are_the_pixels_at_their_corners():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    _, corners = sample_tile_positions(4, 3, 32, 10, 8, jitter=1)
    tiles = crop_squares(images, corners, 8)
    assert tiles.shape == (4, 9, 3, 8, 8)
    for n, k, c in itertools.product(range(4), range(9), range(3)):
        y, x = corners[n, k, c].tolist()
        assert torch.equal(tiles[n, k, c], images[n, c, y:y + 8, x:x + 8])


def test_puzzle_labels_name_the_cell_of_each_position():
    """On a 30 px image of constant cells (value = cell index / 10) the tile at
    position i must come from cell permutations[label][i]."""
    torch.manual_seed(0)
    task = make_task(RGB30, grayscale_prob=0.0)
    cells = torch.arange(9.0).view(3, 3) / 10
    images = cells.repeat_interleave(10, 0).repeat_interleave(10, 1).expand(16, 3, 30, 30)
    tiles, labels = task.make_puzzles(images)
    assert tiles.shape == (16, 9, 3, task.tile_size, task.tile_size)
    expected = task.permutations[labels].float() / 10
    assert torch.allclose(tiles.mean(dim=(2, 3, 4)), expected)
    assert (tiles.amax(dim=(2, 3, 4)) == tiles.amin(dim=(2, 3, 4))).all()


@pytest.mark.parametrize("prob,gray", [(1.0, True), (0.0, False)])
def test_grayscale_probability(prob, gray):
    task = make_task(grayscale_prob=prob, channel_jitter=0)
    tiles, _ = task.make_puzzles(torch.rand(8, 3, 32, 32))
    channels_equal = torch.allclose(tiles[:, :, 0], tiles[:, :, 1], atol=1e-6)
    assert channels_equal == gray


def test_standardize_per_tile():
    x = torch.rand(5, 9, 3, 8, 8) * 3 + 2
    z = standardize(x.flatten(0, 1), MIN_TILE_STD)
    assert torch.allclose(z.mean(dim=(1, 2, 3)), torch.zeros(45), atol=1e-5)
    assert torch.allclose(z.std(dim=(1, 2, 3)), torch.ones(45), atol=1e-5)
    flat = standardize(torch.full((1, 1, 4, 4), 0.3), MIN_TILE_STD)
    assert flat.abs().max() < 1e-4  # std floored: a flat tile stays flat, no division by 0


# ------------------------------------------------------------------ model


@pytest.mark.parametrize("spec", [RGB32, GRAY28], ids=["rgb32", "gray28"])
def test_shapes(spec):
    task = make_task(spec)
    assert task.backbone.img_size == task.input_size == 17  # tiles of 8 and 7 px, enlarged
    x = torch.rand(4, spec.channels, spec.image_size, spec.image_size)
    tiles, labels = task.make_puzzles(x)
    assert task.logits(tiles).shape == (4, 10)
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 10
    task.eval()
    assert task.features(x).shape == (4, task.backbone.num_features)
    assert set(task.pretext_metrics(x)) == {"loss", "top1"}


def test_features_are_invariant_to_per_image_brightness_and_contrast():
    task = make_task().eval()
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(task.features(x), task.features(0.5 * x + 0.2), atol=1e-4)


def test_loss_falls_on_fixed_puzzles():
    """The same puzzles every step (RNG re-seeded): the network must learn them. Noise
    tiles enlarged 8 → 17 px are learnt more slowly than at 8 px (loss ratio after 30
    steps 0.84 instead of 0.49; after 60, 0.55), so 60 steps."""
    torch.manual_seed(0)
    task = make_task(num_permutations=10)
    x = torch.rand(16, 3, 32, 32)
    optimizers = task.configure_optimizers(task.default_optim(len(x)))
    losses = []
    for _ in range(60):
        torch.manual_seed(1)
        losses.append(float(task.training_step(x, optimizers)["loss"]))
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])


def convs_with_dead_taps(backbone) -> list[str]:
    """Names of the backbone's convolutions with a kernel tap (row, column) that got no
    gradient from any input or output channel in the last backward pass."""
    return [name for name, conv in backbone.named_modules() if isinstance(conv, torch.nn.Conv2d)
            and not (conv.weight.grad.abs().sum(dim=(0, 1)) > 0).all()]


@pytest.mark.parametrize("backbone,image_size,tile,side", [
    ("convnet", 32, 8, 17), ("convnet", 96, 24, 24), ("resnet18", 28, 7, 17)])
def test_backbone_sees_tiles_at_the_smallest_side_with_3x3_maps(backbone, image_size, tile,
                                                                   side):
    """Stride-2 stages give ⌈side / 2⌉: 17 → 9 → 5 → 3, while 16 px ends at 2×2.
    Tiles already that large are not resized."""
    spec = DataSpec("test", 3, image_size, (0.5,) * 3, (0.25,) * 3, hflip=True)
    task = make_task(spec, backbone)
    assert (task.tile_size, task.input_size, task.backbone.img_size) == (tile, side, side)
    assert task.summary()["input_size"] == side

    def smallest_map(size: int) -> int:
        stages = task.backbone.eval().forward_stages(torch.zeros(1, 3, size, size))
        return min(stage.shape[-1] for stage in stages)

    assert smallest_map(side) >= 3 and (side == tile or smallest_map(side - 1) < 3)
    tiles, _ = task.make_puzzles(torch.rand(2, 3, image_size, image_size))
    assert tiles.shape[-1] == tile  # cut at the source's tile size; enlarged in logits


def test_smallest_side_leaves_the_backbone_as_it_was_and_refuses_when_none_fits():
    from backbones.convnet import ConvNet

    net = ConvNet(img_size=8, width=4).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert net.smallest_side(8, 3) == 17 and net.training
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    with pytest.raises(IncompatibleError, match="under 3×3"):
        net.smallest_side(8, 3, limit=16)


@pytest.mark.parametrize("backbone,steps", [("convnet", 1), ("resnet18", 2)])
def test_every_backbone_tap_learns_from_one_step(backbone, steps):
    """32 px images give 8 px tiles; a backbone fed them at that size has 1×1 maps in its
    last stage, where 8 of 9 taps of a 3×3 convolution only ever see zero padding.
    resnet18 takes 2 steps: timm sets each residual block's last BatchNorm scale to 0,
    so the first step's gradient is zero in every block's convolutions."""
    task = build_task("jigsaw", backbone, RGB32)  # default options and width
    optimizers = task.configure_optimizers(task.default_optim(4))
    for _ in range(steps):
        task.training_step(torch.rand(4, 3, 32, 32), optimizers)
    assert convs_with_dead_taps(task.backbone) == []


def test_vit_backbone_is_incompatible():
    with pytest.raises(IncompatibleError, match="CNN"):
        make_task(backbone="vit_tiny")


@pytest.mark.parametrize("options", [{"num_permutations": 1}, {"num_permutations": 362_881},
                                     {"grayscale_prob": 1.5}, {"tile_ratio": 0.0},
                                     {"channel_jitter": -1}, {"permutation_seed": -1}])
def test_bad_options_raise(options):
    with pytest.raises(OptionError):
        make_task(**options)


def test_luma_matches_torchvision_grayscale():
    """The luma written out in tasks/color.py is torchvision's rgb_to_grayscale."""
    from torchvision.transforms.functional import rgb_to_grayscale

    from tasks.color import rgb_to_luma

    images = torch.rand(4, 3, 9, 7)
    torch.testing.assert_close(rgb_to_luma(images), rgb_to_grayscale(images))
