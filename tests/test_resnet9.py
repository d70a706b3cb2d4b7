"""needle's ConvBN and ResNet9 (nbs/07_models), SmallCNN, the CIFAR-10 loops of apps.simple_ml (nbs/07a_simple_ml),
the ResNet9 benchmark's smoke run and the Fashion-MNIST chapter's committed checkpoint (nbs/12_fashion_cnn).

ResNet9 is checked against the same network in PyTorch (weights copied, float64), for values and gradients.
"""
import runpy, sys
from pathlib import Path

import numpy as np
import pytest

import needle_nb as ndl
from needle_nb import nn, init
from needle_nb.autograd import Tensor
from needle_nb.data import (CIFAR10Dataset, DataLoader, FASHION_MNIST_DEBIAN, FashionMNIST, NDArrayDataset,
                            write_cifar10_batch)
from needle_nb.apps.models import ConvBN, ResNet9, SmallCNN, Unflatten
from needle_nb.apps.simple_ml import epoch_general_cifar10, evaluate_cifar10, train_cifar10

BENCH_RESNET9 = str(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_resnet9.py")
CONVBNS = [(3, 16, 7, 4), (16, 32, 3, 2), (32, 32, 3, 1), (32, 32, 3, 1), (32, 64, 3, 2), (64, 128, 3, 2),
           (128, 128, 3, 1), (128, 128, 3, 1)]


def num_params(model): return sum(int(np.prod(p.shape)) for p in model.parameters())


def test_resnet9_parameter_count():
    expected = sum(k * k * a * b + b + 2 * b for a, b, k, s in CONVBNS) + (128 * 128 + 128) + (128 * 10 + 10)
    assert num_params(ResNet9()) == expected == 431946


def test_resnet9_draw_order_is_needles():
    "Seeded, the parameters are exactly the draws of the API's creation order: per Conv, weight then bias."
    np.random.seed(7)
    model = ResNet9()
    np.random.seed(7)
    expected = []
    for a, b, k, s in CONVBNS:
        expected.append(init.kaiming_uniform(a * k * k, b * k * k, shape=(k, k, a, b)).numpy())
        bound = 1 / np.sqrt(a * k * k)
        expected.append(init.rand(b, low=-bound, high=bound).numpy())
        expected += [np.ones(b, np.float32), np.zeros(b, np.float32)]          # BatchNorm2d: no draws
    for fan_in, fan_out in [(128, 128), (128, 10)]:
        expected.append(init.kaiming_uniform(fan_in, fan_out).numpy())
        expected.append(init.kaiming_uniform(fan_out, 1).numpy().reshape(1, fan_out))
    params = model.parameters()
    assert len(params) == len(expected)
    for p, e in zip(params, expected):
        np.testing.assert_array_equal(p.numpy(), e)


def test_resnet9_shapes_device_dtype():
    model = ResNet9(device=ndl.cpu(), dtype="float64")
    assert all(p.dtype == np.float64 and p.device == ndl.cpu() for p in model.parameters())
    x = Tensor(np.random.RandomState(0).rand(3, 3, 32, 32), dtype="float64")
    sizes, h = [], x
    for module in model.model.modules:
        h = module(h)
        sizes.append(h.shape)
    assert [s[2] for s in sizes[:6]] == [8, 4, 4, 2, 1, 1]
    assert sizes[-1] == (3, 10) and model(x).dtype == np.float64
    assert isinstance(model.model.modules[0], ConvBN)
    convbn = ConvBN(3, 5, 3, 1)
    assert [type(m).__name__ for m in (convbn.conv, convbn.bn, convbn.relu)] == ["Conv", "BatchNorm2d", "ReLU"]


def torch_resnet9(torch, model):
    "The same network in PyTorch (float64) with `model`'s weights copied across: the benchmark's `torch_copy`."
    return runpy.run_path(BENCH_RESNET9)["torch_copy"](model)


def test_resnet9_forward_backward_matches_torch(torch):
    "Training mode (batch statistics), a CIFAR-shaped batch of 8: logits, input and first-kernel gradients."
    np.random.seed(0)
    model = ResNet9(dtype="float64")
    ref = torch_resnet9(torch, model)
    x = np.random.RandomState(1).rand(8, 3, 32, 32)
    weights = np.random.RandomState(2).randn(8, 10)
    ours_x = Tensor(x, dtype="float64", requires_grad=True)
    out = model(ours_x)
    (out * Tensor(weights, dtype="float64")).sum().backward()
    theirs_x = torch.tensor(x, requires_grad=True)
    theirs = ref(theirs_x)
    (theirs * torch.tensor(weights)).sum().backward()
    np.testing.assert_allclose(out.numpy(), theirs.detach().numpy(), rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(ours_x.grad.numpy(), theirs_x.grad.numpy(), rtol=1e-6, atol=1e-9)
    first = model.parameters()[0]
    np.testing.assert_allclose(first.grad.numpy(), ref[0][0].weight.grad.permute(2, 3, 1, 0).numpy(), rtol=1e-6, atol=1e-9)
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def test_small_cnn():
    ndl.manual_seed(0)
    model = SmallCNN()
    assert model(Tensor(np.zeros((2, 784), np.float32))).shape == (2, 10)
    assert SmallCNN(3, 32, widths=(8, 8, 8), hidden=16)(Tensor(np.zeros((2, 3, 32, 32), np.float32))).shape == (2, 10)
    with pytest.raises(ValueError, match="divisible"): SmallCNN(image_size=30, widths=(4, 4))
    assert Unflatten(2, 3)(Tensor(np.arange(12.0).reshape(2, 6))).shape == (2, 2, 3)


# ---------------------------------------------------------------------------------------------
# the CIFAR-10 loops on synthetic batch files
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def colour_cifar(tmp_path):
    "CIFAR-10 batch files (python format, 24 images each) whose label is the brightest channel."
    rs = np.random.RandomState(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rs.randint(0, 3, 24)
        images = rs.randint(0, 120, (24, 3, 32, 32))
        images[np.arange(24), labels] += 120
        write_cifar10_batch(tmp_path/name, images.astype(np.uint8), labels)
    return str(tmp_path)


def test_train_cifar10_tiny_run(colour_cifar):
    def run():
        np.random.seed(0)
        model = ResNet9()
        loader = DataLoader(CIFAR10Dataset(colour_cifar, train=True), batch_size=20, shuffle=True)
        return model, train_cifar10(model, loader, n_epochs=2, lr=0.003)
    model, (acc, loss) = run()
    assert 0.5 < acc <= 1 and np.isfinite(loss)
    assert run()[1] == (acc, loss)                                   # seeded: reproducible to the bit
    test_loader = DataLoader(CIFAR10Dataset(colour_cifar, train=False), batch_size=10)
    test_acc, test_loss = evaluate_cifar10(model, test_loader)
    before = [p.numpy().copy() for p in model.parameters()]
    assert evaluate_cifar10(model, test_loader) == (test_acc, test_loss)
    assert all(np.array_equal(p.numpy(), b) for p, b in zip(model.parameters(), before))
    assert not model.training


def test_epoch_general_cifar10_averages_over_samples(colour_cifar):
    "Batches of 10, 10, 4: the loss is the sample-weighted mean of the batch losses, accuracy the hit rate."
    np.random.seed(0)
    model = ResNet9()
    ds = CIFAR10Dataset(colour_cifar, train=False)
    acc, loss = epoch_general_cifar10(DataLoader(ds, batch_size=10), model)
    model.eval()
    losses, hits = [], 0
    with ndl.no_grad():
        for start in (0, 10, 20):
            X, y = Tensor(ds.X[start:start + 10]), Tensor(ds.y[start:start + 10])
            logits = model(X)
            losses.append(nn.SoftmaxLoss()(logits, y).item() * X.shape[0])
            hits += int((logits.numpy().argmax(1) == ds.y[start:start + 10]).sum())
    assert acc == hits / 24
    np.testing.assert_allclose(loss, sum(losses) / 24, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# the ResNet9 benchmark still runs (timings are never asserted)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_torch", [True, False], ids=["torch", "no-torch"])
def test_resnet9_benchmark_quick_run(with_torch, monkeypatch, capsys):
    if with_torch: pytest.importorskip("torch")
    else: monkeypatch.setitem(sys.modules, "torch", None)     # `import torch` raises ImportError
    monkeypatch.delitem(sys.modules, "bench", raising=False)  # bench.py is imported afresh
    report = runpy.run_path(BENCH_RESNET9)["main"](["--quick", "--batch", "2", "--repeats", "1"])
    assert ("PyTorch (1 thread)" in report["results"]) == with_torch and "needle_nb" in report["results"]
    assert all(0 < r["min"] <= r["median"] <= r["max"] for r in report["results"].values())
    out = capsys.readouterr().out
    assert ("ratio needle_nb / PyTorch" in out) == with_torch
    assert ("skipping the PyTorch row" in out) != with_torch


def test_resnet9_benchmark_networks_agree(torch):
    "The PyTorch copy computes needle_nb's logits (so the timing compares equal work)."
    bench = runpy.run_path(BENCH_RESNET9)
    np.random.seed(0)
    model = ResNet9()
    x = np.random.RandomState(0).rand(3, 3, 32, 32).astype(np.float32)
    theirs = bench["torch_copy"](model)(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(model(Tensor(x)).numpy(), theirs, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# the Fashion-MNIST chapter's committed checkpoint (nbs/12_fashion_cnn)
# ---------------------------------------------------------------------------------------------
CHECKPOINT = Path(__file__).resolve().parents[1] / "nbs" / "artefacts" / "fashion_cnn.npz"


def test_fashion_checkpoint_is_small_and_fits_small_cnn():
    assert CHECKPOINT.exists(), "run nbs/12_fashion_cnn.ipynb with NEEDLE_NB_FULL=1 to write it"
    assert CHECKPOINT.stat().st_size <= 1_000_000
    model = SmallCNN()
    keys = model.load_state_dict(nn.load(CHECKPOINT))          # strict: every key, every shape
    assert not keys.missing_keys and not keys.unexpected_keys


@pytest.mark.skipif(not FASHION_MNIST_DEBIAN.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_checkpoint_reaches_90_percent():
    from needle_nb.apps.simple_ml import evaluate
    test = FashionMNIST(train=False)
    model = SmallCNN()
    model.load_state_dict(nn.load(CHECKPOINT))
    err, _ = evaluate(DataLoader(NDArrayDataset(test.images, test.labels), 1000), model)
    assert 1 - err >= 0.90, 1 - err
