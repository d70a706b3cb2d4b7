"""The fused batch-norm and layer-norm ops (`needle_nb.ops_norm`, nbs/02b_norm_ops): values, gradients and second
derivatives against PyTorch (`torch.nn.functional.batch_norm`, `layer_norm`, float64) and finite differences, on
every device; their node counts; and what they refuse.
"""
import numpy as np
import pytest

import needle_nb as ndl
from needle_nb import nn, ops_norm
from needle_nb.autograd import Tensor
from needle_nb.ops import gradient_check
from needle_nb.autograd import vjp
from needle_nb.ops_norm import BatchNorm, BatchNormGrad, batch_norm, batch_norm_reference, channel_layout
from conftest import DEVICES, nodes_made, to_host

devices = pytest.mark.parametrize("device", DEVICES, ids=repr)
SHAPES = [(7, 3), (4, 3, 5, 6), (2, 5, 3, 1, 4)]


def _inputs(rs, shape, device):
    C = shape[1]
    return (Tensor(rs.randn(*shape) * 2 + 1, device=device, dtype="float64"),
            Tensor(rs.randn(C), device=device, dtype="float64"), Tensor(rs.randn(C), device=device, dtype="float64"))


def _torch_bn(torch, x, w, b, stats, eps):
    F = torch.nn.functional
    if stats is None: return F.batch_norm(x, None, None, w, b, training=True, eps=eps)
    return F.batch_norm(x, torch.tensor(stats[0]), torch.tensor(stats[1]), w, b, training=False, eps=eps)


@devices
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_values_and_gradients_match_torch(torch, rs, device, shape, mode):
    x, w, b = _inputs(rs, shape, device)
    stats = None if mode == "train" else (rs.randn(shape[1]), rs.rand(shape[1]) + 0.5)
    op_stats = None if stats is None else tuple(device.array(s, dtype="float64") for s in stats)
    c = rs.randn(*shape)
    out = BatchNorm(1, 1e-3, op_stats)(x, w, b)
    (out * Tensor(c, device=device, dtype="float64")).sum().backward()
    xt, wt, bt = (torch.tensor(to_host(t.cached_data), requires_grad=True) for t in (x, w, b))
    ref = _torch_bn(torch, xt, wt, bt, stats, 1e-3)
    (ref * torch.tensor(c)).sum().backward()
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    for ours, theirs in ((x, xt), (w, wt), (b, bt)):
        np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gradients_match_finite_differences(rs, shape):
    x, w, b = _inputs(rs, shape, ndl.cpu())
    gradient_check(lambda x, w, b: batch_norm(x, w, b, 1, 1e-5), x, w, b, backward=True, tol=1e-6)
    stats = (rs.randn(shape[1]), rs.rand(shape[1]) + 0.5)
    gradient_check(lambda x, w, b: batch_norm(x, w, b, 1, 1e-5, stats), x, w, b, backward=True, tol=1e-6)


