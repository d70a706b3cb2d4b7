"""Convolutions, round 3 (issues 26.5 and 27): rectangular kernels, per-axis stride and padding, the col2im
input gradient and the buffers kept between steps.

- values and gradients against `torch.nn.functional.conv2d` in float64 (`check_op`) and finite differences
  (`ndl.gradient_check`), for square and rectangular kernels and every code path of the input gradient (stride 1
  with the output gradient in NCHW or NHWC memory, strides > 1 with kernels that are and are not multiples of the
  stride);
- `nn.Conv(…, kernel_size=(KH, KW), stride=(…), padding=(…))` against `torch.nn.Conv2d` with the weights copied;
- bad kernel sizes, strides and paddings (negative, zero, bool, float, tuples of the wrong length) are ValueErrors
  naming the argument, raised before anything is drawn;
- the im2col rows kept from a forward are used for the kernel's gradient only when they are that input's.
Run with `NEEDLE_BACKEND=nd` too: the same tests hold on needle's NDArray.
"""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import needle_nb as ndl
import needle_nb.nn as nn
from needle_nb import Tensor, ops_conv

from conftest import DEVICES
from test_ops import check_op

torch = pytest.importorskip("torch")
F = torch.nn.functional
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)
devices = pytest.mark.parametrize("device", DEVICES, ids=repr)


def torch_conv(stride, padding):
    "PyTorch's conv2d on needle's layouts: NHWC input, (KH, KW, C_in, C_out) kernel, NHWC output."
    return lambda a, b: F.conv2d(a.permute(0, 3, 1, 2), b.permute(3, 2, 0, 1).contiguous(),
                                 stride=stride, padding=padding).permute(0, 2, 3, 1)


def torch_conv_nchw(stride, padding):
    "The same on NCHW activations (needle's `layout='NCHW'`), the kernel still needle's."
    return lambda a, b: F.conv2d(a, b.permute(3, 2, 0, 1).contiguous(), stride=stride, padding=padding)


# (input NHWC, kernel, stride, padding): rectangular kernels, per-axis strides and paddings, kernels smaller and
# larger than the stride, kernel sizes that are not multiples of the stride
RECT = [((2, 6, 7, 2), (3, 5, 2, 3), 1, (1, 2)), ((1, 7, 9, 2), (1, 3, 2, 2), (2, 1), 0),
        ((2, 9, 8, 1), (5, 2, 1, 2), (3, 2), (2, 1)), ((1, 8, 8, 3), (2, 4, 3, 1), (1, 3), (0, 1)),
        ((1, 11, 10, 2), (7, 3, 2, 2), (4, 2), (3, 1)), ((2, 5, 6, 2), (3, 3, 2, 2), (2, 3), (1, 0))]
# every path of the input gradient, square kernels: stride 1 (zero-bordered grid), K a multiple of s, K < s, K > s
PATHS = [((2, 8, 8, 3), (3, 3, 3, 4), 1, 1), ((2, 9, 9, 2), (4, 4, 2, 3), 2, 1), ((1, 9, 9, 2), (2, 2, 2, 2), 3, 0),
         ((2, 13, 13, 3), (7, 7, 3, 2), 4, 3), ((1, 6, 6, 2), (1, 1, 2, 3), 1, 0), ((1, 10, 9, 1), (5, 5, 1, 2), 3, 0)]


@devices
@pytest.mark.parametrize("a_shape, b_shape, stride, padding", RECT + PATHS)
def test_conv_against_torch_nhwc(device, a_shape, b_shape, stride, padding):
    check_op([a_shape, b_shape], torch_conv(stride, padding),
             lambda a, b: ndl.conv(a, b, stride=stride, padding=padding), device=device)


@devices
@pytest.mark.parametrize("a_shape, b_shape, stride, padding", RECT + PATHS)
def test_conv_against_torch_nchw(device, a_shape, b_shape, stride, padding):
    "NCHW activations: at stride 1 the output gradient arrives in NCHW memory (the batched per-image path)."
    N, H, W, C = a_shape
    check_op([(N, C, H, W), b_shape], torch_conv_nchw(stride, padding),
             lambda a, b: ndl.conv(a, b, stride=stride, padding=padding, layout="NCHW"), device=device)


