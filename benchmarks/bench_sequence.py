"""Sequence layers: an LSTM and a Transformer layer, forward + backward, against references timed in the same run.

    python benchmarks/bench_sequence.py            # issue 27's sizes, a few minutes
    python benchmarks/bench_sequence.py --quick    # tiny sizes, a few seconds (smoke run)

- LSTM (seq 32, batch 64, input 128, hidden 256, one layer): needle_nb's `nn.LSTM`; the same
  forward and backward written by hand in numpy (no autograd); `torch.nn.LSTM`. Targets: ≤ 1.3× numpy,
  ≤ 1.05× PyTorch (issue 27). Timed beside them, not a contestant: the LSTM's matrix products alone, in numpy
  (the floor numpy's BLAS sets; its ratio to PyTorch is printed too), and PyTorch with its oneDNN kernels off
  (`bench.without_onednn`: on CPUs `torch.nn.LSTM` otherwise runs oneDNN's fused RNN kernel).
- One TransformerLayer (batch 16, seq 64, d_model 128, 8 heads of 16, MLP 256, causal; issue 27's sizes):
  needle_nb's `nn.TransformerLayer`; the same computation in PyTorch eager mode (its fused
  `scaled_dot_product_attention` for the attention). Target: ≤ 1.2× PyTorch (issue 27).

Each contestant computes the loss sum(output ⊙ C) for a fixed random C and its gradients with
respect to every weight and the input; the script first checks that they agree. Timing is
`bench.compare`: warm-up, then round-robin medians. Each workload is timed twice: with BLAS pinned to
one thread (threadpoolctl) and PyTorch to one thread, then with both at two threads (a round of its own,
each turn after one untimed call, which wakes the thread pools). Nothing fails on a timing: ratios and
targets are printed.
"""
from __future__ import annotations
import argparse, math, sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Row, compare, torch, without_onednn   # noqa: E402  (torch is None where it is not installed)

import needle_nb as ndl   # noqa: E402
import needle_nb.nn as nn   # noqa: E402
from needle_nb.nn.sequence import _gate_major   # noqa: E402


# ----------------------------------------------------------------------------------------------
# LSTM
# ----------------------------------------------------------------------------------------------
def lstm_data(seq, batch, n_in, hidden, seed=0):
    rs = np.random.RandomState(seed)
    bound = 1 / math.sqrt(hidden)
    W_ih, W_hh = (rs.uniform(-bound, bound, s).astype(np.float32) for s in [(n_in, 4 * hidden), (hidden, 4 * hidden)])
    b_ih, b_hh = (rs.uniform(-bound, bound, 4 * hidden).astype(np.float32) for _ in range(2))
    X = rs.randn(seq, batch, n_in).astype(np.float32)
    C = rs.randn(seq, batch, hidden).astype(np.float32)
    return X, C, (W_ih, W_hh, b_ih, b_hh)


def numpy_lstm_fn(X, C, weights):
    "A one-layer LSTM, forward and backward by hand (gates [i|f|g|o], needle's (in, out) layout)."
    W_ih, W_hh, b_ih, b_hh = weights
    T, B, _ = X.shape
    H = W_hh.shape[0]
    sigmoid = lambda z: 1 / (1 + np.exp(-z))
    def step():
        pre = (X.reshape(T * B, -1) @ W_ih + (b_ih + b_hh)).reshape(T, B, 4 * H)
        h, c = np.zeros((B, H), np.float32), np.zeros((B, H), np.float32)
        hs, cs, gates, tcs = [h], [c], [], []
        for t in range(T):
            z = pre[t] + h @ W_hh
            i, f, o = sigmoid(z[:, :H]), sigmoid(z[:, H:2 * H]), sigmoid(z[:, 3 * H:])
            g = np.tanh(z[:, 2 * H:3 * H])
            c = f * c + i * g
            tc = np.tanh(c)
            h = o * tc
            hs.append(h); cs.append(c); gates.append((i, f, g, o)); tcs.append(tc)
        loss = sum(float((hs[t + 1] * C[t]).sum()) for t in range(T))
        dZ = np.empty((T, B, 4 * H), np.float32)
        dh, dc = np.zeros((B, H), np.float32), np.zeros((B, H), np.float32)
        for t in reversed(range(T)):
            i, f, g, o = gates[t]
            dh = dh + C[t]
            dc = dc + dh * o * (1 - tcs[t] ** 2)
            dZ[t, :, :H] = dc * g * i * (1 - i)
            dZ[t, :, H:2 * H] = dc * cs[t] * f * (1 - f)
            dZ[t, :, 2 * H:3 * H] = dc * i * (1 - g * g)
            dZ[t, :, 3 * H:] = dh * tcs[t] * o * (1 - o)
            dc = dc * f
            dh = dZ[t] @ W_hh.T
        dZ2 = dZ.reshape(T * B, 4 * H)
        grads = ((dZ2 @ W_ih.T).reshape(X.shape), X.reshape(T * B, -1).T @ dZ2,
                 np.concatenate(hs[:-1]).T @ dZ2, dZ2.sum(0))
        return loss, grads
    return step


