"""Recurrent layers (nbs/04d_nn_sequence): needle's draws and shapes, values and gradients against
PyTorch (float64, weights copied across), against finite differences and against the cells unrolled,
plus flat memory over truncated backpropagation through time.

Layouts: needle stores `W_ih` as (input, k·H) and `W_hh` as (H, k·H) (k = 1 for the RNN, 4 for the
LSTM) and computes `X @ W_ih`; PyTorch's `weight_ih_l{l}` is (k·H, input) and computes
`X @ weight_ih.T`, so each weight is copied transposed. The LSTM gate blocks along the k·H axis are
[i | f | g | o] in both, and the biases are (k·H,) in both.
"""
import math, os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

import needle_nb as ndl
from conftest import not_under_nd
import needle_nb.nn as nn
from needle_nb import init, ops
from needle_nb.apps.sequence_studies import hidden_state_stds
from conftest import assert_memory_flat


def t64(rs, *shape, device=None, requires_grad=True):
    return ndl.Tensor(rs.randn(*shape), device=device, requires_grad=requires_grad)


def copy_to_torch(torch, cells, theirs, suffix=lambda l: f"_l{l}"):
    "Copy each of our cells' weights into the torch module (transposed weights, same biases)."
    with torch.no_grad():
        for l, cell in enumerate(cells):
            getattr(theirs, "weight_ih" + suffix(l)).copy_(torch.tensor(cell.W_ih.numpy().T))
            getattr(theirs, "weight_hh" + suffix(l)).copy_(torch.tensor(cell.W_hh.numpy().T))
            if cell.bias_ih is not None:
                getattr(theirs, "bias_ih" + suffix(l)).copy_(torch.tensor(cell.bias_ih.numpy()))
                getattr(theirs, "bias_hh" + suffix(l)).copy_(torch.tensor(cell.bias_hh.numpy()))


def compare_grads(torch, cells, theirs, suffix=lambda l: f"_l{l}", atol=1e-10):
    for l, cell in enumerate(cells):
        np.testing.assert_allclose(cell.W_ih.grad.numpy(), getattr(theirs, "weight_ih" + suffix(l)).grad.numpy().T,
                                   atol=atol, rtol=1e-7)
        np.testing.assert_allclose(cell.W_hh.grad.numpy(), getattr(theirs, "weight_hh" + suffix(l)).grad.numpy().T,
                                   atol=atol, rtol=1e-7)
        if cell.bias_ih is not None:
            for name in ("bias_ih", "bias_hh"):
                np.testing.assert_allclose(getattr(cell, name).grad.numpy(),
                                           getattr(theirs, name + suffix(l)).grad.numpy(), atol=atol, rtol=1e-7)


def weighted_sum(outputs, rs):
    "A random linear functional of every output, so each output's gradient path is exercised."
    weights = [rs.randn(*o.shape) for o in outputs]
    ours = sum(((o * ndl.Tensor(w, device=o.device, requires_grad=False)).sum() for o, w in zip(outputs, weights)),
               start=ndl.Tensor(0.0, dtype="float64", device=outputs[0].device, requires_grad=False))
    return ours, weights


# --- needle's parameters, draws and shapes --------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
def test_rnn_cell_draws_are_needles(bias):
    ndl.manual_seed(5)
    cell = nn.RNNCell(3, 4, bias=bias)
    next_draw = np.random.rand()
    np.random.seed(5)
    bound = math.sqrt(1 / 4)
    draw = lambda *shape: (np.random.rand(*shape) * 2 * bound - bound).astype(np.float32)
    np.testing.assert_array_equal(cell.W_ih.numpy(), draw(3, 4))
    np.testing.assert_array_equal(cell.W_hh.numpy(), draw(4, 4))
    if bias:
        np.testing.assert_array_equal(cell.bias_ih.numpy(), draw(4))
        np.testing.assert_array_equal(cell.bias_hh.numpy(), draw(4))
    else:
        assert cell.bias_ih is None and cell.bias_hh is None
    assert np.random.rand() == next_draw   # nothing else was drawn (no bias draws without bias)
    assert [n for n, _ in cell.named_parameters()] == ["W_ih", "W_hh"] + ["bias_ih", "bias_hh"] * bias


