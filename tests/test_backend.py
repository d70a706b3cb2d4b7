"""Devices, array factories, random streams, CUDA availability and dtype rules (issue 2, backends)."""
import numpy as np
import pytest

import needle_nb as ndl
import needle_nb.backend as backend
from needle_nb.backend import DeviceUnavailableError

FLOAT_DTYPES = ["float32", "float64"]


# --- devices ------------------------------------------------------------------------------------
def test_devices_are_singletons_with_needle_reprs():
    assert ndl.cpu() is ndl.cpu() and ndl.cuda() is ndl.cuda()
    assert ndl.cpu() == ndl.cpu() and ndl.cuda() == ndl.cuda() and ndl.cuda(0) is ndl.cuda()
    assert ndl.cpu() != ndl.cuda() and ndl.cuda() != ndl.cuda(1)
    assert ndl.cpu() != "cpu()"                      # equality is between devices only
    assert repr(ndl.cpu()) == "cpu()" and repr(ndl.cuda()) == "cuda()" and repr(ndl.cuda(1)) == "cuda(1)"
    assert len({ndl.cpu(), ndl.cpu(), ndl.cuda(), ndl.cuda(1)}) == 3   # hashable consistently with ==


def test_cpu_enabled_and_default():
    assert ndl.cpu().enabled()
    assert ndl.default_device() is ndl.cpu()
    assert ndl.Tensor([1.0]).device is ndl.cpu()


def test_all_devices_lists_cuda_exactly_when_enabled():
    devices = ndl.all_devices()
    assert devices[0] is ndl.cpu()
    assert (ndl.cuda() in devices) == ndl.cuda().enabled()
    assert all(d.enabled() for d in devices)


# --- factories ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_constant_factories(device, dtype):
    for make in (lambda: device.zeros(2, 3, dtype=dtype), lambda: device.zeros((2, 3), dtype=dtype)):
        arr = device.to_numpy(make())
        assert arr.shape == (2, 3) and arr.dtype == np.dtype(dtype) and (arr == 0).all()
    ones = device.to_numpy(device.ones(4, dtype=dtype))
    assert ones.shape == (4,) and ones.dtype == np.dtype(dtype) and (ones == 1).all()
    full = device.to_numpy(device.full((2, 2), 7.5, dtype=dtype))
    assert full.dtype == np.dtype(dtype) and (full == 7.5).all()
    for shape in [(3, 1), 5]:
        empty = device.empty(shape, dtype=dtype)
        assert empty.shape == np.empty(shape).shape and empty.dtype == np.dtype(dtype)


def test_factories_default_to_float32(device):
    for arr in (device.zeros(2), device.ones(2), device.full((2,), 1.0), device.empty((2,)),
                device.rand(2), device.randn(2), device.one_hot(3, np.array([1]))):
        assert arr.dtype == np.float32, arr
    assert device.randb(2).dtype == np.bool_


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_one_hot_indexes_the_identity(device, dtype):
    labels = np.array([[2, 0], [1, 1]])
    out = device.to_numpy(device.one_hot(3, labels, dtype=dtype))
    assert out.shape == (2, 2, 3) and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, np.eye(3)[labels])
    np.testing.assert_array_equal(device.to_numpy(device.one_hot(4, [3, 0])), np.eye(4)[[3, 0]])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_np_random_seed_reproduces_needles_draws(device, dtype):
    "needle draws float64 from numpy's global RNG and casts: the same seed gives the same numbers."
    for name in ("rand", "randn"):
        np.random.seed(5)
        ours = device.to_numpy(getattr(device, name)(3, 4, dtype=dtype))
        np.random.seed(5)
        expected = getattr(np.random, name)(3, 4).astype(dtype)
        assert ours.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(ours, expected)
    np.random.seed(7)
    ours = device.to_numpy(device.randb(50, p=0.3))
    np.random.seed(7)
    np.testing.assert_array_equal(ours, np.random.rand(50) <= 0.3)


def test_randb_probability(device):
    np.random.seed(1)
    draws = device.to_numpy(device.randb(20_000, p=0.3, dtype="float32"))
    assert draws.dtype == np.float32 and set(np.unique(draws)) <= {0.0, 1.0}
    assert abs(draws.mean() - 0.3) < 0.02


