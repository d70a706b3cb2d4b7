"""The autograd engine with needle's semantics: tensors, graph recording, backward, data safety."""
import gc, random, sys

import numpy as np
import pytest

import needle_nb as ndl
import needle_nb.autograd as autograd
from needle_nb.autograd import Tensor, TensorOp, TensorTuple
from conftest import shares_memory


# --- construction -------------------------------------------------------------------------------
def test_construction_rules(device):
    t = Tensor([[1, 2], [3, 4]], device=device)
    assert t.shape == (2, 2) and t.ndim == 2 and t.dtype == np.float32 and t.device == device
    assert t.requires_grad and t.op is None and t.inputs == () and t.is_leaf() and t.grad is None
    assert Tensor(3.0).shape == () and Tensor([]).shape == (0,)
    assert not Tensor([1.0], requires_grad=False).requires_grad
    assert Tensor([1.0], device=device, dtype="float64").dtype == np.float64


def test_tensor_copies_the_data_it_is_built_from(device):
    source = np.arange(4.0)
    t = Tensor(source, device=device)
    source[0] = 99.0
    assert t.numpy()[0] == 0.0
    u = Tensor(t)                                     # from a tensor: a new leaf with its own array
    assert u.dtype == t.dtype and u.is_leaf() and not shares_memory(u, t)
    np.testing.assert_array_equal(u.numpy(), t.numpy())
    assert Tensor(t, dtype="float32").dtype == np.float32


def test_tensor_from_an_op_result_is_a_leaf():
    a = Tensor([1.0, 2.0])
    b = Tensor(a * 2)
    assert b.is_leaf() and b.requires_grad
    np.testing.assert_array_equal(b.numpy(), [2.0, 4.0])


def test_make_const_wraps_without_copying():
    array = np.ones(3, dtype=np.float32)
    t = Tensor.make_const(array)
    assert t.cached_data is array and not t.requires_grad and t.grad is None
    assert Tensor.make_const(array, requires_grad=True).requires_grad
    assert Tensor.make_const(Tensor(array)).is_leaf()


def test_data_is_detached_shared_and_assignable(device):
    t = Tensor(np.arange(3.0), device=device)
    y = t * 2
    d = y.data
    assert isinstance(d, Tensor) and d.op is None and not d.requires_grad and d.dtype == y.dtype
    assert shares_memory(d, y)
    t.data = Tensor([5.0, 6.0, 7.0], device=device)     # float32 data into a float64 tensor
    assert t.dtype == np.float64 and t.requires_grad and t.is_leaf()
    np.testing.assert_array_equal(t.numpy(), [5.0, 6.0, 7.0])
    t.data = t.data - 0.5 * Tensor(np.ones(3, dtype=np.float32), device=device)
    np.testing.assert_array_equal(t.numpy(), [4.5, 5.5, 6.5])
    t.data = device.zeros(3, dtype="float32")          # an array on the tensor's device
    assert t.dtype == np.float64 and t.device == device
    if device != ndl.cpu():                              # a host array is not silently copied over
        with pytest.raises(ValueError, match=r"cannot set data of a tensor on cuda\(\) from data on cpu\(\)"):
            t.data = np.zeros(3)
    with pytest.raises(TypeError, match="list"):
        t.data = [1.0, 2.0, 3.0]


def test_numpy_item_tolist(device):
    t = Tensor([[1.5, 2.0]], device=device)
    assert type(t.numpy()) is np.ndarray and t.numpy().dtype == np.float32
    assert t.tolist() == [[1.5, 2.0]] and len(t) == 1
    s = t.sum()
    assert s.item() == 3.5 and isinstance(s.item(), float)
    np.testing.assert_array_equal(np.asarray(t), [[1.5, 2.0]])
    assert "requires_grad=True" in repr(t) and "needle_nb.Tensor" in repr(t)


def test_detach_shares_memory_and_leaves_the_graph():
    a = Tensor([1.0, 2.0])
    b = (a * 3).detach()
    assert b.is_leaf() and not b.requires_grad
    (b * a).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [3.0, 6.0])
    assert b.grad is None


