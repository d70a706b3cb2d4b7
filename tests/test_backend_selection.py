"""NEEDLE_BACKEND (issue 17, part 2): the switch, numpy's functions on NDArray (`NumpyAPI`), the NDArray methods and
device methods needle_nb's ops need beyond needle's, and needle-style code running unchanged under `nd`.

The `NumpyAPI` and NDArray checks run in this process whatever the backend (they build NDArrays directly);
what depends on the backend chosen at import runs in a subprocess with NEEDLE_BACKEND set.
"""
import os, subprocess, sys, textwrap

import numpy as np
import pytest

import needle_nb as ndl
import needle_nb.backend as backend
import needle_nb.backend_ndarray as nd
from needle_nb.backend_selection import NumpyAPI, numpy_api

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
xp = numpy_api(nd.cpu())


def _pythonpath() -> str:
    "This checkout first, then whatever PYTHONPATH the tests run with (e.g. packages installed with --target)."
    return os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)


def run(code: str, backend_name: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NEEDLE_BACKEND=backend_name, PYTHONPATH=_pythonpath())
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)   # a hung child fails its test instead of hanging CI


def arr(x): return nd.array(x, dtype=x.dtype, device=nd.cpu())


# --- the switch ---------------------------------------------------------------------------------
def test_nd_backend_puts_every_tensor_on_an_ndarray():
    out = run("""
        import numpy as np, needle_nb as ndl, needle_nb.backend_ndarray as nd
        from needle_nb import nn, init
        assert ndl.BACKEND == "nd" and ndl.array_api is nd and ndl.NDArray is nd.NDArray and ndl.Device is nd.BackendDevice
        assert ndl.cpu() is nd.cpu() and ndl.cuda() is nd.cuda() and ndl.cpu_numpy() is nd.cpu_numpy()
        assert ndl.default_device() is nd.cpu() and ndl.all_devices() == [nd.cpu(), nd.cuda(), nd.cpu_numpy()]
        t = ndl.Tensor(np.ones((2, 3)), requires_grad=True)
        layer = nn.Linear(3, 4)
        loss = layer(t).sum()
        loss.backward()
        for x in (t, loss, t.grad, layer.weight, layer.weight.grad, init.rand(2, 2)):
            assert isinstance(x.cached_data, nd.NDArray), type(x.cached_data)
        assert loss.shape == () and str(t.device) == "cpu()"
        print("ok")
    """, "nd")
    assert out.stdout.strip() == "ok", out.stderr


def test_device_strings_name_the_current_backends_devices():
    "PyTorch's device strings mean needle's NDArray devices under nd, and ours under np."
    out = run("""
        import needle_nb as ndl, needle_nb.backend_ndarray as nd
        from needle_nb.backend import resolve_device
        assert resolve_device("cpu") is nd.cpu() and resolve_device("cuda") is nd.cuda()
        assert resolve_device(nd.cpu_numpy()) is nd.cpu_numpy()
        t = ndl.Tensor([1.0, 2.0], device="cpu")
        assert t.device is nd.cpu() and isinstance(t.cached_data, nd.NDArray)
        print("ok")
    """, "nd")
    assert out.stdout.strip() == "ok", out.stderr
    out = run("""
        import needle_nb as ndl
        from needle_nb.backend import resolve_device, cpu
        assert resolve_device("cpu") is cpu() and type(ndl.Tensor([1.0], device="cpu").cached_data).__module__ == "numpy"
        print("ok")
    """, "np")
    assert out.stdout.strip() == "ok", out.stderr


def test_np_backend_changes_nothing():
    out = run("""
        import numpy as np, needle_nb as ndl, needle_nb.backend as backend
        assert ndl.BACKEND == "np" and ndl.array_api is np and ndl.NDArray is np.ndarray
        assert ndl.cpu() is backend.cpu() and ndl.default_device() is backend.cpu() and ndl.Device is backend.Device
        assert type(ndl.Tensor([1.0]).cached_data) is np.ndarray
        print("ok")
    """, "np")
    assert out.stdout.strip() == "ok", out.stderr


def test_default_is_np_and_anything_else_is_an_error_naming_it():
    env = {k: v for k, v in os.environ.items() if k != "NEEDLE_BACKEND"}
    out = subprocess.run([sys.executable, "-c", "import needle_nb as ndl; print(ndl.BACKEND)"], capture_output=True,
                         text=True, env=dict(env, PYTHONPATH=_pythonpath()), cwd=ROOT)
    assert out.stdout.strip() == "np", out.stderr
    bad = run("import needle_nb", "cupy")
    assert bad.returncode != 0 and "RuntimeError" in bad.stderr and "'cupy'" in bad.stderr


