"""Convolution ops (nbs/02a_conv_ops) and layers (nbs/04c_nn_conv).

- ops: values and gradients against finite differences (float64, `ndl.gradient_check`) and against
  PyTorch (`check_op` from test_ops: forward and backward in float64) on random shapes: strides 1-3,
  padding 0-2, kernels 1-5, odd and even sizes, and every remainder (H + 2p - K) mod s;
- layers: `nn.Conv` against `torch.nn.Conv2d` with the weights copied across (needle stores the
  kernel as (K, K, C_in, C_out), torch as (C_out, C_in, K, K): torch = needle.transpose(3, 2, 0, 1)),
  needle's draw order, `BatchNorm2d` against torch in train and eval, the pooling layers;
- the conv benchmark's quick mode runs.
"""
import inspect, math, runpy, sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import needle_nb as ndl
import needle_nb.nn as nn
from needle_nb import Tensor

from conftest import DEVICES, nodes_made
from test_ops import check_op
from test_nn_layers import check_against_torch, _set_affine

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)
devices = pytest.mark.parametrize("device", DEVICES, ids=repr)


def t64(rs, *shape, device=None): return Tensor(rs.randn(*shape), device=device)


def torch_conv(stride, padding):
    "PyTorch's conv2d on needle's layouts: NHWC input, (K, K, C_in, C_out) kernel, NHWC output."
    import torch
    return lambda a, b: torch.nn.functional.conv2d(a.permute(0, 3, 1, 2), b.permute(3, 2, 0, 1).contiguous(),
                                                   stride=stride, padding=padding).permute(0, 2, 3, 1)


# --- names and defaults (needle's) ----------------------------------------------------------------
def test_names_and_defaults_are_needles():
    for name in ["conv", "flip", "dilate", "undilate", "Conv", "Flip", "Dilate", "UnDilate", "pad",
                 "max_pool2d", "avg_pool2d", "global_avg_pool2d"]:
        assert getattr(ndl, name) is getattr(ndl.ops_conv, name), name
    # needle's parameters, in needle's order; `layout` is an extension after them, needle's NHWC by default
    assert list(inspect.signature(ndl.conv).parameters) == ["a", "b", "stride", "padding", "layout"]
    assert inspect.signature(ndl.conv).parameters["layout"].default == "NHWC"
    assert inspect.signature(ndl.conv).parameters["padding"].default == 1
    assert inspect.signature(ndl.conv).parameters["stride"].default == 1
    op = ndl.ops_conv.Conv()
    assert (op.stride, op.padding) == (1, 0)
    assert list(inspect.signature(ndl.flip).parameters) == ["a", "axes"]
    assert list(inspect.signature(ndl.dilate).parameters) == ["a", "axes", "dilation"]
    assert list(inspect.signature(ndl.undilate).parameters) == ["a", "axes", "dilation"]
    params = list(inspect.signature(nn.Conv).parameters)
    assert params == ["in_channels", "out_channels", "kernel_size", "stride", "bias", "device", "dtype", "padding"]
    assert nn.Flatten is ndl.nn.layers.Flatten and nn.BatchNorm2d is ndl.nn.conv.BatchNorm2d


# --- flip, dilate, undilate, pad --------------------------------------------------------------------
@devices
@pytest.mark.parametrize("axes", [(0,), (1, 2), (0, 1, 2), (2,), (-1,), 1])
def test_flip_values_and_gradients(device, rs, axes):
    a = t64(rs, 2, 3, 4, device=device)
    np.testing.assert_array_equal(ndl.flip(a, axes).numpy(), np.flip(a.numpy(), axes))
    np.testing.assert_array_equal(ndl.flip(ndl.flip(a, axes), axes).numpy(), a.numpy())
    ndl.gradient_check(lambda x: ndl.flip(x, axes), a, backward=True)
    check_op([(2, 3, 4)], lambda x: x.flip(axes if isinstance(axes, tuple) else (axes,)),
             lambda x: ndl.flip(x, axes), device=device)


def numpy_dilate(a, axes, d):
    "needle's additive dilation written directly: element k goes to index k(d+1)."
    axes = [ax for ax in axes if ax < a.ndim]
    shape = [n * (d + 1) if i in axes else n for i, n in enumerate(a.shape)]
    out = np.zeros(shape)
    out[tuple(slice(None, None, d + 1) if i in axes else slice(None) for i in range(a.ndim))] = a
    return out


