"""The command line's own refusals (tuned files, seeds, derived sizes, whole grids
up front, settings nothing reads) and its help: one ``error:`` line naming the option
or file, exit 2, nothing changed on disk; accepted input records what ran."""

from __future__ import annotations

import argparse
import os
from importlib.metadata import version

import pytest
import yaml

import ssl_bench.sweep
from ssl_bench.cli import build_parser, main
from ssl_bench.datasets import load_dataset
from test_bad_input import FAST, make_folder, refused

@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))


def _tuned(choice) -> dict:
    return {"digits/convnet": {"budget": {}, "command": "", "tasks": {"jigsaw": choice}}}


# ------------------------------------------------------------------ case 1: --tuned files

TUNED_FILES = [
    (b"\xff\xfe\x00\x80garbage\x9c", "cannot read it as YAML (UnicodeDecodeError)"),
    (b"key: [unclosed", "cannot read it as YAML (ParserError)"),
    (b"- digits/convnet\n- jigsaw\n", "its top level is ['digits/convnet', 'jigsaw']"),
    (yaml.safe_dump({"digits/convnet": {"tasks": ["jigsaw"]}}).encode(),
     "digits/convnet.tasks is ['jigsaw'], not a mapping"),
    (yaml.safe_dump(_tuned({"lr_scale": "fast", "set": {}})).encode(),
     "digits/convnet.tasks.jigsaw.lr_scale is 'fast', not a positive number"),
    (yaml.safe_dump(_tuned({"lr_scale": 1.0})).encode(),
     "digits/convnet.tasks.jigsaw.set is None, not a mapping"),
    (yaml.safe_dump(_tuned({"lr_scale": 1.0, "set": {}, "grid": [{"lr_scale": 1.0}]})).encode(),
     "digits/convnet.tasks.jigsaw.grid[0].set is None"),
]


@pytest.mark.parametrize("content, expected", TUNED_FILES)
def test_run_refuses_a_broken_tuned_file_naming_it_and_the_key(capsys, tmp_path, content,
                                                               expected):
    path = tmp_path / "tuned.yaml"
    path.write_bytes(content)
    refused(capsys, ["run", "--task", "jigsaw", *FAST, "--tuned", str(path), "--out",
                     str(tmp_path / "runs")], tmp_path, f"--tuned {path}: {expected}")


@pytest.mark.parametrize("choice, expected", [
    ({"lr_scale": -1, "set": {}}, "lr_scale is -1, not a positive number"),
    ({"lr_scale": 1.0, "set": {"tile_ratio": 5}}, "set: tile_ratio=5.0 is out of range"),
    ({"lr_scale": 1.0, "set": {"colour": 1}}, "set: unknown task option 'colour'"),
])
def test_bad_values_in_a_tuned_file_name_the_file_and_key(capsys, tmp_path, choice, expected):
    # not "--lr-scale -1" or "--set tile_ratio=5.0": the user typed neither
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(_tuned(choice)))
    refused(capsys, ["run", "--task", "jigsaw", *FAST, "--tuned", str(path), "--out",
                     str(tmp_path / "runs")], tmp_path,
            f"error: --tuned {path}: digits/convnet.tasks.jigsaw.{expected}")