def test_needle_style_code_runs_unchanged_under_nd():
    "hw4-style: a gradient checked by perturbing `realize_cached_data().flat[j]`, needle's NDArray API on tensors."
    out = run("""
        import numpy as np, needle_nb as ndl
        from needle_nb import backend_ndarray as nd
        device = ndl.cpu()
        np.random.seed(0)
        A = ndl.Tensor(nd.array(np.random.randn(3, 4), device=device), device=device)
        B = ndl.Tensor(np.random.randn(4, 2), device=device)
        f = lambda A, B: ndl.summation(ndl.logsumexp(ndl.stack([ndl.tanh(A @ B), ndl.relu(A @ B)], axis=1), axes=(2,)))
        out = f(A, B)
        out.backward()
        arr = A.realize_cached_data()
        assert isinstance(arr, nd.NDArray) and arr.dtype == "float32" and str(A.device) == "cpu()"
        numerical, eps = np.zeros(arr.size), 1e-2
        for j in range(arr.size):
            arr.flat[j] += eps; plus = f(A, B).numpy()
            arr.flat[j] -= 2 * eps; minus = f(A, B).numpy()
            arr.flat[j] += eps
            numerical[j] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(A.grad.numpy().reshape(-1), numerical, rtol=1e-2, atol=1e-2)
        grads = out.op.gradient_as_tuple(ndl.Tensor(np.ones(()), device=device), out)
        assert grads[0].shape == out.inputs[0].shape
        padded = A.cached_data.pad(((1, 1), (0, 0)))
        assert padded.shape == (5, 4) and isinstance(padded, nd.NDArray)
        conv = ndl.conv(ndl.Tensor(np.random.randn(1, 5, 5, 2), device=device), ndl.Tensor(np.random.randn(3, 3, 2, 4), device=device))
        assert conv.shape == (1, 5, 5, 4) and isinstance(conv.cached_data, nd.NDArray)
        print("ok")
    """, "nd")
    assert out.stdout.strip() == "ok", out.stderr


# --- array_module, device_of, default device -------------------------------------------------------
def test_array_module_and_device_of_an_ndarray():
    a = nd.array([1.0, 2.0], device=nd.cpu())
    assert backend.array_module(a) is numpy_api(nd.cpu()) and isinstance(backend.array_module(a), NumpyAPI)
    assert backend.array_module(np.zeros(2)) is np
    assert backend.device_of(a) is nd.cpu() and backend.device_of(np.zeros(1)) is backend.cpu()
    assert numpy_api(nd.cpu_numpy()) is not numpy_api(nd.cpu())


def test_set_default_device_round_trip():
    before = backend.default_device()
    try:
        backend.set_default_device(nd.cpu_numpy())
        assert backend.default_device() is nd.cpu_numpy()
    finally:
        backend.set_default_device(None if before is backend.cpu() else before)
    assert backend.default_device() is before


# --- NumpyAPI against numpy --------------------------------------------------------------------------
RS = np.random.RandomState(0)
X = RS.randn(3, 4, 5).astype(np.float32)


