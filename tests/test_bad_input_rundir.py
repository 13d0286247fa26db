"""Run folders: a missing or damaged checkpoint or config.yaml, two runs on one folder,
--overwrite, a full disk, a file in the way and folders left behind are each one line
naming the file (exit 2) with nothing changed, or the correct behaviour."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_bench.cli import main
from ssl_bench.core import rundir
from ssl_bench.core.errors import SslBenchError
from ssl_bench.core.rundir import RunLock, settle_run, staging_path
from test_bad_input import FAST, refused, snapshot

# the smallest run that trains: 2 steps on 16 digits, k-NN only
TRAINED = ["run", "--task", "rotation", "--backbone-opt", "width=8", "--epochs", "1",
           "--train-subset", "16", "--batch-size", "8", "--eval-train-subset", "100",
           "--test-subset", "50", "--pretext-eval-images", "16", "--precision", "fp32", *FAST]
REFERENCE = ["run", "--task", "random-init", *FAST]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """Finished runs ``trained`` (rotation: has a checkpoint) and ``reference``
    (random-init: none)."""
    out = tmp_path_factory.mktemp("made")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_BENCH_CACHE", str(out.parent / "cache"))
        assert main([*TRAINED, "--name", "trained", "--out", str(out)]) == 0
        assert main([*REFERENCE, "--name", "reference", "--out", str(out)]) == 0
    return out


@pytest.fixture
def out(made, tmp_path, monkeypatch) -> Path:
    """A private copy of the finished runs, sharing their dataset cache."""
    monkeypatch.setenv("SSL_BENCH_CACHE", str(made.parent / "cache"))
    return Path(shutil.copytree(made, tmp_path / "out"))


def _no_checkpoint(run: Path) -> None:
    (run / "checkpoint.pt").unlink()


def _binary_config(run: Path) -> None:
    (run / "config.yaml").write_bytes(bytes(range(256)) * 4)


def _list_config(run: Path) -> None:
    (run / "config.yaml").write_text("- task\n- rotation\n")


def _truncated_checkpoint(run: Path) -> None:
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[:len(data) // 2])


def _unfinished(damage):
    def both(run: Path) -> None:
        damage(run)
        (run / "results.json").unlink()
    return both


def _evaluate(out, run):
    return ["evaluate", str(out / run), "-o", str(out / "x.json")]


def _export(out, run):
    return ["export", str(out / run), "-o", str(out / "x.safetensors")]


def _resume(out, run):
    args = TRAINED if run == "trained" else REFERENCE
    return [*args, "--name", run, "--out", str(out), "--resume"]


@pytest.mark.parametrize("damage, command, run, expected", [
    # 1. a pretrained run without its checkpoint would score the untrained initialisation
    (_no_checkpoint, _evaluate, "trained", "checkpoint.pt is missing"),
    (_no_checkpoint, _export, "trained", "checkpoint.pt is missing"),
    # 4. config.yaml of binary garbage, or a YAML list
    (_binary_config, _evaluate, "trained", "config.yaml is damaged (not UTF-8 text)"),
    (_binary_config, _export, "trained", "config.yaml is damaged (not UTF-8 text)"),
    (_unfinished(_binary_config), _resume, "trained", "config.yaml is damaged (not UTF-8"),
    (_list_config, _evaluate, "trained", "config.yaml is damaged (a YAML list, not a mapping"),
    (_list_config, _export, "trained", "config.yaml is damaged (a YAML list, not a mapping"),
    # 5. a truncated checkpoint
    (_truncated_checkpoint, _evaluate, "trained", "checkpoint.pt is damaged"),
    (_truncated_checkpoint, _export, "trained", "checkpoint.pt is damaged"),
    (_unfinished(_truncated_checkpoint), _resume, "trained", "checkpoint.pt is damaged"),
])
def test_a_missing_or_damaged_run_file_is_named(capsys, out, damage, command, run, expected):
    damage(out / run)
    refused(capsys, command(out, run), out, expected)


@pytest.mark.parametrize("damage", [_truncated_checkpoint, _binary_config])
def test_damage_messages_say_how_to_start_over(capsys, out, damage):
    damage(out / "trained")
    assert main(_evaluate(out, "trained")) == 2
    assert "start the run over with --overwrite" in capsys.readouterr().err


def test_an_untrained_reference_has_no_checkpoint_and_still_evaluates(out):
    assert not (out / "reference" / "checkpoint.pt").exists()
    assert main(_evaluate(out, "reference")) == 0
    assert main(_export(out, "reference")) == 0


# 2. two runs into one folder at once

HOLD = """
import sys
from pathlib import Path
from ssl_bench.core.rundir import RunLock
lock = RunLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
sys.stdin.readline()
lock.release()
"""


def test_a_second_process_on_a_run_in_use_is_refused(capsys, out):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / "trained")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        refused(capsys, [*TRAINED, "--name", "trained", "--out", str(out), "--overwrite"],
                out, f"run folder {out / 'trained'} is in use by another run (pid {holder.pid}")
    finally:
        holder.communicate("\n")
    assert not list(out.glob(".*"))  # its lock file went with it


def test_a_run_lock_is_held_by_one_holder_at_a_time(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(SslBenchError, match=r"run folder .*run is in use by another run "
                                                r"\(pid \d+ on host "):
            RunLock(tmp_path / "run").acquire()
    with RunLock(tmp_path / "run"):  # released: free again
        pass
    assert not list(tmp_path.iterdir())


# 3. --overwrite replaces the old run only with something

def _diverging(monkeypatch) -> None:
    """Make the rotation loss NaN from the first step (as a huge --lr does)."""
    from tasks.rotation import Rotation

    step = Rotation.training_step
    monkeypatch.setattr(Rotation, "training_step", lambda self, *a, **k: {
        **step(self, *a, **k), "loss": torch.tensor(float("nan"))})


def test_overwrite_that_fails_before_its_first_checkpoint_keeps_the_old_run(capsys, out,
                                                                            monkeypatch):
    _diverging(monkeypatch)
    before = snapshot(out)
    assert main([*TRAINED, "--name", "reference", "--out", str(out), "--overwrite"]) == 2
    assert "stopped being finite" in capsys.readouterr().err.strip().splitlines()[-1]
    assert snapshot(out) == before and not list(out.glob(".*"))


def test_overwrite_replaces_the_old_run(out):
    assert main([*TRAINED, "--name", "reference", "--out", str(out), "--overwrite"]) == 0
    assert (out / "reference" / "checkpoint.pt").exists()
    assert "rotation" in (out / "reference" / "results.json").read_text()
    assert not list(out.glob(".*"))
    # an untrained reference has no checkpoint: it takes the place when finished
    assert main([*REFERENCE, "--name", "reference", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "reference" / "checkpoint.pt").exists()
    assert not list(out.glob(".*"))


@pytest.mark.parametrize("old_at, new_at, new_file, replaced", [
    ("run", ".run.new", "config.yaml", False),   # killed before the new run's checkpoint
    ("run", ".run.new", "checkpoint.pt", True),  # killed between its checkpoint and the swap
    ("run", ".run.new", "results.json", True),   # an untrained reference, killed likewise
    (".run.old", ".run.new", "checkpoint.pt", True),  # killed between the swap's renames
    (".run.old", "run", "checkpoint.pt", True),  # killed while deleting the old run
])
def test_a_swap_cut_short_is_finished_or_undone(tmp_path, old_at, new_at, new_file, replaced):
    for folder, name in ((old_at, "old"), (new_at, new_file)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_text(name)
    settle_run(tmp_path / "run")
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert (tmp_path / "run" / "old").exists() != replaced
    assert (tmp_path / "run" / new_file).exists() == replaced


# 6. a full disk

def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("write", [
    lambda p: rundir.atomic_write_json(p, {}), lambda p: rundir.atomic_write_yaml(p, {}),
    lambda p: rundir.atomic_write_text(p, ""), lambda p: rundir.atomic_torch_save({}, p),
    lambda p: rundir.append_jsonl(p, {}),
])
def test_a_full_disk_names_the_file_and_leaves_no_temporary_file(tmp_path, monkeypatch, write):
    monkeypatch.setattr(Path, "write_text", _enospc)
    monkeypatch.setattr(rundir, "open", _enospc, raising=False)  # shadows the builtin there
    target = tmp_path / "file"
    with pytest.raises(OSError, match="no space left on device") as caught:
        write(target)
    assert caught.value.filename == str(target) and not list(tmp_path.iterdir())


def _fail_checkpoint(monkeypatch, call: int) -> None:
    """Make the ``call``-th checkpoint write meet a full disk."""
    save, calls = torch.save, {"n": 0}

    def torch_save(obj, f, *args, **kwargs):
        if "checkpoint" in str(getattr(f, "name", f)):
            calls["n"] += 1
            if calls["n"] == call:
                _enospc()
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", torch_save)


@pytest.mark.parametrize("call, kept", [(1, False), (2, True)])
def test_a_full_disk_at_a_checkpoint_keeps_the_run_resumable(capsys, tmp_path, monkeypatch,
                                                            call, kept):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))
    _fail_checkpoint(monkeypatch, call)
    argv = [*TRAINED, "--epochs", "2", "--name", "r", "--out", str(tmp_path / "runs")]
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"error: {tmp_path / 'runs' / 'r' / 'checkpoint.pt'}: no space left on "
                    "device (nothing was written to it)")
    run = tmp_path / "runs" / "r"
    if not kept:  # nothing to resume before the first checkpoint: the folders it made go
        assert not (tmp_path / "runs").exists()
    else:
        assert list(run.parent.iterdir()) == [run] and not list(run.glob(".*"))
        assert torch.load(run / "checkpoint.pt", weights_only=False)["epoch"] == 1
        monkeypatch.undo()
        monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))
        assert main([*argv, "--resume"]) == 0


# 7. a file where the run folder would be

@pytest.mark.parametrize("flag", [[], ["--resume"], ["--overwrite"]])
def test_a_file_named_like_the_run_is_refused(capsys, tmp_path, flag):
    (tmp_path / "afile.txt").write_text("mine")
    refused(capsys, [*REFERENCE, "--name", "afile.txt", "--out", str(tmp_path), *flag],
            tmp_path, f"--name afile.txt: a file stands at {tmp_path / 'afile.txt'}")


# 8. folders left behind

def test_a_diverged_run_leaves_no_folder_it_made(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))
    _diverging(monkeypatch)
    out = tmp_path / "new" / "runs"
    assert main([*TRAINED, "--out", str(out)]) == 2
    assert "stopped being finite" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "new").exists()


def test_a_too_long_name_is_refused_at_option_time(capsys, tmp_path):
    refused(capsys, [*REFERENCE, "--name", "n" * 300, "--out", str(tmp_path)], tmp_path,
            "--name is 300 characters long; give at most 249")
    refused(capsys, [*REFERENCE, "--name", "n" * 250, "--out", str(tmp_path)], tmp_path,
            "give at most 249")


def test_the_longest_name_allowed_works(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))
    assert main([*REFERENCE, "--name", "n" * 249, "--out", str(tmp_path / "runs")]) == 0
    assert (tmp_path / "runs" / ("n" * 249) / "results.json").exists()
