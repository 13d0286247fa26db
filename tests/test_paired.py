"""Rows compared with each other: paired by seed, t intervals, Holm over a group,
the seeds that would resolve 2 points; hand-computed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ssl_bench.leaderboard import (aggregate_seeds, holm, leaderboard_markdown,
                                   seeds_to_resolve)

#: Two-sided 97.5% quantiles of Student's t, from a printed table (df → t).
T975 = {1: 12.706205, 3: 3.182446, 7: 2.364624, 8: 2.306004}


def _p_two_sided_df3(t: float) -> float:
    """Two-sided p of Student's t with 3 degrees of freedom, in closed form:
    P(|T| > t) = 1 − (2/π)·(atan(t/√3) + √3·t/(3 + t²)) (independent of scipy)."""
    t = abs(t)
    return 1 - 2 / math.pi * (math.atan(t / math.sqrt(3)) + math.sqrt(3) * t / (3 + t * t))


def _frame(rows: dict[str, list[float]], backbone="convnet", reference=()) -> pd.DataFrame:
    return pd.DataFrame([
        {"task": task, "backbone": backbone, "dataset": "digits", "seed": seed,
         "config_id": f"{backbone}-{task}", "reference": task in reference,
         "knn_top1_k20": value, "linear_top1": value, "layer_best": None, "run": f"{task}{seed}",
         "command": ""}
        for task, values in rows.items() for seed, value in enumerate(values)
        if not math.isnan(value)])


# Three rows × 4 seeds (linear top-1, %):
#   A = 60 62 61 63  (mean 61.5: the best)
#   B = 59 60 60 61  → B − A = −1 −2 −1 −2: mean −1.5, deviations ±0.5, s² = 4·0.25/3 = 1/3,
#       s = 0.577350, SE = s/2 = 0.288675, t = −1.5/0.288675 = −5.196152,
#       half-width 3.182446·0.288675 = 0.918693, p(df 3) = 0.013847
#   C = 55 63 58 62  → C − A = −5 1 −3 −1: mean −2, deviations −3 3 −1 1, s² = 20/3,
#       s = 2.581989, SE = 1.290994, t = −1.549193, half-width 3.182446·1.290994 = 4.108521,
#       p(df 3) = 0.219102
# Holm, m = 2: sorted p_B < p_C → p_B·2 = 0.027694; max(0.027694, p_C·1) = 0.219102.
# B is told apart from the best (0.028 < 0.05); C is not (0.219 ≥ 0.05).
# Seeds to resolve 2 points, n ≥ 2 with t_{0.975,n−1}·s/√n ≤ 2:
#   B (s 0.577): n = 2 → 12.706·0.577/1.414 = 5.19 > 2; n = 3 → 4.303·0.577/1.732 = 1.43 ≤ 2 → 3
#   C (s 2.582): n = 8 → 2.365·2.582/2.828 = 2.159 > 2; n = 9 → 2.306·2.582/3 = 1.985 ≤ 2 → 9
ROWS = {"A": [60, 62, 61, 63], "B": [59, 60, 60, 61], "C": [55, 63, 58, 62]}


def test_hand_computed_paired_differences_intervals_p_and_holm():
    assert _p_two_sided_df3(5.196152) == pytest.approx(0.013847, abs=1e-6)
    assert _p_two_sided_df3(1.549193) == pytest.approx(0.219102, abs=1e-6)
    summary = aggregate_seeds(_frame(ROWS)).set_index("task")
    m = "linear_top1"
    assert summary[f"{m}_best"].to_dict() == {"A": True, "B": False, "C": False}
    b, c = summary.loc["B"], summary.loc["C"]
    # differences are of numbers like 61.0 − 60.0: exact in float64, so 1e-6 covers
    # only the 6-decimal rounding of the hand-computed constants
    assert (b[f"{m}_vs_best"], b[f"{m}_vs_best_low"], b[f"{m}_vs_best_high"]) == pytest.approx(
        (-1.5, -1.5 - 0.918693, -1.5 + 0.918693), abs=1e-6)
    assert (c[f"{m}_vs_best"], c[f"{m}_vs_best_low"], c[f"{m}_vs_best_high"]) == pytest.approx(
        (-2.0, -2.0 - 4.108521, -2.0 + 4.108521), abs=1e-6)
    assert (b[f"{m}_vs_best_pairs"], c[f"{m}_vs_best_pairs"]) == (4, 4)
    assert (b[f"{m}_vs_best_p"], c[f"{m}_vs_best_p"]) == pytest.approx((0.013847, 0.219102),
                                                                       abs=1e-6)
    assert (b[f"{m}_vs_best_p_holm"], c[f"{m}_vs_best_p_holm"]) == pytest.approx(
        (2 * 0.013847, 0.219102), abs=2e-6)
    assert summary[f"{m}_tied"].to_dict() == {"A": True, "B": False, "C": True}
    assert (b[f"{m}_seeds_for_2pt"], c[f"{m}_seeds_for_2pt"]) == (3, 9)


def test_holm_step_down_is_monotone_and_skips_nan():
    # sorted 0.01, 0.03, 0.04 → ×3, ×2, ×1 = 0.03, 0.06, 0.04 → running max 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # NaN is no test: m = 2 here, and the NaN stays
    out = holm([0.02, np.nan, 0.6])
    assert out[[0, 2]] == pytest.approx([0.04, 0.6]) and np.isnan(out[1])
    assert holm([0.4, 0.5]) == pytest.approx([0.8, 0.8])  # capped at 1 only above 1
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_seeds_to_resolve_two_points():
    # the smallest n with t_{0.975, n−1}·s/√n ≤ 2, checked against the printed t table
    assert seeds_to_resolve(math.sqrt(1 / 3)) == 3
    assert seeds_to_resolve(math.sqrt(20 / 3)) == 9
    assert T975[7] * math.sqrt(20 / 3) / math.sqrt(8) > 2 >= T975[8] * math.sqrt(20 / 3) / 3
    assert seeds_to_resolve(0.0) == 2 and math.isnan(seeds_to_resolve(math.nan))


def test_only_shared_seeds_and_one_backbone_are_paired():
    # D lacks seed 3 and has seed 0 missing → pairs over seeds 1, 2 only
    rows = {**ROWS, "D": [math.nan, 60, 59, math.nan]}
    frame = pd.concat([_frame(rows), _frame({"A": [90, 91, 92, 93]}, backbone="vit_tiny")])
    summary = aggregate_seeds(frame)
    conv = summary[summary["backbone"] == "convnet"].set_index("task")
    # D − A over seeds 1, 2: 60 − 62, 59 − 61 = −2, −2
    assert conv.loc["D", "linear_top1_vs_best_pairs"] == 2
    assert conv.loc["D", "linear_top1_vs_best"] == -2.0
    # the ViT row is alone in its group: its own best, compared with nothing
    vit = summary[summary["backbone"] == "vit_tiny"].iloc[0]
    assert vit["linear_top1_best"] and math.isnan(vit["linear_top1_vs_best"])
    # Holm's m over the convnet group is 3 (B, C, D), not 4
    p = conv.loc[["B", "C", "D"], "linear_top1_vs_best_p"].to_numpy()
    assert conv.loc[["B", "C", "D"], "linear_top1_vs_best_p_holm"].to_numpy() == \
        pytest.approx(holm(p))
    assert min(conv.loc[["B", "C", "D"], "linear_top1_vs_best_p_holm"]) == pytest.approx(
        3 * min(p))


def test_one_shared_seed_is_not_tested_and_the_best_is_a_pretext_task():
    rows = {**ROWS, "E": [50, math.nan, math.nan, math.nan],
            "supervised": [80, 81, 82, 83]}
    summary = aggregate_seeds(_frame(rows, reference=("supervised",))).set_index("task")
    assert summary.loc["A", "linear_top1_best"]  # the reference above it is not "best"
    assert summary.loc["supervised", "linear_top1_vs_best"] == 20.0
    assert pd.isna(summary.loc["E", "linear_top1_tied"])  # one pair: no test
    md = leaderboard_markdown(summary.reset_index())
    rows_md = [line for line in md.splitlines() if line.startswith("| digits")]
    assert any("| E " in r and "not tested" in r for r in rows_md)
    assert any("| C " in r and "| yes " in r and "| 9 " in r for r in rows_md)
    assert any("| B " in r and "-1.5 ± 0.9" in r and "| no " in r for r in rows_md)
    assert "seeds to resolve 2 points" in md and "Holm" in md
