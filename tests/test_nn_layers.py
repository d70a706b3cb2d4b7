"""Layers and losses (nbs/04a_nn_layers): forward and backward against PyTorch (float64) where it is
installed, against finite differences always, and needle's exact initialization and RNG use."""
import math

import numpy as np
import pytest

import needle_nb as ndl
import needle_nb.nn as nn
from needle_nb import init
import needle_nb.apps.testing as testing


def t64(rs, *shape, device=None):
    return ndl.Tensor(rs.randn(*shape), device=device)


def check_against_torch(torch, ours, theirs, x, params=(), torch_params=(), loss_weights=None, atol=1e-10):
    """Run `ours(x)` and `theirs(x)` (float64), compare outputs, then the gradients of a random
    weighted sum with respect to `x` and each pair of (our, torch) parameters, through the one
    comparison helper, `needle_nb.apps.testing.check_against_torch`.
    `torch_params` items are (tensor, to_ours) with `to_ours` mapping a torch gradient to our layout."""
    pairs = [(p, pt, to_ours) for p, (pt, to_ours) in zip(params, torch_params)]
    testing.check_against_torch(ours, theirs, x, params=pairs, out_grad=loss_weights, seed=42, atol=atol, rtol=1e-7)


@pytest.fixture
def rs(): return np.random.RandomState(0)


# --- Linear -----------------------------------------------------------------------------------
def test_linear_initialization_is_needles_draw_order():
    ndl.manual_seed(3)
    layer = nn.Linear(7, 4)
    np.random.seed(3)
    bound_w = math.sqrt(2) * math.sqrt(3 / 7)
    weight = (np.random.rand(7, 4) * 2 * bound_w - bound_w).astype(np.float32)
    bound_b = math.sqrt(2) * math.sqrt(3 / 4)
    bias = (np.random.rand(4, 1) * 2 * bound_b - bound_b).astype(np.float32).reshape(1, 4)
    np.testing.assert_array_equal(layer.weight.numpy(), weight)
    np.testing.assert_array_equal(layer.bias.numpy(), bias)
    assert layer.weight.dtype == np.float32 and layer.weight.requires_grad


def test_linear_against_torch(torch, rs, device):
    ours = nn.Linear(5, 3, dtype="float64", device=device)
    theirs = torch.nn.Linear(5, 3).double()
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(ours.weight.numpy().T))   # needle (in, out) = torch (out, in).T
        theirs.bias.copy_(torch.tensor(ours.bias.numpy().reshape(-1)))
    check_against_torch(torch, ours, theirs, t64(rs, 4, 5, device=device), [ours.weight, ours.bias],
                        [(theirs.weight, lambda g: g.T), (theirs.bias, lambda g: g.reshape(1, -1))])


def test_linear_finite_differences(rs, device):
    layer = nn.Linear(4, 3, dtype="float64", device=device)
    ndl.gradient_check(lambda x, w, b: layer(x), t64(rs, 2, 4, device=device), layer.weight, layer.bias,
                       backward=True)


def test_linear_without_bias_and_with_a_later_flat_bias(rs):
    layer = nn.Linear(4, 3, bias=False, dtype="float64")
    x = t64(rs, 2, 4)
    np.testing.assert_allclose(layer(x).numpy(), x.numpy() @ layer.weight.numpy())
    layer.bias = nn.Parameter(np.arange(3.0))
    np.testing.assert_allclose(layer(x).numpy(), x.numpy() @ layer.weight.numpy() + np.arange(3.0))
    ndl.gradient_check(lambda x, b: layer(x), x, layer.bias, backward=True)
    assert layer.bias.grad.shape == (3,)


