"""Initializers: needle's exact draws, the target distributions (KS/DKW), the in-place API, and the
numbers behind the chapter's plots."""
import math

import numpy as np
import pytest

import needle_nb as ndl
import needle_nb.init as init
import needle_nb.apps.init_studies as studies
from needle_nb.autograd import Tensor

DEVICES = ndl.all_devices()
FALSE_FAILURE = 1e-6   # per KS check, for a correct implementation (DKW inequality)


# --- basic tensors ------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES, ids=repr)
def test_basic_tensors_follow_needles_stream(device):
    np.random.seed(3)
    got = init.rand(4, 5, low=-1.5, high=2.0, device=device, dtype="float32")
    np.random.seed(3)
    test = (np.random.rand(4, 5) * 3.5 + -1.5).astype(np.float32)
    np.testing.assert_array_equal(got.numpy(), test)
    np.random.seed(4)
    got = init.randn((3, 2), mean=1.0, std=0.5, device=device, dtype="float64", requires_grad=True)
    np.random.seed(4)
    np.testing.assert_array_equal(got.numpy(), np.random.randn(3, 2) * 0.5 + 1.0)
    assert got.requires_grad and got.dtype == np.float64 and got.device == device
    np.random.seed(5)
    mask = init.randb(6, 7, p=0.3, device=device)
    np.random.seed(5)
    np.testing.assert_array_equal(mask.numpy(), np.random.rand(6, 7) <= 0.3)
    assert mask.dtype == np.bool_


@pytest.mark.parametrize("device", DEVICES, ids=repr)
def test_constant_ones_zeros_one_hot_like(device):
    c = init.constant(2, 3, c=2.5, device=device, dtype="float64")
    np.testing.assert_array_equal(c.numpy(), np.full((2, 3), 2.5))
    assert init.ones(2, device=device).numpy().tolist() == [1.0, 1.0]
    assert not init.zeros(2, 2, device=device).numpy().any() and not init.zeros(2, 2).requires_grad
    labels = Tensor(np.array([[1, 0], [2, 1]]), device=device)
    onehot = init.one_hot(3, labels, device=device)
    assert onehot.shape == (2, 2, 3)
    np.testing.assert_array_equal(onehot.numpy().argmax(-1), labels.numpy())
    with pytest.raises(ValueError, match="3"):
        init.one_hot(3, [0, 3])
    like = init.ones_like(Tensor(np.zeros((2, 4), dtype=np.float64), device=device), requires_grad=True)
    assert like.dtype == np.float64 and like.shape == (2, 4) and like.requires_grad and like.numpy().all()
    assert init.zeros_like(like).device == device


# --- functional initializers: needle's exact draws ---------------------------------------------
def needle_reference(name, fan_in, fan_out, gain):
    "needle's formulas, written out independently, on numpy's global draws."
    if name == "xavier_uniform":
        a = gain * math.sqrt(6 / (fan_in + fan_out))
        return np.random.rand(fan_in, fan_out) * (a - (-a)) + (-a)
    if name == "xavier_normal":
        return np.random.randn(fan_in, fan_out) * (gain * math.sqrt(2 / (fan_in + fan_out))) + 0
    if name == "kaiming_uniform":
        bound = math.sqrt(2) * math.sqrt(3 / fan_in)
        return np.random.rand(fan_in, fan_out) * (bound - (-bound)) + (-bound)
    return np.random.randn(fan_in, fan_out) * (math.sqrt(2) / math.sqrt(fan_in)) + 0


