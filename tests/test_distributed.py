"""Data-parallel runs under torchrun on CPU (gloo, 2 processes): the same result as one
process with the same global batch, a kill mid-epoch that resumes at either world
size, rank 0 alone writing, a batch that the world size does not divide refused.

The run is the autoencoder on timm's 6-block ``test_vit`` (LayerNorm only, no random
draw in a step): BatchNorm in training mode normalises each rank's shard by its own
statistics (SyncBatchNorm, which would share them, runs on GPUs only), and random
draws differ per rank by design, so either would make the two runs differ.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# 8 steps per epoch of 32 images (16 per rank), 16 steps in all
RUN = ["run", "--task", "autoencoder", "--backbone", "timm:test_vit", "--backbone-opt",
       "patch_size=8", "--set", "decoder_norm=false", "--epochs", "2", "--train-subset", "256",
       "--batch-size", "32", "--no-step0", "--evaluators", "knn", "--no-layer-probes",
       "--lowshot", "--eval-train-subset", "200", "--test-subset", "100",
       "--pretext-eval-images", "64", "--device", "cpu", "--precision", "fp32",
       "--optimizer", "sgd"]
# Runs at different world sizes are compared in float64 (the default dtype, set before
# the CLI starts; images are converted to it by ``to_float``). One batch of 32 and two
# shards of 16 sum their gradients in different orders, and that rounding grows over the
# 16 steps: in float32 the weights of the two runs end up ~1e-4 apart (1.1e-4 in cls_token
# on one AMD host), as large as some parameters' whole update. float64's unit roundoff is
# 2^29 ≈ 5e8 times smaller, so the same rounding leaves them ≪ 1e-9 apart, while a
# data-parallel mistake (a shard seen twice, a gradient or buffer not averaged, a wrong
# learning-rate step) moves weights by the size of an update (cls_token moves 8e-3 in
# these 16 steps). CLOSE sits between the two, orders of magnitude from either. The
# losses stay float32 (the autoencoder's loss casts to it), hence their own tolerances.
# Runs at the same world size need no tolerance: they are compared bit for bit (float32).
FLOAT64 = "import torch; torch.set_default_dtype(torch.float64)\n"
CLI = "import sys\nfrom ssl_bench.cli import main\nsys.exit(main(sys.argv[1:]))\n"
# Under torchrun: rank 0 sends SIGTERM to torchrun as step `n` begins, as `kill` or a
# scheduler would; torchrun passes it on to every rank.
KILLER = """
import os, signal, sys
import ssl_bench.train as train
from ssl_bench.cli import main
n, argv = int(sys.argv[1]), sys.argv[2:]
batch = train.Trainer._batch
def hooked(self, order, b):
    if self.rank == 0 and self.step == n:
        os.kill(os.getppid(), signal.SIGTERM)
    return batch(self, order, b)