def test_to_same_device_is_identity_and_astype_is_differentiable():
    t = Tensor([1.0, 2.0])
    assert t.to(ndl.cpu()) is t and t.astype("float32") is t
    u = t.astype("float64")
    assert u.dtype == np.float64 and u.requires_grad
    (u * u).sum().backward()
    assert t.grad.dtype == np.float32
    np.testing.assert_array_equal(t.grad.numpy(), [2.0, 4.0])
    v = t.to(ndl.cpu(), dtype="float64")
    assert v.dtype == np.float64 and v.requires_grad


# --- operators, methods, indexing ---------------------------------------------------------------
UNARY = {"neg": (lambda t: -t, lambda a: -a), "exp": (lambda t: t.exp(), np.exp),
         "log": (lambda t: t.log(), np.log), "relu": (lambda t: t.relu(), lambda a: np.maximum(a, 0)),
         "tanh": (lambda t: t.tanh(), np.tanh), "sigmoid": (lambda t: t.sigmoid(), lambda a: 1 / (1 + np.exp(-a))),
         "sum": (lambda t: t.sum(), np.sum), "sum0": (lambda t: t.sum(axes=0), lambda a: a.sum(0)),
         "max": (lambda t: t.max(), np.max), "max1": (lambda t: t.max(axes=1), lambda a: a.max(1)),
         "reshape": (lambda t: t.reshape((4, 3)), lambda a: a.reshape(4, 3)),
         "reshape_args": (lambda t: t.reshape(2, 6), lambda a: a.reshape(2, 6)),
         "transpose": (lambda t: t.transpose(), lambda a: a.T),
         "broadcast_to": (lambda t: t.broadcast_to((2, 3, 4)), lambda a: np.broadcast_to(a, (2, 3, 4))),
         "pow": (lambda t: t ** 3, lambda a: a ** 3), "rdiv": (lambda t: 2 / t, lambda a: 2 / a),
         "rsub": (lambda t: 2 - t, lambda a: 2 - a)}
BINARY = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
          "div": lambda a, b: a / b, "pow": lambda a, b: a ** b}


@pytest.mark.parametrize("name", list(UNARY))
def test_methods_match_numpy(device, name, rs):
    ours, reference = UNARY[name]
    data = rs.rand(3, 4) + 0.5
    out = ours(Tensor(data, device=device))
    np.testing.assert_allclose(out.numpy(), reference(data), rtol=1e-12)


@pytest.mark.parametrize("name", list(BINARY))
def test_binary_operators_match_numpy_with_broadcasting(device, name, rs):
    a_np, b_np = rs.rand(2, 1, 3) + 0.5, rs.rand(4, 1) + 0.5
    out = BINARY[name](Tensor(a_np, device=device), Tensor(b_np, device=device))
    np.testing.assert_allclose(out.numpy(), BINARY[name](a_np, b_np), rtol=1e-12)
    # a numpy array operand, on either side, is a constant; the gradient still fits the tensor
    for make in (lambda t: BINARY[name](t, b_np), lambda t: BINARY[name](b_np, t)):
        a = Tensor(a_np, device=device)
        out = make(a)
        np.testing.assert_allclose(out.numpy(), make(a_np), rtol=1e-12)
        out.sum().backward()
        assert a.grad.shape == a.shape


def test_matmul_operator_with_arrays(rs):
    a, b = rs.rand(2, 3), rs.rand(3, 4)
    np.testing.assert_allclose((Tensor(a) @ b).numpy(), a @ b)
    np.testing.assert_allclose((a @ Tensor(b)).numpy(), a @ b)
    np.testing.assert_allclose(Tensor(a).matmul(Tensor(b)).numpy(), a @ b)


def test_broadcasting_gradients_are_summed_to_input_shapes():
    a, b = Tensor(np.ones((2, 1, 3))), Tensor(np.ones((4, 1)))
    (a * b).sum().backward()
    assert a.grad.shape == (2, 1, 3) and b.grad.shape == (4, 1)
    np.testing.assert_array_equal(a.grad.numpy(), np.full((2, 1, 3), 4.0))
    np.testing.assert_array_equal(b.grad.numpy(), np.full((4, 1), 6.0))
    c = Tensor(np.ones(3))
    (a + c).sum().backward()
    np.testing.assert_array_equal(c.grad.numpy(), np.full(3, 2.0))


