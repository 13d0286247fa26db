"""Tests of the rotation-prediction task (RotNet)."""

import pytest
import torch

from conftest import GRAY28, RGB32, smooth_images
from ssl_bench.build import build_task
from ssl_bench.core.errors import IncompatibleError, OptionError
from ssl_bench.core.spec import DataSpec
from tasks.rotation import rotate

RGB16 = DataSpec("test", channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, hflip=True)


def make_task(spec=RGB32, **options):
    return build_task("rotation", "convnet", spec, options, {"width": 8})



@pytest.mark.parametrize("spec", [RGB32, GRAY28], ids=["rgb32", "gray28"])
def test_shapes(spec):
    task = make_task(spec)
    x = smooth_images(3, spec)
    rotated, labels = task.make_rotations(x)
    assert rotated.shape == (12, spec.channels, spec.image_size, spec.image_size)
    assert rotated.dtype == x.dtype and labels.dtype == torch.int64
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3  # rotation-major
    assert task.logits(rotated).shape == (12, 4)
    task.eval()
    assert task.features(x).shape == (3, task.backbone.num_features)
    assert set(task.pretext_metrics(x)) == {"loss", "top1"}
    summary = task.summary()
    assert summary["parameters"]["head"] == (task.backbone.num_features + 1) * 4
    assert summary["copies_per_image"] == 4 and summary["rotations"] == [0, 90, 180, 270]
    assert task.pretext_chance() == {"top1": 25.0}
    assert make_task(spec, rotations=[0, 180]).pretext_chance() == {"top1": 50.0}


def test_rotate_turns_counter_clockwise():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2).repeat(4, 1, 1, 1)
    out = rotate(x, torch.tensor([0, 90, 180, 270]))
    assert out[0, 0].tolist() == [[1, 2], [3, 4]]
    assert out[1, 0].tolist() == [[2, 4], [1, 3]]  # top-right corner moves to the top-left
    assert out[2, 0].tolist() == [[4, 3], [2, 1]]
    assert out[3, 0].tolist() == [[3, 1], [4, 2]]


@pytest.mark.parametrize("options", [{}, {"all_rotations": False}, {"rotations": [90, 270]}],
                         ids=["all", "one-random", "quarter-turns"])
def test_labels_match_the_applied_rotation(options):
    """Every rotated copy is its source image turned by exactly the labelled angle, and
    turning it back by that angle gives the source image bit for bit."""
    task = make_task(**options)
    x = smooth_images(5, RGB32)
    rotated, labels = task.make_rotations(x)
    n = len(x)
    sources = x.repeat(len(rotated) // n, 1, 1, 1)  # copy i comes from image i mod N
    angles = task.angles[labels]
    for copy, source, angle in zip(rotated, sources, angles.tolist()):
        assert torch.equal(copy, torch.rot90(source, angle // 90, dims=(-2, -1)))
    assert torch.equal(rotate(rotated, -angles), sources)
    if not task.options.all_rotations:
        assert len(rotated) == n and len(labels.unique()) > 1  # random draws, not one angle
    else:  # no two copies of one image alike, so the label is recoverable from pixels
        assert all(not torch.equal(rotated[i], rotated[i + n]) for i in range(len(rotated) - n))


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    task = make_task(RGB16)
    x = smooth_images(8, RGB16)
    optimizers = task.configure_optimizers(task.default_optim(len(x)))
    logs = [task.training_step(x, optimizers) for _ in range(30)]
    losses = [float(log["loss"]) for log in logs]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    assert float(logs[-1]["top1"]) > 50  # chance is 25 %


def test_default_optimizer_is_the_papers_sgd_scaled_to_the_batch():
    (optim,) = make_task().default_optim(batch_size=128)
    assert (optim.name, optim.lr, optim.momentum, optim.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
    assert make_task().default_optim(batch_size=64)[0].lr == pytest.approx(0.05)


def test_render_captions_every_rotated_image():
    import matplotlib.pyplot as plt

    task = make_task().eval()
    fig = task.render(smooth_images(3, RGB32))
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert len(labels) == 12 and all(label.startswith("pred ") for label in labels)
    assert [ax.get_ylabel() for ax in fig.axes[::3]] == ["0°", "90°", "180°", "270°"]
    plt.close(fig)


def test_non_square_images_are_refused_for_quarter_turns():
    task = make_task()
    with pytest.raises(IncompatibleError, match="square"):
        task.make_rotations(torch.rand(2, 3, 32, 24))
    half_turns = make_task(rotations=[0, 180])
    rotated, _ = half_turns.make_rotations(torch.rand(2, 3, 32, 24))
    assert rotated.shape == (4, 3, 32, 24)


@pytest.mark.parametrize("options", [{"rotations": [0, 45]}, {"rotations": [0]},
                                     {"rotations": [0, 90, 90]}, {"rotations": [0, 360]},
                                     {"all_rotations": "maybe"}])
def test_bad_options_raise(options):
    with pytest.raises(OptionError):
        make_task(**options)