def numpy_lstm_products_fn(X, C, weights):
    """Only the matrix products of an LSTM's forward and backward, in the layouts `nn.LSTM` uses (no elementwise
    work, no autograd): the floor that numpy's BLAS sets. Its ratio to PyTorch says how much room the rest has."""
    W_ih, W_hh, b_ih, b_hh = weights
    T, B, n_in = X.shape
    H = W_hh.shape[0]
    W_ih4, W_hh4 = (_gate_major(np, W, 1.0, H) for W in (W_ih, W_hh))   # the layer op's own layout helper
    W_hh_T = np.ascontiguousarray(W_hh.T)
    h, out4 = np.zeros((B, H), np.float32), np.empty((4, B, H), np.float32)
    Z = np.full((T * B, 4 * H), 1e-3, np.float32)
    H_prev = np.full((T * B, H), 1e-3, np.float32)
    def step():
        acts = np.matmul(X[:, None], W_ih4)
        for t in range(T): np.matmul(h, W_hh4, out=out4)
        for t in range(T): Z[t * B:(t + 1) * B] @ W_hh_T
        grads = (Z @ W_ih.T, X.reshape(T * B, n_in).T @ Z, H_prev.T @ Z, np.ones(T * B, np.float32) @ Z)
        return float(acts[0, 0, 0, 0]), grads
    return step


def needle_lstm_fn(X, C, weights):
    W_ih, W_hh, b_ih, b_hh = weights
    model = nn.LSTM(X.shape[2], W_hh.shape[0])
    cell = model.lstm_cells[0]
    for param, value in zip((cell.W_ih, cell.W_hh, cell.bias_ih, cell.bias_hh), weights):
        param.data = ndl.Tensor(value, device=param.device)   # under NEEDLE_BACKEND=nd the parameters are NDArrays
    Xt = ndl.Tensor(X)
    Ct = ndl.Tensor(C, requires_grad=False)
    def step():
        out, _ = model(Xt)
        loss = (out * Ct).sum()
        loss.backward()
        return float(loss.item()), (Xt.grad.numpy(), cell.W_ih.grad.numpy(), cell.W_hh.grad.numpy(),
                                    cell.bias_ih.grad.numpy())
    return step


def torch_lstm_fn(X, C, weights):
    W_ih, W_hh, b_ih, b_hh = weights
    model = torch.nn.LSTM(X.shape[2], W_hh.shape[0])
    with torch.no_grad():   # torch stores (4H, in): the transposes of needle's weights, same gate order
        model.weight_ih_l0.copy_(torch.from_numpy(W_ih.T.copy())); model.weight_hh_l0.copy_(torch.from_numpy(W_hh.T.copy()))
        model.bias_ih_l0.copy_(torch.from_numpy(b_ih)); model.bias_hh_l0.copy_(torch.from_numpy(b_hh))
    Xt = torch.from_numpy(X).requires_grad_()
    Ct = torch.from_numpy(C)
    def step():
        Xt.grad = None
        model.zero_grad()
        out, _ = model(Xt)
        loss = (out * Ct).sum()
        loss.backward()
        return loss.item(), (Xt.grad.numpy(), model.weight_ih_l0.grad.numpy().T, model.weight_hh_l0.grad.numpy().T,
                             model.bias_ih_l0.grad.numpy())
    return step


