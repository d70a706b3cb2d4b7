"""Every op: gradients against finite differences (float64, random shapes) and against PyTorch.

Two kinds of checks, MiniTorch- and tinygrad-style:
- `ndl.gradient_check` on shapes drawn by hypothesis (broadcasting and every `axes` case included);
- `check_op(shapes, torch_fn, ndl_fn)`: forward and backward against PyTorch in float64, one line per
  op (skipped where torch is not installed).
"""
import importlib.util, inspect, sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import needle_nb as ndl
import needle_nb.ops as ops
from needle_nb import Tensor

from conftest import DEVICES
from needle_nb.apps.testing import check_against_torch

# deterministic and small: the whole file runs in seconds
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)
devices = pytest.mark.parametrize("device", DEVICES, ids=repr)


# --- names --------------------------------------------------------------------------------------
NEEDLE_SIGNATURES = {
    "add": ["a", "b"], "add_scalar": ["a", "scalar"], "multiply": ["a", "b"], "mul_scalar": ["a", "scalar"],
    "divide": ["a", "b"], "divide_scalar": ["a", "scalar"], "power": ["a", "b"],
    "power_scalar": ["a", "scalar"], "negate": ["a"], "transpose": ["a", "axes"], "reshape": ["a", "shape"],
    "broadcast_to": ["a", "shape"], "summation": ["a", "axes"], "matmul": ["a", "b"], "log": ["a"],
    "exp": ["a"], "relu": ["a"], "logsoftmax": ["a"], "logsumexp": ["a", "axes"],
    "make_tuple": ["args"], "tuple_get_item": ["value", "index"],
}


@pytest.mark.parametrize("name", list(NEEDLE_SIGNATURES))
def test_needle_function_names_and_keywords(name):
    function = getattr(ndl, name)
    assert getattr(ndl.ops, name) is function
    assert list(inspect.signature(function).parameters) == NEEDLE_SIGNATURES[name]
    for optional in ("axes",):
        if optional in NEEDLE_SIGNATURES[name]:
            assert inspect.signature(function).parameters[optional].default is None


def test_keywords_work_as_in_needle():
    a = Tensor(np.arange(6.0).reshape(2, 3))
    assert ndl.transpose(a, axes=(0, 1)).shape == (3, 2) and ndl.transpose(a).shape == (3, 2)
    assert ndl.reshape(a, shape=(3, 2)).shape == (3, 2)
    assert ndl.broadcast_to(a, shape=(4, 2, 3)).shape == (4, 2, 3)
    assert ndl.summation(a, axes=(1,)).shape == (2,) and ndl.summation(a).shape == ()
    assert ndl.logsumexp(a, axes=(0,)).shape == (3,) and ndl.logsumexp(a).shape == ()
    np.testing.assert_array_equal(ndl.power_scalar(a, scalar=2).numpy(), a.numpy() ** 2)
    np.testing.assert_array_equal(ndl.add_scalar(a, scalar=1).numpy(), a.numpy() + 1)
    pair = ndl.fused_add_scalars(a, 1.0, 2.0)
    assert ndl.ops.fused_add_scalars is ndl.fused_add_scalars and len(pair) == 2
    assert list(inspect.signature(ndl.fused_add_scalars).parameters)[1:] == ["c0", "c1"]


def test_op_classes_are_reachable():
    for name in ["EWiseAdd", "AddScalar", "EWiseMul", "MulScalar", "PowerScalar", "EWisePow", "EWiseDiv",
                 "DivScalar", "Negate", "Transpose", "Reshape", "BroadcastTo", "Summation", "MatMul", "Log",
                 "Exp", "ReLU", "Tanh", "Sigmoid", "LogSumExp", "Max", "LogSoftmax", "Stack", "Split",
                 "GetItem", "MakeTensorTuple", "TupleGetItem", "FusedAddScalars"]:
        assert isinstance(getattr(ndl.ops, name), type), name
        assert getattr(ndl, name) is getattr(ndl.ops, name), name


