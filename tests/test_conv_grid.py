"""The stride-1 convolutions on the padded grid (nbs/02a_conv_ops, `_grid_conv` and its three kernels).

Large images at stride 1 skip im2col: KH·KW matmuls over shifted contiguous slices of the padded rows, accumulated
in place by BLAS (`_gemm_into`, scipy's gemm with beta = 1). Checked here: which convolutions take that path, the
accumulating gemm itself on every operand layout, and the forward, both gradients and the second order against
PyTorch in float64 (and float32 at float32's tolerance) for rectangular kernels, unequal paddings, padding 0, one
image, one channel, NCHW and NHWC output gradients, and kept buffers reused across geometries; and, at stride 1
on small images, the input gradient by the full convolution with the flipped kernel.
"""
import numpy as np
import pytest

import needle_nb.nn as nn
from needle_nb import Tensor, ops_conv
from needle_nb.ops_conv import (_conv_forward_grid, _conv_input_grad_grid, _conv_kernel_grad_grid, _gemm_into,
                                _grid_conv)

# (N, C_in, C_out, (H, W), (KH, KW), (p_h, p_w)): every one runs on the grid (asserted in the tests)
GRID_CASES = [
    (2, 3, 4, (16, 16), (3, 3), (1, 1)),
    (1, 2, 3, (15, 17), (3, 5), (1, 2)),
    (3, 1, 1, (16, 16), (1, 1), (0, 0)),
    (2, 4, 6, (20, 16), (5, 3), (2, 1)),
    (7, 2, 3, (16, 16), (2, 2), (1, 1)),     # small planes: the kernel gradient groups images, last group partial
    (2, 3, 2, (18, 18), (3, 3), (0, 0)),     # no padding
]
ids = [f"N{c[0]}-{c[1]}to{c[2]}-{c[3][0]}x{c[3][1]}-k{c[4][0]}x{c[4][1]}-p{c[5][0]}{c[5][1]}" for c in GRID_CASES]


def test_which_convolutions_take_the_grid():
    a32, b32 = np.zeros((2, 16, 16, 3), np.float32), np.zeros((3, 3, 3, 4), np.float32)
    assert _grid_conv(a32, b32, (3, 3), 1, 1, (16, 16))
    assert _grid_conv(a32.astype(np.float64), b32.astype(np.float64), (3, 3), 1, 1, (16, 16))
    assert not _grid_conv(a32, b32, (3, 3), 2, 1, (16, 16))                     # strided: im2col
    assert not _grid_conv(a32, b32, (3, 3), (1, 2), 1, (16, 16))
    assert not _grid_conv(a32[:, :4, :4], b32, (3, 3), 1, 1, (4, 4))            # 6x6 padded, mostly padding
    assert not _grid_conv(a32, b32.astype(np.float64), (3, 3), 1, 1, (16, 16))  # mixed dtypes
    assert not _grid_conv(a32.astype(np.float16), b32.astype(np.float16), (3, 3), 1, 1, (16, 16))   # no BLAS gemm
    assert not _grid_conv(a32[:0], b32, (3, 3), 1, 1, (16, 16))                 # no images
    assert not _grid_conv(a32.tolist(), b32, (3, 3), 1, 1, (16, 16))            # not a numpy array
    big_kernel = np.zeros((9, 9, 3, 4), np.float32)     # 8x8 outputs on a 16x16 grid: most grid rows wasted
    assert not _grid_conv(a32, big_kernel, (9, 9), 1, 0, (16, 16))


