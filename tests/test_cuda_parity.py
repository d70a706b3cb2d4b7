"""CPU-vs-GPU parity: every op, module, loss and optimizer gives the CPU's numbers on the cuda device.

Runs only where `ndl.cuda().enabled()` (cupy and a GPU); everywhere else the whole file is skipped
with that reason, and the cuda paths are covered by the fake-cupy tests in test_backend.py.

Each case draws its inputs once on the host (seeded), runs forward and backward (with a random
output gradient, so every input gradient is exercised) on `cpu()` and on `cuda()`, and compares
values and gradients within float32 tolerance (float64 to 1e-10). needle's functional
initializers draw from numpy's global RNG and the in-place `_` ones from `rng()`, both on the
host, so every initializer gives the same weights on both devices; the module cases rely on that.
"""
import numpy as np
import pytest

import needle_nb as ndl
from needle_nb.ops_norm import batch_norm
import needle_nb.init as init
import needle_nb.nn as nn
import needle_nb.optim as optim
from needle_nb import Tensor

pytestmark = pytest.mark.skipif(not ndl.cuda().enabled(), reason="no usable cuda device (cupy + GPU) here")

TOL = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-12)}


def _run(fn, arrays, device, dtype, seed):
    "Forward and backward of `fn` on `device`: (output, [input gradients]) as host arrays."
    xs = [Tensor(a, device=device, dtype=dtype) for a in arrays]
    out = fn(*xs)
    grad = np.random.RandomState(seed).randn(*out.shape)
    (out * Tensor(grad, device=device, dtype=dtype, requires_grad=False)).sum().backward()
    assert out.device == device, f"{fn} put its result on {out.device!r}, not {device!r}"
    for x in xs:
        assert x.grad is None or x.grad.device == device, f"gradient on {x.grad.device!r}, not {device!r}"
    return out.numpy(), [None if x.grad is None else x.grad.numpy() for x in xs]


def _positive(shape, rs): return rs.rand(*shape) + 0.5
def _any(shape, rs): return rs.randn(*shape)