train.Trainer._batch = hooked
sys.exit(main(argv))
"""

pytestmark = pytest.mark.slow
# SGD: Adam would turn rounding noise into lr-sized steps on parameters whose true
# gradient is 0 (the attention's key bias), hence --optimizer sgd in RUN.
CLOSE = dict(rtol=0, atol=1e-7)


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]), "SSL_BENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _script(cache: Path, script: str, float64: bool) -> str:
    """The path of a file holding ``script``, preceded by FLOAT64 if asked."""
    text = (FLOAT64 if float64 else "") + script
    path = cache / f"script_{zlib.crc32(text.encode()):08x}.py"
    path.write_text(text)
    return str(path)


def single(cache: Path, *args: str, float64: bool = False) -> subprocess.CompletedProcess:
    """The CLI in one process with ``args``."""
    return subprocess.run([sys.executable, _script(cache, CLI, float64), *args],
                          env=_env(cache), capture_output=True, text=True, timeout=300)


def torchrun(cache: Path, *args: str, script: str = CLI,
             float64: bool = False) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2`` of the CLI (or of ``script``) with ``args``."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                           "2", "--master_addr", "127.0.0.1", "--master_port",
                           str(_free_port()), _script(cache, script, float64), *args],
                          env=_env(cache), capture_output=True, text=True, timeout=300)


def run_dir(out: Path) -> Path:
    (path,) = out.iterdir()
    return path


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir(out) / "checkpoint.pt", weights_only=False)["task"]


def losses(out: Path) -> list[tuple[int, float]]:
    lines = (run_dir(out) / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def one(tmp_path_factory, cache) -> Path:
    """One process, float64."""
    out = tmp_path_factory.mktemp("one")
    child = single(cache, *RUN, "--out", str(out), float64=True)
    assert child.returncode == 0, child.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def two64(tmp_path_factory, cache) -> Path:
    """Two processes, float64."""
    out = tmp_path_factory.mktemp("two64")
    child = torchrun(cache, *RUN, "--out", str(out), float64=True)
    assert child.returncode == 0, child.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def two(tmp_path_factory, cache) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("two")
    child = torchrun(cache, *RUN, "--out", str(out))
    assert child.returncode == 0, child.stderr[-3000:]
    return out, child


def test_two_processes_match_one_with_the_same_global_batch(one, two64):
    out = two64
    a, b = weights(one), weights(out)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], **CLOSE, msg=key)
    (steps_a, loss_a), (steps_b, loss_b) = zip(*losses(one)), zip(*losses(out))
    assert steps_a == steps_b
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    ra, rb = (json.loads((run_dir(o) / "results.json").read_text()) for o in (one, out))
    assert (ra["images_seen"], ra["steps"]) == (rb["images_seen"], rb["steps"]) == (512, 16)
    assert rb["pretext"]["loss"] == pytest.approx(ra["pretext"]["loss"], rel=1e-4)
    assert (ra["cost"]["world_size"], rb["cost"]["world_size"]) == (1, 2)
    assert ra["config_id"] == rb["config_id"]


def test_only_rank_0_writes(one, two):
    out, child = two
    assert sorted(p.name for p in run_dir(out).iterdir()) == \
        sorted(p.name for p in run_dir(one).iterdir())
    assert [s for s, _ in losses(out)] == [8, 16]  # one line per logged step, not one per rank
    assert child.stdout.count("images seen)") == 1  # one summary


def test_killed_mid_epoch_resumes_bit_for_bit(tmp_path, cache, two):
    out = tmp_path / "killed"
    child = torchrun(cache, "3", *RUN, "--out", str(out), script=KILLER)
    assert child.returncode != 0
    assert "SIGTERM: saving a checkpoint" in child.stderr, child.stderr[-3000:]
    state = torch.load(run_dir(out) / "checkpoint.pt", weights_only=False)
    assert 3 <= state["step"] < 16 and not (run_dir(out) / "results.json").exists()

    resumed = torchrun(cache, *RUN, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full = weights(two[0])
    for key, value in weights(out).items():  # the run it would have been, bit for bit
        assert torch.equal(value, full[key]), key
    assert [s for s, _ in losses(out)] == [8, 16]


def test_killed_at_two_processes_resumes_in_one(tmp_path, cache, two64):
    out = tmp_path / "killed"
    child = torchrun(cache, "3", *RUN, "--out", str(out), script=KILLER, float64=True)
    assert "SIGTERM: saving a checkpoint" in child.stderr, child.stderr[-3000:]
    alone = single(cache, *RUN, "--out", str(out), "--resume", float64=True)
    assert alone.returncode == 0, alone.stderr[-3000:]
    full = weights(two64)
    for key, value in weights(out).items():
        torch.testing.assert_close(value, full[key], **CLOSE, msg=key)
    assert json.loads((run_dir(out) / "results.json").read_text())["steps"] == 16


def test_batch_not_divisible_by_the_world_size_is_refused(tmp_path, cache):
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        child = single(cache, *RUN[:RUN.index("--batch-size")], "--batch-size", "33",
                       "--out", str(tmp_path / "out"))
    assert child.returncode == 2
    assert "--batch-size 33" in child.stderr and "divisible by 2" in child.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, expected", [
    (["--batch-size", "33"], "--batch-size 33 is the global batch of 2 processes"),
    (["--batch-size", "32", "--sync-bn"], "--sync-bn needs CUDA devices"),
])
def test_a_refusal_under_torchrun_is_one_line_and_status_2_on_every_rank(tmp_path, cache, extra,
                                                                         expected):
    child = torchrun(cache, *RUN[:RUN.index("--batch-size")], *extra, "--out", str(tmp_path / "out"))
    errors = [line for line in child.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], child.stderr[-3000:]
    # torchrun's own report: both ranks exited 2 themselves, none was killed
    assert re.findall(r"^\s+exitcode\s+: (-?\d+)", child.stderr, re.M) == ["2", "2"], child.stderr
    assert child.stderr.count("Traceback") == 1  # torchrun's ChildFailedError, no rank's
    assert not (tmp_path / "out").exists()