def test_lstm_cell_and_layer_draws_are_needles():
    ndl.manual_seed(2)
    lstm = nn.LSTM(3, 5, 2)
    np.random.seed(2)
    bound = 1 / math.sqrt(5)
    expected = [(np.random.rand(*s) * 2 * bound - bound).astype(np.float32)
                for s in [(3, 20), (5, 20), (20,), (20,), (5, 20), (5, 20), (20,), (20,)]]
    for p, e in zip(lstm.parameters(), expected): np.testing.assert_array_equal(p.numpy(), e)
    assert [n for n, _ in lstm.named_parameters()] == [
        f"lstm_cells.{l}.{w}" for l in range(2) for w in ("W_ih", "W_hh", "bias_ih", "bias_hh")]
    assert isinstance(lstm.lstm_cells, list) and all(isinstance(c, nn.LSTMCell) for c in lstm.lstm_cells)
    rnn = nn.RNN(3, 5, 2, False, "relu")
    assert [c.nonlinearity for c in rnn.rnn_cells] == ["relu", "relu"] and len(rnn.parameters()) == 4


def test_seeded_draws_reproduce():
    def draw(seed):
        ndl.manual_seed(seed)
        return [p.numpy().copy() for p in nn.LSTM(4, 6, 2).parameters() + nn.RNN(4, 6).parameters()]
    first, again, other = draw(11), draw(11), draw(12)
    for a, b in zip(first, again): np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_shapes_dtypes_and_default_state(rs):
    lstm = nn.LSTM(3, 4, 2)
    X = ndl.Tensor(rs.randn(7, 5, 3).astype(np.float32))
    out, (h_n, c_n) = lstm(X)
    assert (out.shape, h_n.shape, c_n.shape) == ((7, 5, 4), (2, 5, 4), (2, 5, 4))
    assert out.dtype == np.float32 and h_n.dtype == np.float32
    zeros = ndl.Tensor(np.zeros((2, 5, 4), np.float32))
    out2, _ = lstm(X, (zeros, zeros))
    np.testing.assert_array_equal(out.numpy(), out2.numpy())     # None means zeros
    out.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == np.float32 for p in lstm.parameters())
    rnn = nn.RNN(3, 4)
    out, h_n = rnn(X)
    assert (out.shape, h_n.shape) == ((7, 5, 4), (1, 5, 4))
    np.testing.assert_array_equal(h_n.numpy()[0], out.numpy()[-1])


def test_bad_input_is_named(rs):
    with pytest.raises(ValueError, match="nonlinearity"): nn.RNNCell(2, 3, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="num_layers"): nn.LSTM(2, 3, 0)
    rnn, lstm = nn.RNN(3, 4, 2), nn.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"\(seq_len, bs, input_size\) with input_size=3"): rnn(t64(rs, 5, 3))
    with pytest.raises(ValueError, match=r"\(2, 5, 4\)"): rnn(t64(rs, 6, 5, 3), t64(rs, 1, 5, 4))
    with pytest.raises(ValueError, match=r"\(bs, input_size\)"): nn.LSTMCell(3, 4)(t64(rs, 2, 4))
    with pytest.raises(ValueError, match="c0"): nn.LSTMCell(3, 4)(t64(rs, 2, 3), (t64(rs, 2, 4), t64(rs, 3, 4)))
    with pytest.raises(ValueError, match=r"\(1, 5, 4\)"): lstm(t64(rs, 6, 5, 3), (t64(rs, 1, 5, 4), t64(rs, 1, 5, 3)))