# name -> (function of tensors, input shapes, input maker). Shapes cover broadcasting, odd sizes, axes.
OPS = {
    "add": (lambda a, b: a + b, [(5, 7), (5, 7)], _any),
    "add_broadcast": (lambda a, b: a + ndl.broadcast_to(b, (5, 7)), [(5, 7), (1, 7)], _any),
    "add_scalar": (lambda a: a + 1.5, [(3, 4)], _any),
    "subtract": (lambda a, b: a - b, [(4, 3), (4, 3)], _any),
    "multiply": (lambda a, b: a * b, [(6, 5), (6, 5)], _any),
    "mul_scalar": (lambda a: a * -2.5, [(6, 5)], _any),
    "divide": (lambda a, b: a / b, [(4, 5), (4, 5)], _positive),
    "divide_scalar": (lambda a: a / 3.0, [(4, 5)], _any),
    "power": (lambda a, b: ndl.power(a, b), [(3, 4), (3, 4)], _positive),
    "power_scalar": (lambda a: a ** 3, [(3, 4)], _any),
    "negate": (lambda a: -a, [(3, 4)], _any),
    "transpose": (lambda a: ndl.transpose(a), [(3, 4, 5)], _any),
    "transpose_axes": (lambda a: ndl.transpose(a, (0, 2)), [(3, 4, 5)], _any),
    "reshape": (lambda a: ndl.reshape(a, (6, 10)), [(3, 4, 5)], _any),
    "broadcast_to": (lambda a: ndl.broadcast_to(a, (4, 3, 5)), [(3, 1)], _any),
    "summation_all": (lambda a: ndl.summation(a), [(7, 9)], _any),
    "summation_axes": (lambda a: ndl.summation(a, axes=(0, 2)), [(3, 4, 5)], _any),
    "amax": (lambda a: ndl.amax(a, axes=(1,)), [(6, 8)], _any),
    "matmul": (lambda a, b: a @ b, [(17, 33), (33, 9)], _any),
    "matmul_batched": (lambda a, b: a @ b, [(2, 5, 7), (7, 3)], _any),
    "log": (lambda a: ndl.log(a), [(5, 6)], _positive),
    "exp": (lambda a: ndl.exp(a), [(5, 6)], _any),
    "relu": (lambda a: ndl.relu(a), [(5, 6)], _any),
    "tanh": (lambda a: ndl.tanh(a), [(5, 6)], _any),
    "sigmoid": (lambda a: ndl.sigmoid(a), [(5, 6)], _any),
    "logsumexp": (lambda a: ndl.logsumexp(a, axes=(1,)), [(6, 8)], _any),
    "logsumexp_all": (lambda a: ndl.logsumexp(a), [(6, 8)], _any),
    "logsoftmax": (lambda a: ndl.logsoftmax(a), [(6, 10)], _any),
    "softmax": (lambda a: ndl.softmax(a), [(6, 10)], _any),
    "stack": (lambda a, b: ndl.stack([a, b], axis=1), [(3, 4), (3, 4)], _any),
    "split": (lambda a: ndl.split(a, axis=1)[2] * 2 + ndl.split(a, axis=1)[0], [(3, 4)], _any),
    "get_item": (lambda a: a[1:4, ::2], [(5, 6)], _any),
    "leaky_relu": (lambda a: nn.LeakyReLU(0.1)(a), [(5, 6)], _any),
    "gelu": (lambda a: nn.GELU()(a), [(5, 6)], _any),
    # convolution and pooling (nbs/02a_conv_ops): NHWC conv, NCHW pooling
    "flip": (lambda a: ndl.flip(a, (1, 2)), [(2, 3, 4, 5)], _any),
    "dilate": (lambda a: ndl.dilate(a, (1, 2), 2), [(2, 3, 4, 5)], _any),
    "undilate": (lambda a: ndl.undilate(a, (0, 1), 1), [(7, 6, 3)], _any),
    "pad": (lambda a: ndl.pad(a, ((0, 0), (1, 2), (2, 1), (0, 0))), [(2, 3, 4, 5)], _any),
    "conv_s1_p1": (lambda a, b: ndl.conv(a, b, stride=1, padding=1), [(2, 9, 9, 3), (3, 3, 3, 4)], _any),
    "conv_s2_p0_K5": (lambda a, b: ndl.conv(a, b, stride=2, padding=0), [(2, 12, 11, 3), (5, 5, 3, 2)], _any),
    "conv_s3_p2_K4": (lambda a, b: ndl.conv(a, b, stride=3, padding=2), [(1, 10, 10, 2), (4, 4, 2, 3)], _any),
    "conv_1x1": (lambda a, b: ndl.conv(a, b, stride=1, padding=0), [(3, 5, 5, 8), (1, 1, 8, 4)], _any),
    # fused batch norm (nbs/02b_norm_ops): NCHW and (B, C), batch statistics
    "batch_norm_nchw": (lambda x, w, b: batch_norm(x, w, b), [(4, 3, 5, 6), (3,), (3,)], _any),
    "batch_norm_2d": (lambda x, w, b: batch_norm(x, w, b), [(9, 5), (5,), (5,)], _any),
    "max_pool2d": (lambda a: ndl.max_pool2d(a, 3, stride=2, padding=1), [(2, 3, 9, 8)], _any),
    "avg_pool2d": (lambda a: ndl.avg_pool2d(a, 2), [(2, 3, 8, 8)], _any),
    "global_avg_pool2d": (lambda a: ndl.global_avg_pool2d(a), [(2, 3, 5, 7)], _any),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(OPS))
def test_op_forward_and_backward_match_cpu(name, dtype):
    fn, shapes, make = OPS[name]
    rs = np.random.RandomState(abs(hash(name)) % 2**31)
    arrays = [make(s, rs) for s in shapes]
    out_cpu, grads_cpu = _run(fn, arrays, ndl.cpu(), dtype, seed=1)
    out_gpu, grads_gpu = _run(fn, arrays, ndl.cuda(), dtype, seed=1)
    assert out_gpu.dtype == out_cpu.dtype == np.dtype(dtype)
    np.testing.assert_allclose(out_gpu, out_cpu, **TOL[dtype], err_msg=f"{name}: forward")
    for i, (g_gpu, g_cpu) in enumerate(zip(grads_gpu, grads_cpu)):
        assert (g_gpu is None) == (g_cpu is None)
        if g_cpu is not None:
            assert g_gpu.dtype == np.dtype(dtype), f"{name}: gradient {i} is {g_gpu.dtype}"
            np.testing.assert_allclose(g_gpu, g_cpu, **TOL[dtype], err_msg=f"{name}: gradient of input {i}")


@pytest.mark.parametrize("shape", [(3, 4), (17, 5, 2), (1,), (64, 128)])
def test_random_shapes_sum_of_products(shape):
    "A small expression on random shapes: the graph's gradients agree on both devices."
    rs = np.random.RandomState(len(shape))
    arrays = [rs.randn(*shape), rs.rand(*shape) + 0.5]
    fn = lambda a, b: ndl.exp(a * 0.1) / b + ndl.tanh(a) * ndl.log(b)
    out_cpu, g_cpu = _run(fn, arrays, ndl.cpu(), "float32", seed=3)
    out_gpu, g_gpu = _run(fn, arrays, ndl.cuda(), "float32", seed=3)
    np.testing.assert_allclose(out_gpu, out_cpu, **TOL["float32"])
    for a, b in zip(g_gpu, g_cpu): np.testing.assert_allclose(a, b, **TOL["float32"])


