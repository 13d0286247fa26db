"""`ssl-bench leaderboard` and `ssl-bench report` on bad or unusual input: refusals
change nothing, foreign results files are skipped by name, figures agree with each
other and with their captions."""

from __future__ import annotations

import json

import matplotlib.colors as mcolors
import pandas as pd
import pytest
import torch
import yaml

from ssl_bench import report_figures as rf
from ssl_bench.cli import main
from ssl_bench.core.rundir import atomic_write_json
from ssl_bench.leaderboard import leaderboard_frame
from ssl_bench.report import layer_frame, load_runs
from test_bad_input import refused, snapshot
from test_report import _fake_run


@pytest.fixture
def runs(tmp_path):
    """Two jigsaw seeds and a rotation run on convnet, a mae run on vit_tiny; each
    probed 4 layers."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        _fake_run(root, "jigsaw", "convnet", seed, sample=False)
    _fake_run(root, "rotation", "convnet", 0, sample=False)
    _fake_run(root, "mae", "vit_tiny", 0, sample=False)
    return root


# -- case 1: leaderboard -o with any suffix writes three distinct files --------------

@pytest.mark.parametrize("output", ["board.md", "board.csv", "board", "board.MD"])
def test_leaderboard_writes_three_distinct_files_whatever_the_suffix(capsys, runs, tmp_path,
                                                                     output):
    assert main(["leaderboard", str(runs), "-o", str(tmp_path / "out" / output)]) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["board.csv", "board.md", "board_runs.csv"]
    summary, per_run = pd.read_csv(out / "board.csv"), pd.read_csv(out / "board_runs.csv")
    assert len(summary) == 3 and "knn_top1_k20_mean" in summary  # one row per configuration
    assert len(per_run) == 4 and "command" in per_run  # one row per run
    assert (out / "board.md").read_text().startswith("| task ")  # the Markdown table
    said = capsys.readouterr().out
    assert all(str(out / name) in said for name in ("board.csv", "board_runs.csv", "board.md"))


@pytest.mark.parametrize("folder", ["results", "results/board_runs.csv"])
def test_leaderboard_output_that_is_a_folder_is_refused(capsys, runs, tmp_path, folder):
    (tmp_path / folder).mkdir(parents=True)
    output = tmp_path / ("results" if folder == "results" else "results/board.csv")
    refused(capsys, ["leaderboard", str(runs), "-o", str(output)], tmp_path, "is a folder")


# -- case 2: a refused report leaves its folder as it was ---------------------------

def _tuned_garbage(path):
    path.write_text(yaml.safe_dump({"cifar10/convnet": {"tasks": {"jigsaw": {"lr_scale": 1}}}}))
    return path


def _corrupt_sample(runs):
    run = runs / "jigsaw-convnet-digits-s0-0123abcd"
    record = json.loads((run / "results.json").read_text())
    atomic_write_json(run / "results.json", {**record, "feature_sample": "sample.pt"})
    torch.save([1, 2], run / "sample.pt")  # a list, not the dict of features and labels
    return []


@pytest.mark.parametrize("make_bad, expected", [
    (lambda tmp, runs: ["--tuned", str(tmp / "missing.yaml")], "--tuned"),
    (lambda tmp, runs: ["--tuned", str(_tuned_garbage(tmp / "t.yaml"))],
     "give a file written by ssl-bench tune"),
    (lambda tmp, runs: [str(tmp / "no-such-runs")], "does not exist"),
    (lambda tmp, runs: _corrupt_sample(runs), "feature sample"),
])
def test_refused_report_leaves_the_folder_as_it_was(capsys, runs, tmp_path, make_bad,
                                                    expected):
    out = tmp_path / "report"
    assert main(["report", str(runs), "-o", str(out)]) == 0
    (out / "notes.txt").write_text("mine")  # a user's file
    extra = make_bad(tmp_path, runs)
    capsys.readouterr()
    before, entries = snapshot(tmp_path), sorted(tmp_path.iterdir())
    refused(capsys, ["report", str(runs), *extra, "-o", str(out)], out, expected)
    assert snapshot(tmp_path) == before and sorted(tmp_path.iterdir()) == entries  # no leftovers


def test_report_into_a_file_is_refused(capsys, runs, tmp_path):
    (tmp_path / "afile").write_text("x")
    refused(capsys, ["report", str(runs), "-o", str(tmp_path / "afile")], tmp_path,
            "-o ")


def test_report_replaces_its_files_and_keeps_the_users(runs, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(runs), "-o", str(out), "--title", "first"]) == 0
    (out / "notes.txt").write_text("mine")
    assert main(["report", str(runs), "-o", str(out), "--title", "second"]) == 0
    assert (out / "README.md").read_text().startswith("# second\n")
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp folder gone


# -- case 3: a results.json of another schema is skipped by name --------------------

FOREIGN = [
    {"metrics": [[61.0, 55.0]]},
    {"seed": "zero"},
    {"seed": True},
    {"seed": None},
    {"task": 3},
    {"metrics": {"knn_top1_k20": "61.0"}},
    {"layers": "stage1"},
    {"layers": [[1, 2]]},
    {"cost": [12.5]},
    {"epochs": "two"},
    {"step0": {"metrics": [50.0]}},
    {"config": {"task_options": "adversarial"}},
    {"reference": "yes"},
]


@pytest.mark.parametrize("command", ["leaderboard", "report"])
@pytest.mark.parametrize("change", FOREIGN, ids=lambda c: json.dumps(c))
def test_results_of_another_schema_are_skipped_with_a_warning(capsys, runs, tmp_path, command,
                                                               change):
    run = _fake_run(runs, "vae", "convnet", 0, picture=False, sample=False)
    record = json.loads((run / "results.json").read_text())
    atomic_write_json(run / "results.json", {**record, **change})
    output = tmp_path / ("lb.csv" if command == "leaderboard" else "report")
    assert main([command, str(runs), "-o", str(output)]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: skipping")]
    assert len(warnings) == 1 and str(run / "results.json") in warnings[0], err
    assert "Traceback" not in err
    table = pd.read_csv(output if command == "leaderboard" else output / "leaderboard.csv")
    assert sorted(table["task"]) == ["jigsaw", "mae", "rotation"]  # the rest is built


# -- cases 4 and 5: one colour per task; the layer caption says what is drawn -------

def _legend_colours(fig) -> dict[str, tuple]:
    """Label → RGBA marker face colour of a figure legend's entries (cost_scatter's)."""
    return {text.get_text(): mcolors.to_rgba(handle.get_markerfacecolor())
            for handle, text in zip(fig.legends[0].legend_handles, fig.legends[0].get_texts())}


def _curve_colours(fig) -> dict[str, tuple]:
    """Label → RGBA colour of every error-bar curve (layer_curves')."""
    return {c.get_label(): mcolors.to_rgba(c.lines[0].get_color())
            for ax in fig.axes for c in ax.containers}


def test_a_task_has_one_colour_in_every_figure(runs):
    cost_fig = rf.cost_scatter(leaderboard_frame([runs]))
    cost = _legend_colours(cost_fig)
    layers = _curve_colours(rf.layer_curves(layer_frame(load_runs([runs]))))
    for name, task in [("jigsaw (convnet)", "jigsaw"), ("rotation (convnet)", "rotation"),
                       ("mae (vit_tiny)", "mae")]:
        assert cost[name] == layers[name] == rf.task_colour(task)
    assert len({rf.task_colour(t) for t in ("jigsaw", "rotation", "mae")}) == 3
    points = {tuple(c) for ax in cost_fig.axes for pc in ax.collections
              for c in pc.get_facecolors()}
    assert points == {rf.task_colour(t) for t in ("jigsaw", "rotation", "mae")}


def test_every_registered_task_has_its_own_colour():
    names = rf._task_names()
    assert len({rf.task_colour(t) for t in names}) == len(names)


def test_a_second_configuration_of_a_task_is_told_apart(runs):
    _fake_run(runs, "jigsaw", "vit_tiny", 0, sample=False)
    cost = _legend_colours(rf.cost_scatter(leaderboard_frame([runs])))
    assert cost["jigsaw (convnet)"] == rf.task_colour("jigsaw")
    assert cost["jigsaw (vit_tiny)"] == mcolors.to_rgba("white")  # hollow, edge in the colour


@pytest.mark.parametrize("with_pixels", [False, True])
def test_layer_caption_mentions_dashed_references_only_when_drawn(runs, tmp_path, with_pixels):
    if with_pixels:
        _fake_run(runs, "pixels", "pixels", 0, picture=False, sample=False)
    fig = rf.layer_curves(layer_frame(load_runs([runs])))
    dashed = [line for ax in fig.axes for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert bool(dashed) == with_pixels
    assert all(mcolors.to_rgba(line.get_color()) == rf.task_colour("pixels") for line in dashed)
    assert main(["report", str(runs), "-o", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "README.md").read_text()
    caption = text.split("](figures/layer_probes.png)", 1)[1].split("\n\n", 2)[1]
    assert ("dashed" in caption.lower()) == with_pixels, caption
