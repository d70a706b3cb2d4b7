"""needle's strided NDArray (nbs/00a_ndarray, `needle_nb.backend_ndarray`).

- against numpy on random shapes and strides (hypothesis): every view operation (shape, strides,
  offset, values, shared buffer), compact, setitem through views, reductions with needle's shapes,
  matmul with sizes that are and are not multiples of the tile, pad, flip, elementwise, scalar and
  comparison ops, and the extensions (broadcasting, batched matmul, take, argmax, astype, dtypes);
- a compatibility test built from NEEDLE-API.md §1 and §7 (what hw3/hw4 tests rely on);
- the code path a GPU takes (cupy's `as_strided`, `asnumpy`), run with numpy standing in for cupy;
- bad input is refused with a message naming it;
- the benchmark's quick mode runs.
Every test runs on each enabled device of `nd.all_devices()` (cuda is skipped without a GPU).
"""
import math, runpy, sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

from needle_nb import backend_ndarray as nd

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
DEVICES = [pytest.param(d, marks=pytest.mark.skipif(not d.enabled(), reason=f"{d} is not enabled here"))
           for d in nd.all_devices()]
devices = pytest.mark.parametrize("device", DEVICES, ids=str)


def nd_array(x: np.ndarray, device) -> nd.NDArray:
    "An NDArray holding `x` with its own dtype (float32, float64 or an integer type)."
    return nd.NDArray(x, device=device, dtype=x.dtype.name)


def np_strides(x: np.ndarray) -> tuple: return tuple(s // x.itemsize for s in x.strides)


def np_offset(view: np.ndarray, base: np.ndarray) -> int:
    return (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // base.itemsize


def assert_same_view(a: nd.NDArray, x: np.ndarray, base: np.ndarray):
    "`a` is the view numpy's `x` is of `base`: same shape, strides, offset and values."
    # an axis of length 1 is never stepped along, so its stride is free (numpy's broadcast_to makes it 0)
    strides = tuple(s for s, n in zip(a.strides, a.shape) if n > 1)
    np_steps = tuple(s for s, n in zip(np_strides(x), x.shape) if n > 1)
    assert a.shape == x.shape and strides == np_steps and a._offset == np_offset(x, base), \
        (a.shape, a.strides, a._offset, x.shape, np_strides(x), np_offset(x, base))
    np.testing.assert_array_equal(a.numpy(), x)


# ------------------------------------------------------------------------------------------------
# Random views: a chain of view operations, applied to an NDArray and to numpy alike
# ------------------------------------------------------------------------------------------------
shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


@st.composite
def view_chains(draw, broadcast=True, max_ops=4):
    "A shape and a list of view operations valid on it: permute, getitem (ints, steps), a negative-stride flip view, broadcast."
    shape = draw(shapes)
    x = np.empty(shape)
    ops = []
    kinds = ["permute", "getitem", "flipview"] + (["broadcast"] if broadcast else [])
    for _ in range(draw(st.integers(0, max_ops))):
        kind = draw(st.sampled_from(kinds))
        if kind == "permute":
            arg = tuple(draw(st.permutations(range(x.ndim))))
        elif kind == "getitem":
            idxs = []
            for n in x.shape:
                if draw(st.booleans()):
                    idxs.append(draw(st.integers(-n, n - 1)))
                else:
                    start = draw(st.integers(0, n - 1))
                    stop = draw(st.integers(start + 1, n))
                    idxs.append(slice(draw(st.sampled_from([start, None if start == 0 else start - n])),
                                      draw(st.sampled_from([stop, None if stop == n else stop - n])),
                                      draw(st.sampled_from([None, 1, 2, 3]))))
            arg = tuple(idxs)
        elif kind == "flipview":
            arg = draw(st.integers(0, x.ndim - 1))
        else:
            lead = draw(st.integers(0, 1))
            arg = (2,) * lead + tuple(draw(st.integers(1, 3)) if n == 1 else n for n in x.shape)
        ops.append((kind, arg))
        x = apply_np(x, (kind, arg))
    return shape, ops


def apply_nd(a: nd.NDArray, op) -> nd.NDArray:
    kind, arg = op
    if kind == "permute": return a.permute(arg)
    if kind == "getitem": return a[arg]
    if kind == "broadcast": return a.broadcast_to(arg)
    strides = list(a.strides)   # flipview: needle's flip before its compact
    offset = a._offset + (a.shape[arg] - 1) * strides[arg]
    strides[arg] = -strides[arg]
    return nd.NDArray.make(a.shape, strides=strides, device=a.device, handle=a._handle, offset=offset)


def apply_np(x: np.ndarray, op) -> np.ndarray:
    kind, arg = op
    if kind == "permute": return x.transpose(arg)
    if kind == "getitem":   # needle keeps every axis: an int i is the slice i:i+1
        return x[tuple(slice(i % n, i % n + 1) if isinstance(i, int) else i for i, n in zip(arg, x.shape))]
    if kind == "broadcast": return np.broadcast_to(x, arg)
    return np.flip(x, arg)


def chain(device, shape, ops, dtype=np.float32):
    "The base arrays (nd, numpy, holding 0, 1, 2, ...) and the chained views of both."
    base_np = np.arange(math.prod(shape), dtype=dtype).reshape(shape)
    base = nd_array(base_np, device)
    a, x = base, base_np
    for op in ops: a, x = apply_nd(a, op), apply_np(x, op)
    return base, base_np, a, x


@devices
@SETTINGS
@given(view_chains())
def test_view_chains_match_numpy(device, case):
    "Every view op gives numpy's shape, strides and offset (in elements), reads numpy's values, and shares the buffer."
    shape, ops = case
    base, base_np, a, x = chain(device, shape, ops)
    assert_same_view(a, x, base_np)
    assert a._handle is base._handle


@devices
@SETTINGS
@given(shapes, st.data())
def test_as_strided_matches_numpy(device, shape, data):
    "Any in-bounds (shape, strides) with non-negative strides reads what numpy's as_strided reads."
    size = math.prod(shape)
    base_np = np.arange(size, dtype=np.float32)
    view_shape = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple))
    strides = tuple(data.draw(st.integers(0, 3)) for _ in view_shape)
    reach = sum((n - 1) * s for n, s in zip(view_shape, strides))
    if reach >= size: strides = (0,) * len(view_shape); reach = 0
    a = nd_array(base_np, device).as_strided(view_shape, strides)
    x = np.lib.stride_tricks.as_strided(base_np, view_shape, tuple(s * 4 for s in strides))
    assert_same_view(a, x, base_np)