INDICES = [1, -1, slice(1, None), (slice(None), 2), (1, slice(None, None, -2)), (Ellipsis, None, 0),
           [0, 0, 2], np.array([2, 2, 2, 0]), (np.array([0, 2]), np.array([1, 1])),
           np.array([True, False, True]), (slice(None), [3, 3, 0])]


@pytest.mark.parametrize("index", INDICES, ids=repr)
def test_indexing_forward_and_gradient(device, index, rs):
    data = rs.randn(3, 4)
    t = Tensor(data, device=device)
    out = t[index]
    np.testing.assert_array_equal(out.numpy(), data[index])
    weights = rs.randn(*np.shape(data[index]))
    (out * Tensor(weights, device=device)).sum().backward()
    expected = np.zeros_like(data)
    np.add.at(expected, index, weights)           # repeated indices add up
    np.testing.assert_allclose(t.grad.numpy(), expected)


def test_indexing_with_a_tensor_index():
    t = Tensor(np.arange(5.0))
    index = Tensor(np.array([4, 4, 1]), requires_grad=False)
    t[index].sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), [0, 1, 0, 0, 2])


# --- needle's internals -------------------------------------------------------------------------
def test_needle_names_are_reachable():
    for name in ["Value", "Op", "TensorOp", "TensorTupleOp", "Tensor", "TensorTuple",
                 "find_topo_sort", "compute_gradient_of_variables", "sum_node_list", "make_tuple",
                 "tuple_get_item", "fused_add_scalars", "no_grad"]:
        assert getattr(ndl, name) is getattr(autograd, name), name
    assert isinstance(autograd.TENSOR_COUNTER, int)
    t = Tensor([1.0]) + 1.0
    assert isinstance(t, ndl.autograd.Value) and isinstance(t.op, ndl.autograd.TensorOp)
    assert t.realize_cached_data() is t.cached_data


class Cube(TensorOp):
    "An op written as in the needle homework, to check the extension points."
    def compute(self, a): return a ** 3
    def gradient(self, out_grad, node):
        a = node.inputs[0]
        return out_grad * 3 * a * a


class TwoGradients(TensorOp):
    "a * b, returning its gradients as a list and for both inputs regardless of requires_grad."
    def compute(self, a, b): return a * b
    def gradient(self, out_grad, node):
        a, b = node.inputs
        return [out_grad * b, out_grad * a]


def test_a_user_defined_op_plugs_in():
    x = Tensor([1.0, 2.0])
    y = Cube()(x)
    np.testing.assert_array_equal(y.numpy(), [1.0, 8.0])
    assert type(y.op) is Cube and len(y.inputs) == 1 and y.inputs[0] is x
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 12.0])
    (grad,) = y.op.gradient_as_tuple(Tensor([1.0, 1.0]), y)
    np.testing.assert_array_equal(grad.numpy(), [3.0, 12.0])


def test_gradient_as_tuple_and_inputs_without_gradient():
    a, b = Tensor([2.0]), Tensor([3.0], requires_grad=False)
    out = TwoGradients()(a, b)
    grads = out.op.gradient_as_tuple(Tensor([1.0]), out)
    assert isinstance(grads, tuple) and len(grads) == 2
    out.backward()
    np.testing.assert_array_equal(a.grad.numpy(), [3.0])
    assert b.grad is None     # the op offered a gradient, but b does not require one


def test_realize_cached_data_computes_when_missing():
    a = Tensor([1.0, 2.0])
    y = a * 3
    y.cached_data = None
    np.testing.assert_array_equal(y.realize_cached_data(), [3.0, 6.0])


def reference_topo_sort(node_list):
    "needle's recursive post-order DFS, as in the homework solution."
    visited, order = set(), []
    def dfs(node):
        if node in visited: return
        for child in node.inputs: dfs(child)
        visited.add(node)
        order.append(node)
    for node in node_list: dfs(node)
    return order


class Combine(TensorOp):
    "Sum of any number of inputs (repeats allowed): lets the DAG have nodes of any in-degree."
    def compute(self, *arrays): return sum(arrays)
    def gradient(self, out_grad, node): return tuple(out_grad for _ in node.inputs)


