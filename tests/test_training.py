"""End-to-end training: digits (nbs/08_train_digits) and spirals (nbs/09_planar), on every device."""
import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the digits data ship with scikit-learn (dev extra)")

import needle_nb as ndl
from needle_nb import nn
from needle_nb.data import DataLoader, NDArrayDataset
from needle_nb.apps.digits import digits_data, digits_loaders
from needle_nb.apps.models import MLP, MLPResNet
from needle_nb.apps.simple_ml import epoch, predict, train
from needle_nb.apps.planar import decision_grid, make_spirals


@pytest.fixture(params=ndl.all_devices(), ids=str)
def device(request): return request.param


def test_digits_split_is_fixed_and_complete():
    from sklearn.datasets import load_digits
    X_train, y_train, X_test, y_test = digits_data()
    assert len(X_test) == round(0.2 * 1797) and len(X_train) + len(X_test) == 1797
    assert X_train.dtype == np.float32 and 0 <= X_train.min() and X_train.max() <= 1
    # the two parts together are exactly the data set (as rows, in any order)
    full = load_digits()
    both = np.concatenate([np.c_[X_train * 16, y_train], np.c_[X_test * 16, y_test]])
    ref = np.c_[full.data, full.target]
    np.testing.assert_array_equal(both[np.lexsort(both.T)], ref[np.lexsort(ref.T)])
    again = digits_data()
    for a, b in zip(again, (X_train, y_train, X_test, y_test)): np.testing.assert_array_equal(a, b)
    assert not np.array_equal(digits_data(seed=1)[3], y_test)


@pytest.mark.parametrize("make_model", [lambda d: MLP(64, 128, 10, device=d),
                                        lambda d: MLPResNet(64, hidden_dim=64, num_blocks=2, num_classes=10, device=d)],
                         ids=["MLP", "MLPResNet"])
def test_digits_reach_95_percent_and_checkpoint_reloads(device, make_model, tmp_path):
    train_loader, test_loader = digits_loaders(batch_size=64, device=device)
    ndl.manual_seed(0)
    model = make_model(device)
    history = train(model, train_loader, test_loader, epochs=20, lr=1e-3, weight_decay=1e-4, progress=False)
    assert 1 - history["test_err"][-1] >= 0.95, history["test_err"]
    assert history["train_loss"][-1] < history["train_loss"][0] / 5

    X_test = digits_data()[2]
    path = tmp_path / "model.npz"
    nn.save(model.state_dict(), str(path))
    ndl.manual_seed(1)
    reloaded = make_model(device)
    assert not np.array_equal(predict(reloaded, X_test), predict(model, X_test))
    reloaded.load_state_dict(nn.load(str(path)))
    np.testing.assert_array_equal(predict(reloaded, X_test), predict(model, X_test))
    assert epoch(test_loader, reloaded) == epoch(test_loader, model)


def test_spirals_need_a_hidden_layer(device):
    X_train, y_train = make_spirals(seed=0)
    X_test, y_test = make_spirals(seed=1)
    assert X_train.shape == (300, 2) and np.bincount(y_train).tolist() == [100] * 3
    assert not np.array_equal(X_train, X_test)
    train_loader = DataLoader(NDArrayDataset(X_train, y_train), batch_size=32, shuffle=True)
    test_loader = DataLoader(NDArrayDataset(X_test, y_test), batch_size=100)
    ndl.manual_seed(0)
    linear = MLP(2, 3, device=device)
    linear_acc = 1 - train(linear, train_loader, test_loader, epochs=40, lr=0.05, weight_decay=0, progress=False)["test_err"][-1]
    ndl.manual_seed(0)
    mlp = MLP(2, 64, 64, 3, device=device)
    mlp_acc = 1 - train(mlp, train_loader, test_loader, epochs=60, lr=0.01, weight_decay=0, progress=False)["test_err"][-1]
    assert linear_acc < 0.7 and mlp_acc >= 0.9, (linear_acc, mlp_acc)

    # the decision-boundary picture is the model's own prediction on the grid
    xx, yy, classes = decision_grid(mlp, X_test, steps=50, margin=0.1)
    assert xx.shape == yy.shape == classes.shape == (50, 50)
    assert xx.min() == pytest.approx(X_test[:, 0].min() - 0.1) and yy.max() == pytest.approx(X_test[:, 1].max() + 0.1)
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
    np.testing.assert_array_equal(classes.ravel(), predict(mlp, grid).argmax(1))
    assert set(np.unique(classes)) == {0, 1, 2}