@devices
@SETTINGS
@given(shapes, st.data())
def test_reshape_of_compact_arrays(device, shape, data):
    size = math.prod(shape)
    new_shape = data.draw(st.sampled_from([s for s in [(size,), (1, size), (size, 1)] + [(d, size // d) for d in range(1, size + 1) if size % d == 0]]))
    base_np = np.arange(size, dtype=np.float32).reshape(shape)
    a = nd_array(base_np, device)
    r = a.reshape(new_shape)
    assert_same_view(r, base_np.reshape(new_shape), base_np)
    assert r._handle is a._handle
    if len(shape) > 1 and shape[0] > 1 and shape[-1] > 1:
        with pytest.raises(ValueError, match="needs a compact array"): a.permute(tuple(reversed(range(len(shape))))).reshape((size,))


# ------------------------------------------------------------------------------------------------
# compact and setitem
# ------------------------------------------------------------------------------------------------
@devices
@SETTINGS
@given(view_chains())
def test_compact_copies_views_into_row_major_buffers(device, case):
    shape, ops = case
    base, base_np, a, x = chain(device, shape, ops)
    c = a.compact()
    assert c.is_compact() and c.strides == nd.NDArray.compact_strides(x.shape) and c._offset == 0
    np.testing.assert_array_equal(c.numpy(), x)
    if a.is_compact(): assert c is a
    else: assert c._handle is not base._handle and c._handle.size == x.size
    assert c.compact() is c
    np.testing.assert_array_equal(base.numpy(), base_np)   # the source is untouched


@devices
@SETTINGS
@given(view_chains(broadcast=False), st.booleans(), st.data())
def test_setitem_writes_through_views(device, case, scalar, data):
    "`view[...] = value` writes into the shared buffer in place, as numpy's view assignment does."
    shape, ops = case
    base, base_np, a, x = chain(device, shape, ops)
    base_np = base_np.copy(); x = base_np
    for op in ops: x = apply_np(x, op)
    ptr = base._handle.ptr()
    if scalar:
        value_np = value = -7.0
    else:
        value_np = -1.0 - np.arange(x.size, dtype=np.float32).reshape(x.shape)
        value = nd_array(value_np, device)
        if x.ndim >= 2 and data.draw(st.booleans()):   # a non-compact source: the transpose of a compact one
            value = nd_array(np.ascontiguousarray(value_np.swapaxes(0, 1)), device).permute(
                (1, 0) + tuple(range(2, x.ndim)))
    a[tuple(slice(None) for _ in a.shape)] = value
    x[...] = value_np
    np.testing.assert_array_equal(base.numpy(), base_np)
    assert base._handle.ptr() == ptr and base.is_compact()


@devices
@SETTINGS
@given(st.data())
def test_setitem_with_indices_matches_numpy(device, data):
    "hw3's form: `A[lhs] = B[rhs]` and `A[idx] = scalar` with ints and stepped slices, A keeps its buffer and compact strides."
    shape = data.draw(shapes)
    base_np = np.random.RandomState(0).randn(*shape).astype(np.float32)
    A = nd_array(base_np, device)
    idxs = data.draw(st.tuples(*[st.one_of(st.integers(0, n - 1), st.just(slice(None, None, 2)), st.just(slice(1, None)) if n > 1 else st.just(slice(None))) for n in shape]))
    np_idxs = tuple(slice(i, i + 1) if isinstance(i, int) else i for i in idxs)
    target_shape = base_np[np_idxs].shape
    B_np = np.random.RandomState(1).randn(*target_shape).astype(np.float32)
    ptr = A._handle.ptr()
    A[idxs] = nd_array(B_np, device)
    base_np[np_idxs] = B_np
    np.testing.assert_array_equal(A.numpy(), base_np)
    assert A._handle.ptr() == ptr and A.strides == np_strides(base_np)
    A[idxs] = 3.5
    base_np[np_idxs] = 3.5
    np.testing.assert_array_equal(A.numpy(), base_np)


# ------------------------------------------------------------------------------------------------
# Reductions with needle's shapes
# ------------------------------------------------------------------------------------------------
def needle_reduced_shape(shape, axis, keepdims):
    if axis is None: return (1,)
    axis = (axis[0] if isinstance(axis, tuple) else axis) % len(shape)
    return tuple(1 if k == axis else n for k, n in enumerate(shape)) if keepdims else \
        tuple(n for k, n in enumerate(shape) if k != axis)


@devices
@SETTINGS
@given(view_chains(max_ops=2), st.data(), st.booleans(), st.sampled_from(["sum", "max", "argmax"]))
def test_reductions_match_numpy_with_needles_shapes(device, case, data, keepdims, name):
    shape, ops = case
    rs = np.random.RandomState(0)
    base_np = rs.randint(-4, 5, size=shape).astype(np.float64)   # small ints: ties for max/argmax
    a, x = nd_array(base_np, device), base_np
    for op in ops: a, x = apply_nd(a, op), apply_np(x, op)
    axis = data.draw(st.one_of(st.none(), st.integers(-x.ndim, x.ndim - 1),
                               st.integers(-x.ndim, x.ndim - 1).map(lambda k: (k,))))
    out = getattr(a, name)(axis=axis, keepdims=keepdims)
    assert out.shape == needle_reduced_shape(x.shape, axis, keepdims)
    np_axis = axis[0] if isinstance(axis, tuple) else axis
    expected = getattr(x, name)(axis=np_axis) if np_axis is not None else getattr(x, name)()
    np.testing.assert_allclose(out.numpy(), np.reshape(expected, out.shape), rtol=1e-12)
    assert out.dtype == ("int64" if name == "argmax" else "float64")


# ------------------------------------------------------------------------------------------------
# matmul (tiled and plain), pad, flip
# ------------------------------------------------------------------------------------------------
sizes = st.one_of(st.integers(1, 20), st.sampled_from([8, 16, 24, 32]))


@devices
@SETTINGS
@given(sizes, sizes, sizes, st.booleans())
def test_matmul_matches_numpy(device, m, n, p, transposed):
    "Sizes that are multiples of the tile (the tiled path on cpu()) and others; operands may be non-compact views."
    rs = np.random.RandomState(m * 10000 + n * 100 + p)
    a_np, b_np = rs.randn(m, n).astype(np.float32), rs.randn(n, p).astype(np.float32)
    a = nd_array(np.ascontiguousarray(a_np.T), device).permute((1, 0)) if transposed else nd_array(a_np, device)
    out = a @ nd_array(b_np, device)
    assert out.shape == (m, p) and out.is_compact() and out.dtype == "float32"
    np.testing.assert_allclose(out.numpy(), a_np @ b_np, rtol=1e-4, atol=1e-4)


def test_cpu_takes_the_tiled_path_exactly_for_tile_multiples(monkeypatch):
    device = nd.cpu()
    calls = []
    tiled = device.mod.matmul_tiled
    monkeypatch.setattr(device, "matmul_tiled", lambda *args: calls.append(args[3:]) or tiled(*args), raising=False)
    rs = np.random.RandomState(0)
    for m, n, p in [(8, 16, 24), (8, 9, 8), (72, 73, 74)]:
        a_np, b_np = rs.randn(m, n).astype(np.float32), rs.randn(n, p).astype(np.float32)
        np.testing.assert_allclose((nd_array(a_np, device) @ nd_array(b_np, device)).numpy(), a_np @ b_np, rtol=1e-4, atol=1e-4)
    assert calls == [(8, 16, 24)]


@devices
@SETTINGS
@given(view_chains(broadcast=False, max_ops=2), st.data())
def test_pad_matches_numpy(device, case, data):
    shape, ops = case
    base, base_np, a, x = chain(device, shape, ops)
    pads = tuple(data.draw(st.tuples(st.integers(0, 2), st.integers(0, 2))) for _ in x.shape)
    out = a.pad(pads)
    assert out.is_compact()
    np.testing.assert_array_equal(out.numpy(), np.pad(x, pads))


@devices
@SETTINGS
@given(view_chains(max_ops=2), st.data())
def test_flip_matches_numpy_and_compacts(device, case, data):
    shape, ops = case
    base, base_np, a, x = chain(device, shape, ops)
    axes = tuple(data.draw(st.sets(st.integers(0, x.ndim - 1))))
    out = nd.flip(a, axes)
    assert out.is_compact() and all(s >= 0 for s in out.strides)
    np.testing.assert_array_equal(out.numpy(), np.flip(x, axes))


# ------------------------------------------------------------------------------------------------
# Elementwise, scalar and comparison ops
# ------------------------------------------------------------------------------------------------
BINARY = {"add": (lambda a, b: a + b), "sub": (lambda a, b: a - b), "mul": (lambda a, b: a * b),
          "div": (lambda a, b: a / b), "maximum": None,
          "eq": (lambda a, b: a == b), "ne": (lambda a, b: a != b), "ge": (lambda a, b: a >= b),
          "gt": (lambda a, b: a > b), "lt": (lambda a, b: a < b), "le": (lambda a, b: a <= b)}
COMPARISONS = {"eq", "ne", "ge", "gt", "lt", "le"}


def binary(name, a, b):
    if name == "maximum": return a.maximum(b) if isinstance(a, nd.NDArray) else np.maximum(a, b)
    return BINARY[name](a, b)


@devices
@SETTINGS
@given(view_chains(max_ops=2), st.sampled_from(sorted(BINARY)), st.booleans())
def test_elementwise_ops_match_numpy(device, case, name, transposed_other):
    "Two arrays of equal shape (either may be a view); comparisons give 1/0 in the operands' float dtype."
    shape, ops = case
    rs = np.random.RandomState(0)
    base_np = rs.randint(-3, 4, size=shape).astype(np.float32)
    a, x = nd_array(base_np, device), base_np
    for op in ops: a, x = apply_nd(a, op), apply_np(x, op)
    y = rs.randint(-3, 4, size=x.shape).astype(np.float32)
    if name == "div": y[y == 0] = 2
    b = nd_array(np.ascontiguousarray(y.T), device).permute(tuple(reversed(range(y.ndim)))) if transposed_other \
        else nd_array(y, device)
    out = binary(name, a, b)
    expected = binary(name, x, y)
    assert out.shape == x.shape and out.dtype == "float32" and out.is_compact()
    np.testing.assert_allclose(out.numpy(), expected.astype(np.float32), rtol=1e-6)


@devices
@SETTINGS
@given(view_chains(max_ops=2), st.sampled_from(sorted(BINARY) + ["pow", "rsub", "radd", "rmul", "neg"]),
       st.sampled_from([2.0, -1.5, 0.5, 3, np.float64(2.5)]))
def test_scalar_ops_match_numpy(device, case, name, scalar):
    shape, ops = case
    base_np = np.random.RandomState(0).uniform(0.5, 2.0, size=shape).astype(np.float32)
    base_np[..., 0] = 2.0    # ties for the comparisons with 2.0
    a, x = nd_array(base_np, device), base_np
    for op in ops: a, x = apply_nd(a, op), apply_np(x, op)
    extra = {"pow": lambda v, s: v ** s, "rsub": lambda v, s: s - v, "radd": lambda v, s: s + v,
             "rmul": lambda v, s: s * v, "neg": lambda v, s: -v}
    fn = extra.get(name) or (lambda v, s: binary(name, v, s))
    out = fn(a, scalar)
    expected = fn(x, float(scalar))
    assert out.dtype == "float32" and out.shape == x.shape   # a numpy float64 scalar keeps float32, as needle
    np.testing.assert_allclose(out.numpy(), np.asarray(expected, dtype=np.float32), rtol=1e-5)


@devices
@pytest.mark.parametrize("name", ["log", "exp", "tanh"])
def test_unary_functions_match_numpy(device, name):
    x = np.random.RandomState(0).uniform(0.1, 3.0, size=(3, 4)).astype(np.float32)
    a = nd_array(x, device).permute((1, 0))
    np.testing.assert_allclose(getattr(nd, name)(a).numpy(), getattr(np, name)(x.T), rtol=1e-6)
    np.testing.assert_allclose(getattr(a, name)().numpy(), getattr(np, name)(x.T), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# needle_nb's extensions
# ------------------------------------------------------------------------------------------------
@devices
@SETTINGS
@given(mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=4, max_side=4),
       st.sampled_from(["add", "mul", "sub", "maximum", "ge"]))
def test_elementwise_ops_broadcast_like_numpy(device, shapes_, name):
    "Shapes that broadcast (needle asks for equal ones) give numpy's result shape and values."
    (s1, s2), result = shapes_.input_shapes, shapes_.result_shape
    rs = np.random.RandomState(0)
    x, y = rs.randn(*s1), rs.randn(*s2)
    out = binary(name, nd_array(x, device), nd_array(y, device))
    assert out.shape == result and out.dtype == "float64"
    np.testing.assert_allclose(out.numpy(), binary(name, x, y).astype(np.float64), rtol=1e-12)


@devices
@SETTINGS
@given(mutually_broadcastable_shapes(signature="(m,n),(n,p)->(m,p)", max_dims=3, max_side=5))
def test_batched_matmul_matches_numpy(device, shapes_):
    s1, s2 = shapes_.input_shapes
    rs = np.random.RandomState(0)
    x, y = rs.randn(*s1), rs.randn(*s2)
    out = nd_array(x, device) @ nd_array(y, device)
    assert out.shape == np.matmul(x, y).shape
    np.testing.assert_allclose(out.numpy(), x @ y, rtol=1e-10, atol=1e-12)


@devices
@SETTINGS
@given(shapes, st.data())
def test_take_matches_numpy(device, shape, data):
    x = np.random.RandomState(0).randn(*shape)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    n = shape[axis]
    idx_shape = data.draw(st.lists(st.integers(1, 3), max_size=2).map(tuple))
    idx = np.random.RandomState(1).randint(-n, n, size=idx_shape)
    a = nd_array(x, device)
    for indices in (idx, nd_array(idx.astype(np.int64), device), idx.tolist()):
        out = a.take(indices, axis=axis)
        np.testing.assert_array_equal(out.numpy(), np.take(x, idx, axis=axis))


@devices
def test_take_argmax_astype_and_dtypes(device):
    x = nd.array([[1.5, -2.7], [3.0, 3.0]], device=device, dtype="float64")
    assert x.dtype == "float64" and x.numpy().dtype == np.float64
    assert x.argmax(axis=1).numpy().tolist() == [0, 0] and x.argmax().numpy().tolist() == [2]
    assert x.argmax(axis=0, keepdims=True).shape == (1, 2) and x.argmax(axis=0).dtype == "int64"
    assert x.astype("int32").numpy().tolist() == [[1, -2], [3, 3]] and x.astype("float32").dtype == "float32"
    labels = nd.array([2, 0], device=device, dtype="int64")
    assert (labels + 1).dtype == "int64" and (labels * 0.5).dtype == "float64" and (labels / 2).dtype == "float64"
    assert (x + nd.array([[1, 2], [3, 4]], device=device, dtype="int64")).dtype == "float64"
    eye = nd.array(np.eye(3), device=device)
    np.testing.assert_array_equal(eye.take(labels, axis=0).numpy(), np.eye(3)[[2, 0]])
    np.testing.assert_array_equal(device.one_hot(3, labels).numpy(), np.eye(3, dtype=np.float32)[[2, 0]])
    np.testing.assert_array_equal(device.one_hot(4, np.array([[3, 1]])).numpy(), np.eye(4)[[[3, 1]]])


# ------------------------------------------------------------------------------------------------
# Compatibility with code written against needle's NDArray (NEEDLE-API.md §1 and §7)
# ------------------------------------------------------------------------------------------------
class _ShapeAndSlices(nd.NDArray):
    "hw3's trick: a subclass whose `__getitem__` reports how `process_slice` reads the indices."
    def __getitem__(self, idxs):
        idxs = tuple(self.process_slice(s, i) if isinstance(s, slice) else slice(s, s + 1, 1) for i, s in enumerate(idxs))
        return self.shape, idxs


def ShapeAndSlices(*shape): return _ShapeAndSlices(np.ones(shape))


def test_module_and_device_names():
    for name in ["NDArray", "BackendDevice", "cpu", "cuda", "cpu_numpy", "default_device", "all_devices", "array",
                 "empty", "full", "broadcast_to", "reshape", "maximum", "log", "exp", "tanh", "sum", "flip"]:
        assert hasattr(nd, name), name
    assert [str(d) for d in nd.all_devices()] == ["cpu()", "cuda()", "cpu_numpy()"]
    assert nd.default_device() == nd.cpu_numpy() and nd.cpu() != nd.cpu_numpy()
    assert nd.cpu().name == "cpu" and nd.cpu().enabled() and nd.cpu_numpy().enabled()
    assert nd.BackendDevice("cpu", None) == nd.cpu()          # devices compare by name
    assert nd.cpu().__tile_size__ == 8 and hasattr(nd.cpu(), "matmul_tiled")
    assert not hasattr(nd.cpu_numpy(), "matmul_tiled")
    assert callable(nd.cpu().ewise_add) and nd.cpu().Array(5).size == 5
    if nd.cuda().enabled(): assert nd.cuda().__tile_size__ == 4 and not hasattr(nd.cuda(), "matmul_tiled")
    else: assert not hasattr(nd.cuda(), "ewise_add")


def test_process_slice_through_a_subclass():
    assert ShapeAndSlices(4, 5, 6)[1, 2, 3] == ((4, 5, 6), (slice(1, 2, 1), slice(2, 3, 1), slice(3, 4, 1)))
    assert ShapeAndSlices(4, 5, 6)[1:4:2, :, 3] == ((4, 5, 6), (slice(1, 4, 2), slice(0, 5, 1), slice(3, 4, 1)))
    assert ShapeAndSlices(4, 5, 6)[1:-1, -3:, :-2] == ((4, 5, 6), (slice(1, 3, 1), slice(2, 5, 1), slice(0, 4, 1)))
    sub = ShapeAndSlices(2, 3)
    assert isinstance(sub, nd.NDArray) and sub.dtype == "float32" and sub.device == nd.default_device()
    np.testing.assert_array_equal(nd.NDArray.permute(sub, (1, 0)).numpy(), np.ones((3, 2)))


@devices
def test_needle_semantics_from_the_api_file(device):
    A_np = np.arange(20, dtype=np.float32).reshape(4, 5)
    A = nd.NDArray(A_np, device=device)
    # an int index keeps its axis
    assert A[2, 2].shape == (1, 1) and A[2, 2].numpy().tolist() == [[12.0]]
    assert A[1:3, 0].shape == (2, 1)
    # views share the buffer; compact copies
    for view in (A[1:3, ::2], A.permute((1, 0)), A[0:1, :].broadcast_to((3, 5)), A.reshape((2, 10))):
        assert view._handle is A._handle and view._handle.ptr() == A._handle.ptr()
    T = A.permute((1, 0))
    assert T.strides == (1, 5) and not T.is_compact() and T.compact()._handle is not A._handle
    assert not A[1:, :].is_compact() and A[1:, :]._offset == 5   # an offset view is not compact
    # reductions keep needle's shapes
    assert A.sum().shape == (1,) and A.sum(keepdims=True).shape == (1,)
    assert A.sum(axis=0).shape == (5,) and A.max(axis=1, keepdims=True).shape == (4, 1)
    assert A.sum(axis=(1,)).numpy().tolist() == A_np.sum(axis=1).tolist()
    with pytest.raises(AssertionError): A.sum(axis=(0, 1))
    with pytest.raises(ValueError): A.max(axis=())
    # setitem writes in place and keeps the buffer
    ptr = A._handle.ptr()
    A[1:3, 1:4] = nd.NDArray(np.zeros((2, 3)), device=device)
    A[0, :] = 1.0
    assert A._handle.ptr() == ptr and A.strides == (5, 1)
    expected = A_np.copy(); expected[1:3, 1:4] = 0; expected[0] = 1
    np.testing.assert_array_equal(A.numpy(), expected)
    # flat is a view: the numerical-gradient idiom writes through it
    A.flat[7] += 0.5
    assert A.numpy()[1, 2] == 0.5
    # construction: always a copy, float32 by default, from numpy / NDArray / lists
    F = nd.NDArray(np.ones((2, 2), dtype=np.float64), device=device)
    assert F.dtype == "float32" and F.numpy().dtype == np.float32
    G = nd.NDArray(F)
    assert G._handle is not F._handle and G.device == device
    assert nd.array([1, 2, 3], device=device).numpy().tolist() == [1.0, 2.0, 3.0]
    assert nd.empty((2, 3), device=device).shape == (2, 3)
    assert nd.full((2,), 4.0, device=device).numpy().tolist() == [4.0, 4.0]
    M = nd.NDArray.make((3, 4), device=device)
    assert M.strides == (4, 1) and M._handle.size == 12 and nd.NDArray.compact_strides((2, 3, 4)) == (12, 4, 1)
    # hw3 calls matmul_tiled directly on cpu()
    if device == nd.cpu():
        t, (m, n, p) = device.__tile_size__, (2, 3, 2)
        rs = np.random.RandomState(0)
        a, b = nd.array(rs.randn(m, n, t, t), device=device), nd.array(rs.randn(n, p, t, t), device=device)
        c = nd.NDArray.make((m, p, t, t), device=device)
        device.matmul_tiled(a._handle, b._handle, c._handle, m * t, n * t, p * t)
        untile = lambda x, r, k: x.numpy().transpose(0, 2, 1, 3).reshape(r, k)
        np.testing.assert_allclose(untile(c, m * t, p * t), untile(a, m * t, n * t) @ untile(b, n * t, p * t), rtol=1e-4, atol=1e-4)
    # seven dims reshape; str and repr
    assert nd.array(np.ones(128), device=device).reshape((2,) * 7).shape == (2,) * 7
    assert repr(nd.array([1.0], device=device)) == f"NDArray([1.], device={device})" and str(nd.array([1.0], device=device)) == "[1.]"
    # to(): the same device is a no-op, another device a copy
    assert A.to(device) is A and A.to(nd.cpu_numpy()).device == nd.cpu_numpy()


@devices
def test_device_factories_draw_as_needle(device):
    np.random.seed(3)
    r = device.randn(2, 3)
    assert r.dtype == "float32" and r.device == device
    np.testing.assert_array_equal(r.numpy(), np.random.RandomState(3).randn(2, 3).astype(np.float32))
    np.random.seed(3)
    np.testing.assert_array_equal(device.rand(4).numpy(), np.random.RandomState(3).rand(4).astype(np.float32))
    assert device.zeros(2, 3).numpy().tolist() == [[0.0] * 3] * 2 and device.ones((2,)).numpy().tolist() == [1.0, 1.0]
    assert device.full((2, 2), 5).numpy().tolist() == [[5.0, 5.0]] * 2 and device.empty((4,)).shape == (4,)
    assert device.one_hot(3, np.array([1, 2, 0])).numpy().tolist() == np.eye(3)[[1, 2, 0]].tolist()


@devices
def test_fill_setitem_extensions_pickle_and_copies(device):
    "fill writes through a view; setitem takes a numpy value or one that broadcasts; pickles and deep copies hold values, dtype and device."
    import copy, pickle
    A = nd.array(np.zeros((3, 4)), device=device)
    A[0:2, 1:3].fill(5.0)
    A[2, :] = nd.array([[1.0, 2.0, 3.0, 4.0]], device=device)[0:1, 0:1]     # one value broadcast over the row
    A[0, :] = np.array([[9, 8, 7, 6]])
    np.testing.assert_array_equal(A.numpy(), [[9, 8, 7, 6], [0, 5, 5, 0], [1, 1, 1, 1]])
    view = A.permute((1, 0))[1:3, :]
    for clone in (pickle.loads(pickle.dumps(view)), copy.deepcopy(view)):
        assert clone.device == device and clone.dtype == "float32" and clone._handle is not A._handle
        np.testing.assert_array_equal(clone.numpy(), A.numpy().T[1:3])
    ints = nd.array([3, 1], device=device, dtype="int64")
    assert pickle.loads(pickle.dumps(ints)).dtype == "int64"
    assert copy.copy(device) is device and pickle.loads(pickle.dumps(device)) is device


class _NumpyAsCupy:
    "numpy standing in for cupy: the device module then takes its non-numpy branches (as_strided over a slice, asnumpy)."
    def __getattr__(self, name): return getattr(np, name)
    @staticmethod
    def asnumpy(a): return np.array(a)   # cupy's asnumpy always copies to the host


STAND_IN = nd.BackendDevice("cuda_stand_in", nd.FlatBackend("cuda_stand_in", _NumpyAsCupy(), tile_size=4))


@SETTINGS
@given(view_chains(), st.data())
def test_the_cupy_code_path_with_numpy_standing_in(case, data):
    "What runs on a GPU, run on the CPU: views (negative strides too), compact, setitem, ops, reductions, matmul, take."
    assert STAND_IN.xp is not np
    shape, ops = case
    base, base_np, a, x = chain(STAND_IN, shape, ops)
    assert_same_view(a, x, base_np)
    c = a.compact()
    np.testing.assert_array_equal(c.numpy(), x)
    c_np = c.numpy(); c_np += 1                       # numpy() is a copy, as cupy's asnumpy
    np.testing.assert_array_equal(c.numpy(), x)
    np.testing.assert_array_equal(nd.flip(a, 0).numpy(), np.flip(x, 0))
    np.testing.assert_allclose((a * 2 + c).numpy(), x * 2 + x)
    np.testing.assert_allclose(a.sum(axis=0).numpy(), x.sum(axis=0))
    np.testing.assert_array_equal(a.take([0, -1], axis=-1).numpy(), np.take(x, [0, -1], axis=-1))
    m = nd_array(np.arange(6.0).reshape(2, 3), STAND_IN)
    m_np = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose((m @ m.permute((1, 0))).numpy(), m_np @ m_np.T)
    view_chain = data.draw(view_chains(broadcast=False))
    base, base_np, v, y = chain(STAND_IN, *view_chain)
    base_np = base_np.copy(); y = base_np
    for op in view_chain[1]: y = apply_np(y, op)
    v[tuple(slice(None) for _ in v.shape)] = -3.0
    y[...] = -3.0
    np.testing.assert_array_equal(base.numpy(), base_np)


# ------------------------------------------------------------------------------------------------
# Bad input: a clear error, nothing changed
# ------------------------------------------------------------------------------------------------
@devices
def test_bad_input_is_refused_with_a_clear_message(device):
    A = nd.array(np.arange(6.0).reshape(2, 3), device=device)
    before = A.numpy()
    cases = [
        (lambda: nd.array([1.0], dtype="float16"), TypeError, "got dtype 'float16'"),
        (lambda: nd.empty((2,), dtype="complex64"), TypeError, "complex64"),
        (lambda: A.reshape((4, 2)), ValueError, "into (4, 2)"),
        (lambda: A.broadcast_to((3, 3)), AssertionError, "cannot broadcast shape (2, 3) to (3, 3)"),
        (lambda: A.permute((0, 2)), ValueError, "not a permutation"),
        (lambda: A[0], AssertionError, "Need indexes equal to number of dimensions"),
        (lambda: A[0, 3], IndexError, "index 3 is out of range for axis 1 of length 3"),
        (lambda: A[0, ::-1], AssertionError, "positive step"),
        (lambda: A[0, [1, 2]], TypeError, "use .take"),
        (lambda: A + nd.array(np.ones((3, 2)), device=device), AssertionError, "(2, 3) and (3, 2)"),
        (lambda: A ** A, TypeError, "scalar exponent"),
        (lambda: A + "x", TypeError, "real numbers"),
        (lambda: A @ A, AssertionError, "(2, 3) @ (2, 3)"),
        (lambda: A.sum(axis=2), ValueError, "axis 2 is out of range"),
        (lambda: A.pad(((1, 1),)), ValueError, "one non-negative (left, right) pair per axis"),
        (lambda: A.flip((0, 0)), ValueError, "not distinct axes"),
        (lambda: A.take([0, 3], axis=1), IndexError, "out of range for axis 1 of length 3"),
        (lambda: A.take([0.5], axis=1), TypeError, "must be integers"),
        (lambda: A.as_strided((3, 3), (3, 1)).numpy(), IndexError, "buffer of 6 elements"),
        (lambda: A.as_strided((3,), (1, 1)), AssertionError, "differ in length"),
        (lambda: device.one_hot(3, [0, 3]), ValueError, "labels must lie in [0, 3)"),
        (lambda: nd.NDArray(np.ones(2), device=object()), TypeError, "must be an nd device"),
    ]
    other = nd.cpu_numpy() if device != nd.cpu_numpy() else nd.cpu()
    cases.append((lambda: A + nd.array(np.ones((2, 3)), device=other), ValueError, "different devices"))
    cases.append((lambda: A.__setitem__((0, slice(None)), nd.array(np.ones((1, 3)), device=other)), ValueError, "the value is on"))
    for fn, error, message in cases:
        with pytest.raises(error) as info: fn()
        assert message in str(info.value), (message, str(info.value))
    np.testing.assert_array_equal(A.numpy(), before)


def test_a_disabled_cuda_says_why(monkeypatch):
    import needle_nb.backend as backend
    monkeypatch.setitem(sys.modules, "cupy", None)     # `import cupy` raises ImportError
    monkeypatch.setattr(backend, "_CUPY", None)
    monkeypatch.setattr(nd, "_CUDA", None)
    gpu = nd.cuda()
    assert not gpu.enabled() and str(gpu) == "cuda()" and not hasattr(gpu, "matmul_tiled")
    with pytest.raises(backend.DeviceUnavailableError, match="cupy is not installed"):
        nd.array([1.0], device=gpu)


# ------------------------------------------------------------------------------------------------
# The benchmark still runs (timings are never asserted)
# ------------------------------------------------------------------------------------------------
BENCH = str(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ndarray.py")


def test_ndarray_benchmark_quick_run(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "bench", raising=False)
    report = runpy.run_path(BENCH)["main"](["--quick", "--repeats", "2"])
    assert {"compact", "matmul (tiled sizes)", "matmul (other sizes)"} <= set(report["workloads"])
    for results in report["workloads"].values():
        assert all(0 < r["min"] <= r["median"] <= r["max"] for r in results.values())
    assert all(value > 0 for value in report["ratios"].values())
    out = capsys.readouterr().out
    assert "ratio compact / numpy ascontiguousarray" in out and "target ≤ 2" in out