@pytest.mark.parametrize("order_a, order_b", [("C", "C"), ("F", "C"), ("C", "F"), ("F", "F"), ("strided", "strided")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_into_assigns_and_accumulates_in_place(order_a, order_b, dtype):
    rs = np.random.RandomState(0)
    def operand(shape, order):
        if order == "strided": return rs.randn(shape[0], 2 * shape[1]).astype(dtype)[:, ::2]
        return np.asarray(rs.randn(*shape).astype(dtype), order=order)
    a, b = operand((5, 7), order_a), operand((7, 3), order_b)
    c = rs.randn(5, 3).astype(dtype)
    start, buffer = c.copy(), c.ctypes.data
    tol = 1e-5 if dtype == np.float32 else 1e-12
    _gemm_into(c, a, b, accumulate=True)
    np.testing.assert_allclose(c, start + a @ b, rtol=tol, atol=tol)
    _gemm_into(c, a, b, accumulate=False)
    np.testing.assert_allclose(c, a @ b, rtol=tol, atol=tol)
    assert c.ctypes.data == buffer                          # the same memory: written by BLAS, not replaced


def test_gemm_into_edges_and_refusals():
    c = np.ones((3, 2))
    _gemm_into(c, np.ones((3, 0)), np.ones((0, 2)), accumulate=True)        # an empty sum adds nothing
    np.testing.assert_array_equal(c, np.ones((3, 2)))
    _gemm_into(c, np.ones((3, 0)), np.ones((0, 2)), accumulate=False)       # ... and assigns zeros
    np.testing.assert_array_equal(c, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="C-contiguous"):
        _gemm_into(np.ones((2, 3)).T, np.ones((3, 4)), np.ones((4, 2)), accumulate=False)


def _torch_reference(torch, x, w, G, stride, padding):
    "PyTorch's output, gradients and second-order gradients for NCHW `x`, needle-layout `w`, output weights `G`."
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w.transpose(3, 2, 0, 1).copy(), requires_grad=True)
    ot = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=padding)
    gxt, gwt = torch.autograd.grad((ot * torch.tensor(G)).sum(), (xt, wt), create_graph=True)
    hxt, hwt = torch.autograd.grad((gxt ** 2).sum() + (gwt ** 2).sum(), (xt, wt))
    back = lambda k: k.detach().numpy().transpose(2, 3, 1, 0)
    return ot.detach().numpy(), gxt.detach().numpy(), back(gwt), hxt.numpy(), back(hwt)


def _check_second_order_against_torch(torch, case, seed):
    """conv (NCHW, stride 1, float64) of a random input and kernel for `case`: output, both gradients and both
    second-order gradients against PyTorch; returns the kernel `w`, the output weights `G` and PyTorch's results."""
    N, c_in, c_out, (H, W), (KH, KW), padding = case
    rs = np.random.RandomState(seed)
    x, w = rs.randn(N, c_in, H, W), rs.randn(KH, KW, c_in, c_out)
    X, Wt = Tensor(x, dtype="float64"), Tensor(w, dtype="float64")
    out = ops_conv.conv(X, Wt, stride=1, padding=padding, layout="NCHW")
    G = rs.randn(*out.shape)
    (out * Tensor(G, dtype="float64")).sum().backward(create_graph=True)
    gx, gw = X.grad, Wt.grad
    X.grad = Wt.grad = None
    ((gx * gx).sum() + (gw * gw).sum()).backward(create_graph=False)
    ref = _torch_reference(torch, x, w, G, 1, padding)
    got = (out.numpy(), gx.numpy(), gw.numpy(), X.grad.numpy(), Wt.grad.numpy())
    for name, g, r in zip(("output", "input grad", "kernel grad", "2nd order input", "2nd order kernel"), got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10, err_msg=name)
    return w, G, ref