def test_ops_record_needle_graph_nodes():
    a, b = Tensor([1.0, 2.0]), Tensor([3.0, 4.0])
    for out, op_class in [(ndl.add(a, b), ops.EWiseAdd), (ndl.add_scalar(a, 1), ops.AddScalar),
                          (ndl.multiply(a, b), ops.EWiseMul), (ndl.mul_scalar(a, 2), ops.MulScalar),
                          (ndl.divide(a, b), ops.EWiseDiv), (ndl.divide_scalar(a, 2), ops.DivScalar),
                          (ndl.power(a, b), ops.EWisePow), (ndl.power_scalar(a, 2), ops.PowerScalar),
                          (ndl.negate(a), ops.Negate), (ndl.amax(a), ops.Max), (ndl.relu(a), ops.ReLU)]:
        assert isinstance(out.op, op_class), (out.op, op_class)


# --- strategies ---------------------------------------------------------------------------------
dims = st.integers(1, 4)
seeds = st.integers(0, 2**31 - 1)


def shapes(min_ndim=0, max_ndim=3):
    return st.lists(dims, min_size=min_ndim, max_size=max_ndim).map(tuple)


@st.composite
def broadcastable_shapes(draw, min_ndim=0):
    "Two shapes that broadcast together (fewer axes, and 1s, on either side)."
    shape = draw(shapes(min_ndim))
    kept = draw(st.integers(0, len(shape)))
    other = tuple(1 if draw(st.booleans()) else n for n in shape[len(shape) - kept:])
    return (shape, other) if draw(st.booleans()) else (other, shape)


@st.composite
def shape_and_axes(draw, min_ndim=1, allow_none=True):
    "A shape and a reduction `axes`: None, an int, or a tuple (negative axes included)."
    shape = draw(shapes(min_ndim))
    ndim = len(shape)
    choices = [st.integers(-ndim, ndim - 1),
               st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(
                   lambda axes: tuple(ax - ndim if i % 2 else ax for i, ax in enumerate(axes)))]
    if allow_none: choices.append(st.none())
    return shape, draw(st.one_of(*choices))


def tensor(rs, shape, device, low=-2.0, high=2.0):
    return Tensor(rs.uniform(low, high, size=shape), device=device)


def positive(rs, shape, device): return tensor(rs, shape, device, 0.5, 2.0)


# --- gradient checks: elementwise ---------------------------------------------------------------
BINARY = {"add": (ndl.add, tensor, tensor), "subtract": (ndl.subtract, tensor, tensor),
          "multiply": (ndl.multiply, tensor, tensor), "divide": (ndl.divide, tensor, positive),
          "power": (ndl.power, positive, tensor)}


@devices
@pytest.mark.parametrize("name", list(BINARY))
@SETTINGS
@given(pair=broadcastable_shapes(), seed=seeds)
def test_binary_gradients(device, name, pair, seed):
    op, make_a, make_b = BINARY[name]
    rs = np.random.RandomState(seed)
    a, b = make_a(rs, pair[0], device), make_b(rs, pair[1], device)
    out = op(a, b)
    assert out.shape == np.broadcast_shapes(*pair)
    ndl.gradient_check(op, a, b, backward=True, tol=1e-5)


UNARY = {"negate": (ndl.negate, tensor), "log": (ndl.log, positive), "exp": (ndl.exp, tensor),
         "relu": (ndl.relu, tensor), "tanh": (ndl.tanh, tensor), "sigmoid": (ndl.sigmoid, tensor),
         "add_scalar": (lambda a: ndl.add_scalar(a, 1.5), tensor),
         "mul_scalar": (lambda a: ndl.mul_scalar(a, -2.5), tensor),
         "divide_scalar": (lambda a: ndl.divide_scalar(a, 0.7), tensor),
         "power_scalar_2": (lambda a: ndl.power_scalar(a, 2), tensor),
         "power_scalar_3": (lambda a: ndl.power_scalar(a, 3), tensor),
         "power_scalar_half": (lambda a: ndl.power_scalar(a, 0.5), positive),
         "power_scalar_neg": (lambda a: ndl.power_scalar(a, -1.5), positive),
         "rsub": (lambda a: 2.0 - a, tensor), "rdiv": (lambda a: 3.0 / a, positive),
         "rpow": (lambda a: 2.0 ** a, tensor)}