def test_dilate_matches_needles_examples():
    a = Tensor(np.array([[6.0, 1.0, 4.0, 4.0, 8.0], [4.0, 6.0, 3.0, 5.0, 8.0]]))
    np.testing.assert_array_equal(ndl.dilate(a, (0,), 0).numpy(), a.numpy())
    np.testing.assert_array_equal(ndl.dilate(a, (0,), 1).numpy(),
                                  [[6, 1, 4, 4, 8], [0, 0, 0, 0, 0], [4, 6, 3, 5, 8], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(ndl.dilate(a, (1,), 1).numpy()[0], [6, 0, 1, 0, 4, 0, 4, 0, 8, 0])
    assert ndl.dilate(a, (0, 1), 2).shape == (6, 15)
    np.testing.assert_array_equal(ndl.dilate(a, (2,), 1).numpy(), a.numpy())     # axis >= ndim ignored
    np.testing.assert_array_equal(ndl.dilate(a, (1, 2), 1).numpy(), ndl.dilate(a, (1,), 1).numpy())


@devices
@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple),
       d=st.integers(0, 3), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_dilate_undilate_values_and_gradients(device, shape, d, seed, data):
    rs = np.random.RandomState(seed)
    axes = tuple(data.draw(st.lists(st.integers(0, len(shape) + 1), min_size=1, max_size=3, unique=True)))
    a = t64(rs, *shape, device=device)
    dilated = ndl.dilate(a, axes, d)
    np.testing.assert_array_equal(dilated.numpy(), numpy_dilate(a.numpy(), axes, d))
    np.testing.assert_array_equal(ndl.undilate(dilated, axes, d).numpy(), a.numpy())
    ndl.gradient_check(lambda x: ndl.dilate(x, axes, d), a, backward=True)
    # undilate of any size, including sizes that are not a multiple of d + 1
    b = t64(rs, *[n + data.draw(st.integers(0, d)) for n in shape], device=device)
    kept = tuple(slice(None, None, d + 1) if i in axes else slice(None) for i in range(b.ndim))
    np.testing.assert_array_equal(ndl.undilate(b, axes, d).numpy(), b.numpy()[kept])
    grads = ndl.gradient_check(lambda x: ndl.undilate(x, axes, d), b, backward=True)
    assert grads[0].shape == b.shape


def test_dilate_against_torch():
    # torch has no dilate; its transposed convolution with a 1x1 identity kernel and stride d+1 is one
    check_op([(2, 3, 4, 2)], lambda x: __import__("torch").nn.functional.conv_transpose2d(
                 x.permute(0, 3, 1, 2), __import__("torch").eye(2, dtype=x.dtype)[:, :, None, None], stride=3,
                 output_padding=2).permute(0, 2, 3, 1),
             lambda x: ndl.dilate(x, (1, 2), 2))


def test_bad_dilation_and_flip_axes():
    with pytest.raises(ValueError, match="dilation must be an integer >= 0, got -1"): ndl.dilate(Tensor([1.0]), (0,), -1)
    with pytest.raises(ValueError, match="flip: axis 3 is out of range"): ndl.flip(Tensor(np.ones((2, 2))), (3,))


@devices
@pytest.mark.parametrize("widths", [((1, 2), (0, 0), (3, 1)), ((0, 0), (2, 2), (0, 0)), ((-1, 1), (0, -2), (1, 0))])
def test_pad_values_and_gradients(device, rs, widths):
    a = t64(rs, 3, 4, 2, device=device)
    out = ndl.pad(a, widths)
    crop = tuple(slice(-min(l, 0), n + min(r, 0)) for (l, r), n in zip(widths, a.shape))
    expected = np.pad(a.numpy()[crop], [(max(l, 0), max(r, 0)) for l, r in widths])
    np.testing.assert_array_equal(out.numpy(), expected)
    ndl.gradient_check(lambda x: ndl.pad(x, widths), a, backward=True)
    if all(l >= 0 and r >= 0 for l, r in widths):
        flat = [w for pair in reversed(widths) for w in pair]   # torch lists the last axis first
        check_op([(3, 4, 2)], lambda x: __import__("torch").nn.functional.pad(x, flat), lambda x: ndl.pad(x, widths),
                 device=device)
    with pytest.raises(ValueError, match="one \\(left, right\\) pair per axis"): ndl.pad(a, ((1, 1),))
    with pytest.raises(ValueError, match="crop more"): ndl.pad(a, ((-2, -2), (0, 0), (0, 0)))


# --- conv -----------------------------------------------------------------------------------------
@st.composite
def conv_cases(draw):
    "A random convolution: odd and even sizes, kernel 1-5, stride 1-3, padding 0-2, non-square inputs."
    K, s, p = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(0, 2))
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    assume(H + 2 * p >= K and W + 2 * p >= K)
    N, c_in, c_out = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return (N, H, W, c_in), (K, K, c_in, c_out), s, p