@pytest.mark.parametrize("case", GRID_CASES, ids=ids)
def test_grid_conv_matches_torch_to_second_order(torch, case, monkeypatch):
    N, c_in, c_out, (H, W), (KH, KW), padding = case
    assert _grid_conv(np.zeros((N, H, W, c_in)), np.zeros((KH, KW, c_in, c_out)), (KH, KW), 1, padding, (H, W))
    calls = {"forward": 0, "input": 0, "kernel": 0}
    for name, key in (("_conv_forward_grid", "forward"), ("_conv_input_grad_grid", "input"),
                      ("_conv_kernel_grad_grid", "kernel")):
        def spy(*args, _f=getattr(ops_conv, name), _k=key):
            calls[_k] += 1
            return _f(*args)
        monkeypatch.setattr(ops_conv, name, spy)
    _check_second_order_against_torch(torch, case, seed=1)
    assert all(calls.values()), f"the grid path was not taken: {calls}"


@pytest.mark.parametrize("case", GRID_CASES[:4], ids=ids[:4])
@pytest.mark.parametrize("g_layout", ["NCHW", "NHWC"])
def test_grid_kernels_float32_both_gradient_layouts(torch, case, g_layout):
    "The three kernels called directly, float32, with the output gradient NCHW in memory or NHWC."
    N, c_in, c_out, (H, W), (KH, KW), padding = case
    rs = np.random.RandomState(2)
    x, w = rs.randn(N, c_in, H, W).astype(np.float32), rs.randn(KH, KW, c_in, c_out).astype(np.float32)
    x_nhwc = x.transpose(0, 2, 3, 1)                                    # an NCHW batch viewed as NHWC
    H_out, W_out = H + 2 * padding[0] - KH + 1, W + 2 * padding[1] - KW + 1
    G = rs.randn(N, c_out, H_out, W_out).astype(np.float32)
    g_nhwc = G.transpose(0, 2, 3, 1) if g_layout == "NCHW" else np.ascontiguousarray(G.transpose(0, 2, 3, 1))
    out, gx, gw = (_conv_forward_grid(x_nhwc, w, padding), _conv_input_grad_grid(g_nhwc, w, padding, (H, W)),
                   _conv_kernel_grad_grid(x_nhwc, g_nhwc, (KH, KW), padding))
    assert out.dtype == gx.dtype == gw.dtype == np.float32 and out.flags.c_contiguous and gx.flags.c_contiguous
    ref = _torch_reference(torch, x.astype(np.float64), w.astype(np.float64), G.astype(np.float64), 1, padding)
    scale = lambda r: 1e-4 * max(1.0, np.abs(r).max())
    np.testing.assert_allclose(out.transpose(0, 3, 1, 2), ref[0], atol=scale(ref[0]), rtol=0)
    np.testing.assert_allclose(gx.transpose(0, 3, 1, 2), ref[1], atol=scale(ref[1]), rtol=0)
    np.testing.assert_allclose(gw, ref[2], atol=scale(ref[2]), rtol=0)


