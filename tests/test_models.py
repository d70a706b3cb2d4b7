"""needle's models (ResidualBlock, MLPResNet), our MLP, and the epoch/train/predict loop (nbs/07_models, nbs/07a_simple_ml)."""
import gzip, struct

import numpy as np
import pytest

import needle_nb as ndl
from needle_nb import nn, optim
from needle_nb.autograd import Tensor
from needle_nb.data import DataLoader, NDArrayDataset
from needle_nb.apps.models import MLP, MLPResNet, ResidualBlock
from needle_nb.apps.simple_ml import epoch, predict, train, train_mnist


@pytest.fixture(params=ndl.all_devices(), ids=str)
def device(request): return request.param


def num_params(model): return sum(int(np.prod(p.shape)) for p in model.parameters())


# The parameter counts needle's hw2 tests expect.
@pytest.mark.parametrize("args, expected", [((15, 2, nn.BatchNorm1d), 111), ((784, 100, nn.LayerNorm1d), 159452)])
def test_residual_block_num_params(args, expected):
    dim, hidden, norm = args
    assert num_params(ResidualBlock(dim, hidden, norm)) == expected


@pytest.mark.parametrize("args, expected", [((150, 100, 5, 10, nn.LayerNorm1d), 68360),
                                            ((10, 100, 1, 100, nn.BatchNorm1d), 21650)])
def test_mlp_resnet_num_params(args, expected):
    assert num_params(MLPResNet(*args)) == expected


def test_mlp_widths_and_errors():
    assert num_params(MLP(64, 128, 10)) == 64 * 128 + 128 + 128 * 10 + 10
    assert num_params(MLP(3, 4)) == 3 * 4 + 4
    with pytest.raises(ValueError, match="sizes"): MLP(5)


def test_mlp_resnet_structure():
    "Linear, ReLU, num_blocks residual blocks, Linear — and each block maps (n, dim) to (n, dim)."
    ndl.manual_seed(0)
    x = Tensor(np.random.randn(4, 20).astype(np.float32))
    block = ResidualBlock(20, 7, drop_prob=0.0)
    block.eval()
    out = block(x).numpy()
    assert out.shape == (4, 20) and (out >= 0).all()  # ends with a ReLU


@pytest.mark.parametrize("norm", [nn.BatchNorm1d, nn.LayerNorm1d])
def test_mlp_resnet_forward_on_device(device, norm):
    ndl.manual_seed(0)
    model = MLPResNet(12, hidden_dim=16, num_blocks=2, num_classes=5, norm=norm, drop_prob=0.5, device=device)
    assert all(p.device == device and p.dtype == np.float32 for p in model.parameters())
    x = Tensor(np.random.randn(8, 12).astype(np.float32), device=device)
    model.eval()
    a, b = model(x).numpy(), model(x).numpy()
    assert a.shape == (8, 5) and np.array_equal(a, b), "evaluation must be deterministic (no dropout)"
    model.train()
    c = model(x).numpy()
    assert not np.allclose(a, c), "training mode with drop_prob=0.5 must change the output"


def blobs(n=100, seed=0):
    rs = np.random.RandomState(seed)
    X = np.concatenate([rs.randn(n, 2) + 2, rs.randn(n, 2) - 2]).astype(np.float32)
    return X, np.repeat(np.arange(2), n)


def test_epoch_trains_evaluates_and_counts(device):
    X, y = blobs()
    loader = DataLoader(NDArrayDataset(X, y), batch_size=30, shuffle=True)
    ndl.manual_seed(0)
    model = MLP(2, 8, 2, device=device)
    before = [p.numpy().copy() for p in model.parameters()]
    err0, loss0 = epoch(loader, model)
    assert all(np.array_equal(p.numpy(), b) for p, b in zip(model.parameters(), before)), "evaluation moved parameters"
    assert not model.training
    # error rate is over samples (the last batch is smaller), loss the mean over batches
    logits = predict(model, X)
    assert err0 == pytest.approx((logits.argmax(1) != y).mean())
    err1, loss1 = epoch(loader, model, optim.Adam(model.parameters(), lr=0.05))
    assert model.training
    assert any(not np.array_equal(p.numpy(), b) for p, b in zip(model.parameters(), before))
    err2, loss2 = epoch(loader, model)
    assert 0 <= err2 <= 1 and loss2 < loss0 and err2 < 0.1, (err0, loss0, err2, loss2)


def test_epoch_seed_makes_training_reproducible():
    X, y = blobs()
    loader = DataLoader(NDArrayDataset(X, y), batch_size=16, shuffle=True)
    results = []
    for _ in range(2):
        ndl.manual_seed(3)
        model = MLPResNet(2, hidden_dim=8, num_blocks=1, num_classes=2, drop_prob=0.3)
        np.random.seed(123)  # epoch's own seed (needle's 4) must override whatever state numpy is in
        results.append(epoch(loader, model, optim.SGD(model.parameters(), lr=0.1)) + (predict(model, X),))
    assert results[0][:2] == results[1][:2]
    np.testing.assert_array_equal(results[0][2], results[1][2])


def test_train_history_and_progress(device, capsys):
    X, y = blobs()
    loader = DataLoader(NDArrayDataset(X, y), batch_size=25, shuffle=True)
    ndl.manual_seed(0)
    model = MLP(2, 16, 2, device=device)
    history = train(model, loader, loader, epochs=4, lr=0.01, progress=True)
    assert list(history) == ["train_err", "train_loss", "test_err", "test_loss"]
    assert all(len(v) == 4 for v in history.values())
    assert history["train_loss"][-1] < history["train_loss"][0] and history["test_err"][-1] < 0.05
    assert history["test_err"][-1] == pytest.approx(epoch(loader, model)[0])
    assert "train_loss" in capsys.readouterr().out  # the progress table was written
    no_test = train(model, loader, epochs=1, progress=False)
    assert list(no_test) == ["train_err", "train_loss"]


def test_train_uses_given_optimizer_options():
    "SGD with lr=0 leaves every parameter where it was (options reach the optimizer)."
    X, y = blobs(20)
    loader = DataLoader(NDArrayDataset(X, y), batch_size=10)
    model = MLP(2, 4, 2)
    before = [p.numpy().copy() for p in model.parameters()]
    train(model, loader, epochs=2, optimizer=optim.SGD, lr=0.0, weight_decay=0.0, progress=False, momentum=0.9)
    assert all(np.array_equal(p.numpy(), b) for p, b in zip(model.parameters(), before))


def write_idx(path, array, magic):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in array.shape) + array.tobytes())


def test_train_mnist_on_tiny_idx_files(tmp_path):
    "needle's train_mnist end to end on a tiny MNIST-format data set we write ourselves."
    if not hasattr(ndl.data, "MNISTDataset"): pytest.skip("needle_nb.data has no MNISTDataset")
    rs = np.random.RandomState(0)
    labels = rs.randint(0, 10, size=60).astype(np.uint8)
    images = np.zeros((60, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels): images[i, label, :] = 255  # class = which row is lit
    for prefix, sl in (("train", slice(0, 40)), ("t10k", slice(40, 60))):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images[sl], 2051)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels[sl], 2049)
    result = train_mnist(batch_size=10, epochs=3, lr=0.01, hidden_dim=16, data_dir=str(tmp_path))
    assert len(result) == 4 and all(np.isfinite(result))
    train_err, train_loss, test_err, test_loss = result
    assert 0 <= train_err <= 1 and 0 <= test_err <= 1 and train_loss > 0 and test_loss > 0