@pytest.mark.parametrize("axis", [None, 0, 2, -1, (0, 2), (1,), (0, 1, 2)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions_have_numpys_shapes(axis, keepdims):
    a = arr(X)
    for ours, theirs in ((xp.sum, np.sum), (xp.max, np.max), (xp.mean, np.mean)):
        got = ours(a, axis=axis, keepdims=keepdims)
        want = theirs(X, axis=axis, keepdims=keepdims)
        assert got.shape == np.shape(want)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert a.sum().shape == (1,)    # the NDArray method keeps needle's shape


@pytest.mark.parametrize("index", [0, -1, (1, 2), (slice(None), 1), (Ellipsis, 0), (None, 1), (slice(None, None, -1),),
                                   (slice(3, 0, -2), Ellipsis, slice(1, 4)), ([0, 2],), (1, [3, 0, 3]),
                                   (np.array([[0, 1], [2, 2]]), slice(None), 4), (X[:, 0, 0] > 0,)])
def test_getitem_follows_numpy(index):
    got = xp.getitem(arr(X), index)
    np.testing.assert_array_equal(got.numpy(), X[index])


def test_getitem_of_a_basic_index_is_a_view():
    a = arr(X)
    view = xp.getitem(a, (1, slice(None, None, -1)))
    assert view._handle is a._handle
    xp.setitem(a, (1, 0), 7.0)
    np.testing.assert_array_equal(a.numpy()[1, 0], 7.0)


def test_elementwise_and_shape_functions_follow_numpy():
    a, b = arr(X), arr(RS.rand(4, 5).astype(np.float32) + 0.5)
    ok = np.testing.assert_allclose
    ok(xp.where(a > 0, a, -1).numpy(), np.where(X > 0, X, -1))
    special = arr(np.array([1.0, np.inf, -np.inf, np.nan]))
    np.testing.assert_array_equal(xp.isfinite(special).numpy(), [1, 0, 0, 0])
    np.testing.assert_array_equal(xp.where(xp.isfinite(special), special, 0).numpy(), [1, 0, 0, 0])   # no inf * 0 = nan
    ok(xp.maximum(a, b).numpy(), np.maximum(X, b.numpy()))
    ok(xp.minimum(0, a).numpy(), np.minimum(0, X))
    ok(xp.sqrt(b).numpy(), np.sqrt(b.numpy()), rtol=1e-6)
    ok(xp.abs(a).numpy(), np.abs(X))
    ok(xp.power(b, a).numpy(), np.power(b.numpy(), X), rtol=1e-5)
    ok(xp.subtract(1, b).numpy(), 1 - b.numpy())
    ok(xp.erf(a).numpy(), __import__("scipy.special").special.erf(X), rtol=1e-5)
    ok(xp.reshape(a.permute((2, 0, 1)), (5, -1)).numpy(), X.transpose(2, 0, 1).reshape(5, -1))
    ok(xp.swapaxes(a, 0, 2).numpy(), X.swapaxes(0, 2))
    ok(xp.transpose(a, (1, 2, 0)).numpy(), X.transpose(1, 2, 0))
    ok(xp.stack([a, a * 2], axis=-1).numpy(), np.stack([X, X * 2], axis=-1))
    ok(xp.concatenate([a, a[0:3, 0:2, 0:5]], axis=1).numpy(), np.concatenate([X, X[:, :2]], axis=1))
    ok(xp.pad(a, ((1, 0), (0, 2), (3, 1)), constant_values=-np.inf).numpy(),
       np.pad(X, ((1, 0), (0, 2), (3, 1)), constant_values=-np.inf))
    ok(xp.flip(a, (0, 2)).numpy(), np.flip(X, (0, 2)))
    ok(xp.take(a, [4, 0], axis=2).numpy(), np.take(X, [4, 0], axis=2))
    np.testing.assert_array_equal(xp.argmax(a, axis=1).numpy(), X.argmax(axis=1))
    assert xp.argmax(a).numpy() == X.argmax()
    ok(float(xp.linalg.norm(xp.reshape(a, -1), ord=3)), np.linalg.norm(X.reshape(-1), ord=3), rtol=1e-5)
    ok(float(xp.linalg.norm(xp.reshape(a, -1), ord=np.inf)), np.abs(X).max())
    with pytest.raises(ValueError, match="broadcast"): xp.broadcast_to(a, (2, 4, 5))


@pytest.mark.parametrize("a_shape,b_shape", [((4,), (4,)), ((3, 4), (4,)), ((4,), (4, 2)), ((2, 3, 4), (4, 5)),
                                             ((2, 1, 3, 4), (5, 4, 2))])
def test_matmul_follows_numpy(a_shape, b_shape):
    a, b = RS.randn(*a_shape), RS.randn(*b_shape)
    got = xp.matmul(arr(a), arr(b))
    np.testing.assert_allclose(got.numpy(), np.matmul(a, b), rtol=1e-10)
    with pytest.raises(ValueError, match="not aligned"): xp.matmul(arr(a), arr(RS.randn(3)))


def test_add_at_accumulates_repeated_positions_and_out_writes_in_place():
    out = xp.zeros((3, 2), "float64")
    xp.add.at(out, ([0, 0, 2], [1, 1, 0]), arr(np.array([1.0, 2.0, 5.0])))
    np.testing.assert_array_equal(out.numpy(), [[0, 3], [0, 0], [5, 0]])
    u = arr(np.ones(4))
    result = xp.subtract(arr(np.arange(4.0)), u, out=u)
    assert result is u
    np.testing.assert_array_equal(u.numpy(), np.arange(4.0) - 1)


# --- NDArray methods beyond needle's --------------------------------------------------------------
def test_ndarray_extension_methods():
    a = arr(np.array([[1.0, -2.0], [4.0, 8.0]]))
    np.testing.assert_array_equal((1 / a).numpy(), 1 / a.numpy())
    np.testing.assert_array_equal((2 ** a).numpy(), 2.0 ** a.numpy())
    np.testing.assert_array_equal(abs(a).numpy(), np.abs(a.numpy()))
    np.testing.assert_array_equal(a.transpose().numpy(), a.numpy().T)
    assert a.min().numpy()[0] == -2 and a.any() and not (a * 0).any() and a.all()
    assert float(a[1, 1]) == 8.0 and int(a[0, 0]) == 1 and bool(a[0, 0])
    with pytest.raises(ValueError, match="ambiguous"): bool(a)
    np.testing.assert_array_equal(np.asarray(a), a.numpy())
    assert len(a) == 2 and a[1, 0].item() == 4.0
    copy = a.copy()
    copy += 1
    assert a.numpy()[0, 0] == 1.0 and copy._handle is not a._handle
    assert a.astype("float64", copy=False).dtype == "float64" and a.astype(a.dtype, copy=False) is a
    mask = a.astype(bool)
    assert mask.dtype == "float32" and mask.numpy().tolist() == [[1, 1], [1, 1]]
    assert ((a > 0) | (a < 0)).numpy().tolist() == [[1, 1], [1, 1]]
    assert ((a > 0) & (a < 5)).numpy().tolist() == [[1, 0], [1, 0]]
    assert (~(a > 0)).numpy().tolist() == [[0, 1], [0, 0]]


def test_in_place_operators_write_through_views():
    a = arr(np.zeros((3, 4)))
    pointer = a._handle.ptr()
    view = a[0:2, 1:3]
    view += 1
    view *= 3
    view -= arr(np.array([[1.0], [2.0]]))
    view /= 2
    expected = np.zeros((3, 4)); expected[:2, 1:3] = ((0 + 1) * 3 - np.array([[1.0], [2.0]])) / 2
    np.testing.assert_array_equal(a.numpy(), expected)
    assert a._handle.ptr() == pointer


def test_dtype_equals_numpys_spellings():
    d = arr(np.zeros(2, np.float32)).dtype
    assert d == "float32" and d == np.float32 and d == np.dtype("float32") and np.float32 == d and d != np.float64
    assert d.kind == "f" and d.itemsize == 4 and {d: 1}["float32"] == 1


def test_reshape_takes_numpys_spellings():
    a = arr(np.arange(6.0))
    assert a.reshape(2, 3).shape == (2, 3) and a.reshape(-1).shape == (6,) and a.reshape((3, -1)).shape == (3, 2)
    with pytest.raises(ValueError, match="compact"): a.reshape(2, 3).permute((1, 0)).reshape(6)


# --- devices ------------------------------------------------------------------------------------
def test_backend_device_has_needle_nbs_device_interface():
    device = nd.cpu()
    x = np.arange(6.0).reshape(2, 3)
    a = device.array(x)
    assert isinstance(a, nd.NDArray) and a.dtype == "float64" and device.array([1, 2]).dtype == "int64"
    np.testing.assert_array_equal(device.to_numpy(a), x)
    np.testing.assert_array_equal(device.from_numpy(x).numpy(), x)
    buffer = device.Array(6, "float64")
    device.from_numpy(x, buffer)                 # needle's device-module form still works
    np.testing.assert_array_equal(device.to_numpy(buffer, (2, 3), (3, 1), 0), x)
    np.random.seed(0)
    mask = device.randb(1000, p=0.3, dtype="bool")
    assert mask.dtype == "float32" and set(np.unique(mask.numpy())) <= {0.0, 1.0} and 200 < mask.numpy().sum() < 400


def test_mlp_step_benchmark_runs_both_backends_to_the_same_loss():
    "benchmarks/bench_backends.py --quick: the same MLP step on np and nd gives the same loss (the speed is reported, not asserted)."
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try: import bench_backends
    finally: sys.path.pop(0)
    report = bench_backends.main(["--quick"])
    losses = [r["loss"] for r in report["results"].values()]
    assert report["results"]["nd"]["backend"] == "nd" and report["results"]["np"]["backend"] == "np"
    assert abs(losses[0] - losses[1]) < 1e-4 and report["ratio"] > 0


def test_setting_data_across_backends_names_both_array_types():
    "nd's and numpy's host devices are both written cpu(): the error names the array types, and nothing changes."
    result = run("""
        import numpy as np, needle_nb as ndl
        t = ndl.Tensor(np.arange(3.0, dtype=np.float32))
        try:
            t.data = np.zeros(3, dtype=np.float32)
            raise SystemExit("no error")
        except ValueError as error:
            expected = ("on cpu() from data on cpu(): the tensor holds a needle_nb.NDArray, "
                        "the value is a numpy.ndarray")
            assert expected in str(error), str(error)
        np.testing.assert_array_equal(t.numpy(), [0.0, 1.0, 2.0])
        t.data = ndl.Tensor(np.ones(3, dtype=np.float32), device=t.device)   # what the message says to do works
        np.testing.assert_array_equal(t.numpy(), [1.0, 1.0, 1.0])
        print("ok")
    """, "nd")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr + result.stdout
