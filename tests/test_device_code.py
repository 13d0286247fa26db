"""Every pretraining task's step is batched device code: no host reads, no data-dependent
shapes, no tensors made from host data, no numpy, no per-image Python loop, and its logs
stay tensors (the trainer converts them every ``log_every`` steps).

The tests run on the CPU, where nothing waits for an accelerator, so they watch for the
calls that would make the host wait on one. :class:`HostSyncGuard`, a
``TorchFunctionMode``, sees every torch function and tensor method that the step calls
from Python and fails on host reads (``item``, ``float(t)``, ``bool(t)``, ``tolist``,
``cpu``…), data-dependent shapes (``nonzero``, ``unique``, boolean-mask indexing,
``bincount``…), tensors built from host data (``torch.tensor``: a blocking copy to the
device), moves to a named device and factories (``torch.rand``, ``zeros``…) without
``device=``, which would draw on the default device instead of the batch's; a profile
hook records calls into numpy. A Python
loop over the images of a batch, or over the distinct values of a random draw, shows as
a number of torch calls that changes with the batch: it must not. Optimizer steps are
exempt: they are torch's, and read only their own CPU step counters.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import pytest
import torch
from torch.overrides import TorchFunctionMode

from conftest import GRAY28, RGB32, build_small_task
from ssl_bench.core.registry import TASKS
from tasks.blocks import device_tensor

HOST_READS = {"item", "tolist", "numpy", "__array__", "__float__", "__int__", "__bool__",
              "__index__", "__format__", "cpu"}
DYNAMIC_SHAPES = {"nonzero", "argwhere", "unique", "unique_consecutive", "masked_select",
                  "bincount"}  # bincount: the CUDA kernel reads the maximum on the host
HOST_DATA = {"tensor", "as_tensor", "asarray", "new_tensor"}
FACTORIES = {"rand", "randn", "randint", "randperm", "zeros", "ones", "empty", "full", "arange",
             "eye", "linspace", "tensor"}  # without device=: the default device, not the batch's
INDEXING = {"__getitem__", "__setitem__", "index_put", "index_put_"}
SMALL_BATCH, LARGE_BATCH = 4, 7


class HostSyncError(AssertionError):
    """A call that would make the host wait for the device, or give a shape only the
    device's data decides."""


def _is_bool_tensor(index) -> bool:
    if isinstance(index, (tuple, list)):
        return any(_is_bool_tensor(i) for i in index)
    return isinstance(index, torch.Tensor) and index.dtype == torch.bool


def _names_a_device(args, kwargs) -> bool:
    return "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args[1:])


def problem(func, args, kwargs, check_host_data: bool) -> str | None:
    """Why calling ``func`` in a training step is not batched device code, or ``None``."""
    name = getattr(func, "__name__", "")
    if name in HOST_READS:
        return "reads a tensor on the host"
    if name in DYNAMIC_SHAPES or (name == "where" and len(args) == 1 and not kwargs):
        return "makes a data-dependent shape"
    if name in INDEXING and len(args) > 1 and _is_bool_tensor(args[1]):
        return "indexes with a boolean mask (a data-dependent shape)"
    if check_host_data and name in HOST_DATA:
        return "copies host data to the device"
    if name in FACTORIES and "device" not in kwargs:
        return "makes a tensor on the default device instead of the batch's"
    if name in ("to", "cuda") and _names_a_device(args, kwargs):
        return "moves a tensor between devices"
    return None


class HostSyncGuard(TorchFunctionMode):
    """Raises :class:`HostSyncError` on the calls of :func:`problem` and counts the
    torch calls made from Python (``calls``), except while ``paused``; records calls
    into numpy in ``numpy_calls``. ``check_host_data=False`` allows tensors built from host
    data (a first step fills per-device caches of constants)."""

    def __init__(self, check_host_data: bool = True) -> None:
        super().__init__()
        self.check_host_data, self.paused, self.calls = check_host_data, 0, 0
        self.numpy_calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.paused:
            self.calls += 1
            why = problem(func, args, kwargs, self.check_host_data)
            if why:
                raise HostSyncError(f"{getattr(func, '__qualname__', func)} {why}")
        return func(*args, **kwargs)

    def exempt(self, step):
        """``step`` run with the guard paused."""

        def paused_step(*args, **kwargs):
            self.paused += 1
            try:
                return step(*args, **kwargs)
            finally:
                self.paused -= 1

        return paused_step

    def profile(self, frame, event, arg) -> None:
        """``sys.setprofile`` hook: note Python or C functions of numpy being called."""
        if self.paused:
            return
        if event == "call":
            module = frame.f_globals.get("__name__", "")
        elif event == "c_call":
            module = getattr(arg, "__module__", None) or type(getattr(arg, "__self__", None)
                                                              ).__module__
        else:
            return
        if module.split(".")[0] == "numpy":
            self.numpy_calls.append(f"{module}.{getattr(arg, '__name__', frame.f_code.co_name)}")


@contextmanager
def guarded(optimizers, check_host_data: bool = True):
    """Within the block, :class:`HostSyncGuard` watches everything but ``optimizers``'
    steps; yields the guard."""
    guard = HostSyncGuard(check_host_data)
    own_steps = [opt.__dict__.get("step") for opt in optimizers]
    for opt in optimizers:
        opt.step = guard.exempt(opt.step)
    previous = sys.getprofile()
    try:
        sys.setprofile(guard.profile)
        with guard:
            yield guard
    finally:
        sys.setprofile(previous)
        for opt, step in zip(optimizers, own_steps):
            if step is None:
                del opt.step
            else:
                opt.step = step