@devices
@pytest.mark.parametrize("name", list(UNARY))
@SETTINGS
@given(shape=shapes(), seed=seeds)
def test_unary_gradients(device, name, shape, seed):
    op, make = UNARY[name]
    a = make(np.random.RandomState(seed), shape, device)
    assert op(a).shape == shape
    ndl.gradient_check(op, a, backward=True, tol=1e-5)


def test_relu_and_sigmoid_values():
    a = Tensor(np.array([-800.0, -1.0, 0.5, 800.0]))
    np.testing.assert_array_equal(ndl.relu(a).numpy(), [0, 0, 0.5, 800])
    s = ndl.sigmoid(a)
    assert np.isfinite(s.numpy()).all()
    np.testing.assert_allclose(s.numpy(), [0.0, 1 / (1 + np.e), 1 / (1 + np.exp(-0.5)), 1.0])


# --- gradient checks: shapes --------------------------------------------------------------------
@devices
@SETTINGS
@given(shape=shapes(min_ndim=2), seed=seeds, data=st.data())
def test_transpose_gradients(device, shape, seed, data):
    a = tensor(np.random.RandomState(seed), shape, device)
    ndl.gradient_check(ndl.transpose, a, backward=True)
    assert ndl.transpose(a).shape == shape[:-2] + (shape[-1], shape[-2])
    i, j = data.draw(st.integers(0, len(shape) - 1)), data.draw(st.integers(-len(shape), len(shape) - 1))
    out = ndl.transpose(a, axes=(i, j))
    np.testing.assert_array_equal(out.numpy(), np.swapaxes(a.numpy(), i, j))
    ndl.gradient_check(lambda x: ndl.transpose(x, axes=(i, j)), a, backward=True)


@devices
@SETTINGS
@given(shape=shapes(), seed=seeds, data=st.data())
def test_reshape_gradients(device, shape, seed, data):
    a = tensor(np.random.RandomState(seed), shape, device)
    size = int(np.prod(shape))
    target = data.draw(st.sampled_from([(size,), (1, size), tuple(reversed(shape)), (-1,) + shape[1:], shape + (1,)]))
    out = ndl.reshape(a, target)
    np.testing.assert_array_equal(out.numpy(), a.numpy().reshape(target))
    ndl.gradient_check(lambda x: ndl.reshape(x, target), a, backward=True)


@devices
@SETTINGS
@given(pair=broadcastable_shapes(), seed=seeds)
def test_broadcast_to_gradients(device, pair, seed):
    small, big = sorted(pair, key=lambda s: (np.prod(s), len(s)))
    target = np.broadcast_shapes(small, big)
    a = tensor(np.random.RandomState(seed), small, device)
    assert ndl.broadcast_to(a, target).shape == target
    ndl.gradient_check(lambda x: ndl.broadcast_to(x, target), a, backward=True)


# --- gradient checks: reductions ----------------------------------------------------------------
REDUCTIONS = {"summation": (ndl.summation, np.sum), "logsumexp": (ndl.logsumexp, None),
              "amax": (ndl.amax, np.max)}


