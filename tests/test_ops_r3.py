"""Round 3 of the ops: `a - b` built as needle builds it, `stack` of arrays, and PyTorch's habits
(`mean`, `.T`, `cat`/`concatenate`), each gradient checked by finite differences and against PyTorch."""
import numpy as np
import pytest
import torch

import needle_nb as ndl
from needle_nb import ops
from needle_nb.autograd import find_topo_sort

T = lambda *shape, seed=0: ndl.Tensor(np.random.RandomState(seed).randn(*shape))   # float64


def op_names(nodes):
    return [type(n.op).__name__ if n.op is not None else "leaf" for n in nodes]


# --- a - b is a + (-b), as needle's autograd.py builds it -------------------------------------------

def test_sub_is_add_of_negate_two_nodes():
    a, b = T(2, 3), T(2, 3, seed=1)
    c = a - b
    assert isinstance(c.op, ops.EWiseAdd)
    assert c.inputs[0] is a and isinstance(c.inputs[1].op, ops.Negate) and c.inputs[1].inputs[0] is b
    np.testing.assert_allclose(c.numpy(), a.numpy() - b.numpy())


def test_sub_of_array_and_number_as_needle():
    a = T(2, 3)
    c = a - np.ones((2, 3))
    # Negate of a constant is a constant, detached as needle's make_from_op detaches it
    assert isinstance(c.op, ops.EWiseAdd) and c.inputs[1].op is None and not c.inputs[1].requires_grad
    np.testing.assert_allclose(c.inputs[1].numpy(), -np.ones((2, 3)))
    s = a - 2.5
    assert isinstance(s.op, ops.AddScalar) and s.op.scalar == -2.5   # needle: AddScalar(-c)
    r = np.ones((2, 3)) - a
    assert isinstance(r.op, ops.EWiseAdd) and isinstance(r.inputs[1].op, ops.Negate)
    np.testing.assert_allclose(r.numpy(), 1 - a.numpy())
    q = 2.0 - a
    assert isinstance(q.op, ops.AddScalar) and isinstance(q.inputs[0].op, ops.Negate)


def test_topo_sort_as_needle_hw1():
    # needle's hw1 test_topo_sort, case 1: c1 = 3*a1*a1 + 4*b1*a1 - a1
    a1, b1 = ndl.Tensor(np.asarray([[0.88282157]])), ndl.Tensor(np.asarray([[0.90170084]]))
    c1 = 3 * a1 * a1 + 4 * b1 * a1 - a1
    soln = np.array([[[0.88282157]], [[2.64846471]], [[2.33812177]], [[0.90170084]], [[3.60680336]],
                     [[3.1841638]], [[5.52228558]], [[-0.88282157]], [[4.63946401]]])
    order = find_topo_sort([c1])
    np.testing.assert_allclose(np.array([x.numpy() for x in order]), soln, rtol=1e-6, atol=1e-6)
    assert op_names(order) == ["leaf", "MulScalar", "EWiseMul", "leaf", "MulScalar", "EWiseMul",
                               "EWiseAdd", "Negate", "EWiseAdd"]


def test_sub_gradients_match_torch():
    a, b = T(3, 4), T(4, seed=1)   # broadcast b
    for x in (a, b): x.requires_grad = True
    (a - b).sum().backward()
    ta, tb = (torch.tensor(x.numpy(), requires_grad=True) for x in (a, b))
    (ta - tb).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy())
    np.testing.assert_allclose(b.grad.numpy(), tb.grad.numpy())
    ops.gradient_check(lambda x, y: x - y, T(3, 4), T(3, 1, seed=2), backward=True)
    ops.gradient_check(lambda x: np.ones((2, 3, 4)) - x, T(3, 4), backward=True)


def test_subtract_function_keeps_one_node():
    a, b = T(2), T(2, seed=1)
    assert isinstance(ndl.subtract(a, b).op, ops.EWiseSub)
    ops.gradient_check(ndl.subtract, a, b)


# --- stack of arrays, its shape errors; cat / concatenate ------------------------------------------

