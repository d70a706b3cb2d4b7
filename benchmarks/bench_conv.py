"""One convolutional layer, forward and backward: needle_nb against numpy by hand and PyTorch.

    python benchmarks/bench_conv.py            # batch 64, 16 -> 32 channels, 32x32, K=3, stride 1, padding 1
    python benchmarks/bench_conv.py --quick    # tiny sizes, about a second: what the tests run

Contenders, all float32 on the same NCHW input, weights and output gradient `G`:
- needle_nb: `nn.Conv(16, 32, 3)` (NCHW in and out; NHWC inside), `out = layer(x)`, `out.backward(G)`;
  the input requires a gradient, so the backward computes the input's, the weight's and the bias's;
- numpy (by hand): the same layer written directly, no autograd: im2col of the padded NCHW input
  (an `as_strided` view, one copy), one matmul; backward `dW = colsᵀ G`, `db = Σ G`,
  `dx = col2im(G Wᵀ)` (K² strided adds), reusing the forward's columns;
- PyTorch: `torch.nn.functional.conv2d` forward and `out.backward(G)`, 1 thread.

BLAS and PyTorch are pinned to one thread; the contenders take turns (round-robin) and the table
shows the median time per forward+backward (min-max alongside), as `bench.py` does (its `compare`
is reused). Before timing, the three are checked to compute the same output and gradients.
Target (issue 14): needle_nb ≤ 1.3× numpy by hand; the ratio to PyTorch is reported.
Nothing fails on timing.
"""
from __future__ import annotations
import argparse, platform, sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Row, compare, fmt_time, torch   # noqa: E402  (torch is None when it is not installed)

import needle_nb as ndl   # noqa: E402
import needle_nb.nn as nn   # noqa: E402

TARGET_VS_NUMPY = 1.3


def layer_data(batch, c_in, c_out, size, kernel, seed=0):
    "Input (NCHW), needle-layout weight (K, K, C_in, C_out), bias and output gradient, float32."
    rs = np.random.RandomState(seed)
    x = rs.randn(batch, c_in, size, size).astype(np.float32)
    w = (rs.randn(kernel, kernel, c_in, c_out) / np.sqrt(c_in * kernel * kernel)).astype(np.float32)
    b = rs.randn(c_out).astype(np.float32)
    out_size = size + 2 * (kernel // 2) - kernel + 1
    g = rs.randn(batch, c_out, out_size, out_size).astype(np.float32)
    return x, w, b, g


def needle_fn(x, w, b, g):
    "needle_nb's layer: forward, then backward with the given output gradient."
    layer = nn.Conv(w.shape[2], w.shape[3], w.shape[0])
    layer.weight.data, layer.bias.data = ndl.Tensor(w.copy()), ndl.Tensor(b.copy())
    xt, gt = ndl.Tensor(x), ndl.Tensor(g, requires_grad=False)
    def step():
        out = layer(xt)
        out.backward(gt)
        return out.numpy(), xt.grad.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy()
    return step


def numpy_fn(x, w, b, g):
    """The same layer by hand in numpy (stride 1, padding K//2): im2col, matmul, col2im.

    The columns are taken in NHWC order, where each window row copies C contiguous floats (taking
    them straight from NCHW copies runs of K floats and measured ~25% slower here)."""
    N, C, H, W = x.shape
    K, _, _, C_out = w.shape
    p = K // 2
    w_rows = w.reshape(K * K * C, C_out)                      # rows ordered (u, v, c), as the columns
    def step():
        xp = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (p, p), (p, p), (0, 0)))   # (N, H+2p, W+2p, C)
        sN, sH, sW, sC = xp.strides
        H_out, W_out = H + 2 * p - K + 1, W + 2 * p - K + 1
        windows = np.lib.stride_tricks.as_strided(xp, (N, H_out, W_out, K, K, C), (sN, sH, sW, sH, sW, sC))
        cols = windows.reshape(N * H_out * W_out, K * K * C)
        out = (cols @ w_rows + b).reshape(N, H_out, W_out, C_out).transpose(0, 3, 1, 2)
        g_rows = g.transpose(0, 2, 3, 1).reshape(N * H_out * W_out, C_out)
        dw = (cols.T @ g_rows).reshape(K, K, C, C_out)
        db = g_rows.sum(axis=0)
        dcols = (g_rows @ w_rows.T).reshape(N, H_out, W_out, K, K, C)
        dxp = np.zeros_like(xp)
        for u in range(K):
            for v in range(K):
                dxp[:, u:u + H_out, v:v + W_out] += dcols[:, :, :, u, v]
        dx = dxp[:, p:p + H, p:p + W].transpose(0, 3, 1, 2)
        return out, dx, dw, db
    return step


