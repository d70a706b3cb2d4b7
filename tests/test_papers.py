"""The papers chapters: `softsign` (nbs/02_ops, nbs/04a_nn_layers), Glorot & Bengio 2010 (nbs/14_glorot_bengio,
`apps.glorot`) and He et al. 2015 (nbs/15_he_et_al, `apps.he`).

What issue 16 calls "asserted" is asserted here, on the reduced (CI) runs; the full-run numbers CI cannot
recompute (three seeds of the 30-layer runs, the Jacobians over all 300 examples) are checked on the results
files the full run wrote, `nbs/results/*_full_run.json`, recomputing each verdict from the stored losses.
Tests that need Fashion-MNIST skip, naming the missing files, where Debian's `dataset-fashion-mnist` is absent.
"""
import math
from pathlib import Path

import numpy as np
import pytest

import needle_nb as ndl
import needle_nb.nn as nn
from needle_nb import init
import needle_nb.apps.testing as testing
from needle_nb.apps import glorot, he

ROOT = Path(__file__).resolve().parents[1]
GLOROT_RESULTS, HE_RESULTS = ROOT/"nbs"/"results"/"glorot_full_run.json", ROOT/"nbs"/"results"/"he_full_run.json"
_missing = [str(p) for p in glorot.fashion_mnist_files() if not p.exists()]
needs_data = pytest.mark.skipif(bool(_missing), reason=f"Fashion-MNIST not installed: {_missing}")


@pytest.fixture(scope="module")
def stats_examples():
    "The fixed 300 held-out examples (the first 300 test images, pixels in [0, 1])."
    X, y = glorot.load_fashion_mnist("test")
    return X[:300], y[:300]


# --- softsign -------------------------------------------------------------------------------------
def test_softsign_values_and_dtype(device):
    x = ndl.Tensor(np.array([-3.0, -0.5, 0.0, 1.0, 1e6], np.float32), device=device)
    out = ndl.softsign(x)
    assert out.dtype == np.float32 and out.device == device
    np.testing.assert_allclose(out.numpy(), [-0.75, -1 / 3, 0.0, 0.5, 1e6 / (1 + 1e6)], rtol=1e-6)
    assert isinstance(out.op, ndl.ops.Softsign)


def test_softsign_gradient_against_finite_differences(rs):
    x = ndl.Tensor(rs.randn(4, 5) * 3)          # float64; no element at the kink 0
    ndl.gradient_check(ndl.softsign, x, backward=True)
    layer = nn.Softsign()
    ndl.gradient_check(lambda t: layer(t), ndl.Tensor(rs.randn(3, 4)), backward=True)


def test_softsign_against_torch(torch, rs):
    x = ndl.Tensor(rs.uniform(-4, 4, size=(3, 5)))
    testing.check_against_torch(ndl.softsign, torch.nn.functional.softsign, x, seed=1, atol=1e-12, rtol=1e-10)
    testing.check_against_torch(nn.Softsign(), torch.nn.Softsign(), x, seed=2, atol=1e-12, rtol=1e-10)


def test_softsign_gradient_is_one_over_one_plus_abs_squared(rs):
    x = ndl.Tensor(rs.randn(6), requires_grad=True)
    ndl.softsign(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 1 / (1 + np.abs(x.numpy())) ** 2, rtol=1e-12)


# --- Glorot & Bengio: the networks ------------------------------------------------------------------
def test_init_bounds_are_the_papers():
    assert glorot.init_bound("standard", 784, 256) == 1 / math.sqrt(784)
    assert glorot.init_bound("normalized", 784, 256) == math.sqrt(6 / (784 + 256))
    with pytest.raises(ValueError, match="scheme"): glorot.init_bound("xavier", 3, 3)


def test_glorot_mlp_draws_the_scheme_and_zero_biases():
    for scheme in glorot.SCHEMES:
        model = glorot.glorot_mlp("softsign", scheme, seed=1)
        linears = [m for m in model.modules if isinstance(m, nn.Linear)]
        assert len(linears) == 6 and all(isinstance(m, nn.Softsign) for m in model.modules[1:-1:2])
        for layer in linears:
            fan_in, fan_out = layer.weight.shape
            w, bound = layer.weight.numpy(), glorot.init_bound(scheme, fan_in, fan_out)
            assert np.abs(w).max() <= bound and np.abs(w).max() > 0.98 * bound
            assert np.all(layer.bias.numpy() == 0)
    with pytest.raises(ValueError, match="activation"): glorot.glorot_mlp("relu6")
    with pytest.raises(ValueError, match="scheme"): glorot.glorot_mlp("tanh", "he")