def test_stack_takes_arrays_as_constants():
    a = T(2, 3)
    a.requires_grad = True
    s = ndl.stack([a, np.ones((2, 3))], axis=1)
    np.testing.assert_allclose(s.numpy(), np.stack([a.numpy(), np.ones((2, 3))], axis=1))
    s.sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), np.ones((2, 3)))
    np.testing.assert_allclose(ndl.stack([np.zeros(2), np.ones(2)]).numpy(), [[0, 0], [1, 1]])


@pytest.mark.parametrize("bad", [None, "x"])
def test_stack_refuses_non_arrays(bad):
    with pytest.raises(TypeError, match="element 1"):
        ndl.stack([T(2), bad])


def test_stack_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"tensor 0 has shape \(2, 3\) and tensor 2 has shape \(3, 2\)"):
        ndl.stack([T(2, 3), T(2, 3), T(3, 2)])


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat_values_and_gradients(dim):
    shapes = [(2, 3), (2, 3)] if dim == 0 else [(2, 3), (2, 1), (2, 4)]
    if dim == 0: shapes = [(2, 3), (4, 3)]
    xs = [T(*s, seed=i) for i, s in enumerate(shapes)]
    np.testing.assert_allclose(ndl.cat(xs, dim=dim).numpy(), np.concatenate([x.numpy() for x in xs], axis=dim))
    ops.gradient_check(lambda *a: ndl.cat(list(a), dim=dim), *xs, backward=True)
    ops.gradient_check(lambda *a: ndl.concatenate(list(a), axis=dim), *xs, backward=True)
    for x in xs: x.requires_grad = True
    c = torch.tensor(np.random.RandomState(5).randn(*ndl.cat(xs, dim=dim).shape))
    (ndl.cat(xs, dim=dim) * ndl.Tensor(c.numpy())).sum().backward()
    ts = [torch.tensor(x.numpy(), requires_grad=True) for x in xs]
    (torch.cat(ts, dim=dim) * c).sum().backward()
    for x, t in zip(xs, ts): np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy())


def test_cat_errors_name_shapes():
    with pytest.raises(ValueError, match=r"tensor 0 has shape \(2, 3\) and tensor 1 has shape \(3, 3\)"):
        ndl.cat([T(2, 3), T(3, 3)], dim=1)
    with pytest.raises(ValueError, match="out of range"):
        ndl.cat([T(2, 3)], dim=2)
    with pytest.raises(ValueError, match="zero-dimensional"):
        ndl.cat([ndl.Tensor(np.float64(1.0))])
    with pytest.raises(ValueError, match="empty"):
        ndl.cat([])


# --- mean and .T ----------------------------------------------------------------------------------

@pytest.mark.parametrize("axes,keepdims", [(None, False), (None, True), (1, False), ((0, 2), True), (-1, False)])
def test_mean_matches_torch(axes, keepdims):
    x = T(2, 3, 4)
    np.testing.assert_allclose(x.mean(axes, keepdims=keepdims).numpy(),
                               x.numpy().mean(axis=axes, keepdims=keepdims))
    ops.gradient_check(lambda a: a.mean(axes, keepdims=keepdims), x, backward=True)
    x.requires_grad = True
    x.mean(axes, keepdims=keepdims).sum().backward()
    t = torch.tensor(x.numpy(), requires_grad=True)
    (t.mean() if axes is None and not keepdims else t.mean(dim=tuple(range(3)) if axes is None else axes,
                                                          keepdim=keepdims)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy())


def test_mean_keywords():
    x = T(3, 4)
    np.testing.assert_allclose(x.mean(dim=0).numpy(), x.numpy().mean(0))
    np.testing.assert_allclose(x.mean(axis=1).numpy(), x.numpy().mean(1))
    with pytest.raises(TypeError, match="axes and dim"):
        x.mean(0, dim=0)


@pytest.mark.parametrize("shape", [(), (3,), (3, 4), (2, 3, 4), (2, 3, 4, 5)])
def test_T_as_torch(shape):
    x = T(*shape)
    np.testing.assert_array_equal(x.T.numpy(), torch.tensor(x.numpy()).mT.numpy() if len(shape) == 2
                                  else np.transpose(x.numpy()))
    if len(shape) < 2: assert x.T is x
    else: ops.gradient_check(lambda a: a.T, x, backward=True)


