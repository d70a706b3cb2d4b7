"""Shared fixtures for the core tests (backend, autograd, ops).

- `DEVICES` / the `device` fixture: every device that can hold tensors here (`ndl.all_devices()`:
  cpu(), plus cuda() when cupy sees a GPU). Tests that touch arrays run once per device.
- `torch`: PyTorch configured for reproducible float64 reference runs, or a clean skip without it.
- `rs`: a seeded numpy RandomState, so failures reproduce.
- `no_cupy` / `fake_cupy`: simulate the two ways CUDA can be missing, on any machine.
- `assert_memory_flat(step, ...)`: run a training step many times and require a flat live-tensor count
  and flat traced Python memory (the optimizer and truncated-BPTT memory tests share it).
"""
import gc, sys, tracemalloc, types

import numpy as np
import pytest

import needle_nb as ndl
import needle_nb.backend as backend

# under NEEDLE_BACKEND=nd, all_devices() lists needle's three, disabled ones included; cpu_numpy() is
# the same numpy buffers as cpu() without the tiled matmul (tests/test_ndarray.py covers it)
DEVICES = [d for d in ndl.all_devices() if d.enabled() and repr(d) != "cpu_numpy()"]


def not_under_nd(reason: str):
    "Skip a test in the NEEDLE_BACKEND=nd run, saying why (the list is in nbs/00b_backend_selection.ipynb)."
    return pytest.mark.skipif(ndl.BACKEND == "nd", reason=f"NEEDLE_BACKEND=nd: {reason}")


@pytest.fixture(params=DEVICES, ids=repr)
def device(request):
    "Each enabled device in turn."
    return request.param


@pytest.fixture
def torch():
    "PyTorch on one CPU thread (a skip, not a failure, where it is not installed)."
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def to_host(array) -> np.ndarray:
    "A numpy array with the values of a numpy or cupy array (numpy refuses cupy's implicitly)."
    return ndl.cpu().to_numpy(array)


def nodes_made(f) -> list:
    "The op class names of the graph nodes that `f()` creates, in order (by wrapping `Tensor.make_from_op`)."
    made = []
    original = ndl.Tensor.make_from_op
    def counting(op, inputs):
        made.append(type(op).__name__)
        return original(op, inputs)
    ndl.Tensor.make_from_op = staticmethod(counting)
    try: f()
    finally: ndl.Tensor.make_from_op = staticmethod(original)
    return made


def shares_memory(a, b) -> bool:
    "Whether tensors `a` and `b` share memory on their device (`.numpy()` of a GPU tensor is a host copy)."
    xp = backend.array_module(a.realize_cached_data())
    return bool(xp.shares_memory(a.realize_cached_data(), b.realize_cached_data()))


def _value(result):
    "A step's result as a plain number, so that no tensor (and no graph) outlives the step."
    return result.item() if hasattr(result, "item") else result


def assert_memory_flat(step, warmup: int = 100, settle: int = 0, steps: int = 1000, max_growth: int = 16 * 1024):
    """Call `step()` `warmup` + `settle` + `steps` times under `tracemalloc`; return the last step's value.

    The live-tensor count (`ndl.autograd.TENSOR_COUNTER`) after the warm-up must equal the count at the
    end, and the traced memory must grow by less than `max_growth` bytes over the last `steps` steps
    (`settle` steps in between let a warming allocator, such as cupy's memory pool, settle first).
    `gc.collect()` runs before each count: a step's graph is a reference cycle that Python frees
    with its cycle collector, not at once.
    """
    tracemalloc.start()
    try:
        for _ in range(warmup): _value(step())
        gc.collect()
        tensors_before = ndl.autograd.TENSOR_COUNTER
        for _ in range(settle): _value(step())
        gc.collect()
        memory_before = tracemalloc.get_traced_memory()[0]
        for _ in range(steps): last = _value(step())
        gc.collect()
        tensors_after, memory_after = ndl.autograd.TENSOR_COUNTER, tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert tensors_after == tensors_before, f"{tensors_after - tensors_before} more live tensors after {steps} steps"
    assert memory_after - memory_before < max_growth, \
        f"traced memory grew by {memory_after - memory_before} bytes over {steps} steps"
    return last


@pytest.fixture
def rs():
    return np.random.RandomState(0)


def _fake_cupy(available=True, device_count_error=None):
    "A stand-in `cupy` module with just what `backend._probe_cupy` looks at."
    def getDeviceCount():
        if device_count_error: raise RuntimeError(device_count_error)
        return 1
    cuda = types.SimpleNamespace(is_available=lambda: available,
                                 runtime=types.SimpleNamespace(getDeviceCount=getDeviceCount))
    seeds = []
    module = types.ModuleType("cupy")
    module.cuda, module.random, module.seeds = cuda, types.SimpleNamespace(seed=seeds.append), seeds
    return module


@pytest.fixture
def no_cupy(monkeypatch):
    "Pretend cupy is not installed; the probe runs again and the cached answer is restored afterwards."
    monkeypatch.setitem(sys.modules, "cupy", None)   # `import cupy` now raises ImportError
    monkeypatch.setattr(backend, "_CUPY", None)


@pytest.fixture
def fake_cupy(monkeypatch):
    "Install a factory `fake_cupy(available=..., device_count_error=...)` as the `cupy` module."
    def install(**kwargs):
        module = _fake_cupy(**kwargs)
        monkeypatch.setitem(sys.modules, "cupy", module)
        monkeypatch.setattr(backend, "_CUPY", None)
        return module
    return install