@pytest.mark.parametrize("seed", range(20))
def test_find_topo_sort_matches_needles_order_on_random_dags(seed):
    rnd = random.Random(seed)
    nodes = [Tensor([float(i)]) for i in range(rnd.randint(1, 4))]
    for _ in range(rnd.randint(1, 30)):
        inputs = [rnd.choice(nodes) for _ in range(rnd.randint(1, 4))]
        nodes.append(Combine()(*inputs))
    outputs = [rnd.choice(nodes) for _ in range(rnd.randint(1, 3))]
    ours = ndl.find_topo_sort(outputs)
    assert [id(n) for n in ours] == [id(n) for n in reference_topo_sort(outputs)]
    position = {id(n): i for i, n in enumerate(ours)}
    assert all(position[id(i)] < position[id(n)] for n in ours for i in n.inputs)


def test_tensor_counter_counts_live_tensors():
    gc.collect()
    before = autograd.TENSOR_COUNTER
    a = Tensor([1.0])
    b = a * 2 + 1
    assert autograd.TENSOR_COUNTER == before + 3
    del a, b
    gc.collect()
    assert autograd.TENSOR_COUNTER == before
    w = Tensor(np.ones((2, 2)))
    for _ in range(5):
        (w @ w).sum().backward()
    w.grad = None
    gc.collect()
    assert autograd.TENSOR_COUNTER == before + 1


# --- backward -----------------------------------------------------------------------------------
def test_backward_defaults_to_ones_and_accepts_out_grad(device):
    x = Tensor([1.0, 2.0, 3.0], device=device)
    (x * x).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0, 6.0])
    (x * x).backward(Tensor([1.0, 0.0, -1.0], device=device))
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 0.0, -6.0])
    (x * x).backward(np.array([0.5, 0.5, 0.5]))
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 2.0, 3.0])
    assert x.grad.dtype == np.float32


def test_readme_example_matches_the_hand_computed_gradient():
    x = ndl.Tensor([[1., 2.], [3., 4.]], requires_grad=True)
    (x @ x).sum().backward()
    # d/dX sum(X X) = 1 X^T + X^T 1 with X^T = [[1, 3], [2, 4]]:
    # 1 X^T repeats the column sums of X^T, [[3, 7], [3, 7]]; X^T 1 its row sums, [[4, 4], [6, 6]]
    np.testing.assert_array_equal(x.grad.numpy(), [[7.0, 11.0], [9.0, 13.0]])


def test_a_100000_op_chain_backpropagates_and_frees():
    gc.collect()
    before = autograd.TENSOR_COUNTER
    limit = sys.getrecursionlimit()
    x = Tensor([1.0])
    y = x
    for _ in range(100_000):
        y = y + 1.0
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0])
    assert y.numpy()[0] == 100_001.0 and sys.getrecursionlimit() == limit
    del y, x
    gc.collect()
    assert autograd.TENSOR_COUNTER == before


def test_reused_nodes_sum_their_gradients():
    x = Tensor([3.0])
    y = x * x              # used three times below
    z = y + y * x + y
    z.backward()
    # z = 2 x^2 + x^3: dz/dx = 4x + 3x^2
    np.testing.assert_array_equal(x.grad.numpy(), [4 * 3 + 3 * 9.0])
    np.testing.assert_array_equal(y.grad.numpy(), [2.0 + 3.0])


def test_each_backward_replaces_grad():
    x = Tensor([2.0])
    (x * 3).backward()
    (x * 5).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [5.0])


def test_second_order_gradients():
    x2, x3 = Tensor([6.0]), Tensor([0.0])
    y = x2 * x2 + x2 * x3
    y.backward(create_graph=True)   # needle records every backward; here that is asked for, as in PyTorch
    np.testing.assert_array_equal(x2.grad.numpy(), [12.0])
    np.testing.assert_array_equal(x3.grad.numpy(), [6.0])
    grad_x2 = x2.grad
    grad_x2.backward()
    np.testing.assert_array_equal(x2.grad.numpy(), [2.0])
    np.testing.assert_array_equal(x3.grad.numpy(), [1.0])


@pytest.fixture
def count_computes(monkeypatch):
    "Count how many times each op class computes (forward or inside a backward)."
    counts = {}
    def install(op_class):
        original = op_class.compute
        def counted(self, *args):
            counts[op_class.__name__] = counts.get(op_class.__name__, 0) + 1
            return original(self, *args)
        monkeypatch.setattr(op_class, "compute", counted)
    install.counts = counts
    return install