@pytest.mark.parametrize("name", list(studies.FUNCTIONAL_INITIALIZERS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_functional_equals_needle_bit_for_bit(name, dtype):
    fn = studies.FUNCTIONAL_INITIALIZERS[name]
    kwargs = {"gain": 1.7} if name.startswith("xavier") else {}
    np.random.seed(0)
    got = fn(7, 11, dtype=dtype, requires_grad=True, **kwargs)
    np.random.seed(0)
    expected = needle_reference(name, 7, 11, kwargs.get("gain", 1.0)).astype(dtype)
    assert got.shape == (7, 11) and got.dtype == np.dtype(dtype) and got.requires_grad
    np.testing.assert_array_equal(got.numpy(), expected)


def test_functional_extensions():
    np.random.seed(1)
    w = init.kaiming_uniform(8, 32, nonlinearity="leaky_relu", a=0.2, mode="fan_out")
    bound = math.sqrt(2 / (1 + 0.04)) * math.sqrt(3 / 32)
    np.random.seed(1)
    np.testing.assert_array_equal(w.numpy(), (np.random.rand(8, 32) * (2 * bound) - bound).astype(np.float32))
    np.random.seed(2)
    k = init.kaiming_normal(3 * 3 * 4, 3 * 3 * 6, shape=(3, 3, 4, 6), nonlinearity="tanh")
    np.random.seed(2)
    np.testing.assert_array_equal(k.numpy(), (np.random.randn(3, 3, 4, 6) * (5 / 3 / 6)).astype(np.float32))
    assert init.xavier_normal(None, None, shape=(3, 3, 4, 6)).shape == (3, 3, 4, 6)
    assert init.calculate_fans((3, 3, 4, 6)) == (36, 54)


@pytest.mark.parametrize("call, message", [
    (lambda: init.kaiming_uniform(0, 4), "fan_in must be positive"),
    (lambda: init.xavier_normal(4, 0), "fan_out must be positive"),
    (lambda: init.kaiming_normal(4, 4, mode="fan_avg"), "fan_avg"),
    (lambda: init.kaiming_uniform(4, 4, nonlinearity="swish"), "swish"),
    (lambda: init.xavier_uniform(None, None, shape=(5,)), r"\(5,\)"),
    (lambda: init.calculate_gain("leaky_relu", "0.1"), "not a number"),
])
def test_functional_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_calculate_gain_table():
    expected = {"linear": 1, "identity": 1, "conv2d": 1, "conv_transpose3d": 1, "sigmoid": 1,
                "tanh": 5 / 3, "relu": math.sqrt(2), "selu": 0.75, "leaky_relu": math.sqrt(2 / (1 + 0.01 ** 2))}
    for name, gain in expected.items():
        assert math.isclose(init.calculate_gain(name), gain), name
    assert math.isclose(init.calculate_gain("leaky_relu", 0.3), math.sqrt(2 / 1.09))
    with pytest.raises(ValueError, match="tanh"):
        init.calculate_gain("gelu")


def test_gain_matches_torch():
    torch = pytest.importorskip("torch")
    for name in ["linear", "conv1d", "sigmoid", "tanh", "relu", "selu", "leaky_relu"]:
        assert math.isclose(init.calculate_gain(name), torch.nn.init.calculate_gain(name)), name
    assert math.isclose(init.calculate_gain("leaky_relu", 0.2), torch.nn.init.calculate_gain("leaky_relu", 0.2))


# --- statistical tests ------------------------------------------------------------------------
# 1,000 tensors of 10x20 = 200,000 iid values. By the Dvoretzky-Kiefer-Wolfowitz inequality with
# Massart's constant, P(sup |F_n - F| > eps) <= 2 exp(-2 n eps^2) for the right F, so a correct sampler
# fails `ks < ks_threshold(n, 1e-6)` with probability below 1e-6 on any seed. float32 rounding moves the
# CDF by ~1e-7, far below the threshold (~0.006).
def ks_of(samples, name, std):
    return studies.ks_statistic(samples, studies.target_cdf(name, std)), studies.ks_threshold(len(samples), FALSE_FAILURE)


@pytest.mark.parametrize("name", list(studies.FUNCTIONAL_INITIALIZERS))
def test_functional_distribution(name):
    samples, std = studies.init_samples(name, 10, 20, n_tensors=1000, seed=123)
    ks, threshold = ks_of(samples, name, std)
    assert ks < threshold, (name, ks, threshold)


@pytest.mark.parametrize("name", list(studies.FUNCTIONAL_INITIALIZERS))
def test_planted_wrong_formula_fails(name):
    "The same test must reject a plausible mistake: Xavier using only fan_in, Kaiming using fan_in+fan_out."
    fan_in, fan_out = 10, 20
    wrong_std = (math.sqrt(1 / fan_in) if name.startswith("xavier") else math.sqrt(2 / (fan_in + fan_out)))
    np.random.seed(123)
    draw = np.random.rand if name.endswith("uniform") else np.random.randn
    scale = wrong_std * math.sqrt(3) if name.endswith("uniform") else wrong_std
    wrong = (draw(200_000) * (2 * scale) - scale) if name.endswith("uniform") else draw(200_000) * scale
    ks, threshold = ks_of(wrong.astype(np.float32), name, studies.target_std(name, fan_in, fan_out))
    assert ks > 5 * threshold, (name, ks, threshold)


INPLACE = {  # name -> (call, target distribution, target std) for a 10x20 tensor
    "xavier_uniform_": (lambda t: init.xavier_uniform_(t, gain=1.3), "uniform", 1.3 * math.sqrt(2 / 30)),
    "xavier_normal_": (lambda t: init.xavier_normal_(t, gain=1.3), "normal", 1.3 * math.sqrt(2 / 30)),
    "kaiming_uniform_": (lambda t: init.kaiming_uniform_(t), "uniform", math.sqrt(2 / 10)),
    "kaiming_normal_": (lambda t: init.kaiming_normal_(t, mode="fan_out"), "normal", math.sqrt(2 / 20)),
    "kaiming_normal_leaky": (lambda t: init.kaiming_normal_(t, a=0.5), "normal",
                             math.sqrt(2 / 1.25) / math.sqrt(10)),
    "normal_": (lambda t: init.normal_(t, 0.0, 0.3), "normal", 0.3),
    "uniform_": (lambda t: init.uniform_(t, -0.6, 0.6), "uniform", 0.6 / math.sqrt(3)),
    "tensor-first kaiming_normal": (lambda t: init.kaiming_normal(t, mode="fan_in"), "normal", math.sqrt(2 / 10)),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(INPLACE))
def test_inplace_distribution(name, dtype):
    call, family, std = INPLACE[name]
    ndl.manual_seed(7)
    samples = np.concatenate([call(Tensor(np.zeros((10, 20), dtype=dtype))).numpy().ravel()
                              for _ in range(1000)])
    ks, threshold = ks_of(samples, family, std)
    assert ks < threshold, (name, ks, threshold)


def test_inplace_planted_wrong_std_fails():
    ndl.manual_seed(7)
    samples = np.concatenate([init.normal_(init.zeros(10, 20), std=math.sqrt(2 / 30)).numpy().ravel()
                              for _ in range(1000)])
    ks, threshold = ks_of(samples, "normal", math.sqrt(2 / 10))
    assert ks > 5 * threshold


def test_trunc_normal_distribution():
    "Truncated N(0.1, 0.5^2) on [-0.5, 0.6] against its CDF, both through the normal and the uniform proposal."
    erf = np.frompyfunc(math.erf, 1, 1)
    def cdf_of(mean, std, a, b):
        phi = lambda x: 0.5 * (1 + np.asarray(erf((np.asarray(x, dtype=np.float64) - mean) / (std * math.sqrt(2))), dtype=float))
        return lambda x: np.clip((phi(x) - phi(a)) / (phi(b) - phi(a)), 0, 1)
    ndl.manual_seed(11)
    for mean, std, a, b in [(0.1, 0.5, -0.5, 0.6), (0.0, 1.0, 2.5, 3.0)]:   # mass 0.73 and 0.005
        samples = init.trunc_normal_(init.zeros(400, 500), mean, std, a, b).numpy()
        assert samples.min() >= a and samples.max() <= b
        ks = studies.ks_statistic(samples.ravel(), cdf_of(mean, std, a, b))
        assert ks < studies.ks_threshold(samples.size, FALSE_FAILURE), (mean, std, a, b, ks)


@pytest.mark.parametrize("shape", [(32, 8), (8, 32), (3, 3, 4, 16)])
def test_orthogonal(shape):
    w = init.orthogonal_(Tensor(np.zeros(shape), dtype="float64"), gain=1.5).numpy()
    matrix = w.reshape(-1, shape[-1])
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    np.testing.assert_allclose(gram, 2.25 * np.eye(len(gram)), atol=1e-10)


# --- the in-place contract ------------------------------------------------------------------------
ALL_INPLACE = {
    "uniform_": lambda t: init.uniform_(t, -1, 1), "normal_": lambda t: init.normal_(t, 0.5, 2.0),
    "constant_": lambda t: init.constant_(t, 0.25), "ones_": init.ones_, "zeros_": init.zeros_,
    "xavier_uniform_": init.xavier_uniform_, "xavier_normal_": init.xavier_normal_,
    "kaiming_uniform_": init.kaiming_uniform_, "kaiming_normal_": init.kaiming_normal_,
    "trunc_normal_": init.trunc_normal_, "orthogonal_": init.orthogonal_,
    "xavier_uniform(tensor)": init.xavier_uniform, "xavier_normal(tensor)": init.xavier_normal,
    "kaiming_uniform(tensor)": init.kaiming_uniform, "kaiming_normal(tensor)": init.kaiming_normal,
}


@pytest.mark.parametrize("device", DEVICES, ids=repr)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(ALL_INPLACE))
def test_inplace_contract(name, dtype, device):
    tensor = Tensor(np.full((6, 5), 7.0), device=device, dtype=dtype, requires_grad=True)
    old_array = tensor.cached_data
    before = device.to_numpy(old_array).copy()
    ndl.manual_seed(0)
    result = ALL_INPLACE[name](tensor)
    assert result is tensor
    assert tensor.cached_data is not old_array, "in place means replacing the array, never writing into it"
    np.testing.assert_array_equal(device.to_numpy(old_array), before)   # views of the old array are safe
    assert not np.array_equal(tensor.numpy(), before)
    assert (tensor.shape, tensor.dtype, tensor.device) == ((6, 5), np.dtype(dtype), device)
    assert tensor.requires_grad and tensor.op is None and tensor.inputs == ()
    ndl.manual_seed(0)
    again = ALL_INPLACE[name](Tensor(np.zeros((6, 5)), device=device, dtype=dtype))
    np.testing.assert_array_equal(again.numpy(), tensor.numpy())   # manual_seed makes it reproducible


BAD_CALLS = [
    ("xavier_uniform_", lambda t: init.xavier_uniform_(t[0]), r"\(5,\)"),   # fewer than 2 axes
    ("kaiming_normal_ mode", lambda t: init.kaiming_normal_(t, mode="fan_avg"), "fan_avg"),
    ("kaiming_uniform_ nonlinearity", lambda t: init.kaiming_uniform_(t, nonlinearity="gelu"), "gelu"),
    ("normal_ std", lambda t: init.normal_(t, std=-0.1), "-0.1"),
    ("trunc_normal_ std", lambda t: init.trunc_normal_(t, std=-1.0), "-1.0"),
    ("trunc_normal_ bounds", lambda t: init.trunc_normal_(t, a=1.0, b=-1.0), "a < b"),
    ("uniform_ bounds", lambda t: init.uniform_(t, 2.0, 1.0), "a <= b"),
    ("kaiming(tensor) extra kwargs", lambda t: init.kaiming_uniform(t, dtype="float64"), None),
]


@pytest.mark.parametrize("name, call, message", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_input_leaves_tensor_untouched(name, call, message):
    tensor = Tensor(np.arange(30.0).reshape(6, 5), dtype="float32")
    array = tensor.cached_data
    with pytest.raises((ValueError, TypeError), match=message):
        call(tensor)
    assert tensor.cached_data is array
    np.testing.assert_array_equal(array, np.arange(30.0).reshape(6, 5))


def test_zero_fan_and_non_tensor_and_integer():
    empty = Tensor(np.zeros((0, 4)), dtype="float32")
    with pytest.raises(ValueError, match="zero fan"):
        init.kaiming_uniform_(empty)
    with pytest.raises(TypeError, match="ndarray"):
        init.xavier_normal_(np.zeros((3, 3)))
    ints = Tensor(np.zeros((3, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="int64"):
        init.normal_(ints)
    assert init.ones_(ints).numpy().tolist() == [[1, 1, 1]] * 3 and ints.dtype == np.int64


def test_inplace_records_no_graph_and_keeps_grad_mode():
    w = init.zeros(4, 3, requires_grad=True)
    assert ndl.autograd.is_grad_enabled()
    init.kaiming_normal_(w)
    assert ndl.autograd.is_grad_enabled() and w.op is None
    loss = (init.ones(2, 4) @ w).sum()
    loss.backward()
    np.testing.assert_array_equal(w.grad.numpy(), np.full((4, 3), 2.0))


# --- the numbers behind the plots ---------------------------------------------------------------
def test_variance_vs_fan_follows_formula():
    for name in studies.FUNCTIONAL_INITIALIZERS:
        fans, empirical, formula = studies.variance_vs_fan(name, seed=5)
        # 20,000 samples: the sample variance's relative spread is <= sqrt(2/20000) = 1% (normal),
        # 0.6% (uniform), so 6% is a 6-sigma bound
        np.testing.assert_allclose(empirical / formula, 1, atol=0.06)
        expected = 1 / fans if name.startswith("xavier") else 2 / fans
        np.testing.assert_allclose(formula, expected, rtol=1e-12)


def test_histogram_numbers():
    for name in studies.FUNCTIONAL_INITIALIZERS:
        samples, std = studies.init_samples(name, 10, 20, n_tensors=200, seed=9)
        assert samples.shape == (40_000,)
        assert abs(samples.var() / std ** 2 - 1) < 0.05   # > 6 sigma
    assert studies.target_std("xavier_uniform", 10, 20) == math.sqrt(2 / 30)


@pytest.fixture(scope="module")
def mlp():
    "Every MLP_RUNS entry for 2 seeds, and Kaiming+ReLU for 5 (batch 64: the claims don't depend on it)."
    runs = {seed: studies.mlp_runs(seed=seed, batch=64) for seed in (1, 2)}
    kaiming = [studies.mlp_signal_stds("kaiming", "relu", batch=64, seed=seed) for seed in range(10, 15)]
    return runs, kaiming


def geometric_mean(values): return float(np.exp(np.mean(np.log(values))))


def test_mlp_kaiming_relu_holds(mlp):
    # ln(std_50 / std_1) has mean -0.14 and spread 0.47 per seed (random walk of ~0.07 per layer;
    # measured on 200 seeds); its mean over 5 seeds has spread 0.21, so a factor 4 is ~6 spreads away.
    _, kaiming = mlp
    assert 0.25 < geometric_mean([f[-1] / f[0] for f, _ in kaiming]) < 4
    assert 0.25 < geometric_mean([b[0] / b[-1] for _, b in kaiming]) < 4
    for forward, backward in kaiming:
        assert 0.6 < forward[0] < 1.1   # layer 1: std of relu(N(0, 2)) = sqrt(1 - 1/pi) = 0.83


def test_mlp_other_claims(mlp):
    runs, _ = mlp
    for seed, by_key in runs.items():
        forward = {key[:2]: f for key, (f, b) in by_key.items()}
        backward = {key[:2]: b for key, (f, b) in by_key.items()}
        assert np.isfinite(forward["normal", "relu"]).all()
        assert forward["normal", "relu"][-1] / forward["normal", "relu"][0] > 1e5 * 1e30   # ~1e51
        assert backward["normal", "relu"][0] / backward["normal", "relu"][-1] > 1e35
        assert forward["small_normal", "relu"][-1] < 1e-40 and backward["small_normal", "relu"][0] < 1e-40
        # Xavier + ReLU: std halves every 2 layers (slope ln(1/2)/2 = -0.35 per layer) and never rises
        log_std = np.log(forward["xavier", "relu"])
        assert -0.42 < np.polyfit(np.arange(50), log_std, 1)[0] < -0.28
        assert np.all(np.diff(log_std[::5]) < 0)
        assert forward["normal", "tanh"].min() > 0.9                    # saturated at +-1
        assert forward["small_normal", "tanh"][-1] < 1e-30
        tanh_xavier = forward["xavier", "tanh"]
        assert 0.5 < tanh_xavier[-1] / tanh_xavier[0] < 2 and 0.4 < tanh_xavier[-1] < 0.9
        assert 10 < backward["xavier", "tanh"][0] / backward["xavier", "tanh"][-1] < 1e4


def test_mlp_rejects_unknown_names():
    with pytest.raises(ValueError, match="orthogonal"):
        studies.mlp_signal_stds("orthogonal", "relu", depth=2, width=4, batch=2)
    with pytest.raises(ValueError, match="gelu"):
        studies.mlp_signal_stds("kaiming", "gelu", depth=2, width=4, batch=2)


# --- layouts of 4-D weights (issue 14) -----------------------------------------------------------
@pytest.mark.parametrize("needle_shape, torch_shape, fans", [
    ((3, 3, 16, 32), (32, 16, 3, 3), (144, 288)),
    ((5, 5, 1, 8), (8, 1, 5, 5), (25, 200)),
    ((1, 1, 7, 2), (2, 7, 1, 1), (7, 2)),
    ((4, 9), (9, 4), (4, 9)),                       # Linear: needle (in, out), PyTorch (out, in)
    ((3, 6, 10), (10, 6, 3), (18, 30)),             # conv1d: needle (k, c_in, c_out), PyTorch (c_out, c_in, k)
])
def test_calculate_fans_in_both_layouts(torch, needle_shape, torch_shape, fans):
    assert init.calculate_fans(needle_shape) == fans == init.calculate_fans(needle_shape, layout="needle")
    assert init.calculate_fans(torch_shape, layout="torch") == fans
    assert init.calculate_fans(Tensor(np.zeros(torch_shape, np.float32)), layout="torch") == fans
    # PyTorch's own fan computation agrees on its layout
    assert torch.nn.init._calculate_fan_in_and_fan_out(torch.zeros(torch_shape)) == fans


def test_torch_layout_kernel_is_no_longer_misread():
    "(32, 16, 3, 3) once gave (1536, 1536) silently; in needle's layout it is now an error that names the fix."
    with pytest.raises(ValueError, match="layout='torch'"): init.calculate_fans((32, 16, 3, 3))
    with pytest.raises(ValueError, match="layout='torch'"): init.kaiming_uniform_(init.zeros(32, 16, 3, 3))
    with pytest.raises(ValueError, match="layout"): init.calculate_fans((3, 3, 1, 1), layout="NCHW")
    w = init.zeros(32, 16, 3, 3)
    before = w.realize_cached_data()
    with pytest.raises(ValueError, match="layout"): init.xavier_normal_(w, layout="tf")
    assert w.realize_cached_data() is before                   # bad input changes nothing


@pytest.mark.parametrize("fn, is_uniform, std", [
    (lambda shape, layout: init.kaiming_uniform_(init.zeros(*shape), layout=layout), True, math.sqrt(2 / 144)),
    (lambda shape, layout: init.kaiming_normal_(init.zeros(*shape), mode="fan_out", layout=layout), False,
     math.sqrt(2 / 288)),
    (lambda shape, layout: init.xavier_uniform_(init.zeros(*shape), layout=layout), True, math.sqrt(2 / 432)),
    (lambda shape, layout: init.xavier_normal_(init.zeros(*shape), layout=layout), False, math.sqrt(2 / 432)),
    (lambda shape, layout: init.kaiming_uniform(None, None, shape=shape, layout=layout), True, math.sqrt(2 / 144)),
    (lambda shape, layout: init.kaiming_normal(None, None, shape=shape, layout=layout), False, math.sqrt(2 / 144)),
    (lambda shape, layout: init.xavier_uniform(None, None, shape=shape, layout=layout), True, math.sqrt(2 / 432)),
    (lambda shape, layout: init.xavier_normal(None, None, shape=shape, layout=layout), False, math.sqrt(2 / 432)),
    (lambda shape, layout: init.kaiming_uniform(init.zeros(*shape), layout=layout), True, math.sqrt(2 / 144)),
])
@pytest.mark.parametrize("shape, layout", [((3, 3, 16, 32), "needle"), ((32, 16, 3, 3), "torch")])
def test_initializers_scale_by_the_layouts_fans(fn, is_uniform, std, shape, layout):
    "16 -> 32 channels, 3x3: fan_in 144, fan_out 288 in either layout; 4,608 draws pin the std to ~2%."
    ndl.manual_seed(0); np.random.seed(0)
    w = fn(shape, layout).numpy()
    assert w.shape == shape
    assert abs(w.std() - std) < 0.05 * std, (w.std(), std)
    if is_uniform: assert np.abs(w).max() <= math.sqrt(3) * std * (1 + 1e-6)