# every remainder r = (H + 2p - K) mod s, including r not in {0, s - 1} where a shortcut goes wrong
REMAINDERS = [((2, 5, 5, 2), (3, 3, 2, 3), 1, 1), ((1, 7, 6, 2), (3, 3, 2, 2), 2, 0),
              ((2, 8, 8, 1), (3, 3, 1, 2), 3, 1), ((1, 6, 5, 2), (2, 2, 2, 1), 3, 2),
              ((1, 4, 4, 2), (1, 1, 2, 2), 2, 2), ((1, 9, 7, 1), (4, 4, 1, 2), 2, 1),
              ((2, 10, 10, 3), (5, 5, 3, 2), 3, 2), ((1, 6, 6, 4), (3, 3, 4, 1), 1, 0),
              ((1, 7, 7, 2), (5, 5, 2, 2), 3, 0), ((1, 3, 3, 1), (3, 3, 1, 1), 1, 2)]


def test_remainder_cases_cover_every_kind():
    kinds = {((a[1] + 2 * p - b[0]) % s, s) for a, b, s, p in REMAINDERS}
    assert {(0, 1), (0, 2), (1, 3), (2, 3), (1, 2)} <= kinds
    assert any(0 < r < s - 1 for r, s in kinds)


@devices
@pytest.mark.parametrize("a_shape, b_shape, stride, padding", REMAINDERS)
def test_conv_finite_differences(device, rs, a_shape, b_shape, stride, padding):
    a, b = t64(rs, *a_shape, device=device), t64(rs, *b_shape, device=device)
    out = ndl.conv(a, b, stride=stride, padding=padding)
    H_out = (a_shape[1] + 2 * padding - b_shape[0]) // stride + 1
    W_out = (a_shape[2] + 2 * padding - b_shape[0]) // stride + 1
    assert out.shape == (a_shape[0], H_out, W_out, b_shape[3])
    grads = ndl.gradient_check(lambda x, w: ndl.conv(x, w, stride=stride, padding=padding), a, b, backward=True)
    assert [g.shape for g in grads] == [a_shape, b_shape]


@devices
@pytest.mark.parametrize("a_shape, b_shape, stride, padding", REMAINDERS)
def test_conv_against_torch_remainders(device, a_shape, b_shape, stride, padding):
    check_op([a_shape, b_shape], torch_conv(stride, padding),
             lambda a, b: ndl.conv(a, b, stride=stride, padding=padding), device=device)


@devices
@SETTINGS
@given(case=conv_cases(), seed=st.integers(0, 2**31 - 1))
def test_conv_against_torch_random_shapes(device, case, seed):
    a_shape, b_shape, stride, padding = case
    check_op([a_shape, b_shape], torch_conv(stride, padding),
             lambda a, b: ndl.conv(a, b, stride=stride, padding=padding), device=device, seed=seed % 1000)


@SETTINGS
@given(case=conv_cases(), seed=st.integers(0, 2**31 - 1))
def test_conv_finite_differences_random_shapes(case, seed):
    a_shape, b_shape, stride, padding = case
    rs = np.random.RandomState(seed)
    a, b = t64(rs, *a_shape), t64(rs, *b_shape)
    ndl.gradient_check(lambda x, w: ndl.conv(x, w, stride=stride, padding=padding), a, b, backward=True)


@pytest.mark.parametrize("c_in, c_out", [(8, 2), (2, 8)])
def test_both_conv_algorithms_agree_with_torch(c_in, c_out):
    "im2col (few input channels) and multiply-then-shift-add (few output channels) are both exercised."
    check_op([(2, 6, 7, c_in), (3, 3, c_in, c_out)], torch_conv(1, 1), lambda a, b: ndl.conv(a, b, padding=1))


def test_conv_default_padding_and_float32(rs):
    a = Tensor(rs.randn(2, 6, 6, 3).astype(np.float32))
    b = Tensor(rs.randn(3, 3, 3, 4).astype(np.float32))
    out = ndl.conv(a, b)
    assert out.shape == (2, 6, 6, 4) and out.dtype == np.float32
    assert ndl.ops_conv.Conv()(a, b).shape == (2, 4, 4, 4)
    out.sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float32