def test_no_gradient_is_computed_for_inputs_that_do_not_need_one(count_computes):
    count_computes(ndl.ops.MatMul); count_computes(ndl.ops.EWiseMul); count_computes(ndl.ops.EWiseDiv)
    batch, weight = Tensor(np.ones((4, 3)), requires_grad=False), Tensor(np.ones((3, 2)))
    out = (batch @ weight).sum()
    assert count_computes.counts == {"MatMul": 1}
    out.backward()
    assert count_computes.counts == {"MatMul": 2}   # batch^T @ out_grad only; never out_grad @ weight^T
    assert batch.grad is None and weight.grad.shape == (3, 2)

    count_computes.counts.clear()
    scale = Tensor(np.full((4, 3), 2.0), requires_grad=False)
    (batch * scale * weight.sum()).sum().backward()
    # forward: batch*scale (constant, not recorded) and (.)*weight.sum(); backward: out_grad * const
    assert count_computes.counts["EWiseMul"] == 3
    assert scale.grad is None and batch.grad is None

    count_computes.counts.clear()
    (scale / weight.sum()).sum().backward()
    # forward, and the division in b's gradient -out_grad * a / (b * b); never a's out_grad / b
    assert count_computes.counts["EWiseDiv"] == 2


def test_graph_is_not_recorded_without_a_tensor_needing_gradient():
    a, b = Tensor([1.0], requires_grad=False), Tensor([2.0], requires_grad=False)
    c = a * b + 1
    assert c.op is None and c.inputs == () and not c.requires_grad
    w = Tensor([3.0])
    (c * w).backward()
    assert c.grad is None and a.grad is None
    np.testing.assert_array_equal(w.grad.numpy(), [3.0])


def test_no_grad_as_context_manager_and_decorator():
    w = Tensor([1.0, 2.0])
    assert ndl.autograd.is_grad_enabled()
    with ndl.no_grad():
        assert not ndl.autograd.is_grad_enabled()
        z = w * 3 + w
        with ndl.enable_grad():
            recorded = w * 2
        still_off = w * 2
    assert z.op is None and not z.requires_grad and z.inputs == ()
    assert recorded.op is not None and recorded.requires_grad
    assert still_off.op is None
    assert ndl.autograd.is_grad_enabled()

    @ndl.no_grad()
    def step(t): return t * 5
    out = step(w)
    assert out.op is None and not out.requires_grad and ndl.autograd.is_grad_enabled()
    np.testing.assert_array_equal(out.numpy(), [5.0, 10.0])

    with pytest.raises(ZeroDivisionError):
        with ndl.no_grad():
            1 / 0
    assert ndl.autograd.is_grad_enabled()


# --- tuples -------------------------------------------------------------------------------------
def test_make_tuple_and_tuple_get_item():
    a, b = Tensor([1.0, 2.0]), Tensor([3.0])
    pair = ndl.make_tuple(a, b)
    assert isinstance(pair, TensorTuple) and len(pair) == 2
    assert ndl.tuple_get_item(pair, 1) is b           # needle folds get-item of make_tuple
    first, second = pair
    assert first is a and second is b
    np.testing.assert_array_equal(pair.tuple()[0].numpy(), [1.0, 2.0])
    unfolded = ndl.autograd.TupleGetItem(0)(pair, fold_const=False)
    (unfolded * 3).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [3.0, 3.0])


def test_fused_add_scalars_gradient():
    x = Tensor([1.0, 2.0])
    pair = ndl.fused_add_scalars(x, 1.0, 10.0)
    assert isinstance(pair, TensorTuple) and isinstance(pair.op, ndl.autograd.FusedAddScalars)
    np.testing.assert_array_equal(pair[0].numpy(), [2.0, 3.0])
    np.testing.assert_array_equal(pair[1].numpy(), [11.0, 12.0])
    (pair[0] * pair[1]).sum().backward()           # d/dx (x+1)(x+10) = 2x + 11
    np.testing.assert_array_equal(x.grad.numpy(), [13.0, 15.0])
    (pair[1] * 2).sum().backward()                 # one output only: zeros flow from the other
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0])