# --- parameter-free layers and activations ----------------------------------------------------
ACTIVATIONS = [
    ("ReLU", lambda: nn.ReLU(), lambda t: t.nn.ReLU()),
    ("Tanh", lambda: nn.Tanh(), lambda t: t.nn.Tanh()),
    ("Sigmoid", lambda: nn.Sigmoid(), lambda t: t.nn.Sigmoid()),
    ("LeakyReLU", lambda: nn.LeakyReLU(), lambda t: t.nn.LeakyReLU()),
    ("LeakyReLU0.2", lambda: nn.LeakyReLU(0.2), lambda t: t.nn.LeakyReLU(0.2)),
    ("GELU", lambda: nn.GELU(), lambda t: t.nn.GELU()),
    ("GELUtanh", lambda: nn.GELU("tanh"), lambda t: t.nn.GELU(approximate="tanh")),
    ("Softmax", lambda: nn.Softmax(), lambda t: t.nn.Softmax(dim=-1)),
    ("Softmax0", lambda: nn.Softmax(dim=0), lambda t: t.nn.Softmax(dim=0)),
    ("Flatten", lambda: nn.Flatten(), lambda t: t.nn.Flatten()),
    ("Identity", lambda: nn.Identity(), lambda t: t.nn.Identity()),
]


@pytest.mark.parametrize("name,ours,theirs", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_against_torch(torch, rs, device, name, ours, theirs):
    shape = (3, 2, 4) if name == "Flatten" else (4, 5)
    data = rs.randn(*shape)
    data[0, 0] = 0.0                   # the kink of ReLU-like functions: torch's convention there
    x = ndl.Tensor(data, device=device)
    check_against_torch(torch, ours(), theirs(torch), x)


@pytest.mark.parametrize("name,ours,theirs", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_finite_differences(rs, device, name, ours, theirs):
    shape = (3, 2, 4) if name == "Flatten" else (4, 5)
    layer = ours()
    ndl.gradient_check(lambda x: layer(x), t64(rs, *shape, device=device), backward=True)


def test_activations_keep_float32(rs):
    x = ndl.Tensor(rs.randn(3, 4).astype(np.float32))
    for layer in [nn.LeakyReLU(), nn.GELU(), nn.GELU("tanh"), nn.Softmax(0)]:
        out = layer(x)
        assert out.dtype == np.float32, layer
        x.requires_grad = True
        out.sum().backward()
        assert x.grad.dtype == np.float32


# --- containers -------------------------------------------------------------------------------
def test_sequential_and_residual_compose(rs, device):
    inner = nn.Sequential(nn.Linear(4, 4, dtype="float64", device=device), nn.Tanh())
    model = nn.Sequential(nn.Residual(inner), nn.ReLU())
    x = t64(rs, 3, 4, device=device)
    h = np.tanh(x.numpy() @ inner[0].weight.numpy() + inner[0].bias.numpy()) + x.numpy()
    np.testing.assert_allclose(model(x).numpy(), np.maximum(h, 0))
    ndl.gradient_check(lambda x, w: model(x), x, inner[0].weight, backward=True)


def test_module_list_and_dict_register_children():
    layers = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])
    layers.append(nn.Linear(2, 1))
    del layers[1]
    assert list(layers.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert len(layers) == 2 and isinstance(layers[1], nn.Linear)
    heads = nn.ModuleDict({"a": nn.Linear(2, 2)})
    heads["b"] = nn.Linear(2, 3)
    assert "b" in heads and list(heads) == ["a", "b"] and len(heads.parameters()) == 4
    heads.pop("a")
    assert list(heads.state_dict()) == ["b.weight", "b.bias"]


# --- Dropout ----------------------------------------------------------------------------------
def test_dropout_uses_needles_mask(device):
    x = ndl.Tensor(np.arange(1, 301, dtype=np.float32).reshape(30, 10), device=device)
    drop = nn.Dropout(0.25)
    np.random.seed(7)
    out = drop(x).numpy()
    np.random.seed(7)
    mask = np.random.rand(30, 10) <= 0.75          # needle: init.randb(*x.shape, p=1 - p)
    np.testing.assert_allclose(out, x.numpy() * mask / 0.75, rtol=1e-6)
    x.requires_grad = True
    np.random.seed(7)
    drop(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), mask / 0.75, rtol=1e-6)