def test_rand_is_uniform_and_randn_normal(device):
    np.random.seed(2)
    u, z = device.to_numpy(device.rand(20_000)), device.to_numpy(device.randn(20_000))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.02
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03


def test_manual_seed_seeds_both_streams():
    ndl.manual_seed(3)
    global_draw, generator_draw = np.random.rand(4), ndl.backend.rng().random(4)
    np.testing.assert_array_equal(global_draw, np.random.RandomState(3).rand(4))
    np.testing.assert_array_equal(generator_draw, np.random.default_rng(3).random(4))
    ndl.manual_seed(3)
    np.testing.assert_array_equal(ndl.cpu().rand(4), global_draw.astype(np.float32))
    np.testing.assert_array_equal(ndl.backend.rng().random(4), generator_draw)
    ndl.manual_seed(4)
    assert not np.array_equal(np.random.rand(4), global_draw)


def test_manual_seed_seeds_cupy_when_usable(fake_cupy):
    cupy = fake_cupy(available=True)
    ndl.manual_seed(11)
    assert cupy.seeds == [11]


# --- CUDA when it cannot be used ------------------------------------------------------------------
def _assert_cuda_refused(fragment):
    gpu = ndl.cuda()
    assert not gpu.enabled()
    assert gpu not in ndl.all_devices() and ndl.all_devices() == [ndl.cpu()]
    attempts = [lambda: ndl.Tensor([1.0, 2.0], device=gpu),
                lambda: ndl.Tensor([1.0, 2.0]).to(gpu),
                lambda: ndl.Tensor(np.ones(2), device=gpu, dtype="float32"),
                lambda: gpu.zeros(2),
                lambda: gpu.rand(2)]
    for attempt in attempts:
        with pytest.raises(DeviceUnavailableError) as info:
            attempt()
        message = str(info.value)
        assert "cuda()" in message and fragment in message, message


def test_cuda_without_cupy(no_cupy):
    _assert_cuda_refused("cupy is not installed")
    assert "pip install" in backend._cupy()[1]


def test_cuda_with_cupy_but_no_gpu(fake_cupy):
    fake_cupy(available=False)
    _assert_cuda_refused("no CUDA GPU is available")


def test_cuda_with_a_broken_driver(fake_cupy):
    fake_cupy(available=True, device_count_error="driver version is insufficient")
    _assert_cuda_refused("driver version is insufficient")


def test_cuda_enabled_when_cupy_sees_a_gpu(fake_cupy):
    fake_cupy(available=True)
    assert ndl.cuda().enabled()
    assert ndl.all_devices() == [ndl.cpu(), ndl.cuda()]


def test_a_gpu_index_beyond_what_cupy_sees_is_unavailable(fake_cupy):
    fake_cupy(available=True)                     # one GPU: cuda(0) only
    assert ndl.cuda().enabled() and not ndl.cuda(3).enabled()
    with pytest.raises(DeviceUnavailableError, match=r"cuda\(3\).*sees 1 GPU"):
        ndl.Tensor([1.0], device=ndl.cuda(3))


def test_device_unavailable_error_is_a_runtime_error():
    assert issubclass(DeviceUnavailableError, RuntimeError)


# --- dtypes -------------------------------------------------------------------------------------
def test_python_data_defaults_to_float32():
    for data in (1, 2.5, [1, 2], [[1.0, 2.0]], True):
        assert ndl.Tensor(data).dtype == np.float32, data


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.float16])
def test_numpy_arrays_keep_their_dtype(device, dtype):
    t = ndl.Tensor(np.arange(3).astype(dtype), device=device)
    assert t.dtype == dtype and t.device == device


def test_explicit_dtype_wins(device):
    assert ndl.Tensor([1, 2], dtype="float64", device=device).dtype == np.float64
    assert ndl.Tensor(np.ones(2), dtype="float32", device=device).dtype == np.float32


SCALARS = [2, 1.5, np.float64(1.5), np.float32(1.5), np.int64(3), np.array(1.5)]
OPERATORS = {
    "t + s": lambda t, s: t + s, "s + t": lambda t, s: s + t,
    "t - s": lambda t, s: t - s, "s - t": lambda t, s: s - t,
    "t * s": lambda t, s: t * s, "s * t": lambda t, s: s * t,
    "t / s": lambda t, s: t / s, "s / t": lambda t, s: s / t,
    "t ** s": lambda t, s: t ** s,
}
# needle's scalar functions, each with the operator that gives the reference values
SCALAR_FUNCTIONS = {"add_scalar": (ndl.add_scalar, "t + s"), "mul_scalar": (ndl.mul_scalar, "t * s"),
                    "divide_scalar": (ndl.divide_scalar, "t / s"), "power_scalar": (ndl.power_scalar, "t ** s")}