# --- SumToShape on channels-last memory: one BLAS product with ones (issue 27) ---------------------

def _channels_last(rs, n, c, h, w): return rs.randn(n, h, w, c).transpose(0, 3, 1, 2)   # a conv's NCHW view


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sum_to_shape_on_channels_last_memory_equals_numpys_sum(dtype):
    "A conv bias's gradient: Σ over (0, 2, 3) of an NCHW view of NHWC memory, through the product (it must be taken)."
    rs = np.random.RandomState(0)
    a = _channels_last(rs, 16, 12, 5, 7).astype(dtype)
    fast = ops._sum_kept_fastest(a, (0, 2, 3))
    assert fast is not None and fast.shape == (1, 12, 1, 1) and fast.dtype == dtype
    rtol = 1e-12 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(fast, a.sum(axis=(0, 2, 3), keepdims=True), rtol=rtol)
    out = ops.SumToShape((1, 12, 1, 1)).compute(a)
    np.testing.assert_allclose(out, a.sum(axis=(0, 2, 3), keepdims=True), rtol=rtol)
    np.testing.assert_allclose(ops.SumToShape((12, 1, 1)).compute(a), a.sum(axis=(0, 2, 3)).reshape(12, 1, 1), rtol=rtol)
    # several kept axes, fastest in memory: (N, H, W, C) summed over N to (H, W, C)
    b = rs.randn(64, 3, 4, 5).astype(dtype)
    np.testing.assert_allclose(ops.SumToShape((3, 4, 5)).compute(b), b.sum(axis=0), rtol=rtol)


def test_sum_to_shape_takes_numpys_sum_where_the_product_does_not_pay():
    rs = np.random.RandomState(1)
    a = _channels_last(rs, 16, 12, 5, 7)
    assert ops._sum_kept_fastest(np.ascontiguousarray(a), (0, 2, 3)) is None      # NCHW memory: C is not fastest
    assert ops._sum_kept_fastest(a[:2], (0, 2, 3)) is None                          # 840 entries: too small
    assert ops._sum_kept_fastest(rs.randn(4096, 8), (0,)) is None                   # a matrix: numpy's rows sum
    assert ops._sum_kept_fastest(rs.randn(512, 64, 1, 1), (0, 2, 3)) is None        # a matrix with unit axes
    assert ops._sum_kept_fastest(a.astype(np.int64), (0, 2, 3)) is None             # not BLAS's dtypes
    assert ops._sum_kept_fastest(a, (0, 1, 2, 3)) is None                           # nothing kept: a full sum


def test_conv_bias_gradient_on_the_product_matches_torch(monkeypatch):
    "nn.Conv's bias gradient (SumToShape of its channels-last output's gradient) against PyTorch in float64."
    rs = np.random.RandomState(2)
    conv = ndl.nn.Conv(3, 8, 3, bias=True, dtype="float64")
    x = ndl.Tensor(rs.randn(16, 3, 10, 10), dtype="float64")
    c = _channels_last(rs, 16, 8, 10, 10)            # so the output's gradient is channels-last, as BatchNorm's is
    taken = []
    real = ops._sum_kept_fastest
    monkeypatch.setattr(ops, "_sum_kept_fastest", lambda a, axes: taken.append(real(a, axes) is not None) or real(a, axes))
    (conv(x) * ndl.Tensor(c, dtype="float64")).sum().backward()
    assert True in taken                                 # the bias's sum took the product
    w = torch.tensor(conv.weight.numpy()).permute(3, 2, 0, 1).contiguous()
    bias = torch.tensor(conv.bias.numpy(), requires_grad=True)
    (torch.nn.functional.conv2d(torch.tensor(x.numpy()), w, bias, padding=1) * torch.tensor(c.copy())).sum().backward()
    np.testing.assert_allclose(conv.bias.grad.numpy(), bias.grad.numpy(), rtol=1e-10)
