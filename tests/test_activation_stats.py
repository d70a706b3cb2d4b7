"""ActivationStats (nbs/10_activation_stats): the recorded numbers, the numbers behind each plot, and
what N(0, 1), Xavier and Kaiming initialisation do to a deep ReLU MLP."""
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

import needle_nb as ndl
from needle_nb import init, nn
from needle_nb.autograd import Tensor
from needle_nb.apps.activation_stats import ActivationStats, color_dim, dead_chart, deep_relu_mlp, plot_stats


@pytest.fixture(params=ndl.all_devices(), ids=str)
def device(request): return request.param


def recorded_relu(device, batches, bins=20, hist_range=(0, 5), dead_below=None):
    relu = nn.ReLU()
    stats = ActivationStats([relu], bins=bins, hist_range=hist_range, dead_below=dead_below)
    for x in batches: relu(Tensor(x, device=device))
    return relu, stats


def test_records_numpys_numbers(device):
    rs = np.random.RandomState(0)
    batches = [rs.randn(16, 30).astype(np.float32) * s for s in (0.1, 1, 10)]
    _, stats = recorded_relu(device, batches)
    outs = [np.maximum(x, 0).astype(np.float64) for x in batches]
    assert len(stats) == 3 and stats.means().shape == (1, 3) and stats.hists().shape == (1, 3, 20)
    np.testing.assert_allclose(stats.means()[0], [o.mean() for o in outs], rtol=1e-6)
    np.testing.assert_allclose(stats.stds()[0], [o.std() for o in outs], rtol=1e-6)
    np.testing.assert_allclose(stats.dead()[0], [(o < 0.25).mean() for o in outs])
    for hist, o in zip(stats.hists()[0], outs):
        assert hist.sum() == o.size
        inside, _ = np.histogram(o[o < 5], bins=20, range=(0, 5))
        np.testing.assert_array_equal(hist[:-1], inside[:-1])
        assert hist[-1] == inside[-1] + (o >= 5).sum()  # out-of-range values land in the top bin


def test_dead_below_and_range_checks(device):
    x = np.array([[-1.0, 0.0, 0.05, 0.2, 3.0]], dtype=np.float32)
    _, stats = recorded_relu(device, [x], dead_below=0.1)
    assert stats.dead()[0, 0] == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="hist_range"): ActivationStats([], hist_range=(1, 1))


def test_only_training_mode_and_removal(device):
    x = np.ones((2, 3), dtype=np.float32)
    relu, stats = recorded_relu(device, [x])
    relu.eval(); relu(Tensor(x, device=device))
    assert len(stats) == 1
    relu.train()
    with stats: relu(Tensor(x, device=device))
    relu(Tensor(x, device=device))  # after the with block: hooks are gone
    assert len(stats) == 2


def test_plots_draw_the_recorded_numbers(device):
    rs = np.random.RandomState(1)
    model, relus = deep_relu_mlp([6, 5, 5, 2], lambda w: init.kaiming_normal_(w, nonlinearity="relu"), device=device)
    with ActivationStats(relus, bins=10, hist_range=(0, 3)) as stats:
        for _ in range(4): model(Tensor(rs.randn(8, 6).astype(np.float32), device=device))
    assert stats.stds().shape == (2, 4)
    fig = plot_stats(stats)
    for layer, (mean_line, std_line) in enumerate(zip(fig.axes[0].lines, fig.axes[1].lines)):
        np.testing.assert_array_equal(mean_line.get_ydata(), stats.means()[layer])
        np.testing.assert_array_equal(std_line.get_ydata(), stats.stds()[layer])
    fig = color_dim(stats)
    for layer in range(2):
        np.testing.assert_allclose(fig.axes[layer].images[0].get_array(), np.log1p(stats.hists()[layer].T))
    fig = dead_chart(stats)
    for layer, line in enumerate(fig.axes[0].lines): np.testing.assert_array_equal(line.get_ydata(), stats.dead()[layer])
    assert stats.plot_stats is not None and stats.color_dim is not None and stats.dead_chart is not None
    plt.close("all")


def test_deep_relu_mlp_wiring():
    model, relus = deep_relu_mlp([4, 7, 7, 3], lambda w: init.normal_(w, 0.0, 1.0))
    assert len(relus) == 2 and all(isinstance(r, nn.ReLU) for r in relus)
    biases = [p.numpy() for p in model.parameters() if p.shape[0] == 1]
    assert len(biases) == 3 and all((b == 0).all() for b in biases)
    out = model(Tensor(np.ones((5, 4), dtype=np.float32)))
    assert out.shape == (5, 3)


INITS = {"normal": lambda w: init.normal_(w, 0.0, 1.0),
         "xavier": lambda w: init.xavier_normal_(w),
         "kaiming": lambda w: init.kaiming_normal_(w, nonlinearity="relu")}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_initialisations_at_the_first_step(device, seed):
    "N(0, 1) explodes, Xavier fades and goes dead, Kaiming keeps the scale: on any seed."
    rs = np.random.RandomState(seed)
    x = rs.randn(64, 64).astype(np.float32)
    stds, dead = {}, {}
    for name, weight_init in INITS.items():
        ndl.manual_seed(seed)
        model, relus = deep_relu_mlp([64] + [100] * 8 + [10], weight_init, device=device)
        with ActivationStats(relus) as stats: model(Tensor(x, device=device))
        stds[name], dead[name] = stats.stds()[:, 0], stats.dead()[:, 0]
    assert stds["normal"][-1] > 1e3 * stds["normal"][0]
    assert stds["xavier"][-1] < stds["xavier"][0] / 4 and dead["xavier"][-1] > 0.9
    assert 0.25 < stds["kaiming"][-1] / stds["kaiming"][0] < 4 and dead["kaiming"].max() < 0.8
    assert np.all(np.diff(np.log(stds["normal"])) > np.log(2))  # every layer multiplies the scale


def test_training_under_each_init(device):
    "Kaiming trains a deep ReLU MLP on digits far better than N(0, 1) in two epochs."
    pytest.importorskip("sklearn")
    from needle_nb.data import DataLoader, NDArrayDataset
    from needle_nb.apps.digits import digits_data
    from needle_nb.apps.simple_ml import train
    X_train, y_train, X_test, y_test = digits_data()
    mean, std = X_train.mean(), X_train.std()
    train_loader = DataLoader(NDArrayDataset((X_train - mean) / std, y_train), batch_size=64, shuffle=True)
    test_loader = DataLoader(NDArrayDataset((X_test - mean) / std, y_test), batch_size=400)
    acc, first_loss = {}, {}
    for name in ("normal", "kaiming"):
        ndl.manual_seed(0)
        model, relus = deep_relu_mlp([64] + [100] * 8 + [10], INITS[name], device=device)
        with ActivationStats(relus) as stats:
            history = train(model, train_loader, test_loader, epochs=2, lr=1e-3, weight_decay=0, progress=False)
        assert len(stats) == 2 * len(train_loader)  # one record per training step, none for evaluation
        acc[name], first_loss[name] = 1 - history["test_err"][-1], history["train_loss"][0]
    assert acc["kaiming"] > 0.8 and acc["kaiming"] > acc["normal"] + 0.2, acc
    assert first_loss["normal"] > 100 * first_loss["kaiming"], first_loss