@pytest.mark.parametrize("scalar", SCALARS, ids=lambda s: f"{type(s).__name__}({s})")
@pytest.mark.parametrize("name", list(OPERATORS) + list(SCALAR_FUNCTIONS))
def test_scalars_never_upcast_float32(device, name, scalar):
    ours, reference = SCALAR_FUNCTIONS.get(name, (OPERATORS.get(name), name))
    t = ndl.Tensor(np.array([1.0, 2.0, 4.0], dtype=np.float32), device=device)
    out = ours(t, scalar)
    assert out.dtype == np.float32, (name, scalar, out.dtype)
    out.sum().backward()
    assert t.grad.dtype == np.float32
    # the values are those of float64 arithmetic, rounded to float32
    expected = OPERATORS[reference](np.array([1.0, 2.0, 4.0]), float(scalar))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)


MIXED = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
         "div": lambda a, b: a / b, "pow": lambda a, b: a ** b, "matmul": lambda a, b: a @ b}


@pytest.mark.parametrize("name", list(MIXED))
@pytest.mark.parametrize("dtypes", [("float32", "float64"), ("float64", "float32"),
                                    ("float32", "float32"), ("float64", "float64")])
def test_mixed_dtypes_promote_as_numpy_and_gradients_keep_their_own(device, name, dtypes, rs):
    a_shape, b_shape = ((3, 4), (4, 2)) if name == "matmul" else ((3, 4), (4,))   # broadcasting too
    a_np = (rs.rand(*a_shape) + 0.5).astype(dtypes[0])
    b_np = (rs.rand(*b_shape) + 0.5).astype(dtypes[1])
    a, b = ndl.Tensor(a_np, device=device), ndl.Tensor(b_np, device=device)
    out = MIXED[name](a, b)
    assert out.dtype == MIXED[name](a_np, b_np).dtype == np.result_type(a_np, b_np)
    out.sum().backward()
    assert a.grad.dtype == a.dtype and b.grad.dtype == b.dtype
    assert a.grad.shape == a.shape and b.grad.shape == b.shape


# --- memory-order matrix views (kept_last_matrix) -------------------------------------------------
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + ["int64"])
def test_kept_last_matrix_is_a_view_whose_columns_are_the_kept_axes(dtype):
    nhwc = np.random.RandomState(0).randn(3, 4, 5, 6).astype(dtype)
    nchw = nhwc.transpose(0, 3, 1, 2)                       # a convolution's output: channels vary fastest
    m = backend.kept_last_matrix(nchw, (1,))
    assert m.shape == (60, 6) and m.dtype == nchw.dtype and np.shares_memory(m, nhwc)
    np.testing.assert_array_equal(m, nhwc.reshape(-1, 6))   # rows in memory order: n, h, w
    np.testing.assert_array_equal(m.sum(0), nchw.sum((0, 2, 3)))
    both = backend.kept_last_matrix(nchw, (2, 3))           # kept axes in their order: h slower than w
    assert both is None                                     # (h, w) do not vary fastest in NHWC memory
    last2 = backend.kept_last_matrix(nhwc, (2, 3))
    assert last2.shape == (12, 30) and np.shares_memory(last2, nhwc)


def test_kept_last_matrix_refuses_what_is_not_such_a_view():
    a = np.arange(24.0).reshape(2, 3, 4)
    assert backend.kept_last_matrix(a, (1,)) is None          # axis 1 does not vary fastest
    assert backend.kept_last_matrix(a[:, :, ::2], (2,)) is None   # strided: no view as a matrix
    assert backend.kept_last_matrix(np.zeros((0, 3)), (1,)) is None
    assert backend.kept_last_matrix([[1.0, 2.0]], (1,)) is None   # not a numpy array
    assert backend.kept_last_matrix(ndl.Tensor([[1.0, 2.0]]), (1,)) is None
    np.testing.assert_array_equal(backend.kept_last_matrix(a, (2,)), a.reshape(6, 4))