def test_kept_buffers_serve_several_geometries(torch):
    "Grid buffers are kept per geometry: alternating layers of different shapes give the same results every time."
    rs = np.random.RandomState(3)
    layers = [(rs.randn(2, 3, 16, 16), rs.randn(3, 3, 3, 4), (1, 1)), (rs.randn(2, 3, 17, 16), rs.randn(3, 3, 3, 4), (1, 1)),
              (rs.randn(2, 3, 16, 16), rs.randn(5, 5, 3, 4), (2, 2)), (rs.randn(2, 3, 16, 16), rs.randn(3, 3, 3, 4), (0, 0))]
    first = None
    for _ in range(2):
        results = []
        for x, w, p in layers:
            X, Wt = Tensor(x, dtype="float64"), Tensor(w, dtype="float64")
            out = ops_conv.conv(X, Wt, stride=1, padding=p, layout="NCHW")
            out.backward(Tensor(np.cos(out.numpy()), dtype="float64"))
            ref = _torch_reference(torch, x, w, np.cos(out.numpy()), 1, p)
            np.testing.assert_allclose(out.numpy(), ref[0], rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(X.grad.numpy(), ref[1], rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(Wt.grad.numpy(), ref[2], rtol=1e-10, atol=1e-10)
            results.append((out.numpy(), X.grad.numpy(), Wt.grad.numpy()))
        if first is None: first = results
        else:
            for r0, r1 in zip(first, results):
                for a, b in zip(r0, r1): np.testing.assert_array_equal(a, b)


def test_conv_layer_on_the_grid_matches_torch_float32(torch):
    "nn.Conv(16, 32, 3) as in the benchmark, smaller batch: the layer's path, float32 at float32's tolerance."
    rs = np.random.RandomState(4)
    np.random.seed(0)
    layer = nn.Conv(16, 32, 3)
    x = rs.randn(4, 16, 32, 32).astype(np.float32)
    X = Tensor(x, requires_grad=True)
    out = layer(X)
    G = rs.randn(*out.shape).astype(np.float32)
    out.backward(Tensor(G))
    ref = torch.nn.Conv2d(16, 32, 3, padding=1).double()
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(layer.weight.numpy().transpose(3, 2, 0, 1).astype(np.float64)))
        ref.bias.copy_(torch.tensor(layer.bias.numpy().astype(np.float64)))
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    ot = ref(xt)
    ot.backward(torch.tensor(G.astype(np.float64)))
    tol = lambda r: 1e-4 * np.abs(r).max()
    np.testing.assert_allclose(out.numpy(), ot.detach().numpy(), atol=tol(ot.detach().numpy()), rtol=0)
    np.testing.assert_allclose(X.grad.numpy(), xt.grad.numpy(), atol=tol(xt.grad.numpy()), rtol=0)
    wg = ref.weight.grad.numpy().transpose(2, 3, 1, 0)
    np.testing.assert_allclose(layer.weight.grad.numpy(), wg, atol=tol(wg), rtol=0)


# stride 1 on small images (the grid mostly padding): the input's gradient is the full convolution of g padded by
# K - 1 - p with the flipped kernel (p < K on both axes; otherwise col2im)
SMALL_CASES = [
    (5, 4, 6, (4, 4), (3, 3), (1, 1)),       # ResNet9's 4x4 layers
    (3, 2, 3, (5, 3), (3, 2), (0, 1)),
    (2, 3, 2, (2, 2), (3, 3), (2, 2)),       # p = K - 1: g is not padded
    (2, 2, 3, (3, 4), (1, 1), (1, 0)),       # p ≥ K along H: col2im
]


@pytest.mark.parametrize("case", SMALL_CASES, ids=lambda c: f"{c[3][0]}x{c[3][1]}-k{c[4][0]}x{c[4][1]}-p{c[5][0]}{c[5][1]}")
def test_small_image_input_gradient_by_full_convolution(torch, case, monkeypatch):
    N, c_in, c_out, (H, W), (KH, KW), padding = case
    full = padding[0] < KH and padding[1] < KW
    assert not _grid_conv(np.zeros((N, H, W, c_in)), np.zeros((KH, KW, c_in, c_out)), (KH, KW), 1, padding, (H, W))
    flipped_calls = []
    forward_rows = ops_conv._conv_forward_rows
    def spy(a, b, stride, pad):
        if b.shape == (KH, KW, c_out, c_in) and c_in != c_out: flipped_calls.append(pad)
        return forward_rows(a, b, stride, pad)
    monkeypatch.setattr(ops_conv, "_conv_forward_rows", spy)
    w, G, ref = _check_second_order_against_torch(torch, case, seed=5)
    if full: assert (KH - 1 - padding[0], KW - 1 - padding[1]) in flipped_calls, flipped_calls
    else: assert not flipped_calls
    # float32 at float32's tolerance, the output gradient NHWC in memory
    g32 = np.ascontiguousarray(G.transpose(0, 2, 3, 1)).astype(np.float32)
    got = ops_conv._conv_input_grad(g32, w.astype(np.float32), 1, padding, (H, W))
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), ref[1], atol=1e-4 * np.abs(ref[1]).max(), rtol=0)