# ----------------------------------------------------------------------------------------------
# Transformer layer
# ----------------------------------------------------------------------------------------------
def needle_transformer_fn(batch, seq, d_model, heads, hidden, seed=0):
    ndl.manual_seed(seed)
    layer = nn.TransformerLayer(d_model, heads, d_model // heads, hidden, causal=True)
    rs = np.random.RandomState(seed)
    X = rs.randn(batch, seq, d_model).astype(np.float32)
    C = rs.randn(batch, seq, d_model).astype(np.float32)
    Xt, Ct = ndl.Tensor(X), ndl.Tensor(C, requires_grad=False)
    def step():
        loss = (layer(Xt) * Ct).sum()
        loss.backward()
        return float(loss.item()), (Xt.grad.numpy(), layer.linear1.weight.grad.numpy(),
                                    layer.attn.q_projection.weight.grad.numpy())
    return step, layer, X, C


def torch_transformer_fn(layer, X, C, heads):
    "The same layer in PyTorch eager mode, weights copied from `layer` (needle's (in, out) layout kept)."
    F = torch.nn.functional
    p = {name: torch.from_numpy(w.numpy().copy()).requires_grad_() for name, w in layer.named_parameters()}
    Xt, Ct = torch.from_numpy(X).requires_grad_(), torch.from_numpy(C)
    B, T, D = X.shape
    Dh = D // heads
    def forward(x):
        x2 = x.reshape(B * T, D)
        def split_heads(name):
            normed = F.layer_norm(x2, (D,), p[f"attn.prenorm_{name}.weight"], p[f"attn.prenorm_{name}.bias"], 1e-5)
            return (normed @ p[f"attn.{name}_projection.weight"]).reshape(B, T, heads, Dh).transpose(1, 2)
        o = F.scaled_dot_product_attention(split_heads("q"), split_heads("k"), split_heads("v"), is_causal=True)
        x = x + (o.transpose(1, 2).reshape(B * T, D) @ p["attn.out_projection.weight"]).reshape(B, T, D)
        y = F.layer_norm(x.reshape(B * T, D), (D,), p["layernorm.weight"], p["layernorm.bias"], 1e-5)
        y = torch.relu(y @ p["linear1.weight"] + p["linear1.bias"]) @ p["linear2.weight"] + p["linear2.bias"]
        return x + y.reshape(B, T, D)
    def step():
        Xt.grad = None
        for w in p.values(): w.grad = None
        loss = (forward(Xt) * Ct).sum()
        loss.backward()
        return loss.item(), (Xt.grad.numpy(), p["linear1.weight"].grad.numpy(), p["attn.q_projection.weight"].grad.numpy())
    return step


# ----------------------------------------------------------------------------------------------
def check_agree(fns: dict, rtol=2e-3, atol=2e-3):
    "Every contestant computes the same loss and gradients (float32, so loosely)."
    results = {name: fn() for name, fn in fns.items()}
    (ref_name, (ref_loss, ref_grads)), *others = results.items()
    for name, (loss, grads) in others:
        if not np.isclose(loss, ref_loss, rtol=1e-4, atol=1e-2):
            raise AssertionError(f"{name} loss {loss} != {ref_name} loss {ref_loss}")
        for i, (g, r) in enumerate(zip(grads, ref_grads)):
            np.testing.assert_allclose(g, r, rtol=rtol, atol=atol, err_msg=f"{name} gradient {i} vs {ref_name}")


def report(title, results, ratios):
    print(f"\n{title}")
    for name, r in results.items():
        print(f"  {name:<28} {1e3 * r['median']:8.2f} ms   ({1e3 * r['min']:.2f}–{1e3 * r['max']:.2f})")
    for label, value, target in ratios:
        verdict = "" if target is None else f"   target ≤ {target}  {'met' if value <= target else 'MISSED'}"
        print(f"  {label:<34} {value:5.2f}×{verdict}")


def timed_rounds(fns: dict, repeats: int) -> dict:
    """`compare` the contestants at one thread (needle_nb's BLAS and PyTorch), then needle_nb and PyTorch at two
    (a round of its own, one untimed call per turn to wake the pools). Returns label -> results."""
    one = compare({f"{name} (1 thread)" if name in ("needle_nb", "PyTorch") else name:
                   Row(fn, threads=1 if name.startswith("PyTorch") else None) for name, fn in fns.items()}, repeats)
    rounds = {"1 thread": one}
    if "PyTorch" in fns:
        rounds["2 threads"] = compare({"needle_nb (2 threads)": Row(fns["needle_nb"], blas_threads=2),
                                       "PyTorch (2 threads)": Row(fns["PyTorch"], threads=2)}, repeats, lead=1)
    return rounds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (smoke run)")
    parser.add_argument("--only", choices=("lstm", "transformer"), help="time one workload only")
    args = parser.parse_args(argv)
    if args.quick: lstm_sizes, tf_sizes, repeats = (8, 4, 16, 32), (2, 8, 32, 4, 64), 3
    else: lstm_sizes, tf_sizes, repeats = (32, 64, 128, 256), (16, 64, 128, 8, 256), 15
    # the targets are set for the sizes; at --quick sizes fixed per-call costs dominate
    targets = (lambda t: None) if args.quick else (lambda t: t)
    if torch is not None: torch.set_num_threads(1)

    if args.only != "transformer":
        X, C, weights = lstm_data(*lstm_sizes)
        fns = {"numpy (by hand)": numpy_lstm_fn(X, C, weights), "needle_nb": needle_lstm_fn(X, C, weights)}
        if torch is not None:
            fns["PyTorch"] = torch_lstm_fn(X, C, weights)
            off = without_onednn(torch_lstm_fn(X, C, weights))   # a reference row: one gemm per step, no fused kernel
            if off is not None: fns["PyTorch, oneDNN off"] = off
        check_agree(fns)
        fns["numpy: the products alone"] = numpy_lstm_products_fn(X, C, weights)   # not a contestant: the BLAS floor
        rounds = timed_rounds(fns, repeats)
        one = rounds["1 thread"]
        ours = one["needle_nb (1 thread)"]["median"]
        ratios = [("needle_nb / numpy, 1 thread", ours / one["numpy (by hand)"]["median"], targets(1.3))]
        if torch is not None:
            ratios.append(("needle_nb / PyTorch, 1 thread", ours / one["PyTorch (1 thread)"]["median"], targets(1.05)))
            ratios.append(("products alone / PyTorch, 1 thread",
                           one["numpy: the products alone"]["median"] / one["PyTorch (1 thread)"]["median"], None))
            if "PyTorch, oneDNN off" in one:
                ratios.append(("needle_nb / PyTorch without oneDNN",
                               ours / one["PyTorch, oneDNN off"]["median"], None))
            two = rounds["2 threads"]
            ratios.append(("needle_nb / PyTorch, 2 threads",
                           two["needle_nb (2 threads)"]["median"] / two["PyTorch (2 threads)"]["median"], None))
        report("LSTM seq %d, batch %d, input %d, hidden %d: forward + backward" % lstm_sizes,
               {k: v for r in rounds.values() for k, v in r.items()}, ratios)

    if args.only == "lstm": return
    if torch is None:
        print("\nTransformer layer: PyTorch is not installed, nothing to compare with")
        return
    batch, seq, d_model, heads, hidden = tf_sizes
    ours_fn, layer, X, C = needle_transformer_fn(*tf_sizes)
    fns = {"needle_nb": ours_fn, "PyTorch": torch_transformer_fn(layer, X, C, heads)}
    check_agree(fns)
    rounds = timed_rounds(fns, repeats)
    ratios = [(f"needle_nb / PyTorch, {label}", r[f"needle_nb ({label})"]["median"] / r[f"PyTorch ({label})"]["median"],
               targets(1.2) if label == "1 thread" else None) for label, r in rounds.items()]
    report(f"TransformerLayer batch {batch}, seq {seq}, d_model {d_model}, {heads} heads, MLP {hidden}: "
           "forward + backward", {k: v for r in rounds.values() for k, v in r.items()}, ratios)


if __name__ == "__main__":
    main()