def test_one_hot_and_softmax_loss_match_cpu():
    rs = np.random.RandomState(0)
    logits, labels = rs.randn(32, 10), rs.randint(0, 10, 32)
    losses = []
    for device in (ndl.cpu(), ndl.cuda()):
        x = Tensor(logits, device=device)
        y = Tensor(labels, device=device, requires_grad=False)
        loss = nn.SoftmaxLoss()(x, y)
        loss.backward()
        losses.append((loss.numpy(), x.grad.numpy()))
    np.testing.assert_allclose(losses[1][0], losses[0][0], **TOL["float32"])
    np.testing.assert_allclose(losses[1][1], losses[0][1], **TOL["float32"])


def test_functional_initializers_give_the_same_weights_on_both_devices():
    for fn, args in [(init.xavier_uniform, (30, 20)), (init.kaiming_normal, (30, 20)),
                     (init.rand, (4, 5)), (init.randn, (4, 5)), (init.randb, (4, 5))]:
        np.random.seed(7); on_cpu = fn(*args, device=ndl.cpu())
        np.random.seed(7); on_gpu = fn(*args, device=ndl.cuda())
        assert on_gpu.device == ndl.cuda(), fn.__name__
        np.testing.assert_array_equal(on_gpu.numpy(), on_cpu.numpy(), err_msg=fn.__name__)


@pytest.mark.parametrize("name", ["uniform_", "normal_", "xavier_uniform_", "xavier_normal_",
                                  "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "orthogonal_"])
def test_inplace_initializers_fill_gpu_tensors_with_the_cpus_values(name):
    "The `_` initializers draw on the host from `rng()` (seeded by `manual_seed`) and copy: same values."
    filled = []
    for device in (ndl.cpu(), ndl.cuda()):
        ndl.manual_seed(0)
        w = Tensor(np.zeros((256, 512)), device=device, dtype="float32")
        assert getattr(init, name)(w) is w
        assert w.device == device and w.dtype == np.float32, (name, w.device, w.dtype)
        filled.append(w.numpy())
    assert filled[0].std() > 0
    np.testing.assert_array_equal(filled[1], filled[0], err_msg=name)


def _mlp(seed, device, dtype="float32"):
    np.random.seed(seed)
    return nn.Sequential(nn.Linear(20, 32, device=device, dtype=dtype), nn.BatchNorm1d(32, device=device, dtype=dtype),
                         nn.ReLU(), nn.Residual(nn.Sequential(nn.Linear(32, 32, device=device, dtype=dtype), nn.Tanh())),
                         nn.LayerNorm1d(32, device=device, dtype=dtype), nn.Dropout(0.2),
                         nn.Linear(32, 10, device=device, dtype=dtype))


@pytest.mark.parametrize("make_opt", [lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
                                      lambda p: optim.Adam(p, lr=0.01, weight_decay=1e-3)], ids=["SGD", "Adam"])
def test_training_steps_match_cpu(make_opt):
    "Five steps of a model with every layer kind: losses, weights and running statistics agree."
    rs = np.random.RandomState(1)
    X, y = rs.randn(64, 20), rs.randint(0, 10, 64)
    results = []
    for device in (ndl.cpu(), ndl.cuda()):
        model, loss_fn = _mlp(0, device), nn.SoftmaxLoss()
        opt = make_opt(model.parameters())
        np.random.seed(5)   # dropout masks are drawn on the host: the same on both devices
        losses = []
        for _ in range(5):
            opt.reset_grad()
            loss = loss_fn(model(Tensor(X, device=device)), Tensor(y, device=device, requires_grad=False))
            loss.backward()
            opt.step()
            losses.append(loss.item())
        for name, p in model.named_parameters():
            assert p.device == device, (name, p.device)
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        results.append((losses, state))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-4)
    for key in results[0][1]:
        np.testing.assert_allclose(results[1][1][key], results[0][1][key], rtol=1e-3, atol=1e-4, err_msg=key)


def test_model_to_cuda_and_back_and_checkpoint(tmp_path):
    model = _mlp(0, ndl.cpu())
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    model.to(ndl.cuda())
    assert all(p.device == ndl.cuda() for p in model.parameters())
    nn.save(model.state_dict(), tmp_path / "m.npz")
    loaded = nn.load(tmp_path / "m.npz", device=ndl.cuda())
    assert all(v.device == ndl.cuda() for v in loaded.values())
    model.to(ndl.cpu())
    for k, v in model.state_dict().items(): np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)