def test_split_outputs_sum_into_one_gradient():
    x = Tensor(np.arange(6.0).reshape(2, 3))
    parts = ndl.split(x, axis=1)
    assert len(parts) == 3
    (parts[0] * parts[2] + parts[0]).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[3.0, 0.0, 0.0], [6.0, 0.0, 3.0]])


# --- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [lambda a, b: a @ b, ndl.matmul])
def test_matmul_shape_mismatch_names_both_shapes(op):
    with pytest.raises(ValueError) as info:
        op(Tensor(np.ones((2, 3))), Tensor(np.ones((4, 5))))
    assert "(2, 3)" in str(info.value) and "(4, 5)" in str(info.value)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 5\)"):
        op(Tensor(np.ones(3)), Tensor(np.ones((2, 5))))


@pytest.mark.parametrize("op", [lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b,
                                lambda a, b: a / b, lambda a, b: a ** b, ndl.add, ndl.multiply])
def test_elementwise_shape_mismatch_names_both_shapes(op):
    with pytest.raises(ValueError) as info:
        op(Tensor(np.ones((2, 3))), Tensor(np.ones((4,))))
    assert "(2, 3)" in str(info.value) and "(4,)" in str(info.value)


def test_reshape_and_broadcast_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 2\)"):
        Tensor(np.ones((2, 3))).reshape((4, 2))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 3\)"):
        Tensor(np.ones((2, 3))).broadcast_to((3, 3))


class OtherDeviceArray:
    "A stand-in for an array on a second device (cupy-like: `.device.id`), which numpy refuses to mix."
    __array_ufunc__ = None
    def __init__(self, shape): self.shape, self.dtype, self.ndim = shape, np.dtype("float32"), len(shape)
    class device: id = 1


@pytest.mark.parametrize("op", [lambda a, b: a + b, lambda a, b: b * a, lambda a, b: a @ b,
                                lambda a, b: b - a, ndl.divide])
def test_mixing_devices_names_both_devices(op):
    here = Tensor(np.ones((2, 2), dtype=np.float32))
    there = Tensor.make_const(OtherDeviceArray((2, 2)))
    assert there.device == ndl.cuda(1)
    with pytest.raises(ValueError) as info:
        op(here, there)
    assert "cpu()" in str(info.value) and "cuda(1)" in str(info.value)


def test_setting_data_from_another_device_is_refused():
    t = Tensor([1.0, 2.0])
    with pytest.raises(ValueError, match=r"cpu\(\).*cuda\(1\)"):
        t.data = OtherDeviceArray((2,))


# --- data safety --------------------------------------------------------------------------------
VIEWS = {"reshape": lambda t: t.reshape((3, 4)), "transpose": lambda t: t.transpose(),
         "transpose_axes": lambda t: ndl.transpose(t, axes=(0, 1)),
         "broadcast_to": lambda t: t.broadcast_to((2, 4, 3)), "slice": lambda t: t[1:, ::2],
         "detach": lambda t: t.detach(), "data": lambda t: t.data}


@pytest.mark.parametrize("name", list(VIEWS))
def test_shape_ops_are_views_where_numpy_gives_views(device, name):
    t = Tensor(np.arange(12.0).reshape(4, 3), device=device)
    assert shares_memory(VIEWS[name](t), t)


def replacements(t):
    "The ways needle_nb code 'updates a tensor in place': each replaces its array."
    def set_data(): t.data = t.data * 0 - 1
    def set_cached_data(): t.cached_data = t.device.full(t.shape, -1.0, dtype=t.dtype)
    def initializer_like(): t.cached_data = np.full(t.shape, -1.0).astype(t.dtype)
    return [set_data, set_cached_data, initializer_like]