@devices
@pytest.mark.parametrize("name", list(REDUCTIONS))
@SETTINGS
@given(case=shape_and_axes(), seed=seeds)
def test_reduction_gradients(device, name, case, seed):
    shape, axes = case
    op, reference = REDUCTIONS[name]
    a = tensor(np.random.RandomState(seed), shape, device)
    out = op(a, axes)
    numpy_axes = axes if not isinstance(axes, tuple) else tuple(axes)
    expected_shape = np.sum(np.zeros(shape), axis=numpy_axes).shape
    assert out.shape == expected_shape
    if reference is not None:
        np.testing.assert_allclose(out.numpy(), reference(a.numpy(), axis=numpy_axes), rtol=1e-12)
    else:
        np.testing.assert_allclose(out.numpy(), np.log(np.exp(a.numpy()).sum(axis=numpy_axes)), rtol=1e-12)
    ndl.gradient_check(lambda x: op(x, axes), a, backward=True)
    ndl.gradient_check(lambda x: op(x, axes=axes), a, backward=True)


def test_max_shares_the_gradient_among_ties():
    a = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]))
    ndl.amax(a, axes=(1,)).backward(Tensor(np.array([1.0, 3.0])))
    np.testing.assert_allclose(a.grad.numpy(), [[0, 0.5, 0.5], [1, 1, 1]])
    assert a.max(axes=1).shape == (2,) and a.amax().shape == ()


@pytest.mark.parametrize("big", [1e4, -1e4])
def test_logsumexp_is_stable_for_large_inputs(big):
    z = Tensor(np.array([[big, 0.0, -big], [big, big, big], [-big, -big, -big]]))
    out = ndl.logsumexp(z, axes=(1,))
    assert np.isfinite(out.numpy()).all()
    np.testing.assert_allclose(out.numpy(), [abs(big), big + np.log(3), -big + np.log(3)])
    np.testing.assert_allclose(out.numpy(), np.logaddexp.reduce(z.numpy(), axis=1))
    out.sum().backward()
    grad = z.grad.numpy()
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad.sum(axis=1), [1, 1, 1])
    ndl.gradient_check(lambda x: ndl.logsumexp(x, axes=(1,)), z, backward=True, tol=1e-4)
    whole = ndl.logsumexp(z)
    assert np.isfinite(whole.numpy()) and whole.shape == ()


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_logsumexp_of_all_minus_infinity_is_minus_infinity():
    out = ndl.logsumexp(Tensor(np.array([[-np.inf, -np.inf], [0.0, -np.inf]])), axes=(1,))
    np.testing.assert_array_equal(out.numpy(), [-np.inf, 0.0])


@devices
@SETTINGS
@given(shape=shapes(min_ndim=1), seed=seeds)
def test_logsoftmax_gradients(device, shape, seed):
    a = tensor(np.random.RandomState(seed), shape, device, -5, 5)
    out = ndl.logsoftmax(a)
    np.testing.assert_allclose(np.exp(out.numpy()).sum(axis=-1), 1.0)
    ndl.gradient_check(ndl.logsoftmax, a, backward=True)


@devices
@SETTINGS
@given(shape=shapes(min_ndim=1), seed=seeds)
def test_softmax_gradients(device, shape, seed):
    a = tensor(np.random.RandomState(seed), shape, device, -5, 5)
    np.testing.assert_allclose(ndl.softmax(a).numpy().sum(axis=-1), 1.0)
    np.testing.assert_allclose(ndl.softmax(a).numpy(), np.exp(ndl.logsoftmax(a).numpy()))
    ndl.gradient_check(ndl.softmax, a, backward=True)


def test_logsoftmax_is_stable():
    out = ndl.logsoftmax(Tensor(np.array([[1e4, 0.0, -1e4]])))
    np.testing.assert_allclose(out.numpy(), [[0.0, -1e4, -2e4]])


# --- gradient checks: matmul --------------------------------------------------------------------
@st.composite
def matmul_shapes(draw):
    "Batched operands with broadcast batch axes, and 1-D operands on either side."
    n, k, m = draw(dims), draw(dims), draw(dims)
    batch_a, batch_b = draw(broadcastable_shapes())
    a = batch_a + (n, k) if draw(st.integers(0, 3)) else (k,)
    b = batch_b + (k, m) if draw(st.integers(0, 3)) else (k,)
    return a, b