@pytest.mark.parametrize("a_shape, b_shape, stride, padding", RECT + PATHS)
def test_conv_finite_differences(rs, a_shape, b_shape, stride, padding):
    a, b = Tensor(rs.randn(*a_shape)), Tensor(rs.randn(*b_shape))
    grads = ndl.gradient_check(lambda x, w: ndl.conv(x, w, stride=stride, padding=padding), a, b, backward=True)
    assert [g.shape for g in grads] == [a_shape, b_shape]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("a_shape, b_shape, stride, padding", PATHS[:4] + RECT[:3])
def test_input_gradient_in_either_memory_order(rs, layout, a_shape, b_shape, stride, padding):
    """`ConvInputGrad` on an output gradient stored NCHW and stored NHWC (two code paths at stride 1) gives
    PyTorch's input gradient either way."""
    N, H, W, C = a_shape
    a, b = rs.randn(*a_shape), rs.randn(*b_shape)
    out_t = F.conv2d(torch.tensor(a.transpose(0, 3, 1, 2), requires_grad=True),
                     torch.tensor(b.transpose(3, 2, 0, 1).copy()), stride=stride, padding=padding)
    g_nchw = rs.randn(*out_t.shape)
    expected = torch.autograd.grad(out_t, out_t.grad_fn.next_functions[0][0].variable, torch.tensor(g_nchw))[0].numpy()
    for g in (np.ascontiguousarray(g_nchw), np.ascontiguousarray(g_nchw.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)):
        g_in = g if layout == "NCHW" else g.transpose(0, 2, 3, 1)
        a_shape_in = (N, C, H, W) if layout == "NCHW" else a_shape
        got = ops_conv.ConvInputGrad(stride, padding, a_shape_in, layout).compute(g_in, b)
        got = got if layout == "NCHW" else got.transpose(0, 3, 1, 2)
        np.testing.assert_allclose(got, expected, atol=1e-10)


@st.composite
def rect_cases(draw):
    "A random convolution with independent H and W kernel sizes (1-5), strides (1-4) and paddings (0-2)."
    KH, KW = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw, ph, pw = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(0, 2)), draw(st.integers(0, 2))
    H, W = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    assume(H + 2 * ph >= KH and W + 2 * pw >= KW)
    N, c_in, c_out = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return (N, H, W, c_in), (KH, KW, c_in, c_out), (sh, sw), (ph, pw)


@SETTINGS
@given(case=rect_cases(), seed=st.integers(0, 999))
def test_rectangular_conv_against_torch_random(case, seed):
    a_shape, b_shape, stride, padding = case
    check_op([a_shape, b_shape], torch_conv(stride, padding),
             lambda a, b: ndl.conv(a, b, stride=stride, padding=padding), seed=seed)


def test_pairs_of_equal_values_are_the_int():
    "A stride or padding pair of equal values is stored as needle's int; the op's repr shows what it does."
    op = ops_conv.Conv(stride=(2, 2), padding=[1, 1])
    assert (op.stride, op.padding) == (2, 1)
    op = ops_conv.Conv(stride=(2, 1), padding=(0, 3))
    assert (op.stride, op.padding) == ((2, 1), (0, 3))
    assert repr(op) == "Conv(stride=(2, 1), padding=(0, 3))"
    assert ops_conv.Conv(np.int64(2), np.int32(1)).stride == 2       # numpy integers are integers


# --- nn.Conv ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel, stride, padding", [((3, 5), 1, None), ((1, 3), (2, 1), None), ((5, 2), (1, 2), (1, 0)),
                                                     (3, (2, 3), (0, 2)), ((2, 4), 2, 1)])