def test_forward_backward_records_the_chain_rule(rs):
    X, y = rs.randn(7, 5).astype(np.float32), rs.randint(0, 3, 7)
    rec = glorot.forward_backward(glorot.glorot_mlp("sigmoid", "normalized", hidden=(4, 6), in_features=5,
                                                    classes=3), X, y)
    assert [z.shape for z in rec["z"]] == [(7, 4), (7, 6)] and [w.shape for w in rec["dW"]] == [(5, 4), (4, 6)]
    h0 = rec["h"][0]
    np.testing.assert_allclose(rec["dz"][0], (rec["dz"][1] @ rec["W"][1].T) * h0 * (1 - h0), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(rec["dW"][1], h0.T @ rec["dz"][1], rtol=1e-4, atol=1e-7)


def test_jacobian_singular_values_are_exact(rs):
    h = [None, np.tanh(rs.randn(3, 4))]
    W = [None, rs.randn(5, 4)]
    expected = np.mean([np.linalg.svd(np.diag(1 - row ** 2) @ W[1].T, compute_uv=False) for row in h[1]])
    np.testing.assert_allclose(glorot.jacobian_singular_values({"h": h, "W": W}, "tanh"), [expected], rtol=1e-10)


def test_load_fashion_mnist_rejects_an_unknown_split():
    with pytest.raises(ValueError, match="split"): glorot.load_fashion_mnist("validation")


# --- Glorot & Bengio: asserted at initialization (any seed) ------------------------------------------
@needs_data
@pytest.mark.parametrize("seed", [0, 5])
def test_gradient_ratio_and_jacobians_at_init(stats_examples, seed):
    "Issue 16: bottom/top gradient-std ratio < 0.3 (standard), in [0.5, 2] (normalized); Jacobian s.v. bands."
    X, y = stats_examples
    with glorot.one_blas_thread():
        std_, norm_ = (glorot.init_statistics(X, y, "tanh", scheme, seed=seed, jacobian_examples=20)
                       for scheme in glorot.SCHEMES)
    assert std_["grad_ratio"] < 0.3, std_["grad_ratio"]
    assert 0.5 <= norm_["grad_ratio"] <= 2, norm_["grad_ratio"]
    top_std, top_norm = std_["jacobian_sv"][-3:], norm_["jacobian_sv"][-3:]
    assert np.all((0.4 <= top_std) & (top_std <= 0.6)), top_std
    assert np.all((0.65 <= top_norm) & (top_norm <= 0.9)), top_norm
    assert np.all(norm_["jacobian_sv"] - std_["jacobian_sv"] >= 0.15), (norm_["jacobian_sv"], std_["jacobian_sv"])


def test_train_glorot_records_what_the_figures_draw(rs):
    X, y = rs.randn(200, 784).astype(np.float32), rs.randint(0, 10, 200)
    run = glorot.train_glorot("sigmoid", "standard", (X, y), (X[:50], y[:50]), X[:30], steps=6, batch_size=10,
                              record_every=3, seed=2)
    assert run["record_steps"].tolist() == [0, 3, 6] and run["act_mean"].shape == (3, 5)
    assert np.all((run["act_mean"] > 0) & (run["act_mean"] < 1)) and run["final_test_err"] == run["test_err"][-1]
    first = glorot.hidden_activations(glorot.glorot_mlp("sigmoid", "standard", seed=2), X[:30])
    np.testing.assert_allclose(run["act_mean"][0], [a.mean() for a in first], rtol=1e-5)


def test_glorot_full_run_results():
    "The stored full run: the init assertions hold on all 300 examples; every run and the table are there."
    summary = glorot.load_results(GLOROT_RESULTS)
    std_, norm_ = summary["init"]["standard"], summary["init"]["normalized"]
    assert std_["grad_ratio"] < 0.3 and 0.5 <= norm_["grad_ratio"] <= 2
    sv_s, sv_n = np.array(std_["jacobian_sv"]), np.array(norm_["jacobian_sv"])
    assert np.all((0.4 <= sv_s[-3:]) & (sv_s[-3:] <= 0.6)) and np.all((0.65 <= sv_n[-3:]) & (sv_n[-3:] <= 0.9))
    assert np.all(sv_n - sv_s >= 0.15)
    assert set(summary["runs"]) == set(glorot.RUNS)
    for run in summary["runs"].values():
        assert 0 <= run["final_test_err"] <= 1 and run["final_test_err"] == run["test_err"][-1]
        assert run["steps"] == 10000 and np.array(run["act_mean"]).shape == (len(run["record_steps"]), 5)
    rows = glorot.comparison_table(summary)
    assert len(rows) == 7 and all(verdict in ("same", "different") for _, _, verdict in rows)


# --- He et al.: the derivation ----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 3, 16, 32), (5, 5, 8, 4)])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("a", [0.0, 0.25])
def test_half_n_var_is_one(shape, mode, a):
    assert abs(he.variance_factor(shape, a, mode, seed=3) - 1) < 0.06


def test_vgg_stds_are_the_papers():
    stds = he.vgg_stds(seed=1)
    assert [round(v, 3) for v in stds] == [0.059, 0.042, 0.029, 0.021]
    np.testing.assert_allclose(stds, np.sqrt(2 / (9 * np.array(he.VGG_CHANNELS))), rtol=0.01)


def test_signals_through_depth_follow_the_derivation():
    with glorot.one_blas_thread(): r = he.signal_ratios(seeds=range(100, 116))
    f = {name: s["forward_ratio"] for name, s in r.items()}
    b = {name: s["backward_ratio"] for name, s in r.items()}
    assert 1 / 1.8 < f["He, fan_in"] < 1.8 and 8 / 1.8 < b["He, fan_in"] < 8 * 1.8
    assert 1 / (8 * 1.8) < f["He, fan_out"] < 1.8 / 8 and 1 / 1.8 < b["He, fan_out"] < 1.8
    assert 1 / 1.8 < f["He, a = 0.25 (net and init)"] < 1.8
    assert 1.0625 ** 11 / 1.8 < f["He for ReLU in a leaky net (a = 0.25)"] < 1.0625 ** 11 * 1.8
    assert 2 ** -11 / 4 < f["Xavier N(0, 1/n)"] < 2 ** -11 * 4


def test_conv_signals_rejects_an_unknown_scheme():
    with pytest.raises(ValueError, match="scheme"): he.conv_signals("lecun")


def test_pytorch_default_linear_is_glorots_standard(torch):
    n = 300
    bound = glorot.init_bound("standard", n, 200)
    assert math.isclose(init.calculate_gain("leaky_relu", math.sqrt(5)) * math.sqrt(3 / n), bound)
    ndl.manual_seed(0)
    ours = init.kaiming_uniform_(init.zeros(n, 200), a=math.sqrt(5)).numpy()
    torch.manual_seed(0)
    theirs = torch.nn.Linear(n, 200).weight.detach().numpy()
    for w in (ours, theirs):
        assert 0.99 * bound < np.abs(w).max() <= bound
        assert abs(n * w.var() - 1 / 3) < 0.01
    signal = he.default_linear_signal(depth=10)
    assert abs((signal[-1] / signal[0]) ** (1 / 9) - 1 / math.sqrt(6)) < 0.03


# --- He et al.: Fig. 3 ------------------------------------------------------------------------------
def test_plain_relu_net_shape_and_init():
    model = he.plain_relu_net(6, "xavier", seed=2)
    assert len(model.parameters()) == 6 and model(ndl.Tensor(np.zeros((3, 1, 28, 28), np.float32))).shape == (3, 10)
    for scheme, gain in (("xavier", 1.0), ("he", math.sqrt(2))):
        w = he.plain_relu_net(4, scheme, seed=1).parameters()[1].numpy()    # a (3, 3, 16, 16) kernel, n = 144
        assert abs(w.std() / (gain / 12) - 1) < 0.05
    with pytest.raises(ValueError, match="scheme"): he.plain_relu_net(5, "glorot")
    with pytest.raises(ValueError, match="depth"): he.plain_relu_net(2)


@needs_data
def test_fig3_depth_30_one_seed():
    """Issue 16, CI form: one seed, 300 steps, depth 30: Xavier stays within 0.05 of ln 10, He leaves it.

    Where a single He run *ends* is not asserted: at the paper's learning rate a plain 30-layer net is at the edge
    of stability, and seed 0 falls back to ln 10 after reaching 1.85 or not, depending on the last bit of the loss
    gradient's rounding. The median over the full run's seeds is (test_he_full_run_results)."""
    X, y = glorot.load_fashion_mnist("train")
    data = (glorot.standardize_pixels(X), y)
    runs = {(30, scheme, 0): he.train_plain(30, scheme, data, steps=300, seed=0) for scheme in he.SCHEMES}
    verdict = he.fig3_verdict(runs, 30)
    assert verdict["xavier_stalls"], verdict
    assert verdict["he_leaves"], verdict


def test_he_full_run_results():
    "The stored full run: the median of 3 seeds at depth 30 satisfies the issue's claim (recomputed from the losses)."
    summary = glorot.load_results(HE_RESULTS)
    runs = he.runs_from_summary(summary)
    for scheme in he.SCHEMES:
        assert sorted(seed for d, s, seed in runs if d == 30 and s == scheme) == [0, 1, 2]
        assert (22, scheme, 0) in runs
    assert all(len(r["loss"]) == 300 for r in runs.values())
    verdict = he.fig3_verdict(runs, 30)
    assert verdict["xavier_deviation"] < 0.05 and verdict["he_final"] < 0.8 * math.log(10), verdict
    assert verdict["he_leaves"], verdict   # every stored He run leaves ln 10, as the CI form asserts
    assert [round(v, 3) for v in summary["vgg_stds"]] == [0.059, 0.042, 0.029, 0.021]
    rows = he.he_comparison_table(summary)
    assert all(verdict in ("same", "different") for _, _, verdict in rows)
