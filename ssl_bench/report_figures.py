"""The report's figures, built from leaderboard frames; each function returns a
matplotlib Figure (the caller saves it with :func:`ssl_bench.core.figures.save_figure`)
or ``None`` when there is nothing to draw."""

from __future__ import annotations

import functools
import zlib

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from ssl_bench.core.figures import pyplot
from ssl_bench.leaderboard import confidence_interval, knn_column

plt = pyplot()


def label(task: str, backbone: str) -> str:
    """The name a configuration goes by in figures, e.g. ``"mae (vit_tiny)"``."""
    return f"{task} ({backbone})"


def _labels(frame: pd.DataFrame) -> list[str]:
    """``task (backbone)`` per row, with the configuration id where that is ambiguous."""
    names = [label(t, b) for t, b in zip(frame["task"], frame["backbone"])]
    if "config_id" in frame:
        clash = frame.groupby(["dataset", "task", "backbone"], dropna=False)["config_id"] \
            .transform("nunique").gt(1).to_numpy()
        names = [f"{n} [{c}]" if dup else n for n, c, dup in zip(names, frame["config_id"], clash)]
    return names


def _series(metrics) -> list[tuple[str, str, str, str]]:
    """(metric, legend name, colour, reference-row grey) of the two accuracy series
    among ``metrics``: k-NN top-1 at the smallest recorded k, and linear top-1."""
    knn = knn_column(metrics)
    series = [(knn, f"k-NN top-1 (k={knn.rsplit('_k', 1)[1]})", "tab:blue", "0.55")] if knn else []
    return series + [("linear_top1", "linear top-1", "tab:orange", "0.8")]


def _datasets(frame: pd.DataFrame) -> list:
    return list(dict.fromkeys(frame["dataset"]))


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(frame.get(column, pd.Series(np.nan, index=frame.index)),
                         errors="coerce")


def leaderboard_bars(summary: pd.DataFrame):
    """Bars of mean k-NN and linear top-1 (%) per configuration of an
    :func:`~ssl_bench.leaderboard.aggregate_seeds` table, one panel per dataset,
    error bars the 95% CI half-width over seeds (none when n = 1); reference rows
    grey and hatched. ``None`` if no accuracy was recorded."""
    series = _series([c[:-len("_mean")] for c in summary.columns if c.endswith("_mean")])
    if all(_numeric(summary, f"{metric}_mean").isna().all() for metric, *_ in series):
        return None
    datasets = _datasets(summary)
    counts = [max(2, int((summary["dataset"] == d).sum())) for d in datasets]
    fig, axes = plt.subplots(1, len(datasets), squeeze=False, layout="constrained",
                             width_ratios=counts, figsize=(0.65 * sum(counts) + 2.5, 4.8))
    for ax, dataset in zip(axes[0], datasets):
        rows = summary[summary["dataset"] == dataset]
        x = np.arange(len(rows))
        reference = rows["reference"].astype(bool).to_numpy()
        for i, (metric, name, colour, grey) in enumerate(series):
            mean = _numeric(rows, f"{metric}_mean").to_numpy()
            half = (_numeric(rows, f"{metric}_ci95_high")
                    - _numeric(rows, f"{metric}_ci95_low")) / 2
            bars = ax.bar(x + (i - 0.5) * 0.38, mean, 0.38, yerr=half.to_numpy(), capsize=3,
                          color=[grey if r else colour for r in reference], label=name,
                          edgecolor="0.3", linewidth=0.5)
            for bar, r in zip(bars, reference):
                bar.set_hatch("//" if r else None)
        ax.set_xticks(x, _labels(rows), rotation=35, ha="right", rotation_mode="anchor")
        ax.set_xlim(-0.6, max(len(rows), 2) - 0.4)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(str(dataset), fontsize=10)
        ax.set_ylim(0, min(100, ax.get_ylim()[1]))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Frozen-feature accuracy, mean over seeds, error bars 95% CI", fontsize=11)
    # built by hand: the first bar of a series may be a grey reference row
    handles = [Rectangle((0, 0), 1, 1, facecolor=colour, edgecolor="0.3")
               for _, _, colour, _ in series]
    handles += [Rectangle((0, 0), 1, 1, facecolor=grey, hatch="//", edgecolor="0.3")
                for _, _, _, grey in series]
    names = [name for _, name, _, _ in series]
    names += [f"{name}, reference row (not a pretext task)" for _, name, _, _ in series]
    fig.legend(handles, names, loc="outside lower center", ncols=2, fontsize=8)
    return fig


def _half_width(values) -> float:
    low, high = confidence_interval(values)
    return (high - low) / 2