def test_nn_conv_rectangular_against_torch(rs, kernel, stride, padding):
    layer = nn.Conv(2, 3, kernel, stride=stride, padding=padding, dtype="float64")
    KH, KW = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    pad = (KH // 2, KW // 2) if padding is None else padding
    assert layer.weight.shape == (KH, KW, 2, 3)
    ref = torch.nn.Conv2d(2, 3, (KH, KW), stride=stride, padding=pad, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(layer.weight.numpy().transpose(3, 2, 0, 1)))
        ref.bias.copy_(torch.tensor(layer.bias.numpy()))
    x = rs.randn(2, 2, 9, 8)
    xt, x_ours = torch.tensor(x, requires_grad=True), Tensor(x)
    out_t, out = ref(xt), layer(x_ours)
    assert out.shape == tuple(out_t.shape)
    g = rs.randn(*out.shape)
    out_t.backward(torch.tensor(g)); out.backward(Tensor(g))
    np.testing.assert_allclose(out.numpy(), out_t.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(x_ours.grad.numpy(), xt.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(layer.weight.grad.numpy(), ref.weight.grad.numpy().transpose(2, 3, 1, 0), atol=1e-10)
    np.testing.assert_allclose(layer.bias.grad.numpy(), ref.bias.grad.numpy(), atol=1e-10)


def test_nn_conv_rectangular_init_and_attributes():
    ndl.manual_seed(0)
    layer = nn.Conv(4, 6, (3, 5), stride=(1, 2))
    assert (layer.kernel_size, layer.stride, layer.padding) == ((3, 5), (1, 2), (1, 2))
    bound = np.sqrt(2) * np.sqrt(3 / (4 * 15))                 # kaiming_uniform with fan_in = C_in·KH·KW
    w = layer.weight.numpy()
    assert w.shape == (3, 5, 4, 6) and np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert np.abs(layer.bias.numpy()).max() <= 1 / np.sqrt(4 * 15)
    assert "kernel_size=(3, 5), stride=(1, 2), padding=(1, 2)" in repr(layer)
    square = nn.Conv(2, 3, (3, 3), stride=(2, 2), padding=(1, 1))
    assert (square.kernel_size, square.stride, square.padding) == (3, 2, 1)


BAD = [("kernel_size", dict(kernel_size=0), "kernel_size must be an integer >= 1, got 0"),
       ("kernel_size", dict(kernel_size=-3), "kernel_size must be an integer >= 1, got -3"),
       ("kernel_size", dict(kernel_size=True), "kernel_size must be an integer >= 1, got True"),
       ("kernel_size", dict(kernel_size=2.0), "kernel_size must be an integer >= 1, got 2.0"),
       ("kernel_size", dict(kernel_size=(3,)), r"kernel_size must be an integer or an \(H, W\) pair, got \(3,\) \(1 values\)"),
       ("kernel_size", dict(kernel_size=(3, 3, 3)), r"kernel_size must be an integer or an \(H, W\) pair"),
       ("kernel_size", dict(kernel_size=(3, 0)), "kernel_size must be an integer >= 1, got 0"),
       ("stride", dict(stride=0), "stride must be an integer >= 1, got 0"),
       ("stride", dict(stride=(1, False)), "stride must be an integer >= 1, got False"),
       ("stride", dict(stride=(2, 2, 2)), r"stride must be an integer or an \(H, W\) pair"),
       ("padding", dict(padding=-1), "padding must be an integer >= 0, got -1"),
       ("padding", dict(padding=(1, -1)), "padding must be an integer >= 0, got -1"),
       ("padding", dict(padding=()), r"padding must be an integer or an \(H, W\) pair, got \(\) \(0 values\)"),
       ("padding", dict(padding=True), "padding must be an integer >= 0, got True")]


@pytest.mark.parametrize("name, kwargs, message", BAD, ids=[f"{n}={list(k.values())[0]!r}" for n, k, _ in BAD])
def test_nn_conv_bad_arguments_name_themselves(name, kwargs, message):
    args = dict(kernel_size=3) | kwargs
    ndl.manual_seed(0)
    before = np.random.rand()
    ndl.manual_seed(0)
    with pytest.raises(ValueError, match="Conv: " + message):
        nn.Conv(2, 3, **args)
    assert np.random.rand() == before                          # refused before any weight was drawn


@pytest.mark.parametrize("name, kwargs, message", [b for b in BAD if b[0] != "kernel_size"],
                         ids=[f"{n}={list(k.values())[0]!r}" for n, k, _ in BAD if n != "kernel_size"])
def test_conv_op_bad_arguments_name_themselves(name, kwargs, message):
    a, b = Tensor(np.ones((1, 5, 5, 1))), Tensor(np.ones((3, 3, 1, 1)))
    with pytest.raises(ValueError, match="conv: " + message):
        ndl.conv(a, b, **kwargs)


def test_rectangular_kernel_too_large_names_the_shapes():
    with pytest.raises(ValueError, match=r"kernel 3x7 is larger than the padded input 6x6 .*padding \(1, 0\)"):
        ndl.conv(Tensor(np.ones((1, 4, 6, 1))), Tensor(np.ones((3, 7, 1, 1))), padding=(1, 0))


# --- rows kept from the forward ---------------------------------------------------------------------
def test_kept_rows_belong_to_the_input_they_came_from(rs):
    "An op object called twice keeps only the last input's rows; the first output's gradient is still its own."
    op = ops_conv.Conv(1, 1)
    a1, a2 = Tensor(rs.randn(2, 5, 5, 2)), Tensor(rs.randn(2, 5, 5, 2))
    b = Tensor(rs.randn(3, 3, 2, 3))
    out1 = op(a1, b)
    op(a2, b)                                                   # overwrites the op's kept rows
    out1.backward(Tensor(np.ones(out1.shape)))
    bt = torch.tensor(b.numpy().transpose(3, 2, 0, 1).copy(), requires_grad=True)
    F.conv2d(torch.tensor(a1.numpy().transpose(0, 3, 1, 2)), bt, padding=1).sum().backward()
    np.testing.assert_allclose(b.grad.numpy(), bt.grad.numpy().transpose(2, 3, 1, 0), atol=1e-10)


def test_repeated_steps_give_the_same_gradients(rs):
    "Steps that reuse the kept buffers (same shapes) give the same numbers as the first, float32 throughout."
    layer = nn.Conv(3, 4, 3)
    x = Tensor(rs.randn(4, 3, 8, 8).astype(np.float32))
    results = []
    for _ in range(3):
        layer.weight.grad = None
        x.grad = None
        out = layer(x)
        out.backward(Tensor(np.ones(out.shape, np.float32)))
        results.append((out.numpy().copy(), x.grad.numpy().copy(), layer.weight.grad.numpy().copy()))
        assert out.dtype == x.grad.dtype == layer.weight.grad.dtype == np.float32
    for later in results[1:]:
        for first, again in zip(results[0], later): np.testing.assert_array_equal(first, again)


def test_second_backward_recomputes_the_rows(rs):
    "With the graph kept, a second backward (the rows were used and dropped) still gives the kernel's gradient."
    a, b = Tensor(rs.randn(1, 6, 6, 2)), Tensor(rs.randn(3, 3, 2, 2))
    out = ndl.conv(a, b)
    out.backward(Tensor(np.ones(out.shape)))
    first = b.grad.numpy().copy()
    b.grad = None
    out.backward(Tensor(np.ones(out.shape)))
    np.testing.assert_allclose(b.grad.numpy(), first, atol=1e-12)


def test_kept_buffers_stay_bounded_over_many_steps(rs):
    "Step after step on the same shapes, the kept buffers neither grow nor leak rows; `clear` drops them."
    buffers = ops_conv._buffers
    buffers.clear()
    layer = nn.Conv(2, 3, 3)
    x = Tensor(rs.randn(2, 2, 6, 6).astype(np.float32))
    sizes = []
    for _ in range(5):
        out = layer(x)
        out.backward(Tensor(np.ones(out.shape, np.float32)))
        sizes.append((len(buffers.kept), sum(len(v) for v in buffers.free.values()), buffers._bytes()))
    if isinstance(x.cached_data, np.ndarray):
        # two sets of im2col rows, each handed back every step: the forward's, and those of the input gradient's full
        # convolution (stride 1 on a small image, where it replaces col2im)
        assert sizes[1:] == sizes[:1] * 4 and sizes[0][1] == 2
    else: assert sizes == [(0, 0, 0)] * 5                       # NEEDLE_BACKEND=nd: numpy buffers only
    buffers.clear()
    assert buffers._bytes() == 0