@pytest.mark.parametrize("name", list(VIEWS))
@pytest.mark.parametrize("which", [0, 1, 2])
def test_replacing_an_array_never_changes_a_tensor_sharing_memory(name, which):
    source = Tensor(np.arange(12.0).reshape(4, 3))
    view = VIEWS[name](source)
    snapshot_source, snapshot_view = source.numpy().copy(), view.numpy().copy()
    replacements(source)[which]()
    assert (source.numpy() == -1).all()
    np.testing.assert_array_equal(view.numpy(), snapshot_view)
    source = Tensor(snapshot_source)
    view = VIEWS[name](source)
    replacements(view)[which]()
    assert (view.numpy() == -1).all()
    np.testing.assert_array_equal(source.numpy(), snapshot_source)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_gradients_handed_to_several_inputs_are_independent(which):
    a, b = Tensor([1.0, 2.0]), Tensor([3.0, 4.0])
    c = a + b
    c.backward()
    replacements(a.grad)[which]()
    np.testing.assert_array_equal(b.grad.numpy(), [1.0, 1.0])
    np.testing.assert_array_equal(c.grad.numpy(), [1.0, 1.0])
    # and the out_grad a caller passes in stays the caller's
    out_grad = Tensor([5.0, 6.0], requires_grad=False)
    x = Tensor([0.0, 0.0])
    y = x + 1.0
    y.backward(out_grad)
    replacements(x.grad)[which]()
    replacements(y.grad)[which]()
    np.testing.assert_array_equal(out_grad.numpy(), [5.0, 6.0])


def test_ops_never_write_into_their_inputs(rs):
    arrays = [rs.rand(3, 4) + 0.5, rs.rand(3, 4) + 0.5, rs.rand(4, 2)]
    snapshots = [a.copy() for a in arrays]
    a, b, w = (Tensor.make_const(x, requires_grad=True) for x in arrays)   # no copies
    outs = [a + b, a - b, a * b, a / b, a ** b, -a, a @ w, a.exp(), a.log(), a.relu(), a.tanh(),
            a.sigmoid(), a.sum(1), a.max(0), ndl.logsumexp(a, (1,)), ndl.logsoftmax(a), a[[0, 0]],
            a.reshape((12,)), a.transpose(), ndl.stack([a, b], 1), ndl.split(a, 0)[1], a + 1, a * 2,
            a / 2, a ** 2, 2 - a, 2 / a]
    for out in outs:
        out.sum().backward()
        out.sum().backward()
    for array, snapshot in zip(arrays, snapshots):
        np.testing.assert_array_equal(array, snapshot)


def test_float32_mlp_gradients_stay_float32():
    "needle hw2's bug: ReLU's backward turned float32 gradients into float64."
    rs = np.random.RandomState(0)
    x = Tensor(rs.randn(8, 5).astype(np.float32), requires_grad=False)
    y_one_hot = Tensor(np.eye(3, dtype=np.float32)[rs.randint(0, 3, 8)], requires_grad=False)
    W1, b1 = Tensor(rs.randn(5, 16).astype(np.float32) * 0.3), Tensor(np.zeros((1, 16), np.float32))
    W2, b2 = Tensor(rs.randn(16, 3).astype(np.float32) * 0.3), Tensor(np.zeros((1, 3), np.float32))
    h = ndl.relu(ndl.matmul(x, W1) + ndl.broadcast_to(b1, (8, 16)))
    h = ndl.tanh(h) * ndl.sigmoid(h) + ndl.power_scalar(h, 2) / np.float64(2.0)
    logits = ndl.matmul(h, W2) + ndl.broadcast_to(b2, (8, 3))
    loss = (ndl.logsumexp(logits, axes=(1,)) - ndl.summation(logits * y_one_hot, axes=(1,))).sum() / 8
    loss = loss + ndl.mul_scalar(ndl.summation(W1 * W1), np.float64(1e-3)) - ndl.logsoftmax(logits).sum() * 0.0
    assert loss.dtype == np.float32
    loss.backward()
    for p in (W1, b1, W2, b2):
        assert p.grad.dtype == np.float32 and p.grad.cached_data.dtype == np.float32, p.grad.dtype
        assert p.grad.shape == p.shape
    assert x.grad is None


def test_unknown_tensor_keywords_warn_naming_them():
    "needle accepts and ignores unknown keywords; we accept them too, with a warning that names them."
    with pytest.warns(UserWarning, match="require_grad"):
        t = Tensor([1.0, 2.0], require_grad=False)
    assert t.requires_grad   # the typo changed nothing, which is why the warning matters
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Tensor([1.0], requires_grad=False, dtype="float64")   # known keywords: no warning