#: 20 qualitative colours: tab20's ten strong hues, then their light partners, so
#: the first ten tasks differ in hue.
PALETTE = tuple(plt.get_cmap("tab20")(i) for i in (*range(0, 20, 2), *range(1, 20, 2)))


@functools.cache
def _task_names() -> tuple[str, ...]:
    """The registry's task names, sorted."""
    from ssl_bench.core.registry import TASKS

    return tuple(TASKS.names())


def task_colour(task: str) -> tuple[float, float, float, float]:
    """The RGBA colour (floats in [0, 1]) of ``task`` in every figure: its place
    among the registry's sorted task names in :data:`PALETTE`; a task the registry
    does not know (a plug-in since removed) gets a colour from a CRC of its name."""
    names = _task_names()
    index = names.index(task) if task in names else zlib.crc32(str(task).encode())
    return PALETTE[index % len(PALETTE)]


def _variants(frame: pd.DataFrame) -> list[int]:
    """Per row, the rank (0, 1, …) of its configuration among those of its task in
    ``frame``, in order of appearance: what tells one task's configurations apart
    where they share a colour."""
    firsts = frame.drop_duplicates("_label")
    rank = dict(zip(firsts["_label"], firsts.groupby("task", sort=False).cumcount()))
    return [rank[n] for n in frame["_label"]]


#: The cost axes of :func:`cost_scatter`, left to right: (column, axis label).
COSTS = [("images_seen", "equal data: pretraining images seen (images)"),
         ("train_gflops", "equal compute: pretraining GFLOP (forward + backward)"),
         ("train_seconds", "pretraining wall-clock time (s)")]


def cost_scatter(runs: pd.DataFrame):
    """k-NN (●) and linear (▲) top-1 (%) of every run against its pretraining cost,
    side by side (:data:`COSTS`): images seen (the equal-data view), measured training
    GFLOPs (``train_gflops``, the equal-compute view: rotation's 4 copies and jigsaw's
    9 tiles count) and wall-clock seconds; one row of panels per dataset, one colour
    per task (:func:`task_colour`), the second and further configurations of a task
    hollow. ``None`` if no run recorded an accuracy and a cost."""
    runs = runs.assign(_label=_labels(runs))
    series = [(metric, name) for metric, name, _, _ in _series(runs.columns)]
    has_acc = np.logical_or.reduce([_numeric(runs, m).notna() for m, _ in series])
    runs = runs[has_acc & np.logical_or.reduce([_numeric(runs, c).notna() for c, _ in COSTS])]
    if runs.empty:
        return None
    costs = [(c, x) for c, x in COSTS if _numeric(runs, c).notna().any()]
    runs = runs.assign(_hollow=[v > 0 for v in _variants(runs)])
    datasets = _datasets(runs)
    fig, axes = plt.subplots(len(datasets), len(costs), squeeze=False, layout="constrained",
                             figsize=(5.5 * len(costs), 3.6 * len(datasets)))
    for row, dataset in zip(axes, datasets):
        part = runs[runs["dataset"] == dataset]
        colours = [task_colour(t) for t in part["task"]]
        faces = ["white" if h else c for h, c in zip(part["_hollow"], colours)]
        edges = [c if h else "0.2" for h, c in zip(part["_hollow"], colours)]
        for ax, (cost, xlabel) in zip(row, costs):
            for (metric, _), marker in zip(series, ("o", "^")):
                ax.scatter(_numeric(part, cost), _numeric(part, metric), marker=marker, s=36,
                           c=faces, edgecolors=edges, linewidths=1.0)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("top-1 accuracy (%)")
            ax.set_title(dataset, fontsize=10)
            ax.grid(alpha=0.3)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    marker = dict(linestyle="none", markersize=7, markeredgewidth=1.0)
    configs = runs.drop_duplicates("_label")
    handles = [Line2D([], [], marker="s", label=n, markerfacecolor="white" if h else c,
                      markeredgecolor=c if h else "0.2", **marker)
               for n, c, h in zip(configs["_label"], map(task_colour, configs["task"]),
                                  configs["_hollow"])]
    handles += [Line2D([], [], marker=m, color="white", markeredgecolor="0.2", label=name,
                       **marker) for (_, name), m in zip(series, ("o", "^"))]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    return fig


