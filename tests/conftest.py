"""Shared fixtures for the core tests (backend, autograd, ops).

- `DEVICES` / the `device` fixture: every device that can hold tensors here (`ndl.all_devices()`:
  cpu(), plus cuda() when cupy sees a GPU). Tests that touch arrays run once per device.
- `torch`: PyTorch configured for reproducible float64 reference runs, or a clean skip without it.
- `rs`: a seeded numpy RandomState, so failures reproduce.
- `no_cupy` / `fake_cupy`: simulate the two ways CUDA can be missing, on any machine.
"""
import sys, types

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


def shares_memory(a, b) -> bool:
    "Whether tensors `a` and `b` share memory on their device (`.numpy()` of a GPU tensor is a host copy)."
    xp = backend.array_module(a.realize_cached_data())
    return bool(xp.shares_memory(a.realize_cached_data(), b.realize_cached_data()))


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