def test_conv_second_derivatives_against_torch(torch, rs):
    a_np, b_np = rs.randn(1, 6, 5, 2), rs.randn(3, 3, 2, 2)
    a, b = Tensor(a_np), Tensor(b_np)
    out = ndl.conv(a, b, stride=2, padding=1)
    grad_a, grad_b = out.op.gradient_as_tuple(out * 2.0, out)
    (grad_a.sum() + (grad_b * grad_b).sum()).backward()
    at, bt = torch.tensor(a_np, requires_grad=True), torch.tensor(b_np, requires_grad=True)
    out_t = torch_conv(2, 1)(at, bt)
    ga, gb = torch.autograd.grad(out_t, (at, bt), grad_outputs=out_t * 2.0, create_graph=True)
    (ga.sum() + (gb * gb).sum()).backward()
    np.testing.assert_allclose(grad_a.numpy(), ga.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(a.grad.numpy(), at.grad.numpy(), atol=1e-9)
    np.testing.assert_allclose(b.grad.numpy(), bt.grad.numpy(), atol=1e-9)


@devices
@pytest.mark.parametrize("stride, padding, shape", [(1, 1, (2, 3, 7, 6)), (2, 0, (2, 3, 9, 8)), (3, 2, (1, 2, 8, 7)),
                                                    (2, 1, (1, 2, 6, 6))])
def test_conv_nchw_layout_matches_torch_to_second_order(torch, rs, device, stride, padding, shape):
    "layout='NCHW': torch's conv2d on the same NCHW arrays, values, gradients and second derivatives, no transpose nodes."
    a_np, b_np = rs.randn(*shape), rs.randn(3, 3, shape[1], 4)
    a, b = Tensor(a_np, device=device), Tensor(b_np, device=device)
    result = {}
    def forward_and_gradients():
        out = result["out"] = ndl.conv(a, b, stride=stride, padding=padding, layout="NCHW")
        result["grads"] = out.op.gradient_as_tuple(out * 2.0, out)
    made = nodes_made(forward_and_gradients)
    assert "Transpose" not in made, made
    out, (grad_a, grad_b) = result["out"], result["grads"]
    (grad_a.sum() + (grad_b * grad_b).sum()).backward()
    at, bt = torch.tensor(a_np, requires_grad=True), torch.tensor(b_np, requires_grad=True)
    out_t = torch.nn.functional.conv2d(at, bt.permute(3, 2, 0, 1), stride=stride, padding=padding)
    ga, gb = torch.autograd.grad(out_t, (at, bt), grad_outputs=out_t * 2.0, create_graph=True)
    (ga.sum() + (gb * gb).sum()).backward()
    np.testing.assert_allclose(out.numpy(), out_t.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(grad_a.numpy(), ga.detach().numpy(), atol=1e-9)
    np.testing.assert_allclose(grad_b.numpy(), gb.detach().numpy(), atol=1e-9)
    np.testing.assert_allclose(a.grad.numpy(), at.grad.numpy(), atol=1e-8)
    np.testing.assert_allclose(b.grad.numpy(), bt.grad.numpy(), atol=1e-8)


def test_conv_layout_is_checked():
    with pytest.raises(ValueError, match="layout must be 'NHWC'"): ndl.conv(Tensor(np.ones((1, 4, 4, 1))), Tensor(np.ones((3, 3, 1, 1))), layout="NCWH")
    with pytest.raises(ValueError, match=r"NCHW array \(4 axes\)"):
        ndl.conv(Tensor(np.ones((4, 4, 1))), Tensor(np.ones((3, 3, 1, 1))), layout="NCHW")


@pytest.mark.parametrize("call, message", [
    (lambda: ndl.conv(Tensor(np.ones((1, 5, 5, 3))), Tensor(np.ones((3, 3, 2, 4)))), "has 3 channels"),
    (lambda: ndl.conv(Tensor(np.ones((1, 2, 2, 1))), Tensor(np.ones((5, 5, 1, 1)))), "larger than the padded input"),
    (lambda: ndl.conv(Tensor(np.ones((5, 5, 3))), Tensor(np.ones((3, 3, 3, 4)))), "NHWC"),
    (lambda: ndl.conv(Tensor(np.ones((1, 5, 5, 1))), Tensor(np.ones((3, 3, 1, 1))), stride=0), "stride must be"),
    (lambda: ndl.conv(Tensor(np.ones((1, 5, 5, 1))), Tensor(np.ones((3, 3, 1, 1))), padding=-1), "padding must be"),
])
def test_conv_errors_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message): call()


# --- pooling --------------------------------------------------------------------------------------
POOLS = [((2, 3, 8, 8), 2, None, 0), ((1, 2, 7, 6), 3, 2, 1), ((2, 1, 5, 5), 3, 1, 0), ((1, 2, 6, 7), 2, 3, 1),
         ((1, 1, 9, 4), 4, 2, 2), ((2, 2, 5, 6), 1, 2, 0), ((1, 1, 7, 7), 5, 3, 2)]


@devices
@pytest.mark.parametrize("shape, kernel, stride, padding", POOLS)
def test_pooling_against_torch(device, shape, kernel, stride, padding):
    F = pytest.importorskip("torch").nn.functional
    check_op([shape], lambda x: F.max_pool2d(x, kernel, stride, padding),
             lambda x: ndl.max_pool2d(x, kernel, stride, padding), device=device)
    check_op([shape], lambda x: F.avg_pool2d(x, kernel, stride, padding),
             lambda x: ndl.avg_pool2d(x, kernel, stride, padding), device=device)
    check_op([shape], lambda x: x.mean((2, 3)), ndl.global_avg_pool2d, device=device)


@pytest.mark.parametrize("shape, kernel, stride, padding", POOLS)
def test_pooling_finite_differences(rs, shape, kernel, stride, padding):
    a = t64(rs, *shape)
    ndl.gradient_check(lambda x: ndl.max_pool2d(x, kernel, stride, padding), a, backward=True)
    ndl.gradient_check(lambda x: ndl.avg_pool2d(x, kernel, stride, padding), a, backward=True)
    ndl.gradient_check(ndl.global_avg_pool2d, a, backward=True)


def test_pooling_gradients_are_differentiable(rs):
    a = t64(rs, 1, 2, 6, 6)
    for pool in (lambda x: ndl.max_pool2d(x, 3, 2, 1), lambda x: ndl.avg_pool2d(x, 3, 1, 1)):
        def grad_of_square(x):
            out = pool(x)
            return out.op.gradient_as_tuple(out * out, out)[0]
        ndl.gradient_check(grad_of_square, a, backward=True)


def test_pooling_errors():
    x = Tensor(np.ones((1, 1, 4, 4)))
    with pytest.raises(ValueError, match="at most half"): ndl.max_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match="kernel_size must be"): ndl.avg_pool2d(x, 0)
    with pytest.raises(ValueError, match="does not fit"): ndl.max_pool2d(x, 5)


