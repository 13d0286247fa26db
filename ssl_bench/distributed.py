"""Data-parallel training across processes started by ``torchrun`` (or any launcher
that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``).

Without those variables the world has one process and every helper here is a no-op,
so a plain ``ssl-bench run`` is unchanged. With them, each rank trains on its
contiguous shard of every global batch and the ranks stay identical by averaging,
through :mod:`torch.distributed`, what would differ:

* gradients, in a pre-step hook on every optimizer (:func:`average_gradients`): with
  mean-reduced losses over equal shards this is the gradient of the whole batch, and
  a task with two optimizers (the context encoder's discriminator) needs no change;
* floating-point buffers (BatchNorm running statistics, EMA codebooks) after every
  step (:func:`average_buffers`);
* logged values, the divergence check and the stop request of a signal.

Backends: NCCL when training on CUDA (one device per local rank), gloo on CPUs; a
gloo group carries the small control messages either way, so they never wait for
the GPU. Only rank 0 writes files and evaluates (:func:`on_main`).
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ssl_bench.core.errors import OptionError, SslBenchError

T = TypeVar("T")
# Ranks other than 0 wait this long at a barrier while rank 0 evaluates and writes.
TIMEOUT = dt.timedelta(hours=6)
#: Seconds a rank other than 0 waits, after an error, for rank 0 to report it (see
#: :func:`report_failure`): rank 0 meets a refused input within about a second of
#: the others, as every rank checks the same command line and files.
PEER_WAIT_S = 5.0
_groups: dict[str, object] = {}


def world_size() -> int:
    """Processes in the run: the process group's size, else ``$WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes files and evaluates."""
    return rank() == 0


def init(device: torch.device) -> torch.device:
    """Join the process group once per process when ``$WORLD_SIZE`` > 1 (NCCL for a
    CUDA ``device``, else gloo); returns the device this rank trains on: on CUDA the
    GPU ``$LOCAL_RANK`` (modulo the visible GPUs, for launchers that show each
    process one GPU), else ``device`` unchanged."""
    if world_size() == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))
                              % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
        # every rank must create every group, in the same order
        _groups["control"] = (dist.new_group(backend="gloo", timeout=TIMEOUT)
                              if backend == "nccl" else dist.group.WORLD)
        _groups["main"] = dist.new_group([0], backend="gloo")
        atexit.register(shutdown)
    return device


def shutdown() -> None:
    """Leave the process group (at exit of a process that joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        _groups.clear()


def barrier() -> None:
    """Wait until every rank gets here (CPU-side; a no-op in a world of one)."""
    if world_size() > 1:
        dist.barrier(group=_groups["control"])


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (one small CPU all-reduce)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_groups["control"])
    return bool(value)


def mean(values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``values`` (any shape, float, on the training device)
    over ranks; the tensor itself in a world of one."""
    if world_size() == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / world_size()


def minimum(value: int) -> int:
    """The smallest of the ranks' ``value`` (a CPU all-reduce)."""
    if world_size() == 1:
        return value
    value_t = torch.tensor([value])
    dist.all_reduce(value_t, op=dist.ReduceOp.MIN, group=_groups["control"])
    return int(value_t)


def step_seed(seed: int, step: int) -> int:
    """The seed of this rank's random draws (masks, tiles, flips) in ``step``: fixed
    by (seed, step, rank), so a run at one world size is reproducible and resumes
    where it stopped without per-rank generator states in the checkpoint."""
    return (seed * 1_000_003 + step) * 65_537 + rank()