@devices
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_second_derivatives_match_torch(torch, rs, device, mode):
    "Differentiate Σ d ⊙ ∂(Σ c ⊙ y)/∂x + Σ e ⊙ ∂(Σ c ⊙ y)/∂w again, as torch.autograd.grad(create_graph=True)."
    shape = (3, 4, 3, 2)
    x, w, b = _inputs(rs, shape, device)
    stats = None if mode == "train" else (rs.randn(4), rs.rand(4) + 0.5)
    op_stats = None if stats is None else tuple(device.array(s, dtype="float64") for s in stats)
    c, d, e = rs.randn(*shape), rs.randn(*shape), rs.randn(4)
    as_tensor = lambda a: Tensor(a, device=device, dtype="float64", requires_grad=False)
    (batch_norm(x, w, b, 1, 1e-5, op_stats) * as_tensor(c)).sum().backward(create_graph=True)
    # the bias's gradient Σ c depends on neither x nor w: its term adds zero, through BatchNormGrad's own gradient
    ((x.grad * as_tensor(d)).sum() + (w.grad * as_tensor(e)).sum() + (b.grad * as_tensor(e)).sum()).backward()
    xt, wt, bt = (torch.tensor(to_host(t.cached_data), requires_grad=True) for t in (x, w, b))
    gx, gw = torch.autograd.grad((_torch_bn(torch, xt, wt, bt, stats, 1e-5) * torch.tensor(c)).sum(), (xt, wt),
                                 create_graph=True)
    second = torch.autograd.grad((gx * torch.tensor(d)).sum() + (gw * torch.tensor(e)).sum(), (xt, wt))
    np.testing.assert_allclose(x.grad.numpy(), second[0].numpy(), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(w.grad.numpy(), second[1].numpy(), rtol=1e-7, atol=1e-9)


def test_the_fused_op_equals_the_reference_and_keeps_the_batch_statistics(rs):
    x, w, b = _inputs(rs, (6, 4, 3, 3), ndl.cpu())
    op = BatchNorm(1, 1e-5)
    np.testing.assert_allclose(op(x, w, b).numpy(), batch_norm_reference(x, w, b).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.mean, x.numpy().mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(op.var, x.numpy().var(axis=(0, 2, 3)), rtol=1e-12)   # biased, as needle's


def test_channel_axis_last(rs):
    x = Tensor(rs.randn(5, 2, 3), dtype="float64")
    w, b = Tensor(rs.randn(3), dtype="float64"), Tensor(rs.randn(3), dtype="float64")
    out = batch_norm(x, w, b, channel_axis=-1).numpy()
    a = x.numpy()
    expected = (a - a.mean((0, 1))) / np.sqrt(a.var((0, 1)) + 1e-5) * w.numpy() + b.numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-10)


def test_batchnorm2d_is_one_node_forward_and_three_backward(rs):
    layer = nn.BatchNorm2d(4)
    x = Tensor(rs.randn(2, 4, 3, 3).astype(np.float32))
    forward = nodes_made(lambda: layer(x))
    assert forward == ["BatchNorm"], forward
    out = layer(x)
    backward = nodes_made(lambda: out.backward(Tensor(np.ones(out.shape, np.float32))))
    assert backward == ["BatchNormGrad"] * 3, backward


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided", "2d", "no_channels", "no_images"])
def test_channel_sum_follows_memory_and_equals_numpys_sum(rs, layout):
    "Σ a and Σ a·b per channel, in float64, equal numpy's reduction whatever the memory layout behind the NCHW view."
    shape = (5, 3, 4, 2)
    if layout == "nchw": a, b = rs.randn(*shape), rs.randn(*shape)
    elif layout == "channels_last":   # what a convolution returns: an NCHW view of NHWC memory
        a, b = (rs.randn(5, 4, 2, 3).transpose(0, 3, 1, 2) for _ in range(2))
    elif layout == "strided": a, b = rs.randn(5, 3, 8, 2)[:, :, ::2], rs.randn(*shape)   # b laid out unlike a
    elif layout == "no_channels": a, b = np.zeros((2, 0, 2, 2)), np.zeros((2, 0, 2, 2))   # empty: still numpy's sums
    elif layout == "no_images": a, b = np.zeros((0, 3, 2, 2)), np.zeros((0, 3, 2, 2))
    else: a, b = rs.randn(6, 3), rs.randn(6, 3)
    axes, kept, _ = channel_layout(a.shape, 1)
    np.testing.assert_allclose(ops_norm.channel_sum(a, axes, kept), a.sum(axis=axes, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(ops_norm.channel_sum(a, axes, kept, b), (a * b).sum(axis=axes, keepdims=True),
                               rtol=1e-12, atol=1e-12)
    assert ops_norm.channel_sum(a, axes, kept).shape == kept


def _channels_last(rs, n, c, h, w, dtype="float64"):
    "An NCHW view of NHWC memory (what a convolution returns), values ~ N(1, 2²)."
    return (rs.randn(n, h, w, c) * 2 + 1).astype(dtype).transpose(0, 3, 1, 2)


def test_channel_rows_take_only_channels_last_memory_with_few_channels(rs):
    "The row passes see whole channel vectors: rows of k·C entries; other layouts, wide or small arrays are None."
    a = _channels_last(rs, 32, 16, 8, 8)
    rows, k = ops_norm._channel_rows(a, 1)
    assert rows.shape == (32 * 64 // k, 16 * k) and k * 16 <= 1024 and np.shares_memory(rows, a)
    np.testing.assert_array_equal(rows.reshape(-1, 16), a.transpose(0, 2, 3, 1).reshape(-1, 16))
    assert ops_norm._channel_rows(np.ascontiguousarray(a), 1) is None       # NCHW memory: the channel is not fastest
    assert ops_norm._channel_rows(_channels_last(rs, 8, 64, 8, 8), 1) is None   # C >= 64: numpy's broadcast
    assert ops_norm._channel_rows(_channels_last(rs, 2, 16, 8, 8), 1) is None   # 2048 entries: too small to pay
    assert ops_norm._tile_count(384, 48) == 16                # the largest k <= 1024 // 48 = 21 dividing 384
    assert ops_norm._tile_count(7, 2000) == 1


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("shape", [(32, 16, 8, 8), (36, 3, 19, 17)], ids=str)
def test_channels_last_row_path_matches_torch(torch, rs, monkeypatch, mode, shape):
    """On channels-last numpy memory with few channels (the row passes of `_channel_rows`, which must be taken), the
    value and all three gradients equal PyTorch's in float64, and float32 agrees with the plain broadcasts. The
    ops' `compute` is called on numpy arrays directly, so the path is tested under NEEDLE_BACKEND=nd too."""
    N, C, H, W = shape
    taken = []
    real = ops_norm._channel_rows
    monkeypatch.setattr(ops_norm, "_channel_rows", lambda a, c: taken.append(real(a, c) is not None) or real(a, c))
    xa, g = _channels_last(rs, N, C, H, W), _channels_last(rs, N, C, H, W)
    w, b = rs.randn(C), rs.randn(C)
    stats = None if mode == "train" else (rs.randn(C), rs.rand(C) + 0.5)

    def run(x, g, w, b, stats):
        "The forward and the three gradients of one BatchNorm, as numpy arrays."
        op = BatchNorm(1, 1e-3, stats)
        y = op.compute(x, w, b)
        return (y, BatchNormGrad(op, "x").compute(g, x, w), BatchNormGrad(op, "weight").compute(g, x),
                BatchNormGrad(op, "bias").compute(g))
    ours = run(xa, g, w, b, stats)
    assert ours[0].strides == xa.strides and ours[1].strides == g.strides   # the memory order is kept
    # every array the op asked about took the rows: the forward's three, and in training the input gradient's three
    assert all(taken) and len(taken) >= (6 if mode == "train" else 3)
    xt, wt, bt = (torch.tensor(np.ascontiguousarray(a), requires_grad=True) for a in (xa, w, b))
    ref = _torch_bn(torch, xt, wt, bt, stats, 1e-3)
    ref.backward(torch.tensor(np.ascontiguousarray(g)))
    np.testing.assert_allclose(ours[0], ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    for mine, theirs in zip(ours[1:], (xt, wt, bt)):
        np.testing.assert_allclose(mine, theirs.grad.numpy(), rtol=1e-8, atol=1e-10)
    # float32 on the row path against float32 on numpy's broadcasts (the same values, NCHW-contiguous)
    f32 = lambda a: None if a is None else a.astype(np.float32)
    stats32 = None if stats is None else tuple(map(f32, stats))
    rows = run(f32(xa), f32(g), f32(w), f32(b), stats32)
    plain = run(np.ascontiguousarray(f32(xa)), np.ascontiguousarray(f32(g)), f32(w), f32(b), stats32)
    for r, p in zip(rows, plain):
        assert r.dtype == np.float32
        np.testing.assert_allclose(r, p, rtol=1e-4, atol=1e-4)

def test_the_three_gradients_share_two_channel_sums(rs, monkeypatch):
    x = Tensor(rs.randn(3, 4, 2, 2))
    w, b = Tensor(rs.randn(4)), Tensor(rs.randn(4))
    out = batch_norm(x, w, b)
    calls = []
    real_sum = ops_norm.channel_sum
    monkeypatch.setattr(ops_norm, "channel_sum", lambda *a, **k: calls.append(1) or real_sum(*a, **k))
    out.backward(Tensor(rs.randn(*out.shape)))
    assert len(calls) == 2, len(calls)   # Σ ḡ·x̂ and Σ ḡ, not one per gradient


def test_input_that_needs_no_gradient_gets_none(rs):
    x = Tensor(rs.randn(4, 3), requires_grad=False)
    w, b = Tensor(np.ones(3, np.float32)), Tensor(np.zeros(3, np.float32))
    batch_norm(x, w, b).sum().backward()
    assert x.grad is None and w.grad.shape == (3,) and b.grad.shape == (3,)


def test_vjp_returns_differentiable_gradients_and_sets_no_grad(rs):
    x = Tensor(rs.randn(3), dtype="float64")
    y = Tensor(rs.randn(3), dtype="float64", requires_grad=False)
    (gx,) = vjp(lambda x: x * x * x, (x,), Tensor(np.ones(3)))
    np.testing.assert_allclose(gx.numpy(), 3 * x.numpy() ** 2)
    assert x.grad is None
    gx.sum().backward()                                    # d/dx Σ 3x² = 6x
    np.testing.assert_allclose(x.grad.numpy(), 6 * x.numpy())
    assert vjp(lambda x, y: x * 2.0, (x, y), Tensor(np.ones(3)))[1] is None   # y does not enter


def test_bad_input_is_refused_with_the_shapes_named(rs):
    x = Tensor(rs.randn(4, 3).astype(np.float32))
    with pytest.raises(ValueError, match=r"shape \(3,\)"): batch_norm(x, Tensor(np.ones(2)), Tensor(np.ones(2)))
    with pytest.raises(ValueError, match="batch axis"): channel_layout((5,))
    with pytest.raises(ValueError, match="out of range"): batch_norm(x, Tensor(np.ones(3)), Tensor(np.ones(3)), channel_axis=2)
    with pytest.raises(ValueError, match="eps"): BatchNorm(eps=-1.0)
    with pytest.raises(ValueError, match="wrt"): BatchNormGrad(BatchNorm(), "running_mean")


def test_batchnorm_layers_refuse_an_empty_batch_before_moving_statistics():
    layer = nn.BatchNorm2d(3)
    before = layer.running_mean.numpy().copy()
    with pytest.raises(ValueError, match="batch size 0"): layer(Tensor(np.zeros((0, 3, 2, 2), np.float32)))
    np.testing.assert_array_equal(layer.running_mean.numpy(), before)
    with pytest.warns(UserWarning, match="size 1"): layer(Tensor(np.ones((1, 3, 1, 1), np.float32)))


# --- LayerNorm (issue 27) -------------------------------------------------------------------------------
from needle_nb.ops_norm import LayerNorm, LayerNormGrad, layer_norm, layer_norm_reference  # noqa: E402

LN_CASES = [((7, 5), 1), ((2, 3, 4), 1), ((2, 3, 4), 2), ((6,), 1)]


def _ln_inputs(rs, shape, k, device):
    norm = shape[len(shape) - k:]
    return (Tensor(rs.randn(*shape) * 2 + 1, device=device, dtype="float64"),
            Tensor(rs.randn(*norm), device=device, dtype="float64"), Tensor(rs.randn(*norm), device=device, dtype="float64"))


@devices
@pytest.mark.parametrize("shape,k", LN_CASES, ids=str)
def test_layer_norm_values_and_gradients_match_torch(torch, rs, device, shape, k):
    x, w, b = _ln_inputs(rs, shape, k, device)
    c = rs.randn(*shape)
    out = LayerNorm(k, 1e-3)(x, w, b)
    (out * Tensor(c, device=device, dtype="float64")).sum().backward()
    xt, wt, bt = (torch.tensor(to_host(t.cached_data), requires_grad=True) for t in (x, w, b))
    ref = torch.nn.functional.layer_norm(xt, tuple(shape[len(shape) - k:]), wt, bt, 1e-3)
    (ref * torch.tensor(c)).sum().backward()
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    for ours, theirs in ((x, xt), (w, wt), (b, bt)):
        np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("shape,k", LN_CASES, ids=str)
def test_layer_norm_gradients_match_finite_differences(rs, shape, k):
    x, w, b = _ln_inputs(rs, shape, k, ndl.cpu())
    for params in ((), (w,), (w, b)):
        gradient_check(lambda x, *p: LayerNorm(k, 1e-5)(x, *p), x, *params, backward=True, tol=1e-6)


@devices
def test_layer_norm_second_derivatives_match_torch(torch, rs, device):
    "Σ d ⊙ ∂(Σ c ⊙ y)/∂x + Σ e ⊙ ∂(Σ c ⊙ y)/∂w differentiated again, as torch.autograd.grad(create_graph=True)."
    x, w, b = _ln_inputs(rs, (3, 5), 1, device)
    c, d, e = rs.randn(3, 5), rs.randn(3, 5), rs.randn(5)
    as_tensor = lambda a: Tensor(a, device=device, dtype="float64", requires_grad=False)
    (layer_norm(x, w, b, 1, 1e-5) * as_tensor(c)).sum().backward(create_graph=True)
    ((x.grad * as_tensor(d)).sum() + (w.grad * as_tensor(e)).sum() + (b.grad * as_tensor(e)).sum()).backward()
    xt, wt, bt = (torch.tensor(to_host(t.cached_data), requires_grad=True) for t in (x, w, b))
    ref = torch.nn.functional.layer_norm(xt, (5,), wt, bt, 1e-5)
    gx, gw = torch.autograd.grad((ref * torch.tensor(c)).sum(), (xt, wt), create_graph=True)
    second = torch.autograd.grad((gx * torch.tensor(d)).sum() + (gw * torch.tensor(e)).sum(), (xt, wt))
    np.testing.assert_allclose(x.grad.numpy(), second[0].numpy(), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(w.grad.numpy(), second[1].numpy(), rtol=1e-7, atol=1e-9)


def test_layer_norm_is_one_node_forward_and_one_per_input_backward(rs):
    x, w, b = _ln_inputs(rs, (8, 6), 1, ndl.cpu())
    names = nodes_made(lambda: layer_norm(x, w, b).sum().backward())
    assert names.count("LayerNorm") == 1 and names.count("LayerNormGrad") == 3, names
    ref = nodes_made(lambda: layer_norm_reference(x, w, b).sum().backward())
    assert len(ref) >= 4 * len(names), (len(ref), len(names))


def test_nn_layer_norm_is_the_fused_op_and_matches_the_reference(rs):
    for norm, shape in [(nn.LayerNorm1d(5, dtype="float64"), (4, 5)), (nn.LayerNorm((2, 3), dtype="float64"), (4, 2, 3)),
                        (nn.LayerNorm(3, elementwise_affine=False, dtype="float64"), (2, 3)),
                        (nn.LayerNorm(3, bias=False, dtype="float64"), (2, 3))]:
        x = Tensor(rs.randn(*shape), dtype="float64")
        params = [p for p in (norm.weight, norm.bias) if p is not None]
        k = len(norm.normalized_shape)
        np.testing.assert_allclose(norm(x).numpy(), layer_norm_reference(x, *params, k=k, eps=norm.eps).numpy(),
                                   rtol=1e-12, atol=1e-12)
        assert nodes_made(lambda: norm(x)) == ["LayerNorm"]


def test_layer_norm_refuses_bad_input(rs):
    x = Tensor(rs.randn(4, 3), dtype="float64")
    with pytest.raises(ValueError, match=r"normalized shape \(3,\)"): layer_norm(x, Tensor(np.ones(2)))
    with pytest.raises(ValueError, match="needs a weight"): layer_norm(x, None, Tensor(np.ones(3)))
    with pytest.raises(ValueError, match="k \\(the normalized axes\\)"): LayerNorm(k=0)
    with pytest.raises(ValueError, match="fewer than k=3"): LayerNorm(k=3)(x)
    with pytest.raises(ValueError, match="eps"): LayerNorm(eps=-1.0)
    with pytest.raises(ValueError, match="wrt"): LayerNormGrad(LayerNorm(), "z")