# --- nn.Conv --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed, c_in, c_out, k, bias", [(0, 3, 8, 3, True), (5, 16, 4, 5, True), (2, 2, 3, 1, False),
                                                      (7, 4, 4, 4, True)])
def test_conv_layer_uses_needles_draws(seed, c_in, c_out, k, bias):
    ndl.manual_seed(seed)
    layer = nn.Conv(c_in, c_out, k, bias=bias)
    after = np.random.rand()                                   # the next draw on the global stream
    np.random.seed(seed)
    bound = math.sqrt(2) * math.sqrt(3 / (c_in * k * k))
    weight = (np.random.rand(k, k, c_in, c_out) * 2 * bound - bound).astype(np.float32)
    np.testing.assert_array_equal(layer.weight.numpy(), weight)
    if bias:
        bias_bound = 1 / math.sqrt(c_in * k * k)
        expected = (np.random.rand(c_out) * 2 * bias_bound - bias_bound).astype(np.float32)
        np.testing.assert_array_equal(layer.bias.numpy(), expected)
    else:
        assert layer.bias is None and [n for n, _ in layer.named_parameters()] == ["weight"]
    assert np.random.rand() == after                           # exactly those draws, nothing more
    assert layer.weight.dtype == np.float32 and layer.weight.shape == (k, k, c_in, c_out)
    assert (layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride) == (c_in, c_out, k, 1)


def test_conv_layer_tuple_arguments_and_padding():
    layer = nn.Conv(2, 3, (3, 3), stride=(2, 2))
    assert (layer.kernel_size, layer.stride, layer.padding) == (3, 2, 1)
    assert nn.Conv(2, 3, 4).padding == 2 and nn.Conv(2, 3, 5, padding=0).padding == 0
    x = Tensor(np.zeros((2, 2, 9, 8), np.float32))
    assert layer(x).shape == (2, 3, 5, 4)
    assert nn.Conv(2, 3, 5, padding=0)(x).shape == (2, 3, 5, 4)
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"): layer(Tensor(np.zeros((2, 9, 8, 2))))
    with pytest.raises(ValueError, match="kernel_size"): nn.Conv(2, 3, 0)


