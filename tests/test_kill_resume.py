"""A run killed at any moment resumes to bit-identical results and leaves no
temporary files; SIGTERM stops it at a step boundary with a checkpoint; an
``--overwrite`` killed at any moment keeps the old run until the new one has a
checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_bench.cli import main

RUN = ["run", "--task", "denoising", "--epochs", "2", "--train-subset", "256", "--batch-size",
       "64", "--evaluators", "knn", "--lowshot", "--no-layer-probes"]

# Runs the CLI in a child process that sends itself `signal` at a chosen moment:
# "train:<n>" — as the n-th training step begins (4 steps per epoch; the first
# checkpoint ends epoch 1); "checkpoint:<n>" — after the n-th checkpoint's temporary
# file is written, before its rename; "evaluation" — at the final evaluation (the
# first is the step-0 reference).
DRIVER = """
import os, sys, signal, torch
import ssl_bench.runner as runner, ssl_bench.train as train
from ssl_bench.cli import main
(point, _, n), sig, argv = sys.argv[1].partition(":"), getattr(signal, sys.argv[2]), sys.argv[3:]
calls = {"n": 0}
def hit(n):
    calls["n"] += 1
    if calls["n"] == n:
        os.kill(os.getpid(), sig)
if point == "train":
    batch = train.Trainer._batch
    train.Trainer._batch = lambda self, *a: (hit(int(n)), batch(self, *a))[1]
elif point == "checkpoint":
    save = torch.save
    def torch_save(obj, f, *a, **k):
        save(obj, f, *a, **k)
        path = str(getattr(f, "name", f))  # a path or an open file
        if path.endswith(".tmp") and "checkpoint" in path:
            hit(int(n))
    torch.save = torch_save
else:
    evaluate = runner.evaluate_frozen
    runner.evaluate_frozen = lambda *a, **k: (hit(2), evaluate(*a, **k))[1]
sys.exit(main(argv))
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _shared_cache(cache, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(cache))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> dict:
    """The results of the same run, never interrupted."""
    out = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_BENCH_CACHE", str(cache))
        assert main([*RUN, "--out", str(out)]) == 0
    (run,) = out.iterdir()
    return json.loads((run / "results.json").read_text())


def interrupted_run(out: Path, point: str, sig: str, *extra: str
                    ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, point, sig, *RUN, *extra, "--out",
                           str(out)], capture_output=True, text=True, timeout=600)


def visible(folder: Path) -> list[Path]:
    """The entries of ``folder`` but hidden ones (the lock file a SIGKILL leaves)."""
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def same_results(a: dict, b: dict) -> bool:
    """The same numbers; ``step0["cached"]`` says where step 0 came from (a resumed run
    may find the reference run's step 0 in the shared cache), not what it is."""
    keys = ("metrics", "pretext", "step0", "images_seen", "steps")
    a, b = ({**r, "step0": {k: v for k, v in r["step0"].items() if k != "cached"}}
            for r in (a, b))
    return all(a[k] == b[k] for k in keys)


@pytest.mark.parametrize("point", ["train:2", "train:6", "checkpoint:1", "checkpoint:2",
                                   "evaluation"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, reference, point):
    child = interrupted_run(tmp_path, point, "SIGKILL")
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    (run,) = visible(tmp_path)
    assert not (run / "results.json").exists()
    assert main([*RUN, "--out", str(tmp_path), "--resume"]) == 0
    assert list(tmp_path.iterdir()) == [run]  # the lock file went with the resumed run
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    resumed = json.loads((run / "results.json").read_text())
    assert same_results(resumed, reference)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no step logged twice


def test_sigterm_saves_a_checkpoint_at_a_step_boundary(tmp_path, reference):
    child = interrupted_run(tmp_path, "train:6", "SIGTERM")
    assert child.returncode == 130, child.stderr[-2000:]
    assert "SIGTERM" in child.stderr and "--resume" in child.stderr
    (run,) = tmp_path.iterdir()
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 6  # signalled while step 6 began: it finishes, then the checkpoint
    assert main([*RUN, "--out", str(tmp_path), "--resume"]) == 0
    assert same_results(json.loads((run / "results.json").read_text()), reference)


@pytest.fixture
def old_run(tmp_path) -> Path:
    """``<tmp>/x``: a finished run (an untrained reference) that ``--overwrite`` replaces."""
    assert main(["run", "--task", "random-init", "--evaluators", "knn", "--lowshot",
                 "--no-layer-probes", "--no-step0", "--name", "x", "--out", str(tmp_path)]) == 0
    return tmp_path / "x"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.mark.parametrize("point", ["train:2", "checkpoint:1"])
def test_overwrite_killed_before_its_first_checkpoint_keeps_the_old_run(tmp_path, old_run,
                                                                        point):
    before = snapshot(old_run)
    child = interrupted_run(tmp_path, point, "SIGKILL", "--name", "x", "--overwrite")
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert snapshot(old_run) == before  # the old run is whole and in its place
    # the next command on the name clears the half-built replacement; the old run stays
    assert main([*RUN, "--name", "x", "--out", str(tmp_path), "--resume"]) == 2
    assert snapshot(old_run) == before and list(tmp_path.iterdir()) == [old_run]


def test_overwrite_killed_after_its_first_checkpoint_resumes(tmp_path, old_run, reference):
    child = interrupted_run(tmp_path, "train:6", "SIGKILL", "--name", "x", "--overwrite")
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert visible(tmp_path) == [old_run]
    # the new run took the old one's place at its first checkpoint (step 4)
    assert (old_run / "checkpoint.pt").exists() and not (old_run / "results.json").exists()
    assert main([*RUN, "--name", "x", "--out", str(tmp_path), "--resume"]) == 0
    assert same_results(json.loads((old_run / "results.json").read_text()), reference)
    assert list(tmp_path.iterdir()) == [old_run]
