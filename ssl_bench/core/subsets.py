"""Fixed, seeded subsets of a split: the same indices for every run that asks."""

from __future__ import annotations

import torch

from ssl_bench.core.errors import OptionError


def subset_indices(n: int, size: int | None, seed: int,
                   option: str = "--train-subset") -> torch.Tensor:
    """A fixed, seeded subset of ``range(n)`` of ``size`` indices (all when ``None``).

    Returns:
        Sorted ``int64`` indices.

    Raises:
        OptionError: naming ``option``, if ``size`` is not in 1…n.
    """
    if size is None:
        return torch.arange(n)
    if not 1 <= size <= n:
        raise OptionError(f"{option} must be between 1 and {n} for this dataset, got {size}")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:size].sort().values


def balanced_subset_indices(labels: torch.Tensor, size: int | None, seed: int,
                            option: str = "--eval-train-subset") -> torch.Tensor:
    """A fixed, seeded, class-balanced subset of ``size`` indices into ``labels``
    (``size // C`` per class, the remainder to the first classes; all when ``None``).

    Args:
        labels: ``int64`` ``(N,)`` class indices.
        size: how many indices; ``None``: all.
        seed: seeds the draw within each class.
        option: the option named in error messages.

    Returns:
        Sorted ``int64`` indices.

    Raises:
        OptionError: if ``size`` is below the number of classes or above ``len(labels)``,
            or a class has too few examples.
    """
    if size is None:
        return torch.arange(len(labels))
    classes = labels.unique()
    if not len(classes) <= size <= len(labels):
        raise OptionError(f"{option} must give between {len(classes)} and "
                          f"{len(labels)} images for this dataset, got {size}")
    g = torch.Generator().manual_seed(seed)
    per_class, extra = divmod(size, len(classes))
    chosen = []
    for i, c in enumerate(classes):
        members = (labels == c).nonzero().flatten()
        take = per_class + (i < extra)
        if take > len(members):
            raise OptionError(f"{option} {size}: class {int(c)} has only "
                              f"{len(members)} examples")
        chosen.append(members[torch.randperm(len(members), generator=g)[:take]])
    return torch.cat(chosen).sort().values