@devices
@pytest.mark.parametrize("c_in, c_out, k, stride, bias, padding, size", [
    (3, 4, 3, 1, True, None, (7, 7)), (2, 3, 5, 2, True, None, (9, 8)), (4, 2, 1, 3, False, None, (6, 7)),
    (2, 2, 4, 2, True, None, (8, 8)), (3, 2, 3, 2, True, 0, (7, 6)), (1, 3, 2, 1, True, 2, (5, 5))])
def test_conv_layer_against_torch(torch, rs, device, c_in, c_out, k, stride, bias, padding, size):
    ours = nn.Conv(c_in, c_out, k, stride=stride, bias=bias, device=device, dtype="float64", padding=padding)
    p = k // 2 if padding is None else padding
    theirs = torch.nn.Conv2d(c_in, c_out, k, stride=stride, padding=p, bias=bias).double()
    with torch.no_grad():   # needle (K, K, C_in, C_out) -> torch (C_out, C_in, K, K)
        theirs.weight.copy_(torch.tensor(ours.weight.numpy().transpose(3, 2, 0, 1)))
        if bias: theirs.bias.copy_(torch.tensor(ours.bias.numpy()))
    params, torch_params = [ours.weight], [(theirs.weight, lambda g: g.transpose(2, 3, 1, 0))]
    if bias: params.append(ours.bias); torch_params.append((theirs.bias, lambda g: g))
    check_against_torch(torch, ours, theirs, t64(rs, 2, c_in, *size, device=device), params, torch_params, atol=1e-9)


def test_conv_layer_finite_differences(rs):
    layer = nn.Conv(2, 3, 3, stride=2, dtype="float64")
    ndl.gradient_check(lambda x, w, b: layer(x), t64(rs, 2, 2, 5, 6), layer.weight, layer.bias, backward=True)


# --- BatchNorm2d, pooling layers, Flatten ---------------------------------------------------------
@devices
def test_batchnorm2d_training_against_torch(torch, rs, device):
    ours = nn.BatchNorm2d(3, dtype="float64", device=device)
    theirs = torch.nn.BatchNorm2d(3).double()
    _set_affine(torch, ours, theirs, rs)
    x = Tensor(rs.randn(4, 3, 5, 6) * 2 + 1, device=device)
    check_against_torch(torch, ours, theirs, x, [ours.weight, ours.bias],
                        [(theirs.weight, lambda g: g), (theirs.bias, lambda g: g)])
    np.testing.assert_allclose(ours.running_mean.numpy(), theirs.running_mean.numpy(), rtol=1e-10)
    # needle's running variance uses the biased batch variance, PyTorch's the unbiased one
    n, batch_var = 4 * 5 * 6, x.numpy().var(axis=(0, 2, 3))
    np.testing.assert_allclose(ours.running_var.numpy(), 0.9 + 0.1 * batch_var, rtol=1e-10)
    np.testing.assert_allclose(theirs.running_var.numpy(), 0.9 + 0.1 * batch_var * n / (n - 1), rtol=1e-10)


@devices
def test_batchnorm2d_eval_against_torch(torch, rs, device):
    ours = nn.BatchNorm2d(4, dtype="float64", device=device)
    theirs = torch.nn.BatchNorm2d(4).double()
    _set_affine(torch, ours, theirs, rs)
    mean, var = rs.randn(4), rs.rand(4) + 0.5
    ours.running_mean.data, ours.running_var.data = Tensor(mean, device=device), Tensor(var, device=device)
    theirs.running_mean.copy_(torch.tensor(mean)); theirs.running_var.copy_(torch.tensor(var))
    ours.eval(), theirs.eval()
    check_against_torch(torch, ours, theirs, t64(rs, 3, 4, 5, 5, device=device), [ours.weight, ours.bias],
                        [(theirs.weight, lambda g: g), (theirs.bias, lambda g: g)])
    np.testing.assert_array_equal(ours.running_mean.numpy(), mean)
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"): ours(Tensor(np.ones((2, 3, 4, 4))))