# --- against PyTorch -------------------------------------------------------------------------------
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("given", [True, False], ids=["h0", "zeros"])
def test_rnn_cell_against_torch(torch, rs, device, nonlinearity, bias, given):
    ours = nn.RNNCell(4, 5, bias, nonlinearity, device=device, dtype="float64")
    theirs = torch.nn.RNNCell(4, 5, bias, nonlinearity).double()
    copy_to_torch(torch, [ours], theirs, suffix=lambda l: "")
    X, h = t64(rs, 3, 4, device=device), t64(rs, 3, 5, device=device)
    Xt, ht = (torch.tensor(a.numpy(), requires_grad=True) for a in (X, h))
    out, out_t = ours(X, h if given else None), theirs(Xt, ht if given else None)
    np.testing.assert_allclose(out.numpy(), out_t.detach().numpy(), atol=1e-12)
    loss, (w,) = weighted_sum([out], rs)
    loss.backward(); (out_t * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(X.grad.numpy(), Xt.grad.numpy(), atol=1e-12)
    if given: np.testing.assert_allclose(h.grad.numpy(), ht.grad.numpy(), atol=1e-12)
    compare_grads(torch, [ours], theirs, suffix=lambda l: "")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("given", [True, False], ids=["h0c0", "zeros"])
def test_lstm_cell_against_torch(torch, rs, device, bias, given):
    ours = nn.LSTMCell(4, 5, bias, device=device, dtype="float64")
    theirs = torch.nn.LSTMCell(4, 5, bias).double()
    copy_to_torch(torch, [ours], theirs, suffix=lambda l: "")
    X, h, c = t64(rs, 3, 4, device=device), t64(rs, 3, 5, device=device), t64(rs, 3, 5, device=device)
    Xt, ht, ct = (torch.tensor(a.numpy(), requires_grad=True) for a in (X, h, c))
    outs = ours(X, (h, c) if given else None)
    outs_t = theirs(Xt, (ht, ct) if given else None)
    for o, ot in zip(outs, outs_t): np.testing.assert_allclose(o.numpy(), ot.detach().numpy(), atol=1e-12)
    loss, ws = weighted_sum(list(outs), rs)
    loss.backward(); sum((o * torch.tensor(w)).sum() for o, w in zip(outs_t, ws)).backward()
    np.testing.assert_allclose(X.grad.numpy(), Xt.grad.numpy(), atol=1e-12)
    if given:
        np.testing.assert_allclose(h.grad.numpy(), ht.grad.numpy(), atol=1e-12)
        np.testing.assert_allclose(c.grad.numpy(), ct.grad.numpy(), atol=1e-12)
    compare_grads(torch, [ours], theirs, suffix=lambda l: "")


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("given", [True, False], ids=["state", "zeros"])
def test_layers_against_torch(torch, rs, device, kind, num_layers, bias, given):
    T, bs, n_in, H = 6, 3, 4, 5
    if kind == "lstm":
        ours = nn.LSTM(n_in, H, num_layers, bias, device=device, dtype="float64")
        theirs, cells = torch.nn.LSTM(n_in, H, num_layers, bias).double(), ours.lstm_cells
    else:
        nonlinearity = kind.split("_")[1]
        ours = nn.RNN(n_in, H, num_layers, bias, nonlinearity, device=device, dtype="float64")
        theirs = torch.nn.RNN(n_in, H, num_layers, nonlinearity=nonlinearity, bias=bias).double()
        cells = ours.rnn_cells
    copy_to_torch(torch, cells, theirs)
    X, h0, c0 = t64(rs, T, bs, n_in, device=device), t64(rs, num_layers, bs, H, device=device), \
        t64(rs, num_layers, bs, H, device=device)
    Xt, h0t, c0t = (torch.tensor(a.numpy(), requires_grad=True) for a in (X, h0, c0))
    if kind == "lstm":
        out, (h_n, c_n) = ours(X, (h0, c0) if given else None)
        out_t, (h_nt, c_nt) = theirs(Xt, (h0t, c0t) if given else None)
        outs, outs_t = [out, h_n, c_n], [out_t, h_nt, c_nt]
    else:
        out, h_n = ours(X, h0 if given else None)
        out_t, h_nt = theirs(Xt, h0t if given else None)
        outs, outs_t = [out, h_n], [out_t, h_nt]
    for o, ot in zip(outs, outs_t): np.testing.assert_allclose(o.numpy(), ot.detach().numpy(), atol=1e-12)
    loss, ws = weighted_sum(outs, rs)
    loss.backward(); sum((o * torch.tensor(w)).sum() for o, w in zip(outs_t, ws)).backward()
    np.testing.assert_allclose(X.grad.numpy(), Xt.grad.numpy(), atol=1e-10)
    if given:
        np.testing.assert_allclose(h0.grad.numpy(), h0t.grad.numpy(), atol=1e-10)
        if kind == "lstm": np.testing.assert_allclose(c0.grad.numpy(), c0t.grad.numpy(), atol=1e-10)
    compare_grads(torch, cells, theirs)


def test_weights_replaced_by_plain_tensors_as_needles_tests_do(torch, rs):
    "needle's tests construct the layer, then assign torch's weights as plain Tensors, and read `.grad`."
    ours, theirs = nn.LSTM(4, 3, 2), torch.nn.LSTM(4, 3, 2)
    for l, cell in enumerate(ours.lstm_cells):
        cell.W_ih = ndl.Tensor(getattr(theirs, f"weight_ih_l{l}").detach().numpy().T)
        cell.W_hh = ndl.Tensor(getattr(theirs, f"weight_hh_l{l}").detach().numpy().T)
        cell.bias_ih = ndl.Tensor(getattr(theirs, f"bias_ih_l{l}").detach().numpy())
        cell.bias_hh = ndl.Tensor(getattr(theirs, f"bias_hh_l{l}").detach().numpy())
    assert not any(isinstance(p, nn.Parameter) for p in ours.parameters()) and len(ours.parameters()) == 8
    x = rs.randn(5, 2, 4).astype(np.float32)
    out, _ = ours(ndl.Tensor(x))
    out_t, _ = theirs(torch.tensor(x))
    np.testing.assert_allclose(out.numpy(), out_t.detach().numpy(), atol=1e-5)
    out.sum().backward(); out_t.sum().backward()
    np.testing.assert_allclose(ours.lstm_cells[0].W_ih.grad.numpy(), theirs.weight_ih_l0.grad.numpy().T, atol=1e-5)


# --- without PyTorch: the cells unrolled, finite differences ----------------------------------------
def unrolled(layer, X, state):
    "The layer as its definition: each cell over split(X, 0), layer after layer, stacked."
    lstm = isinstance(layer, nn.LSTM)
    cells = layer.lstm_cells if lstm else layer.rnn_cells
    inputs, finals = list(ops.split(X, 0).tuple()), []
    for l, cell in enumerate(cells):
        s = None if state is None else (tuple(ops.split(x, 0)[l] for x in state) if lstm else ops.split(state, 0)[l])
        outputs = []
        for x in inputs:
            s = cell(x, s)
            outputs.append(s[0] if lstm else s)
        inputs = outputs
        finals.append(s)
    if lstm: return ops.stack(inputs, 0), (ops.stack([f[0] for f in finals], 0), ops.stack([f[1] for f in finals], 0))
    return ops.stack(inputs, 0), ops.stack(finals, 0)


@pytest.mark.parametrize("make", [lambda: nn.LSTM(3, 4, 2, dtype="float64"),
                                  lambda: nn.RNN(3, 4, 2, nonlinearity="relu", dtype="float64"),
                                  lambda: nn.RNN(3, 4, 1, bias=False, dtype="float64")], ids=["lstm", "rnn_relu", "rnn"])
def test_fused_layer_equals_its_cells_unrolled(rs, make):
    layer = make()
    lstm = isinstance(layer, nn.LSTM)
    X = t64(rs, 5, 2, 3)
    L = layer.num_layers
    state = (t64(rs, L, 2, 4), t64(rs, L, 2, 4)) if lstm else t64(rs, L, 2, 4)
    results = []
    for run in (layer, lambda X, s: unrolled(layer, X, s)):
        out, final = run(X, state)
        outs = [out] + (list(final) if lstm else [final])
        loss, _ = weighted_sum(outs, np.random.RandomState(1))
        loss.backward()
        leaves = [X] + (list(state) if lstm else [state]) + layer.parameters()
        results.append([o.numpy() for o in outs] + [t.grad.numpy() for t in leaves])
    for fused, reference in zip(*results): np.testing.assert_allclose(fused, reference, atol=1e-12)


def test_lstm_gradients_match_finite_differences(rs):
    ndl.manual_seed(0)
    lstm = nn.LSTM(2, 3, 2, dtype="float64")
    X, h0, c0 = t64(rs, 4, 2, 2), t64(rs, 2, 2, 3), t64(rs, 2, 2, 3)
    def f(X, h0, c0, *weights):
        out, (h_n, c_n) = lstm(X, (h0, c0))
        return out.sum() * 0.5 + (h_n * c_n).sum()
    ndl.gradient_check(f, X, h0, c0, *lstm.parameters(), backward=True, tol=1e-6)


def test_rnn_gradients_match_finite_differences(rs):
    ndl.manual_seed(0)
    rnn = nn.RNN(2, 3, 2, dtype="float64")
    X, h0 = t64(rs, 4, 2, 2), t64(rs, 2, 2, 3)
    def f(X, h0, *weights):
        out, h_n = rnn(X, h0)
        return (out * out).sum() + h_n.sum()
    ndl.gradient_check(f, X, h0, *rnn.parameters(), backward=True, tol=1e-6)


def test_no_graph_without_gradients(rs):
    lstm = nn.LSTM(3, 4)
    with ndl.no_grad():
        out, (h_n, _) = lstm(ndl.Tensor(rs.randn(5, 2, 3).astype(np.float32)))
    assert out.op is None and not out.requires_grad and h_n.op is None


# --- memory: truncated BPTT with the state detached ------------------------------------------------
@pytest.mark.filterwarnings("ignore:`torch.distributed.reduce_op` is deprecated:FutureWarning")
@not_under_nd("its subject is the fused layer ops; unrolled cell by cell under tracemalloc it takes minutes")
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_truncated_bptt_memory_is_flat(device, kind):
    """1,000 steps of truncated BPTT, the hidden state carried across batches and detached: nothing accumulates.

    Tiny sizes keep it to seconds; without the detach the graph (and memory) would grow every step.
    """
    ndl.manual_seed(0)
    rs = np.random.RandomState(0)
    model = nn.LSTM(4, 8, 2, device=device) if kind == "lstm" else nn.RNN(4, 8, 2, device=device)
    opt = ndl.optim.SGD(model.parameters(), lr=0.01)
    X = ndl.Tensor(rs.randn(4, 2, 4).astype(np.float32), device=device, requires_grad=False)
    target = ndl.Tensor(rs.randn(4, 2, 8).astype(np.float32), device=device, requires_grad=False)
    state = [None]
    def step():
        opt.reset_grad()
        out, h = model(X, state[0])
        state[0] = tuple(x.detach() for x in h) if kind == "lstm" else h.detach()
        diff = out - target
        loss = (diff * diff).sum() / diff.shape[0]
        loss.backward()
        opt.step()
        return loss.item()
    first = step()
    last = assert_memory_flat(step, warmup=20, steps=1000, max_growth=32 * 1024)
    assert last < first   # it trained


# --- the chapter's study: the state's std over 100 steps --------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hidden_state_std_uniform_vanishes_orthogonal_follows_power_law(seed):
    uniform = hidden_state_stds("uniform", seed=seed)
    orthogonal = hidden_state_stds("orthogonal", seed=seed)
    assert uniform.shape == orthogonal.shape == (101,)
    assert 0.95 < uniform[0] < 1.05 and 0.95 < orthogonal[0] < 1.05        # h_0 ~ N(0, 1)
    per_step = (uniform[40] / uniform[10]) ** (1 / 30)
    assert 0.5 < per_step < 0.65, per_step                                  # ≈ 1/√3 = 0.577
    assert uniform[100] < 1e-15
    t = np.arange(20, 101)
    assert np.all(np.abs(orthogonal[t] * np.sqrt(2 * t) - 1) < 0.08)      # σ_t ≈ 1/√(2t)
    assert np.all(np.diff(orthogonal) < 0)                                  # tanh only shrinks it


def test_hidden_state_stds_rejects_unknown_init():
    with pytest.raises(ValueError, match="orthogonal"): hidden_state_stds("xavier")


# --- Embedding, as the sequence layers' input (NEEDLE-API §3.8) --------------------------------------
def test_embedding_is_needles_one_hot_matmul(rs):
    ndl.manual_seed(3)
    embedding = nn.Embedding(7, 4)
    np.random.seed(3)
    np.testing.assert_array_equal(embedding.weight.numpy(), np.random.randn(7, 4).astype(np.float32))
    ids = rs.randint(0, 7, (5, 3)).astype(np.float32)            # (seq_len, bs) float ids, as get_batch makes
    out = embedding(ndl.Tensor(ids, requires_grad=False))
    one_hot = np.eye(7, dtype=np.float32)[ids.reshape(-1).astype(int)]
    np.testing.assert_array_equal(out.numpy(), (one_hot @ embedding.weight.numpy()).reshape(5, 3, 4))
    w = rs.randn(5, 3, 4).astype(np.float32)
    (out * ndl.Tensor(w, requires_grad=False)).sum().backward()
    np.testing.assert_allclose(embedding.weight.grad.numpy(), one_hot.T @ w.reshape(15, 4), rtol=1e-6, atol=1e-6)


# --- the benchmark script never rots -----------------------------------------------------------------
def test_sequence_benchmark_quick_run():
    "`bench_sequence.py --quick` runs (under either backend: this process's), checks that the contestants agree, and prints both workloads."
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sequence.py"
    env = dict(os.environ, NEEDLE_BACKEND=ndl.BACKEND)
    proc = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "LSTM seq 8" in proc.stdout and "needle_nb / numpy" in proc.stdout
    try: import torch   # noqa: F401
    except ImportError: return
    assert "TransformerLayer" in proc.stdout and "needle_nb / PyTorch" in proc.stdout