@devices
@SETTINGS
@given(pair=matmul_shapes(), seed=seeds)
def test_matmul_gradients(device, pair, seed):
    rs = np.random.RandomState(seed)
    a, b = tensor(rs, pair[0], device), tensor(rs, pair[1], device)
    out = ndl.matmul(a, b)
    np.testing.assert_allclose(out.numpy(), a.numpy() @ b.numpy(), rtol=1e-12)
    ndl.gradient_check(ndl.matmul, a, b, backward=True)
    ndl.gradient_check(lambda x, y: x @ y, a, b, backward=True)


# --- gradient checks: stack, split, indexing, tuples --------------------------------------------
@devices
@SETTINGS
@given(shape=shapes(), count=st.integers(1, 3), seed=seeds, data=st.data())
def test_stack_and_split_gradients(device, shape, count, seed, data):
    rs = np.random.RandomState(seed)
    parts = [tensor(rs, shape, device) for _ in range(count)]
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    stacked = ndl.stack(parts, axis)
    np.testing.assert_array_equal(stacked.numpy(), np.stack([p.numpy() for p in parts], axis))
    ndl.gradient_check(lambda *xs: ndl.stack(list(xs), axis=axis), *parts, backward=True)
    pieces = ndl.split(stacked, axis)
    assert len(pieces) == count
    for piece, part in zip(pieces, parts):
        np.testing.assert_array_equal(piece.numpy(), part.numpy())
    weighted = lambda x: sum((p * (i + 1.0) for i, p in enumerate(ndl.split(x, axis=axis))), start=0.0)
    ndl.gradient_check(weighted, stacked, backward=True)


INDICES = [(0,), (-1, slice(None)), (slice(1, None),), (slice(None, None, -1), 0), (Ellipsis, None),
           ([0, 0, 1],), (np.array([1, 1, 1]), slice(None)), ((np.array([0, 1, 0]), np.array([2, 2, 2]))),
           (slice(None), [0, 0]), (np.array([True, False]),), (np.array([[0, 1], [1, 1]]),)]


@devices
@pytest.mark.parametrize("index", INDICES, ids=repr)
def test_get_item_gradients(device, index, rs):
    a = tensor(rs, (2, 3, 2), device)
    out = a[index]
    np.testing.assert_array_equal(out.numpy(), a.numpy()[index])
    ndl.gradient_check(lambda x: x[index], a, backward=True)
    ndl.gradient_check(lambda x: ndl.ops.get_item(x, index) * 2.0, a, backward=True)


@devices
def test_tuple_ops_gradients(device, rs):
    a, b = tensor(rs, (2, 3), device), tensor(rs, (2, 3), device)
    ndl.gradient_check(lambda x: ndl.fused_add_scalars(x, 1.0, -2.0)[0] * ndl.fused_add_scalars(x, 1.0, -2.0)[1],
                       a, backward=True)
    ndl.gradient_check(lambda x, y: ndl.tuple_get_item(ndl.make_tuple(x, y), 1) * x, a, b, backward=True)
    ndl.gradient_check(lambda x, y: ndl.tuple_get_item(ndl.split(ndl.stack([x, y], 0), 0), 0) * y,
                       a, b, backward=True)


# --- gradient_check itself ----------------------------------------------------------------------
def test_gradient_check_catches_a_wrong_gradient():
    class WrongSquare(ops.TensorOp):
        def compute(self, a): return a * a
        def gradient(self, out_grad, node): return out_grad * node.inputs[0]   # missing factor 2
    with pytest.raises(AssertionError, match="finite differences"):
        ndl.gradient_check(lambda x: WrongSquare()(x), Tensor(np.array([1.0, 2.0])), backward=True)
    with pytest.raises(AssertionError, match="finite differences"):
        ndl.gradient_check(lambda x: WrongSquare()(x), Tensor(np.array([1.0, 2.0])))
    with pytest.raises(TypeError, match="float32"):
        ndl.gradient_check(ndl.exp, Tensor([1.0, 2.0]))