@devices
def test_pooling_layers_against_torch(torch, rs, device):
    x = t64(rs, 2, 3, 7, 6, device=device)
    check_against_torch(torch, nn.MaxPool2d(3, stride=2, padding=1), torch.nn.MaxPool2d(3, 2, 1), x)
    x.grad = None
    check_against_torch(torch, nn.AvgPool2d(2), torch.nn.AvgPool2d(2), x)
    x.grad = None
    check_against_torch(torch, nn.GlobalAvgPool2d(), torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1),
                                                                         torch.nn.Flatten()), x)
    assert nn.MaxPool2d(2).stride == 2 and nn.AvgPool2d(3, 1).stride == 1
    with pytest.raises(ValueError, match="at most half"): nn.AvgPool2d(2, padding=2)


def test_flatten_after_conv_matches_torch(torch, rs):
    x = t64(rs, 2, 3, 4, 4)
    out = nn.Flatten()(nn.MaxPool2d(2)(x))
    expected = torch.nn.Flatten()(torch.nn.MaxPool2d(2)(torch.tensor(x.numpy())))
    np.testing.assert_array_equal(out.numpy(), expected.numpy())


def test_small_cnn_trains():
    ndl.manual_seed(0)
    rs = np.random.RandomState(0)
    model = nn.Sequential(nn.Conv(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Conv(4, 8, 3, stride=2),
                          nn.ReLU(), nn.GlobalAvgPool2d(), nn.Linear(8, 3))
    X, y = Tensor(rs.randn(16, 1, 8, 8).astype(np.float32)), Tensor(rs.randint(0, 3, 16))
    opt, loss_fn = ndl.optim.Adam(model.parameters(), lr=0.01), nn.SoftmaxLoss()
    losses = []
    for _ in range(15):
        opt.reset_grad()
        loss = loss_fn(model(X), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.numpy()))
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad.shape == p.shape and p.grad.dtype == np.float32 for p in model.parameters())