def test_dropout_eval_and_extremes():
    x = ndl.Tensor(np.ones((50, 50), dtype=np.float32))
    assert nn.Dropout(0.5).eval()(x) is x
    assert nn.Dropout(0.0)(x) is x
    assert not nn.Dropout(1.0)(x).numpy().any()
    kept = nn.Dropout(0.4)(x).numpy()
    assert abs((kept == 0).mean() - 0.4) < 0.05 and abs(kept.mean() - 1) < 0.1
    with pytest.raises(ValueError, match="1.5"): nn.Dropout(1.5)


# --- normalization ----------------------------------------------------------------------------
def _set_affine(torch, ours, theirs, rs):
    "Give both layers the same random weight and bias so their gradients are not trivial."
    w, b = rs.randn(*ours.weight.shape), rs.randn(*ours.bias.shape)
    ours.weight.data = ndl.Tensor(w, device=ours.weight.device)
    ours.bias.data = ndl.Tensor(b, device=ours.bias.device)
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(w))
        theirs.bias.copy_(torch.tensor(b))


def test_batchnorm_training_against_torch(torch, rs, device):
    ours = nn.BatchNorm1d(5, dtype="float64", device=device)
    theirs = torch.nn.BatchNorm1d(5).double()
    _set_affine(torch, ours, theirs, rs)
    x = ndl.Tensor(rs.randn(8, 5) * 2 + 1, device=device)
    check_against_torch(torch, ours, theirs, x, [ours.weight, ours.bias],
                        [(theirs.weight, lambda g: g), (theirs.bias, lambda g: g)])
    np.testing.assert_allclose(ours.running_mean.numpy(), theirs.running_mean.numpy(), rtol=1e-10)
    # needle updates running_var with the biased batch variance, PyTorch with the unbiased one
    batch_var = x.numpy().var(0)
    np.testing.assert_allclose(ours.running_var.numpy(), 0.9 + 0.1 * batch_var, rtol=1e-10)
    np.testing.assert_allclose(theirs.running_var.numpy(), 0.9 + 0.1 * batch_var * 8 / 7, rtol=1e-10)


def test_batchnorm_eval_against_torch(torch, rs, device):
    ours = nn.BatchNorm1d(4, dtype="float64", device=device)
    theirs = torch.nn.BatchNorm1d(4).double()
    _set_affine(torch, ours, theirs, rs)
    mean, var = rs.randn(4), rs.rand(4) + 0.5
    ours.running_mean.data = ndl.Tensor(mean, device=device)
    ours.running_var.data = ndl.Tensor(var, device=device)
    theirs.running_mean.copy_(torch.tensor(mean))
    theirs.running_var.copy_(torch.tensor(var))
    ours.eval(), theirs.eval()
    check_against_torch(torch, ours, theirs, t64(rs, 6, 4, device=device), [ours.weight, ours.bias],
                        [(theirs.weight, lambda g: g), (theirs.bias, lambda g: g)])
    np.testing.assert_array_equal(ours.running_mean.numpy(), mean)   # eval leaves the statistics alone


def test_batchnorm_running_update_keeps_buffer_identity_and_dtype(rs):
    bn = nn.BatchNorm1d(3, momentum=0.5)
    running = bn.running_mean
    x = ndl.Tensor(rs.randn(10, 3).astype(np.float32))
    bn(x)
    bn(x)
    assert bn.running_mean is running and running.dtype == np.float32 and not running.requires_grad
    np.testing.assert_allclose(running.numpy(), 0.75 * x.numpy().mean(0), rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 3\)"): bn(ndl.Tensor(np.ones((2, 4))))


@pytest.mark.parametrize("shape,normalized", [((4, 6), 6), ((2, 3, 6), (3, 6))])
def test_layernorm_against_torch(torch, rs, device, shape, normalized):
    ours = nn.LayerNorm(normalized, dtype="float64", device=device)
    theirs = torch.nn.LayerNorm(normalized).double()
    _set_affine(torch, ours, theirs, rs)
    check_against_torch(torch, ours, theirs, t64(rs, *shape, device=device), [ours.weight, ours.bias],
                        [(theirs.weight, lambda g: g), (theirs.bias, lambda g: g)])


