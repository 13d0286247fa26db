"""relative-patch: positions, the 3×3 grid and its bounds, shortcut guards, shapes,
pairing, learning."""

import pytest
import torch

from ssl_bench.build import build_task
from ssl_bench.core.errors import IncompatibleError, OptionError
from ssl_bench.core.spec import DataSpec
from tasks.relative_patch import (
    NEIGHBOUR_OFFSETS,
    Geometry,
    drop_color,
    patch_geometry,
    pixelate,
    project_color,
    sample_grid,
)

RGB = DataSpec("test", channels=3, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, hflip=True)
GRAY = DataSpec("gray", channels=1, image_size=28, mean=(0.5,), std=(0.25,), hflip=False)
TINY = {"width": 8}


def make(options=None, spec=RGB):
    return build_task("relative-patch", "convnet", spec, options or {}, TINY)


def test_labels_are_the_eight_distinct_neighbours():
    expected = {(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)} - {(0, 0)}
    assert len(NEIGHBOUR_OFFSETS) == 8 and set(NEIGHBOUR_OFFSETS) == expected
    assert NEIGHBOUR_OFFSETS[0] == (-1, -1) and NEIGHBOUR_OFFSETS[7] == (1, 1)


def test_hand_made_grid_gives_the_right_labels():
    geometry = Geometry(patch=7, gap=3, jitter=0)
    image = torch.zeros(1, 1, geometry.span, geometry.span)
    for r in range(3):  # cell (r, c) is filled with the value 3 r + c
        for c in range(3):
            top, left = r * 10, c * 10
            image[..., top:top + 7, left:left + 7] = 3 * r + c
    patches, labels, _ = sample_grid(image.expand(5, 1, -1, -1), geometry)
    assert patches.shape == (5, 9, 1, 7, 7) and labels.shape == (5, 8)
    cell = patches[..., 0, 0, 0].long()  # (5, 9)
    assert torch.equal(patches, cell.view(5, 9, 1, 1, 1).expand_as(patches))  # whole cells
    assert torch.all(cell[:, 0] == 4)  # the centre first
    offsets = torch.stack([cell[:, 1:] // 3 - 1, cell[:, 1:] % 3 - 1], dim=2)  # (5, 8, 2)
    assert torch.equal(offsets, torch.tensor(NEIGHBOUR_OFFSETS)[labels])
    assert torch.equal(labels, torch.arange(8).expand(5, 8))  # pair k has label k


@pytest.mark.parametrize("size", [28, 32, 96])
def test_patches_stay_inside_for_all_jitter_draws(size):
    geometry = patch_geometry(size)
    assert geometry.span + 2 * geometry.jitter <= size and geometry.jitter >= 1
    rows = torch.arange(size, dtype=torch.float32).view(1, 1, size, 1).expand(1, 1, size, size)
    images = (rows * size + rows.transpose(-1, -2)).expand(3000, 1, -1, -1)
    torch.manual_seed(0)
    patches, labels, corners = sample_grid(images, geometry)
    assert corners.shape == (3000, 9, 1, 2) and patches.shape[:2] == (3000, 9)
    assert corners.min() >= 0 and corners.max() + geometry.patch <= size
    assert corners.min() == 0 and corners.max() + geometry.patch == size  # extremes reached
    # The crops are the pixels at the corners (each pixel's value encodes its position).
    assert torch.equal(patches[..., 0, 0], corners[..., 0] * size + corners[..., 1])
    # Neighbour k minus the centre is NEIGHBOUR_OFFSETS[k] cells, up to twice the jitter.
    step = geometry.patch + geometry.gap
    expected = torch.tensor(NEIGHBOUR_OFFSETS)[labels] * step  # (3000, 8, 2)
    deviation = corners[:, 1:, 0] - corners[:, :1, 0] - expected
    assert deviation.abs().max() == 2 * geometry.jitter
    # Each patch is jittered on its own: neighbours of one image deviate differently.
    assert (deviation != deviation[:, :1]).any(dim=(1, 2)).float().mean() > 0.9


def test_documented_geometries():
    assert patch_geometry(28) == Geometry(6, 3, 1)
    assert patch_geometry(32) == Geometry(7, 3, 1)
    assert patch_geometry(96) == Geometry(23, 11, 2)


def test_color_dropping_keeps_exactly_one_channel():
    torch.manual_seed(0)
    patches = torch.rand(64, 3, 7, 7)
    dropped = drop_color(patches, 0.01)
    same = (dropped == patches).flatten(2).all(dim=2)
    assert torch.all(same.sum(dim=1) == 1)
    kept_std = patches.flatten(2).std(dim=2)[same]
    noise_std = dropped.flatten(2).std(dim=2)[~same].view(64, 2)
    assert torch.all(noise_std < 0.05 * kept_std[:, None])


def test_projection_removes_the_green_magenta_axis():
    axis = torch.tensor([-1.0, 2.0, -1.0]).view(1, 3, 1, 1)
    projected = project_color(torch.rand(4, 3, 5, 5))
    assert (projected * axis).sum(dim=1).abs().max() < 1e-5


@pytest.mark.parametrize("p", [5, 7, 23])
def test_pixelation_is_area_down_then_bilinear_up_at_each_patch_side(p):
    """The batched product equals resampling each chosen patch on its own: area
    downsampling to its drawn side, bilinear upsampling back (same draws, same order)."""
    import torch.nn.functional as F

    patches = torch.rand(40, 3, p, p)
    torch.manual_seed(1)
    got = pixelate(patches, 0.5, 100 / 96 ** 2)
    torch.manual_seed(1)
    chosen = torch.rand(40) < 0.5
    sides = torch.randint(2, p, (40,))
    for patch, out, pick, side in zip(patches, got, chosen, sides.tolist()):
        small = F.interpolate(patch[None], size=(side, side), mode="area")
        expected = F.interpolate(small, size=(p, p), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(out, expected if pick else patch, rtol=0, atol=1e-6)


def test_pixelation_only_touches_chosen_patches():
    torch.manual_seed(0)
    patches = torch.rand(32, 3, 8, 8)
    assert torch.equal(pixelate(patches, 0.0, 0.01), patches)
    blurred = pixelate(patches, 1.0, 0.01)
    assert blurred.shape == patches.shape
    assert not torch.isclose(blurred, patches).flatten(1).all(dim=1).any()


@pytest.mark.parametrize("spec", [RGB, GRAY])
def test_shapes(spec):
    task = make(spec=spec)
    n, c, s = 5, spec.channels, spec.image_size
    x = torch.rand(n, c, s, s)
    prepared, labels, corners = task.make_grid(x)
    side = task.input_size  # patches of 7 and 6 px, enlarged to the backbone's side
    assert side == task.backbone.img_size == 17 and task.summary()["input_size"] == 17
    assert prepared.shape == (n, 9, c, side, side) and labels.shape == (n, 8)
    assert corners.shape == (n, 9, c, 2)
    assert task.logits(prepared).shape == (n, 8, 8)  # (image, pair k, position)
    task.eval()
    assert task.features(x).shape == (n, task.backbone.num_features)
    assert set(task.pretext_metrics(x)) == {"loss", "top1"}


def test_pair_k_sees_only_the_centre_and_neighbour_k():
    torch.manual_seed(0)
    task = make().eval()  # batch norms on running statistics: no coupling across the batch
    grids = torch.randn(2, 9, 3, 7, 7)
    base = task.logits(grids)
    for j in (1, 5):  # change neighbour j − 1: only that pair's logits move
        changed = grids.clone()
        changed[:, j] = torch.randn(2, 3, 7, 7)
        moved = (task.logits(changed) - base).abs().amax(dim=(0, 2)) > 1e-6  # (8,)
        assert moved.tolist() == [k == j - 1 for k in range(8)]
    changed = grids.clone()
    changed[:, 0] = torch.randn(2, 3, 7, 7)  # the centre is in every pair
    assert ((task.logits(changed) - base).abs().amax(dim=(0, 2)) > 1e-6).all()


def test_render_draws_the_grid_and_counts_right_positions():
    task = make().eval()
    figure = task.render(torch.rand(3, 3, 32, 32))
    assert len(figure.axes) == 2 * 3
    for ax in figure.axes[:3]:
        colours = [tuple(box.get_edgecolor()[:3]) for box in ax.patches]
        assert colours == [(0.0, 1.0, 1.0)] + [(1.0, 0.0, 0.0)] * 8  # centre cyan, 8 red
        right, of = ax.get_title().split()[0].split("/")
        assert of == "8" and 0 <= int(right) <= 8


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    task = make()
    optimizers = task.configure_optimizers(task.default_optim(16))
    x = torch.rand(16, 3, 32, 32)
    losses = []
    for _ in range(30):
        torch.manual_seed(1)  # the same grids, colour drops and pixelations every step
        losses.append(task.training_step(x, optimizers)["loss"].item())
    assert losses[-1] < 0.5 * losses[0]


def test_rgb_corners_are_shared_by_the_channels():
    torch.manual_seed(0)
    patches, _, corners = sample_grid(torch.rand(6, 3, 32, 32), patch_geometry(32))
    assert patches.shape == (6, 9, 3, 7, 7)
    assert torch.equal(corners, corners[:, :, :1].expand_as(corners))


def test_summary_reports_the_layout():
    summary = make().summary()
    assert (summary["patch_size"], summary["gap"], summary["jitter"]) == (7, 3, 1)
    assert set(summary["parameters"]) == {"backbone", "fc6", "fusion"}


def test_every_backbone_tap_learns_from_one_step():
    """32 px images give 7 px patches, which a backbone fed at that size shrinks to 1×1
    maps in its last stage, where 8 of 9 taps of a 3×3 convolution see only zero padding."""
    task = build_task("relative-patch", "convnet", RGB)  # default options and width
    task.training_step(torch.rand(8, 3, 32, 32), task.configure_optimizers(task.default_optim(8)))
    dead = [name for name, conv in task.backbone.named_modules()
            if isinstance(conv, torch.nn.Conv2d)
            and not (conv.weight.grad.abs().sum(dim=(0, 1)) > 0).all()]
    assert dead == []


def test_vit_backbones_are_refused():
    with pytest.raises(IncompatibleError, match="CNN"):
        build_task("relative-patch", "vit_tiny", RGB)


@pytest.mark.parametrize("key, value", [
    ("color_handling", "gray"), ("patch_size", 2), ("patch_size", 12), ("gap_ratio", -0.5),
    ("jitter_ratio", 1.0), ("pixelate_prob", 1.5), ("drop_noise_ratio", -1.0), ("mlp_dim", 0),
])
def test_bad_options_raise(key, value):
    with pytest.raises(OptionError, match=key):
        make({key: value})