def torch_fn(x, w, b, g):
    "PyTorch: conv2d forward, backward with the given output gradient (weight permuted to (C_out, C_in, K, K))."
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w.transpose(3, 2, 0, 1).copy(), requires_grad=True)
    bt, gt = torch.tensor(b, requires_grad=True), torch.tensor(g)
    def step():
        xt.grad = wt.grad = bt.grad = None
        out = torch.nn.functional.conv2d(xt, wt, bt, stride=1, padding=w.shape[0] // 2)
        out.backward(gt)
        return (out.detach().numpy(), xt.grad.numpy(), wt.grad.numpy().transpose(2, 3, 1, 0), bt.grad.numpy())
    return step


def check_agree(fns):
    "Every contender computes the same output and gradients (float32 tolerances)."
    results = {name: fn() for name, fn in fns.items()}
    reference = results["numpy (by hand)"]
    for name, result in results.items():
        for label, ours, theirs in zip(("output", "input grad", "weight grad", "bias grad"), result, reference):
            scale = max(1.0, float(np.abs(theirs).max()))
            if not np.allclose(ours, theirs, rtol=1e-3, atol=1e-3 * scale):
                raise AssertionError(f"{name}: {label} differs from numpy's by {np.abs(ours - theirs).max():.3g}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timings per contender (default 15; quick 3)")
    args = parser.parse_args(argv)
    shape = (4, 3, 4, 8, 3) if args.quick else (64, 16, 32, 32, 3)
    repeats = args.repeats or (3 if args.quick else 15)
    batch, c_in, c_out, size, kernel = shape
    data = layer_data(*shape)
    fns = {"numpy (by hand)": numpy_fn(*data), "needle_nb": needle_fn(*data)}
    if torch is not None:
        torch.set_num_threads(1)
        fns["PyTorch (1 thread)"] = torch_fn(*data)
    else: print("torch is not installed: skipping the PyTorch row")
    print(f"conv layer forward+backward: batch {batch}, {c_in}->{c_out} channels, {size}x{size}, K={kernel}, "
          f"stride 1, padding {kernel // 2}, float32; median of {repeats}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, torch {getattr(torch, '__version__', None)}")
    with threadpool_limits(1):
        check_agree(fns)
        results = compare({name: Row(fn, threads=1) for name, fn in fns.items()}, repeats, warmup=2)
    for name, r in results.items():
        print(f"  {name:22s} {fmt_time(r['median'])}   (min {fmt_time(r['min']).strip()}, max {fmt_time(r['max']).strip()})")
    ratios = {"needle_nb / numpy by hand": results["needle_nb"]["median"] / results["numpy (by hand)"]["median"]}
    if torch is not None:
        ratios["needle_nb / PyTorch (1 thread)"] = results["needle_nb"]["median"] / results["PyTorch (1 thread)"]["median"]
    for label, value in ratios.items():
        target = (f"  target ≤ {TARGET_VS_NUMPY}× ({'meets' if value <= TARGET_VS_NUMPY else 'misses'})"
                  if "numpy" in label else "")
        print(f"  ratio {label:32s} {value:6.2f}×{target}")
    return {"shape": shape, "results": results, "ratios": ratios}


if __name__ == "__main__":
    main(sys.argv[1:])