def layer_references(layers: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``layers`` (as :func:`layer_curves` takes it) that it draws as
    dashed references: configurations that probed a single layer (e.g. ``pixels``),
    in a dataset where some configuration probed two or more."""
    layers = layers.assign(linear_top1=_numeric(layers, "linear_top1")).dropna(
        subset=["linear_top1"])
    depth = layers.groupby("config_id")["index"].transform("max")
    curves = set(layers.loc[depth > 1, "dataset"])
    return layers[(depth == 1) & layers["dataset"].isin(curves)]


#: Line styles of a task's first, second, … configuration in one panel ("--" is
#: the references').
_STYLES = ("-", ":", "-.")


def layer_curves(layers: pd.DataFrame):
    """Linear-probe top-1 (%) against depth, one line per configuration (mean over
    seeds, error bars the 95% CI half-width), one panel per (dataset, backbone), one
    colour per task (:func:`task_colour`; a task's further configurations in a panel
    dotted, then dash-dotted).

    Args:
        layers: one row per (run, probed layer) with columns dataset, task, backbone,
            config_id, seed, layer (name), index (1 = shallowest) and linear_top1 (%).
            Configurations with a single layer (:func:`layer_references`) are drawn
            as dashed horizontal lines in every panel of their dataset.

    Returns:
        The Figure, or ``None`` if no configuration probed two or more layers.
    """
    layers = layers.assign(linear_top1=_numeric(layers, "linear_top1")).dropna(
        subset=["linear_top1"])
    if layers.empty:
        return None
    layers = layers.assign(_label=_labels(layers))
    depth = layers.groupby("config_id")["index"].transform("max")
    curves = layers[depth > 1]
    flat = layer_references(layers)
    panels = list(dict.fromkeys(zip(curves["dataset"], curves["backbone"])))
    if not panels:
        return None
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, layout="constrained",
                             figsize=(7.5 * cols, 4.0 * rows))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (dataset, backbone) in zip(axes.flat, panels):
        part = curves[(curves["dataset"] == dataset) & (curves["backbone"] == backbone)]
        names = part.groupby("_label")["layer"].agg(lambda s: tuple(dict.fromkeys(s)))
        shared = names.nunique() == 1
        variant = dict(zip(part["_label"], _variants(part)))
        lines = list(part.groupby("_label", sort=False))
        for j, (name, line) in enumerate(lines):
            stats = line.groupby("index").agg(mean=("linear_top1", "mean"),
                                              half=("linear_top1", _half_width))
            dodge = 0.05 * (j - (len(lines) - 1) / 2)  # keeps error bars apart
            x = stats.index.to_numpy() + dodge
            x = x if shared else x / stats.index.max()
            ax.errorbar(x, stats["mean"], yerr=stats["half"], marker="o", capsize=3, label=name,
                        color=task_colour(line["task"].iloc[0]),
                        linestyle=_STYLES[variant[name] % len(_STYLES)])
        for name, ref in flat[flat["dataset"] == dataset].groupby("_label"):
            ax.axhline(ref["linear_top1"].mean(), color=task_colour(ref["task"].iloc[0]),
                       linestyle="--", label=name)
        if shared:
            ticks = names.iloc[0]
            ax.set_xticks(range(1, len(ticks) + 1), ticks, rotation=30, ha="right",
                          rotation_mode="anchor")
            ax.set_xlabel("probed layer (shallow → deep)")
        else:
            ax.set_xlabel("relative depth (layer / number of probed layers)")
        ax.set_ylabel("linear probe top-1 (%)")
        ax.set_title(f"{dataset}, {backbone}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return fig


def tsne_2d(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn) of ``features`` (n, D) float; PCA to 50 dimensions
    first when D > 50; perplexity min(30, (n - 1) / 3). Returns (n, 2) float."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float32)
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def projection_grid(samples: list[tuple[str, np.ndarray, np.ndarray]], class_names: list[str],
                    title: str):
    """A grid of 2-D t-SNE projections, one subplot per ``(name, features (n, D),
    labels (n,) int)``, points coloured by class, one shared class legend (left
    out, and said so in the title, above 20 classes)."""
    cols = min(3, len(samples))
    rows = -(-len(samples) // cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, layout="constrained",
                             figsize=(3.6 * cols + 1.8, 3.4 * rows))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for ax in axes.flat[len(samples):]:
        ax.set_visible(False)
    for ax, (name, features, labels) in zip(axes.flat, samples):
        xy = tsne_2d(features)
        for c, class_name in enumerate(class_names):
            keep = labels == c
            ax.scatter(xy[keep, 0], xy[keep, 1], s=5, color=cmap(c % cmap.N), label=class_name)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("t-SNE 1 (a.u.)", fontsize=8)
        ax.set_ylabel("t-SNE 2 (a.u.)", fontsize=8)
        ax.tick_params(labelsize=7)
    if len(class_names) <= 20:
        fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside right upper",
                   fontsize=8, markerscale=2.5, title="class")
    else:
        title += f" ({len(class_names)} classes, legend omitted)"
    fig.suptitle(title, fontsize=10)
    return fig
