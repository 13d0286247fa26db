"""Figures that tasks and reports share: image grids and atomic PNG saving.

matplotlib is imported on first use (with the non-interactive Agg backend), so
importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_bench.core.rundir import atomic_path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_display(image: torch.Tensor):
    """``(C, H, W)`` float image in [0, 1] → an array imshow takes (H, W[, 3])."""
    image = image.detach().float().clamp(0, 1).cpu()
    if image.shape[0] == 1:
        return image[0].numpy()
    return image.permute(1, 2, 0).numpy()


def image_rows(rows: list[tuple[str, torch.Tensor]], title: str | None = None,
               cell_inches: float = 1.1):
    """A grid figure: one labelled row per ``(label, images (n, C, H, W) in [0, 1])``.

    Returns:
        A matplotlib Figure (the caller saves it).
    """
    plt = pyplot()
    n = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(cell_inches * n + 1.2, cell_inches * len(rows)),
                             squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                ax.imshow(to_display(images[c]), cmap="gray", vmin=0, vmax=1,
                          interpolation="nearest")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path) -> None:
    """Save ``fig`` as PNG to ``path`` atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)
