"""Run-directory file names and atomic file writes.

Every file a run writes goes to a temporary file in the same folder first and is
then renamed over the target, so a killed run never leaves a half-written
``results.json`` or checkpoint that a later leaderboard or resume would read.

A run holds :class:`RunLock` on its name while it writes, so two processes never
write one run folder; ``--overwrite`` builds the new run in a staging folder beside
the old one and swaps it in with :func:`replace_run` (:func:`settle_run` finishes or
undoes a swap that a killed process left half done).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from ssl_bench.core.errors import DataError, OptionError, SslBenchError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
RESULTS = "results.json"
STEP0 = "step0.json"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.

    Raises:
        OSError: a full disk (``ENOSPC``) or quota (``EDQUOT``) names ``path``, not the
            temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _naming(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with _naming(path):
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give the usual mode
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A full disk reported against ``path`` (the CLI prints the error's file name)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise OSError(exc.errno, "no space left on device (nothing was written to it)",
                      str(path)) from None


def check_writable(path: Path, option: str) -> None:
    """Refuse a ``path`` that could not be made: its nearest existing ancestor (or
    itself) is a file, or a folder this user may not write to.

    Raises:
        OptionError: naming ``option`` (e.g. ``--out runs``) and that ancestor.
    """
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise OptionError(f"{option}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OptionError(f"{option}: no permission to write in {existing}")


def _umask() -> int:
    """The process's umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_temporary_files(folder: str | os.PathLike) -> None:
    """Delete the temporary files of atomic writes that a killed process left in
    ``folder`` (``.<name>.<random>.tmp``)."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as YAML to ``path`` atomically (tuples become lists, other
    non-JSON values their ``str``)."""
    plain = json.loads(json.dumps(obj, default=str))
    atomic_write_text(path, yaml.safe_dump(plain, sort_keys=False))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch

    # through a Python file object, so that a full disk is an OSError (torch's own
    # writer reports it as a RuntimeError)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def load_checkpoint(path: str | os.PathLike, device: Any = "cpu") -> Any:
    """``torch.load`` of a run's own ``checkpoint.pt`` (full pickle: it holds RNG states).

    Raises:
        DataError: a damaged file (truncated, overwritten), naming it and how to start over.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise DataError(f"{path} is damaged and cannot be read ({reason}); start the run over "
                        "with --overwrite") from None


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line (a whole line per ``write`` call, flushed).

    Raises:
        OSError: naming ``path`` (a buffered write's error names no file).
    """
    with _naming(Path(path)), open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ----------------------------------------------------------------- one writer per run


def lock_path(run_dir: Path) -> Path:
    """``<out>/.<name>.lock``: beside the run folder, so it also covers the staging
    folder of ``--overwrite`` and a run folder that does not exist yet."""
    return run_dir.parent / f".{run_dir.name}.lock"


def staging_path(run_dir: Path) -> Path:
    """Where ``--overwrite`` builds the new run until it replaces ``run_dir``."""
    return run_dir.parent / f".{run_dir.name}.new"


def _aside_path(run_dir: Path) -> Path:
    """Where the replaced run waits for deletion during :func:`replace_run`."""
    return run_dir.parent / f".{run_dir.name}.old"


#: Bytes the longest of those names adds to a run name (``.<name>.lock``); file
#: systems allow 255 bytes per name.
NAME_DECORATION = len("..lock")


class RunLock:
    """An exclusive ``fcntl.flock`` on :func:`lock_path` ``(run_dir)``, held by one
    process at a time (the kernel drops it when the process dies, even by SIGKILL).
    The file says who holds it (pid and host) and is removed on release.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.path = Path(run_dir), lock_path(Path(run_dir))
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock without waiting.

        Raises:
            SslBenchError: another process holds it (the message names the folder and
                the holder).
        """
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise SslBenchError(f"run folder {self.run_dir} is in use by another run "
                                    f"({holder}); wait for it to end, or give another --name "
                                    "or --out") from None
            if self._is_current(fd):
                break
            os.close(fd)  # its holder removed it as we opened it: lock the new file
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def _is_current(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Remove the lock file, then unlock (a waiter then opens a new file)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def replace_run(run_dir: Path, new: Path) -> None:
    """Put the folder ``new`` in ``run_dir``'s place and delete the old run. Crash-safe:
    the old run is renamed aside before ``new`` moves in, and :func:`settle_run`
    completes a swap cut short at any point."""
    aside = _aside_path(run_dir)
    shutil.rmtree(aside, ignore_errors=True)
    if run_dir.exists():
        run_dir.rename(aside)
    new.rename(run_dir)
    shutil.rmtree(aside, ignore_errors=True)


def settle_run(run_dir: Path) -> None:
    """Finish or undo the ``--overwrite`` of ``run_dir`` that a killed process left
    (call it holding :class:`RunLock`): a staging folder that holds a checkpoint or
    results replaces the old run, one that holds neither is deleted, and so is a
    replaced run left aside."""
    new = staging_path(run_dir)
    if (new / CHECKPOINT).exists() or (new / RESULTS).exists():
        replace_run(run_dir, new)
    shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(_aside_path(run_dir), ignore_errors=True)


def unsettled(run_dir: Path) -> bool:
    """Whether a staging or set-aside folder of ``run_dir`` exists."""
    return staging_path(run_dir).exists() or _aside_path(run_dir).exists()
