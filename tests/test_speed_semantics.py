"""The semantics that keep needle_nb fast (issue 7), and a smoke run of the benchmark suite.

Nothing here asserts a timing: the checks are on work done (dtypes, gradients skipped, graph
nodes, reference cycles) and the benchmark script is only run at a tiny size so that it never rots.
"""
import gc, json, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

import needle_nb as ndl
import needle_nb.autograd as autograd
import needle_nb.nn as nn
import needle_nb.optim as optim
from needle_nb import ops
from needle_nb.autograd import Tensor

ROOT = Path(__file__).resolve().parents[1]
# counting live tensors walks gc.get_objects(), which pokes deprecated torch attributes when torch is loaded
pytestmark = pytest.mark.filterwarnings("ignore:`torch.distributed.reduce_op` is deprecated:FutureWarning")


@pytest.fixture(params=ndl.all_devices(), ids=repr)
def device(request): return request.param


def _mlp(device, sizes=(12, 16, 8, 3), dtype="float32", seed=0):
    ndl.manual_seed(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out, device=device, dtype=dtype))
        if i < len(sizes) - 2: layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _batch(device, n=10, features=12, classes=3, dtype=np.float32, seed=1):
    rs = np.random.RandomState(seed)
    X = Tensor(rs.randn(n, features).astype(dtype), device=device, requires_grad=False)
    y = Tensor(rs.randint(0, classes, n), device=device, requires_grad=False)
    return X, y


def test_every_gradient_of_a_float32_model_is_float32(device):
    "needle hw2's bug: ReLU's backward turned float32 gradients into float64 (and all after it)."
    model = _mlp(device)
    X, y = _batch(device)
    loss = nn.SoftmaxLoss()(model(X) * np.float64(1.0), y)   # a float64 numpy scalar must not upcast
    loss.backward()
    nodes = [n for n in autograd.find_topo_sort([loss]) if n.requires_grad]
    assert len(nodes) > 10
    for node in nodes:
        assert node.dtype == np.float32, node.op
        assert node.grad is not None and node.grad.dtype == np.float32, (node.op, node.grad.dtype)
        assert node.grad.shape == node.shape
    for p in model.parameters(): assert p.grad.cached_data.dtype == np.float32


def test_no_gradient_is_computed_for_what_does_not_require_one(device, monkeypatch):
    "Backward through 3 Linear layers multiplies 5 matrices, not 6: the input batch gets no gradient."
    model = _mlp(device)
    X, y = _batch(device)
    calls = []
    compute = ops.MatMul.compute
    monkeypatch.setattr(ops.MatMul, "compute", lambda self, a, b: calls.append(a.shape) or compute(self, a, b))
    loss = nn.SoftmaxLoss()(model(X), y)
    forward_matmuls = len(calls)
    loss.backward()
    assert forward_matmuls == 3 and len(calls) - forward_matmuls == 5
    assert X.grad is None
    # a frozen layer gets none either, and still passes gradients on to the layers before it
    model[2].weight.requires_grad = model[2].bias.requires_grad = False
    for p in model.parameters(): p.grad = None
    nn.SoftmaxLoss()(model(X), y).backward()
    assert model[2].weight.grad is None and model[0].weight.grad is not None
    assert X.grad is None


def test_a_linear_layer_backward_makes_no_transpose_nodes():
    "MatMul's gradients are flagged products: one node per gradient, no Transpose node."
    x, W = Tensor(np.ones((4, 3))), Tensor(np.ones((3, 2)))
    (x @ W).relu().sum().backward(create_graph=True)   # recorded, so that the gradient's nodes can be seen
    graph = autograd.find_topo_sort([W.grad, x.grad])
    assert not any(isinstance(n.op, ops.Transpose) for n in graph)
    assert type(W.grad.op) is ops.MatMul and W.grad.op.transpose_a
    assert type(x.grad.op) is ops.MatMul and x.grad.op.transpose_b