def test_clip_grad_norm_and_dataloader_on_gpu():
    model = _mlp(0, ndl.cuda())
    x = Tensor(np.random.RandomState(0).randn(8, 20), device=ndl.cuda())
    model(x).sum().backward()
    norm = optim.clip_grad_norm_(model.parameters(), 0.5)
    total = np.sqrt(sum((p.grad.numpy().astype(np.float64) ** 2).sum() for p in model.parameters()))
    assert float(norm) > 0.5 and abs(total - 0.5) < 1e-3
    data = ndl.data.NDArrayDataset(np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10))
    batches = list(ndl.data.DataLoader(data, batch_size=4, device=ndl.cuda()))
    assert len(batches) == 3 and batches[0][0].shape == (4, 2) and batches[0][0].device == ndl.cuda()
    np.testing.assert_array_equal(batches[2][1].numpy(), [8, 9])


def test_one_hot_of_gpu_labels_stays_on_the_gpu_and_checks_the_range():
    y = Tensor(np.array([2, 0, 1]), device=ndl.cuda(), requires_grad=False)
    encoded = init.one_hot(3, y, device=ndl.cuda())
    assert encoded.device == ndl.cuda()
    np.testing.assert_array_equal(encoded.numpy(), np.eye(3, dtype=np.float32)[[2, 0, 1]])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        init.one_hot(2, y, device=ndl.cuda())


# --- convolutional, recurrent and attention layers: each built twice from the same seed (host draws: the same weights) -----
def _module_parity(make, input_shape, dtype="float32", seed=0, first=lambda out: out):
    "Forward and backward of `make(device)` on both devices: output, input and weight gradients agree."
    x_host = np.random.RandomState(seed).randn(*input_shape)
    results = []
    for device in (ndl.cpu(), ndl.cuda()):
        np.random.seed(seed)
        module = make(device, dtype)
        x = Tensor(x_host, device=device, dtype=dtype)
        out = first(module(x))
        grad = np.random.RandomState(seed + 1).randn(*out.shape)
        (out * Tensor(grad, device=device, dtype=dtype, requires_grad=False)).sum().backward()
        assert out.device == device
        results.append((out.numpy(), x.grad.numpy(),
                        {name: p.grad.numpy() for name, p in module.named_parameters() if p.grad is not None}))
    (out_c, gx_c, gw_c), (out_g, gx_g, gw_g) = results
    np.testing.assert_allclose(out_g, out_c, **TOL[dtype], err_msg="forward")
    np.testing.assert_allclose(gx_g, gx_c, **TOL[dtype], err_msg="input gradient")
    assert gw_g.keys() == gw_c.keys() and gw_c
    for name in gw_c: np.testing.assert_allclose(gw_g[name], gw_c[name], **TOL[dtype], err_msg=name)


LAYERS = {
    "RNN_tanh_2layers": (lambda d, t: nn.RNN(6, 8, num_layers=2, device=d, dtype=t), (7, 3, 6)),
    "RNN_relu_nobias": (lambda d, t: nn.RNN(6, 8, bias=False, nonlinearity="relu", device=d, dtype=t), (5, 2, 6)),
    "LSTM_2layers": (lambda d, t: nn.LSTM(6, 8, num_layers=2, device=d, dtype=t), (7, 3, 6)),
    "LSTM_nobias": (lambda d, t: nn.LSTM(6, 8, bias=False, device=d, dtype=t), (5, 2, 6)),
    "Conv_K3_s1": (lambda d, t: nn.Conv(3, 8, 3, device=d, dtype=t), (2, 3, 10, 10)),
    "Conv_K4_s2_nobias": (lambda d, t: nn.Conv(4, 6, 4, stride=2, bias=False, device=d, dtype=t), (2, 4, 9, 9)),
    "ConvNet": (lambda d, t: nn.Sequential(nn.Conv(3, 8, 3, device=d, dtype=t), nn.BatchNorm2d(8, device=d, dtype=t),
                                           nn.ReLU(), nn.MaxPool2d(2), nn.Conv(8, 4, 3, stride=2, device=d, dtype=t),
                                           nn.GlobalAvgPool2d(), nn.Linear(4, 3, device=d, dtype=t)), (4, 3, 12, 12)),
    "TransformerLayer": (lambda d, t: nn.TransformerLayer(16, 4, 4, 32, device=d, dtype=t), (2, 5, 16)),
    "Transformer_causal": (lambda d, t: nn.Transformer(16, 32, 2, num_head=4, dim_head=4, device=d,
                                                       dtype=t, sequence_len=8), (6, 2, 16)),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_conv_sequence_and_attention_layers_match_cpu(name, dtype):
    make, shape = LAYERS[name]
    first = (lambda out: out[0]) if name.startswith(("RNN", "LSTM", "Transformer_")) else (lambda out: out)
    _module_parity(make, shape, dtype, first=first)