def test_gradient_check_never_writes_into_shared_arrays():
    "It perturbs a private copy: a tensor sharing the input's array sees no change, ever."
    x = Tensor(np.asfortranarray(np.arange(6.0).reshape(2, 3)))   # not C-contiguous, too
    shared, original = x.detach(), x.numpy().copy()
    seen = []
    def f(a):
        seen.append(shared.numpy().copy())
        return a * a
    grads = ndl.gradient_check(f, x, backward=True)
    np.testing.assert_allclose(grads[0].shape, (2, 3))
    assert all(np.array_equal(s, original) for s in seen)
    np.testing.assert_array_equal(x.numpy(), original)


# --- against PyTorch ----------------------------------------------------------------------------
def check_op(shapes, torch_fn, ndl_fn=None, *, device=ndl.cpu(), low=-2.0, high=2.0, atol=1e-9, rtol=1e-7,
             seed=0):
    """Forward and backward of `ndl_fn` against `torch_fn` (float64), tinygrad's `helper_test_op`,
    through the one comparison helper, `needle_nb.apps.testing.check_against_torch`.

    The inputs are uniform in [low, high); the backward pass pulls a random weighting of the output
    through both frameworks and compares every input's gradient.
    """
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    ndl_fn = ndl_fn or torch_fn
    rs = np.random.RandomState(seed)
    ours_in = [Tensor(rs.uniform(low, high, size=s), device=device) for s in shapes]
    ours, _ = check_against_torch(ndl_fn, torch_fn, *ours_in, atol=atol, rtol=rtol, seed=seed)
    assert ours.dtype == np.float64


def all_axes(x): return tuple(range(x.ndim))