PRETRAINING = [name for name in TASKS.names() if TASKS.get(name).pretrains]
VARIANTS = [
    ("rotation", {"all_rotations": False}),
    ("rotation", {"rotations": [0, 180]}),
    ("relative-patch", {"color_handling": "project"}),
    ("relative-patch", {"color_handling": "none", "pixelate_prob": 1.0}),
    ("context-encoder", {"mask": "center"}),
    ("context-encoder", {"mask": "random-block", "adversarial": False}),
    ("denoising", {"noise": "masking"}),
    ("denoising", {"noise": "salt-and-pepper", "loss": "bce"}),
    ("split-brain", {"soft_encoding": True, "rebalance": True}),
    ("vq-vae", {"codebook_update": "ema"}),
    ("sparse-autoencoder", {"penalty": "l1"}),
    ("contractive-autoencoder", {"jacobian": "exact", "code_dim": 2}),
    ("vae", {"likelihood": "bernoulli"}),
    ("jigsaw", {"grayscale_prob": 1.0}),
]
# tasks whose step takes another path on 1-channel images (colour handling, grayscale
# conversion, the likelihood or loss that ``auto`` picks)
GRAY_PATHS = ["relative-patch", "jigsaw", "vae", "autoencoder"]
CASES = ([pytest.param(name, RGB32, {}, id=f"{name}-rgb32") for name in PRETRAINING]
         + [pytest.param(name, GRAY28, {}, id=f"{name}-gray28") for name in GRAY_PATHS]
         + [pytest.param(name, RGB32, options,
                         id=f"{name}-" + ",".join(f"{k}={v}" for k, v in options.items()))
            for name, options in VARIANTS])


def _step(task, optimizers, n: int, spec, check_host_data: bool):
    images = torch.rand(n, spec.channels, spec.image_size, spec.image_size)
    extra = {"labels": torch.randint(0, spec.num_classes, (n,))} if task.uses_labels else {}
    with guarded(optimizers, check_host_data) as guard:
        logs = task.training_step(images, optimizers, **extra)
    assert not guard.numpy_calls, f"the step called numpy: {guard.numpy_calls}"
    assert logs and all(isinstance(v, torch.Tensor) and not v.requires_grad
                        and v.numel() == 1 and v.device == images.device
                        for v in logs.values()), logs
    return guard.calls


@pytest.mark.parametrize("name, spec, options", CASES)
def test_training_step_is_batched_device_code(name, spec, options):
    """Three steps: the first may fill per-device caches of constants; none reads a
    tensor on the host, shapes a tensor by its data or calls numpy; all log detached
    one-element tensors on the batch's device; and the second and third, at batches of
    4 and 7 images, make the same number of torch calls (no per-image loop)."""
    task = build_small_task(name, spec, **options).train()
    optimizers = task.configure_optimizers(task.default_optim(SMALL_BATCH))
    _step(task, optimizers, SMALL_BATCH, spec, check_host_data=False)
    small = _step(task, optimizers, SMALL_BATCH, spec, check_host_data=True)
    large = _step(task, optimizers, LARGE_BATCH, spec, check_host_data=True)
    assert small == large, f"{small} torch calls for {SMALL_BATCH} images, {large} for " \
                           f"{LARGE_BATCH}: a loop over images or over drawn values"


def test_the_guard_catches_host_reads_masks_numpy_and_per_image_loops():
    """The checks above can fail: each kind of offence is caught, while the same work
    written as batched tensor code passes."""
    x = torch.rand(4, 3)
    for offence in (lambda: x.sum().item(), lambda: float(x.sum()), lambda: x[x > 0.5],
                    lambda: bool(x.sum() > 0), lambda: x.tolist(), lambda: x.unique(),
                    lambda: torch.tensor([1.0, 2.0], device=x.device), lambda: x.to("cpu"),
                    lambda: torch.rand(4, 3)):
        with pytest.raises(HostSyncError), guarded([]):
            offence()
    with guarded([]) as guard:
        import numpy as np

        np.stack([np.ones(2), np.zeros(2)])
    assert guard.numpy_calls

    def per_image(images):
        return torch.stack([image.flip(-1) for image in images])

    counts = []
    for n in (SMALL_BATCH, LARGE_BATCH):
        images = torch.rand(n, 3)
        with guarded([]) as guard:
            per_image(images)
        counts.append(guard.calls)
    assert counts[0] != counts[1]
    with guarded([]) as guard:  # the same work as batched tensor code passes
        torch.where(x > 0.5, x, torch.zeros_like(x)).flip(-1)
    assert guard.calls == 4  # gt, zeros_like, where, flip


def test_device_constants_are_built_once_per_device_and_dtype():
    first = device_tensor(((1.0, 2.0), (3.0, 4.0)), torch.device("cpu"), torch.float32)
    assert first is device_tensor(((1.0, 2.0), (3.0, 4.0)), torch.device("cpu"), torch.float32)
    assert first.dtype == torch.float32 and first.shape == (2, 2)
    assert device_tensor((1, 2), torch.device("cpu"), torch.int64).tolist() == [1, 2]
    with torch.inference_mode():  # first asked for in inference, later used in training
        constant = device_tensor((5.0, 6.0), torch.device("cpu"), torch.float32)
    assert not constant.is_inference()
