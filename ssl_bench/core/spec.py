"""What a pretext task may know of its data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataSpec:
    """The label-free description of a dataset that tasks are built from (only the
    class count is known; the ``supervised`` reference task alone uses it).

    Attributes:
        name: dataset name.
        channels: C (1 for grayscale, 3 for RGB).
        image_size: side in pixels (images are square).
        mean: per-channel pixel mean of the train split, in [0, 1].
        std: per-channel pixel standard deviation of the train split.
        hflip: whether horizontal flips are natural for this data.
        num_classes: number of classes of the labels.
    """

    name: str
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    num_classes: int = 10