TORCH_CASES = {
    "add": ([(3, 1, 4), (2, 4)], lambda a, b: a + b, ndl.add),
    "add_scalar": ([(3, 4)], lambda a: a + 1.5, lambda a: ndl.add_scalar(a, 1.5)),
    "subtract": ([(2, 3), (3,)], lambda a, b: a - b),
    "multiply": ([(4, 1), (1, 5)], lambda a, b: a * b, ndl.multiply),
    "mul_scalar": ([(3, 4)], lambda a: a * -0.5, lambda a: ndl.mul_scalar(a, -0.5)),
    "power_scalar": ([(3, 4)], lambda a: a ** 3, lambda a: ndl.power_scalar(a, 3)),
    "power": ([(3, 4), (4,)], lambda a, b: (a + 2.5) ** b, lambda a, b: ndl.power(a + 2.5, b)),
    "divide": ([(3, 4), (3, 1)], lambda a, b: a / (b + 3), lambda a, b: ndl.divide(a, b + 3)),
    "divide_scalar": ([(3, 4)], lambda a: a / 7, lambda a: ndl.divide_scalar(a, 7)),
    "negate": ([(3, 4)], lambda a: -a, ndl.negate),
    "transpose": ([(2, 3, 4)], lambda a: a.transpose(-1, -2), ndl.transpose),
    "transpose_axes": ([(2, 3, 4)], lambda a: a.transpose(0, 2), lambda a: ndl.transpose(a, axes=(0, 2))),
    "reshape": ([(2, 3, 4)], lambda a: a.reshape(4, 6), lambda a: ndl.reshape(a, (4, 6))),
    "broadcast_to": ([(3, 1)], lambda a: a.expand(2, 3, 4), lambda a: ndl.broadcast_to(a, (2, 3, 4))),
    "summation": ([(2, 3, 4)], lambda a: a.sum(), ndl.summation),
    "summation_int": ([(2, 3, 4)], lambda a: a.sum(1), lambda a: ndl.summation(a, axes=1)),
    "summation_tuple": ([(2, 3, 4)], lambda a: a.sum((0, 2)), lambda a: ndl.summation(a, axes=(0, -1))),
    "matmul": ([(3, 4), (4, 5)], lambda a, b: a @ b, ndl.matmul),
    "matmul_batched": ([(2, 1, 3, 4), (5, 4, 2)], lambda a, b: a @ b, ndl.matmul),
    "matmul_vector_left": ([(4,), (2, 4, 3)], lambda a, b: a @ b, ndl.matmul),
    "matmul_vector_right": ([(2, 3, 4), (4,)], lambda a, b: a @ b, ndl.matmul),
    "matmul_vectors": ([(4,), (4,)], lambda a, b: a @ b, ndl.matmul),
    "log": ([(3, 4)], lambda a: (a + 3).log(), lambda a: ndl.log(a + 3)),
    "exp": ([(3, 4)], lambda a: a.exp(), ndl.exp),
    "relu": ([(3, 4)], lambda a: a.relu(), ndl.relu),
    "tanh": ([(3, 4)], lambda a: a.tanh(), ndl.tanh),
    "sigmoid": ([(3, 4)], lambda a: (a * 20).sigmoid(), lambda a: ndl.sigmoid(a * 20)),
    "logsumexp": ([(2, 3, 4)], lambda a: a.logsumexp((1,)), lambda a: ndl.logsumexp(a, axes=(1,))),
    "logsumexp_all": ([(2, 3, 4)], lambda a: a.logsumexp(all_axes(a)), ndl.logsumexp),
    "logsumexp_big": ([(3, 4)], lambda a: (a * 1e4).logsumexp(1), lambda a: ndl.logsumexp(a * 1e4, axes=1)),
    "amax": ([(2, 3, 4)], lambda a: a.amax((0, 2)), lambda a: ndl.amax(a, axes=(0, 2))),
    "amax_all": ([(2, 3, 4)], lambda a: a.amax(), ndl.amax),
    "logsoftmax": ([(3, 5)], lambda a: a.log_softmax(-1), ndl.logsoftmax),
    "logsoftmax_3d": ([(2, 3, 5)], lambda a: (a * 100).log_softmax(-1), lambda a: ndl.logsoftmax(a * 100)),
    "softmax": ([(3, 5)], lambda a: a.softmax(-1), ndl.softmax),
    "softmax_3d": ([(2, 3, 5)], lambda a: (a * 100).softmax(-1), lambda a: ndl.softmax(a * 100)),
    "stack": ([(2, 3), (2, 3)], lambda a, b: __import__("torch").stack([a, b], 1), lambda a, b: ndl.stack([a, b], 1)),
    "split": ([(3, 2)], lambda a: a.unbind(1)[1] * a.unbind(1)[0], lambda a: ndl.split(a, 1)[1] * ndl.split(a, 1)[0]),
    "get_item": ([(4, 3)], lambda a: a[1:, ::2], lambda a: a[1:, ::2]),
    "get_item_repeated": ([(4, 3)], lambda a: a[[0, 0, 3]][:, [2, 2]], lambda a: a[[0, 0, 3]][:, [2, 2]]),
}


@devices
@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_against_torch(device, name):
    check_op(*TORCH_CASES[name], device=device, atol=1e-5 if name.endswith("big") else 1e-9)


