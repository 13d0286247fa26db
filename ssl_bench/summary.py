"""The summary a finished ``ssl-bench run`` prints: the headline scores at step 0
and after training with the gain, the pretext score against chance, the cost,
where the run was written and what to run next. Every metric stays in
``results.json``; this is the part a person reads at a glance."""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

#: Characters per line of the summary's sentences.
WIDTH = 100
#: Held-out pretext metrics, the first recorded one shown, as (label, unit, lower is
#: better); the order of :data:`ssl_bench.leaderboard.PRETEXT_HEADLINE`.
PRETEXT = {"top1": ("pretext top-1", "%", False), "ab_top1": ("pretext ab top-1", "%", False),
           "psnr_db": ("pretext PSNR", "dB", False),
           "bits_per_dim": ("pretext bits/dim", "", True), "loss": ("pretext loss", "", True)}


def per_second(rate: float) -> str:
    """A rate with three significant digits, never rounded to 0: 0.4213 → ``0.421``,
    127.04 → ``127``, 12345.6 → ``12,346``."""
    return f"{rate:,.0f}" if rate >= 1000 else f"{rate:.3g}"


def _headline_rows(results: dict, step0: dict | None = None) -> list[tuple[str, str]]:
    """(metric key, readable label with unit) of the scores the run has: k-NN top-1
    at its smallest k and the linear probe's top-1, with all labels then with each
    low-shot share, and the best layer's linear top-1 (naming the layer, and the
    step-0 one where it differs)."""
    metrics = results["metrics"]
    ks = sorted(int(m.group(1)) for key in metrics if (m := re.fullmatch(r"knn_top1_k(\d+)", key)))
    base = ([(f"knn_top1_k{ks[0]}", f"k-NN top-1 (k={ks[0]})")] if ks else []) + \
        [("linear_top1", "linear probe top-1")]
    rows = [(key, f"{label}, %") for key, label in base]
    for share in sorted(results.get("lowshot_labels") or {}, key=lambda s: float(s[:-3])):
        rows += [(f"{key}_{share}", f"{label}, {share[:-3]}% labels, %") for key, label in base]
    best, best0 = results.get("layer_best"), (step0 or {}).get("layer_best")
    if best:
        layer = best if best0 in (None, best) else f"{best}; step 0: {best0}"
        rows.append(("layer_best_linear_top1", f"best layer linear top-1, % ({layer})"))
    return [(key, label) for key, label in rows if key in metrics]


def _cells(label: str, before: float | None, after: float, with_step0: bool) -> list[str]:
    """A table row: label, step 0, final, gain in points (relative %); label and
    final alone without a step-0 column; ``–`` where step 0 lacks the metric."""
    if not with_step0:
        return [label, f"{after:.2f}"]
    if before is None:
        return [label, "–", f"{after:.2f}", "–"]
    relative = f" ({(after - before) / abs(before):+.1%})" if before else ""
    return [label, f"{before:.2f}", f"{after:.2f}", f"{after - before:+.2f}{relative}"]


def _wrap(sentence: str) -> str:
    return textwrap.fill(sentence, WIDTH, initial_indent="  ", subsequent_indent="    ")


def _table(rows: list[list[str]]) -> list[str]:
    """Rows of cells as aligned lines: the first column left, the others right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows]


def _pretext_row(results: dict, step0: dict | None) -> list[str] | None:
    """The first recorded :data:`PRETEXT` metric: label (with its chance level), step
    0, final, change; ``None`` for tasks without held-out metrics (references)."""
    pretext, chance = results.get("pretext") or {}, results.get("pretext_chance") or {}
    key = next((k for k in PRETEXT if k in pretext), None)
    if key is None:
        return None
    name, unit, lower = PRETEXT[key]
    label = name + (f", {unit}" if unit else "") + (f" (chance {chance[key]:.2f})"
                                                     if key in chance else "")
    label += " (lower is better)" if lower else ""
    before = (step0 or {}).get("pretext", {}).get(key)
    return _cells(label, before, pretext[key], step0 is not None)


def _verdict(results: dict, step0: dict) -> str:
    """One sentence on how training moved the all-label headline scores."""
    moves = []
    for key, label in _headline_rows(results):
        if key != "linear_top1" and not re.fullmatch(r"knn_top1_k\d+", key):
            continue  # low-shot and per-layer scores stay in the table
        before = step0["metrics"].get(key)
        if before is None:
            continue
        change = results["metrics"][key] - before
        how = "rose" if change > 0 else "fell" if change < 0 else "did not change"
        moves.append(f"{label.removesuffix(', %')} {how}" +
                     (f" by {abs(change):.2f} points" if change else ""))
    return ("Gain over step 0 (this network before its first training step; one seed): " +
            ", ".join(moves) + ".") if moves else ""


def run_summary(results: dict, run_dir: str | Path) -> str:
    """The text printed at the end of ``ssl-bench run``.

    Args:
        results: the run's ``results.json`` record (accuracies in %, seconds).
        run_dir: the run folder, as the user's ``--out`` spells it.

    Returns:
        Lines (no trailing newline): a heading, a table of the headline scores
        (step 0 / final / gain in points and relative %, or final alone when the run
        has no step-0 reference), the pretext score against chance, a sentence on the
        gain, the cost, the run folder and the next commands.
    """
    trained = results["steps"] > 0
    step0 = results.get("step0") if trained else None
    header = ["metric", "final"] if step0 is None else ["metric", "step 0", "final",
                                                         "gain, points (relative)"]
    rows = [header] + [_cells(label, (step0 or {}).get("metrics", {}).get(key),
                              results["metrics"][key], step0 is not None)
                       for key, label in _headline_rows(results, step0)]
    pretext = _pretext_row(results, step0)
    rows += [pretext] if pretext else []
    budget = (f"{results['epochs']} epoch(s), {results['images_seen']:,} images seen"
              if trained else "untrained reference")
    lines = [f"\n{results['task']} / {results['backbone']} / {results['dataset']} "
             f"(seed {results['seed']}, {budget})", *_table(rows)]
    note = (_verdict(results, step0) if step0 is not None else
            "No step-0 reference (--no-step0, or resumed past step 0 without one): the gain "
            "over the untrained network was not measured." if trained else
            "An untrained reference: its features as initialised, nothing to gain.")
    lines.append(_wrap(note))
    cost = results["cost"]
    # from the totals: results.json rounds the rate to 0.1 images/s, a slow run's to 0
    rate = (results["images_seen"] / cost["train_seconds"] if cost["train_seconds"]
            else cost["train_images_per_s"])
    train = (f"train {cost['train_seconds']:.1f} s at {per_second(rate)} images/s" if trained
             else "no training")
    step0_s = f" (+ {cost['step0_eval_seconds']:.1f} s at step 0)" if step0 else ""
    out = shlex.quote(str(Path(run_dir).parent))
    lines += [_wrap(f"cost: {train}; evaluation {cost['eval_seconds']:.1f} s{step0_s}; "
                    f"{cost['backbone_params']:,} backbone parameters"),
              f"  run folder: {run_dir} (every metric in results.json)",
              f"  next: ssl-bench leaderboard {out} -o {out}/leaderboard.csv",
              f"        ssl-bench report {out} -o {out}/report"]
    return "\n".join(line for line in lines if line)