def test_layernorm1d_is_needles(torch, rs):
    ours = nn.LayerNorm1d(6, dtype="float64")
    assert ours.weight.shape == (6,) and ours.bias.shape == (6,)
    theirs = torch.nn.LayerNorm(6).double()
    _set_affine(torch, ours, theirs, rs)
    check_against_torch(torch, ours, theirs, t64(rs, 5, 6), [ours.weight, ours.bias],
                        [(theirs.weight, lambda g: g), (theirs.bias, lambda g: g)])
    plain = nn.LayerNorm(6, elementwise_affine=False)
    assert plain.parameters() == [] and list(plain.state_dict()) == []


@pytest.mark.parametrize("make", [lambda: nn.BatchNorm1d(4, dtype="float64"), lambda: nn.LayerNorm1d(4, dtype="float64")],
                         ids=["BatchNorm1d", "LayerNorm1d"])
def test_norm_finite_differences(rs, make):
    norm = make()
    norm.weight.data = t64(rs, 4)
    ndl.gradient_check(lambda x, w, b: norm(x), t64(rs, 5, 4), norm.weight, norm.bias, backward=True)


# --- Embedding --------------------------------------------------------------------------------
def test_embedding_against_torch(torch, rs, device):
    ours = nn.Embedding(10, 3, dtype="float64", device=device)
    theirs = torch.nn.Embedding(10, 3).double()
    with torch.no_grad(): theirs.weight.copy_(torch.tensor(ours.weight.numpy()))
    idx = np.array([[1, 2, 1], [0, 9, 1]])
    out = ours(ndl.Tensor(idx, device=device))
    out_t = theirs(torch.tensor(idx))
    np.testing.assert_allclose(out.numpy(), out_t.detach().numpy())
    c = rs.randn(*out.shape)
    (out * ndl.Tensor(c, device=device)).sum().backward()
    (out_t * torch.tensor(c)).sum().backward()
    np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy(), atol=1e-12)
    with pytest.raises(IndexError, match=r"\[0, 10\)"): ours(np.array([-1]))


# --- losses -----------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_against_torch(torch, rs, device, reduction):
    y = rs.randint(0, 5, 6)
    ours = nn.CrossEntropyLoss(reduction)
    theirs = torch.nn.CrossEntropyLoss(reduction=reduction)
    check_against_torch(torch, lambda z: ours(z, ndl.Tensor(y, device=device)),
                        lambda z: theirs(z, torch.tensor(y)), t64(rs, 6, 5, device=device),
                        loss_weights=None if reduction == "none" else np.array(1.0))


def test_softmax_loss_is_needles(rs):
    z, y = t64(rs, 7, 4), rs.randint(0, 4, 7)
    expected = np.mean(np.log(np.exp(z.numpy()).sum(1)) - z.numpy()[np.arange(7), y])
    np.testing.assert_allclose(nn.SoftmaxLoss()(z, ndl.Tensor(y.astype(np.float32))).numpy(), expected)
    ndl.gradient_check(lambda z: nn.SoftmaxLoss()(z, y), z, backward=True)
    with pytest.raises(ValueError, match="7 rows"): nn.SoftmaxLoss()(z, y[:3])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_against_torch(torch, rs, device, reduction):
    target = rs.randn(4, 3)
    ours, theirs = nn.MSELoss(reduction), torch.nn.MSELoss(reduction=reduction)
    check_against_torch(torch, lambda p: ours(p, ndl.Tensor(target, device=device)),
                        lambda p: theirs(p, torch.tensor(target)), t64(rs, 4, 3, device=device),
                        loss_weights=None if reduction == "none" else np.array(1.0))
    assert nn.L2Loss is nn.MSELoss


def test_losses_finite_differences(rs):
    target = t64(rs, 4, 3)
    ndl.gradient_check(lambda p: nn.MSELoss()(p, target), t64(rs, 4, 3), backward=True)
    y = rs.randint(0, 3, 4)
    ndl.gradient_check(lambda z: nn.CrossEntropyLoss("sum")(z, y), t64(rs, 4, 3), backward=True)
    with pytest.raises(ValueError, match=r"\(4, 1\)"): nn.MSELoss()(t64(rs, 4, 1), t64(rs, 4))
    with pytest.raises(ValueError, match="reduction"): nn.MSELoss("avg")