# --- the op-overhead benchmark still runs (timings are never asserted) ---------------------------
def _load_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_op_overhead.py"
    spec = importlib.util.spec_from_file_location("bench_op_overhead", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("with_torch", [True, False], ids=["torch", "no-torch"])
def test_op_overhead_benchmark_runs(with_torch, monkeypatch, capsys):
    if with_torch: pytest.importorskip("torch")
    else: monkeypatch.setitem(sys.modules, "torch", None)     # `import torch` raises ImportError
    rows = _load_benchmark().main(["--quick", "--number", "20", "--repeats", "2"])
    names = [row[0] for row in rows]
    assert names[:4] == ["numpy (untracked)", "needle_nb (tracked)", "needle_nb (tracked, detect_anomaly on)",
                         "needle_nb (untracked)"]
    assert ndl.autograd._ANOMALY is False, "the benchmark leaves the anomaly mode off"
    assert any(name.startswith("torch") for name in names) == with_torch
    assert all(0 < low <= median <= high for _, median, low, high in rows)
    out = capsys.readouterr().out
    assert "x numpy" in out and all(name in out for name in names)
    assert ("skipping the PyTorch column" in out) != with_torch


@pytest.mark.parametrize("method", ["sum", "max", "amax"])
@pytest.mark.parametrize("keyword", ["axis", "dim"])
def test_axis_and_dim_keywords_say_needle_uses_axes(method, keyword):
    t = Tensor(np.ones((2, 3)))
    with pytest.raises(TypeError, match="needle uses axes="):
        getattr(t, method)(**{keyword: 0})
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        getattr(t, method)(keepdims=True)
    assert getattr(t, method)(axes=0).shape == (3,)


# --- attention's softmax: scale and mask in the op, its gradient one node (issue 27) --------------------
@devices
@pytest.mark.parametrize("scale,causal", [(0.25, True), (1.0, True), (0.5, False)])
def test_softmax_with_scale_and_mask_matches_torch_and_finite_differences(device, scale, causal):
    rs = np.random.RandomState(0)
    mask = np.triu(np.full((4, 5), -1e30), 2) if causal else None   # T_q = 4 queries, T_kv = 5 keys
    dev_mask = None if mask is None else device.array(mask, dtype="float64")
    f = lambda a: ops.softmax(a, scale=scale, mask=dev_mask)
    a = Tensor(rs.randn(2, 3, 4, 5), device=device, dtype="float64")
    ndl.gradient_check(f, a, backward=True)
    theirs = lambda t: (t * scale + (0 if mask is None else t.new_tensor(mask))).softmax(-1)
    check_against_torch(f, theirs, rs.randn(2, 3, 4, 5))
    if causal:   # the masked keys get probability 0 and no gradient
        out = f(a)
        assert (out.numpy()[..., 0, 3:] == 0).all()


def test_softmax_backward_is_one_node_and_differentiates_again():
    rs = np.random.RandomState(1)
    z = Tensor(rs.randn(3, 4), dtype="float64")
    made = []
    original = ndl.Tensor.make_from_op
    ndl.Tensor.make_from_op = staticmethod(lambda op, inputs: (made.append(type(op).__name__), original(op, inputs))[1])
    try: (ops.softmax(z, scale=0.5) * Tensor(rs.randn(3, 4), requires_grad=False)).sum().backward()
    finally: ndl.Tensor.make_from_op = staticmethod(original)
    assert made.count("Softmax") == 1 and made.count("SoftmaxBackward") == 1, made
    s = ops.softmax(Tensor(rs.randn(3, 4), dtype="float64"), scale=0.5)
    ndl.gradient_check(lambda g, s: ops.SoftmaxBackward((-1,), 0.5)(g, s), Tensor(rs.randn(3, 4), dtype="float64"),
                       Tensor(s.numpy()), backward=True)


def test_softmax_mask_bad_input():
    a = Tensor(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="does not broadcast"): ops.softmax(a, mask=np.zeros((3, 4)))
    with pytest.raises(TypeError, match="mask must be an array"): ops.softmax(a, mask=[[0.0] * 4] * 2)
    with pytest.raises(ValueError, match="do not combine"): ops.Softmax(parts=(1, 2), scale=2.0)
    with pytest.raises(ValueError, match="must have one shape"): ops.SoftmaxBackward()(a, Tensor(np.zeros((2, 3))))