def test_gradients_through_flagged_matmuls_differentiate_again():
    torch = pytest.importorskip("torch")
    rs = np.random.RandomState(0)
    x_np, w_np = rs.randn(3, 4), rs.randn(4, 2)
    x, W = Tensor(x_np), Tensor(w_np)
    ((x @ W) ** 2).sum().backward(create_graph=True)
    grad_w = W.grad                      # 2 x^T (x W): built from MatMul(transpose_a=True)
    (grad_w * grad_w).sum().backward()   # differentiate the gradient
    xt, wt = torch.tensor(x_np, requires_grad=True), torch.tensor(w_np, requires_grad=True)
    (gw,) = torch.autograd.grad(((xt @ wt) ** 2).sum(), wt, create_graph=True)
    (gw * gw).sum().backward()
    np.testing.assert_allclose(grad_w.numpy(), gw.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(W.grad.numpy(), wt.grad.numpy(), rtol=1e-10)


def test_softmax_cross_entropy_matches_pytorch():
    torch = pytest.importorskip("torch")
    rs = np.random.RandomState(0)
    logits, labels = rs.randn(6, 4) * 3, rs.randint(0, 4, 6)
    for reduction in ("mean", "sum", "none"):
        z = Tensor(logits)
        out = ops.softmax_cross_entropy(z, Tensor(np.eye(4)[labels], requires_grad=False), reduction)
        weights = rs.randn(*out.shape)
        (out * Tensor(weights, requires_grad=False)).sum().backward()
        zt = torch.tensor(logits, requires_grad=True)
        ref = torch.nn.functional.cross_entropy(zt, torch.tensor(labels), reduction=reduction)
        (ref * torch.tensor(weights)).sum().backward()
        np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(z.grad.numpy(), zt.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_training_steps_leave_no_reference_cycles(device):
    """Each step's graph is freed by reference counting alone: with the cycle collector off, the
    live tensor count stays flat, and afterwards the collector finds nothing of ours to free."""
    model = _mlp(device)
    X, y = _batch(device)
    opt, loss_fn = optim.SGD(model.parameters(), lr=0.1, momentum=0.9), nn.SoftmaxLoss()
    def step():
        opt.reset_grad()
        loss = loss_fn(model(X), y)
        loss.backward()
        opt.step()
        return loss.item()
    first = step()
    gc.collect()
    gc.disable()
    try:
        counts = []
        for _ in range(50):
            last = step()
            counts.append(autograd.TENSOR_COUNTER)
        collectable = gc.collect()   # cycles accumulated while the collector was off
    finally:
        gc.enable()
    assert last < first
    assert max(counts) == min(counts), counts
    assert collectable == 0


def test_intermediate_gradients_hold_values_and_leaves_stay_differentiable():
    x = Tensor([1.0, 2.0])
    h = x.exp()
    (h * h).sum().backward(create_graph=True)
    np.testing.assert_allclose(h.grad.numpy(), 2 * np.exp([1.0, 2.0]), rtol=1e-6)
    assert h.grad.op is None and not h.grad.requires_grad
    assert x.grad.op is not None   # asked for: a leaf's gradient can be differentiated again
    x.grad.sum().backward()        # d/dx sum(2 e^{2x}) = 4 e^{2x}
    np.testing.assert_allclose(x.grad.numpy(), 4 * np.exp([2.0, 4.0]), rtol=1e-6)


# --- the benchmark suite at CI size --------------------------------------------------------
WORKLOADS = ("big_step", "tiny_step", "tracked_add", "init", "digits", "memory")


def test_benchmark_suite_quick_run_writes_every_workload(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["quick"] is True and report["machine"]["blas"] is not None
    assert set(WORKLOADS) <= set(report["workloads"])
    for name in WORKLOADS:
        if name == "memory": continue
        workload = report["workloads"][name]
        for row in workload["results"].values():
            assert 0 < row["min"] <= row["median"] <= row["max"]
        assert any(r["value"] is not None for r in workload["ratios"])
    assert "needle_nb" in report["workloads"]["digits"]["accuracy"]
    memory = report["workloads"]["memory"]
    assert len(memory["tensor_counts"]) >= 2 and memory["steps"] > 0
    assert "needle_nb" in proc.stdout and "ratio" in proc.stdout


def test_benchmark_suite_runs_without_torch(tmp_path):
    out = tmp_path / "results.json"
    # a None entry in sys.modules makes `import torch` raise ImportError, as if it were not installed
    code = ("import sys, runpy; sys.modules['torch'] = None; "
            f"sys.argv = ['bench.py', '--quick', '--only', 'tracked_add,tiny_step', '--json', {str(out)!r}]; "
            f"runpy.run_path({str(ROOT / 'benchmarks' / 'bench.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["torch"] is None
    assert not any("PyTorch" in row for w in report["workloads"].values() for row in w["results"])
    assert set(report["workloads"]) == {"tracked_add", "tiny_step"}