def average_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Before each ``optimizer.step()``, replace every gradient of its parameters by
    the mean over ranks (one all-reduce per dtype). A parameter without a gradient
    on some ranks counts zero there; one with none on every rank keeps none, so the
    optimizer skips it as in a single process. A no-op in a world of one."""
    if world_size() == 1:
        return

    def hook(opt: torch.optim.Optimizer, args, kwargs) -> None:
        params = [p for group in opt.param_groups for p in group["params"]]
        # which parameters have a gradient on any rank: a CPU message, no device sync
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8)
        dist.all_reduce(present, op=dist.ReduceOp.MAX, group=_groups["control"])
        params = [p for p, has in zip(params, present.tolist()) if has]
        for dtype in {p.dtype for p in params}:
            same = [p for p in params if p.dtype == dtype]
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                              for p in same])
            dist.all_reduce(flat)
            flat /= world_size()
            for p, grad in zip(same, flat.split([p.numel() for p in same])):
                if p.grad is None:
                    p.grad = torch.zeros_like(p)  # in p's memory format, as autograd makes it
                p.grad.copy_(grad.view_as(p))

    optimizer.register_step_pre_hook(hook)


def average_buffers(module: nn.Module) -> None:
    """Replace every floating-point buffer of ``module`` (BatchNorm running
    statistics, EMA codebooks) by its mean over ranks; a no-op in a world of one."""
    if world_size() == 1:
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1).float() for b in buffers])
    dist.all_reduce(flat)
    flat /= world_size()
    for b, value in zip(buffers, flat.split([b.numel() for b in buffers])):
        b.copy_(value.view_as(b))


def broadcast_module(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (initialisations agree)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor, src=0)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every BatchNorm layer turned into :class:`torch.nn.SyncBatchNorm`,
    whose training statistics cover the whole global batch (same state-dict keys, so
    checkpoints load either way; in a world of one it computes plain BatchNorm).

    Raises:
        OptionError: on a CPU with several processes (torch's SyncBatchNorm runs on
            GPUs only).
    """
    if world_size() > 1 and device.type != "cuda":
        raise OptionError("--sync-bn needs CUDA devices (torch's SyncBatchNorm runs on GPUs "
                            "only); drop it on CPUs")
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


@contextmanager
def _local_batchnorm(module: nn.Module) -> Iterator[None]:
    """Within the block, SyncBatchNorm layers of ``module`` synchronise with rank 0
    alone (a one-rank group), so rank 0 can run them in training mode by itself
    (``--bn-recalibrate``)."""
    layers = [m for m in module.modules() if isinstance(m, nn.SyncBatchNorm)]
    groups = [m.process_group for m in layers]
    for m in layers:
        m.process_group = _groups.get("main")
    try:
        yield
    finally:
        for m, group in zip(layers, groups):
            m.process_group = group


def on_main(work: Callable[[], T], module: nn.Module | None = None) -> T | None:
    """Run ``work`` on rank 0 while the other ranks wait; returns its result there and
    ``None`` elsewhere. ``module``'s SyncBatchNorm layers stay local meanwhile.

    Raises:
        whatever ``work`` raised, on rank 0; SslBenchError on the other ranks then, so
        every rank leaves together (a sweep goes on in step).
    """
    if world_size() == 1:
        return work()
    result, failed = None, False
    if is_main():
        try:
            with _local_batchnorm(module) if module is not None else nullcontext():
                result = work()
        except BaseException:
            failed = True
            any_rank(True)
            raise
    if any_rank(failed):
        raise SslBenchError("rank 0 failed (its error is above); this rank stops too")
    return result


def report_failure(message: str, status: int) -> int:
    """Report an error that ends this process as one ``error: <message>`` line on
    stderr for the whole run, and return ``status``, the exit status to end with.

    Every rank checks the same command line and files, so a refused input fails on
    every rank. Rank 0 prints the line. Another rank prints nothing and waits up to
    :data:`PEER_WAIT_S` seconds: once rank 0 has exited, torchrun sends the others
    SIGTERM, on which this rank ends at once with ``status`` (torchrun then reports
    ``status`` for every rank, not a kill). A rank still waiting after that failed on
    its own; it prints its line, naming its rank. An interruption (status 130) was
    agreed by every rank (:class:`~ssl_bench.train.Trainer` stops them together), so
    the other ranks return at once.
    """
    if rank() == 0:
        print(f"error: {message}", file=sys.stderr)
        return status
    if status != 130:
        sys.stdout.flush()
        signal.signal(signal.SIGTERM, lambda *_: os._exit(status))
        time.sleep(PEER_WAIT_S)
        print(f"error: rank {rank()}: {message}", file=sys.stderr)
    return status