# --- the conv benchmark still runs (timings are never asserted) -------------------------------------
BENCH_CONV = str(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_conv.py")


@pytest.mark.parametrize("with_torch", [True, False], ids=["torch", "no-torch"])
def test_conv_benchmark_quick_run(with_torch, monkeypatch, capsys):
    if with_torch: pytest.importorskip("torch")
    else: monkeypatch.setitem(sys.modules, "torch", None)     # `import torch` raises ImportError
    monkeypatch.delitem(sys.modules, "bench", raising=False)  # bench.py is imported afresh, and dropped after
    report = runpy.run_path(BENCH_CONV)["main"](["--quick", "--repeats", "2"])
    names = set(report["results"])
    assert {"numpy (by hand)", "needle_nb"} <= names and ("PyTorch (1 thread)" in names) == with_torch
    assert all(0 < r["min"] <= r["median"] <= r["max"] for r in report["results"].values())
    assert report["ratios"]["needle_nb / numpy by hand"] > 0
    out = capsys.readouterr().out
    assert "ratio needle_nb / numpy by hand" in out
    assert ("skipping the PyTorch row" in out) != with_torch


def test_benchmark_reference_row_runs_pytorch_without_onednn(monkeypatch):
    "`bench.without_onednn(fn)` calls `fn` with oneDNN off and leaves it on after; the scripts' reference row uses it."
    torch = pytest.importorskip("torch")
    if not torch.backends.mkldnn.is_available(): pytest.skip("this PyTorch build has no oneDNN")
    monkeypatch.syspath_prepend(str(Path(BENCH_CONV).parent))
    monkeypatch.delitem(sys.modules, "bench", raising=False)
    bench = runpy.run_path(str(Path(BENCH_CONV).parent / "bench.py"))
    seen = []
    off = bench["without_onednn"](lambda: seen.append(torch.backends.mkldnn.enabled) or 7)
    before = torch.backends.mkldnn.enabled
    assert off() == 7 and seen == [False] and torch.backends.mkldnn.enabled == before
    fns = runpy.run_path(BENCH_CONV)["resnet9_sgd_fns"](2)   # the row joins the ResNet9 workload, checked equal
    assert {"PyTorch", "PyTorch, oneDNN off", "needle_nb"} <= set(fns)


def test_conv_benchmark_contenders_agree():
    "The numpy reference, needle_nb and torch compute the same layer (so the timing compares equal work)."
    bench = SimpleNamespace(**runpy.run_path(BENCH_CONV))
    data = bench.layer_data(2, 3, 4, 6, 3)
    fns = {"numpy (by hand)": bench.numpy_fn(*data), "needle_nb": bench.needle_fn(*data)}
    bench.check_agree(fns)
    broken = list(data)
    broken[1] = data[1][::-1].copy()                             # a flipped kernel must be caught
    with pytest.raises(AssertionError, match="differs"):
        bench.check_agree({"numpy (by hand)": bench.numpy_fn(*data), "needle_nb": bench.needle_fn(*broken)})


@pytest.mark.parametrize("kernel, stride, padding", [(2, None, 0), (3, 1, 1), (3, 2, 1)])
def test_max_pool_ties_route_the_gradient_as_torch(rs, kernel, stride, padding):
    "With tied maxima the gradient goes to the first one in row-major order, as PyTorch's CPU kernel."
    F = pytest.importorskip("torch").nn.functional
    shape = (2, 2, 6, 7)
    # inputs rounded to integers tie often; `+ (x - x.detach())` lets the gradient through the rounding
    check_op([shape], lambda x: F.max_pool2d(x.round() + (x - x.detach()), kernel, stride, padding),
             lambda x: ndl.max_pool2d(Tensor(np.round(x.numpy()), device=x.device) + (x - x.detach()),
                                      kernel, stride, padding))


# Small images whose padded borders some kernel taps never leave (ResNet9's 1x1 and 2x2 layers): the convolution
# skips those taps (`ops_conv._tap_window`); forward, both gradients and a second derivative must be PyTorch's.
TAP_CASES = [  # N, C_in, C_out, (H, W), (KH, KW), stride, padding
    (2, 3, 4, (1, 1), (3, 3), 1, 1), (2, 3, 4, (2, 2), (3, 3), 2, 1), (2, 2, 3, (1, 3), (3, 3), 1, 1),
    (2, 2, 3, (2, 5), (5, 5), 1, 2), (1, 2, 3, (3, 3), (7, 7), 2, 3), (2, 2, 2, (1, 2), (3, 5), (1, 2), (1, 2)),
    (1, 3, 2, (2, 1), (5, 3), 1, (2, 1)), (2, 4, 4, (1, 1), (3, 3), 2, 1),
]


@pytest.mark.parametrize("case", TAP_CASES, ids=lambda c: f"{c[3]}k{c[4]}s{c[5]}p{c[6]}")
def test_dead_kernel_taps_are_skipped_exactly(torch, case):
    from needle_nb import ops_conv
    N, c_in, c_out, (H, W), (KH, KW), stride, padding = case
    pair = lambda v: (v, v) if isinstance(v, int) else v
    assert ops_conv._tap_window((H, W), (KH, KW), stride, padding) is not None, "the case must skip taps"
    rs = np.random.RandomState(0)
    x, w = rs.randn(N, c_in, H, W), rs.randn(KH, KW, c_in, c_out)
    X, Wt = Tensor(x, dtype="float64"), Tensor(w, dtype="float64")
    out = ops_conv.conv(X, Wt, stride=stride, padding=padding, layout="NCHW")
    G = rs.randn(*out.shape)
    (out * Tensor(G, dtype="float64")).sum().backward(create_graph=True)
    gx, gw = X.grad, Wt.grad
    X.grad = Wt.grad = None
    ((gx * gx).sum() + (gw * gw).sum()).backward(create_graph=False)   # second order through both gradients
    xt = torch.tensor(x, requires_grad=True); wt = torch.tensor(w.transpose(3, 2, 0, 1).copy(), requires_grad=True)
    ot = torch.nn.functional.conv2d(xt, wt, stride=pair(stride), padding=pair(padding))
    gxt, gwt = torch.autograd.grad((ot * torch.tensor(G)).sum(), (xt, wt), create_graph=True)
    hxt, hwt = torch.autograd.grad((gxt ** 2).sum() + (gwt ** 2).sum(), (xt, wt))
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    close(out.numpy(), ot.detach().numpy())
    close(gx.numpy(), gxt.detach().numpy()); close(gw.numpy(), gwt.detach().numpy().transpose(2, 3, 1, 0))
    close(X.grad.numpy(), hxt.numpy()); close(Wt.grad.numpy(), hwt.numpy().transpose(2, 3, 1, 0))
    # the layer that uses it: nn.Conv on a 1x1 image, as ResNet9's last block
    np.random.seed(0)
    layer = nn.Conv(c_in, c_out, 3, dtype="float64")
    y = layer(Tensor(x[..., :1, :1], dtype="float64"))
    np.testing.assert_allclose(y.numpy()[..., 0, 0], x[..., 0, 0] @ layer.weight.numpy()[1, 1] + layer.bias.numpy(),
                               rtol=1e-12)   # a 3x3 kernel on one pixel is its centre tap