def test_report_refuses_a_binary_tuned_file_in_one_line(capsys, tmp_path):
    path = tmp_path / "tuned.yaml"
    path.write_bytes(TUNED_FILES[0][0])
    runs = tmp_path / "runs"
    assert main(["run", "--task", "random-init", *FAST, "--out", str(runs)]) == 0
    capsys.readouterr()
    assert main(["report", str(runs), "-o", str(tmp_path / "report"), "--tuned", str(path)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: --tuned {path}: cannot read it")
    assert "Traceback" not in err


# ------------------------------------------------------------------ cases 2, 3, 5: one run

@pytest.mark.parametrize("extra, expected", [
    # case 2: seeds beyond what the per-step seeds of torch's generator hold
    (["--seed", "100000000000000"], "argument --seed: give an integer from 0 to 268435455"),
    (["--seed", "18446744073709551616"], "argument --seed: give an integer from 0 to 268435455"),
    (["--seed", "-1"], "argument --seed: give an integer from 0 to 268435455"),
    # case 3: inside the declared range, but the derived size at this image size cannot work
    (["--task", "jigsaw", "--set", "tile_ratio=0.1"],
     "--set tile_ratio=0.1 gives 1 px tiles (< 3 px) on 32 px images; give tile_ratio from "
     "0.3 to 1 at this image size"),
    (["--task", "mae", "--backbone", "vit_tiny", "--set", "mask_ratio=0.999"],
     "--set mask_ratio=0.999 gives 0 visible patches on 32 px images; give "
     "mask_ratio from 0.0156 to 0.984"),
    (["--task", "mae", "--backbone", "vit_tiny", "--set", "mask_ratio=0.001"],
     "--set mask_ratio=0.001 gives 64 visible patches"),
    # case 5: settings that nothing reads, values that would run as something else
    (["--data-root", "/tmp"], "--data-root /tmp: --dataset digits reads no --data-root"),
    (["--eval-data-root", "/tmp"], "--eval-data-root /tmp is the folder of --eval-dataset, "
                                   "which is not given"),
    (["--eval-dataset", "digits", "--eval-data-root", "/tmp"],
     "--eval-data-root /tmp: --eval-dataset digits reads no folder"),
    (["--task", "rotation", "--set", "rotations=[false,90]"],
     "--set rotations=[False, 90]: expected a list of int"),
    (["--lowshot", "none", "10"], "--lowshot none turns low-shot evaluation off; give it alone"),
    # case 6: choices checked by the parser
    (["--device", "tpu"], "argument --device: invalid choice 'tpu'; choose auto, cpu, cuda or "
                          "cuda:N"),
    (["--device", "cuda:x"], "argument --device: invalid choice 'cuda:x'"),
    (["--precision", "fp16"], "argument --precision: invalid choice: 'fp16'"),
])
def test_run_refuses_in_one_line_naming_the_option(capsys, tmp_path, extra, expected):
    out = tmp_path / "runs"
    out.mkdir()
    refused(capsys, ["run", "--task", "random-init", *FAST, *extra, "--out", str(out)], out,
            expected)


def test_split_brain_target_below_one_pixel_is_refused(capsys, tmp_path):
    root = make_folder(tmp_path / "photos")
    load_dataset(f"imagefolder:{root}", image_size=32)  # decoded and cached: no progress line
    capsys.readouterr()
    out = tmp_path / "runs"
    out.mkdir()
    refused(capsys, ["run", "--task", "split-brain", *FAST, "--dataset", f"imagefolder:{root}",
                     "--image-size", "32", "--batch-size", "4", "--set", "target_scale=0.01",
                     "--out", str(out)], out,
            "--set target_scale=0.01 gives 0 px predictions on 32 px images; give "
            "target_scale from 0.0312 to 1")


def test_lowshot_none_and_single_process_sync_bn_record_what_ran(capsys, tmp_path):
    out = tmp_path / "runs"
    assert main(["run", "--task", "random-init", *FAST[:2], "--lowshot", "none",
                 "--no-layer-probes", "--no-step0", "--sync-bn", "--out", str(out)]) == 0
    (run,) = out.iterdir()
    config = yaml.safe_load((run / "config.yaml").read_text())
    # one process already sees the whole batch: plain BatchNorm ran, so sync_bn is off
    assert config["sync_bn"] is False and config["lowshot"] == []
    assert "warning: --sync-bn changes nothing in a single process" in capsys.readouterr().err


# ------------------------------------------------------------------ case 4: grids up front

@pytest.fixture
def no_runs(monkeypatch):
    """Fail the test if a sweep or tune starts its first run."""
    monkeypatch.setattr(ssl_bench.sweep.Sweep, "run", lambda self: pytest.fail("a run started"))


@pytest.mark.parametrize("extra, expected", [
    (["--tasks", "random-init", "nosuch"], "unknown task 'nosuch' for --task"),
    (["--tasks", "random-init", "--datasets", "digits", "nosuch"], "unknown dataset 'nosuch'"),
    (["--tasks", "random-init", "--backbones", "convnet", "alexnet"], "unknown backbone 'alexnet'"),
    (["--tasks", "denoising", "--set", "sigma=5"], "--set sigma=5.0 is out of range"),
    (["--tasks", "jigsaw", "--set", "tile_ratio=0.1"], "--set tile_ratio=0.1 gives 1 px tiles"),
    (["--tasks", "random-init", "--seeds", "0", "100000000000000"], "argument --seeds: give an "
                                                                    "integer from 0 to 268435455"),
    (["--tasks", "random-init", "--evaluators", "knn", "svm"], "unknown evaluator 'svm'"),
])
def test_sweep_checks_the_whole_grid_before_the_first_run(capsys, tmp_path, no_runs, extra,
                                                          expected):
    out = tmp_path / "runs"
    out.mkdir()
    refused(capsys, ["sweep", *FAST, "--seeds", "0", *extra, "--out", str(out)], out, expected)


def test_sweep_refuses_an_out_that_is_a_file(capsys, tmp_path, no_runs):
    (tmp_path / "afile").write_text("x")
    refused(capsys, ["sweep", "--tasks", "random-init", *FAST, "--out", str(tmp_path / "afile")],
            tmp_path, "is a file, not a folder")


@pytest.mark.parametrize("make_output, expected", [
    (lambda t: t / "folder", "-o {path} is a folder; give a file name"),
    (lambda t: t / "afile" / "tuned.yaml", "-o {path}: {tmp}/afile is a file, not a folder"),
    (lambda t: t / "broken.yaml", "-o {path}: its top level is 'not a tuned file'"),
])
def test_tune_checks_its_output_before_the_first_run(capsys, tmp_path, no_runs, make_output,
                                                     expected):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "broken.yaml").write_text("not a tuned file")
    path = make_output(tmp_path)
    refused(capsys, ["tune", "--tasks", "denoising", "--out", str(tmp_path / "runs"), "-o",
                     str(path)], tmp_path, expected.format(path=path, tmp=tmp_path))


@pytest.mark.parametrize("extra, expected", [
    (["--set", "sigma=0.1"], "--set: ssl-bench tune chooses"),
    (["--lr-scale", "2"], "--lr-scale: ssl-bench tune chooses"),
])
def test_tune_refuses_settings_its_grid_would_drop(capsys, tmp_path, no_runs, extra, expected):
    refused(capsys, ["tune", "--tasks", "denoising", *extra, "--out", str(tmp_path / "runs"),
                     "-o", str(tmp_path / "tuned.yaml")], tmp_path, expected)


def test_tune_refuses_an_output_folder_without_write_permission(capsys, tmp_path, no_runs,
                                                                monkeypatch):
    # as root every folder is writable, so the permission answer is simulated
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    path = tmp_path / "tuned.yaml"
    refused(capsys, ["tune", "--tasks", "denoising", "--out", str(tmp_path / "runs"), "-o",
                     str(path)], tmp_path, f"-o {path}: no permission to write in {tmp_path}")


# ------------------------------------------------------------------ case 6: help and version

def _subparsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("command", ["run", "sweep", "tune"])
def test_every_option_has_help_with_its_default_in_a_group(command):
    parser = _subparsers()[command]
    text = parser.format_help()
    for group in ("data:", "task:", "training:", "evaluation:", "output:", "distributed:"):
        assert f"\n{group}\n" in text
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, action.option_strings
        if action.nargs != 0 and not action.required:  # an option that takes a value
            assert "default" in action.help, action.option_strings
    flat = " ".join(text.split())  # the help wraps lines anywhere
    assert "(default: 1 10)" in flat and "(default: knn linear)" in flat
    assert "[1.0" not in flat and "['" not in flat  # defaults as typed, not Python reprs


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"ssl-bench {version('ssl-bench')}"


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_every_device_form_parses(device):
    args = build_parser().parse_args(["run", "--task", "jigsaw", "--device", device])
    assert args.device == device


def test_usage_errors_are_one_line(capsys):
    assert main(["run"]) == 2
    assert capsys.readouterr().err == "error: the following arguments are required: --task\n"
