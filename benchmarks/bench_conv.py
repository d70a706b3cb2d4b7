"""Convolutions, forward and backward: needle_nb against PyTorch (and numpy by hand), at 1 and 2 threads.

    python benchmarks/bench_conv.py            # the issue-27 workloads, medians of 9, 1 and 2 threads
    python benchmarks/bench_conv.py --quick    # tiny sizes, 1 thread, about a second: what the tests run

Workloads (float32, NCHW, the same input, weights and output gradient for every contender):
- `nn.Conv(16, 32, 3)`, batch 64, 32x32, the input requiring a gradient: `out = layer(x)`, `out.backward(G)`
  computes the input's, the weight's and the bias's gradients; also timed against the same layer written
  by hand in numpy (im2col `as_strided` view, one matmul; backward `dW = colsᵀ G`, `db = Σ G`,
  `dx = col2im(G Wᵀ)`), the issue-14 reference;
- `nn.Conv(3, 16, 7, stride=4)` (ResNet9's first layer), batch 128, 32x32, with the input's gradient;
- the ResNet9 SGD step (lr 0.01), batch 128, 3x32x32 images without gradient: `apps.simple_ml.batch_step`
  against the same network in `torch.nn` (`bench_resnet9.torch_copy`), and, as a reference row that is no
  target, against PyTorch with its oneDNN kernels off (`bench.without_onednn`: its im2col-and-gemm path).

Each workload runs at 1 thread (`torch.set_num_threads(1)`, numpy's BLAS pinned by threadpoolctl) and at 2
(both set to 2, with one untimed call before each timed one so a sleeping thread pool is not what is timed).
The contenders take turns in the same process (`bench.compare`, round-robin) and the table shows medians of
9 (quick: 3) and the ratio needle_nb / PyTorch; only ratios mean anything on a shared machine. Before timing,
the contenders are checked to compute the same output and gradients. Nothing fails on timing.
Targets (issue 27): both convolutions ≤ 2.0× PyTorch, the ResNet9 step ≤ 1.0×.
"""
from __future__ import annotations
import argparse, os, platform, sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Row, compare, fmt_time, torch, without_onednn   # noqa: E402  (torch is None when it is not installed)

import needle_nb as ndl   # noqa: E402
import needle_nb.nn as nn   # noqa: E402

TARGET_VS_NUMPY = 1.3
TARGETS = {"conv 16->32 K3": 2.0, "conv 3->16 K7 s4": 2.0, "ResNet9 SGD step": 1.0}


def layer_data(batch, c_in, c_out, size, kernel, seed=0, stride=1):
    "Input (NCHW), needle-layout weight (K, K, C_in, C_out), bias and output gradient, float32."
    rs = np.random.RandomState(seed)
    x = rs.randn(batch, c_in, size, size).astype(np.float32)
    w = (rs.randn(kernel, kernel, c_in, c_out) / np.sqrt(c_in * kernel * kernel)).astype(np.float32)
    b = rs.randn(c_out).astype(np.float32)
    out_size = (size + 2 * (kernel // 2) - kernel) // stride + 1
    g = rs.randn(batch, c_out, out_size, out_size).astype(np.float32)
    return x, w, b, g


def _stride(x, g):
    "The stride that takes the input's size to the output gradient's (padding K // 2)."
    return 1 if x.shape[2] == g.shape[2] else -(-x.shape[2] // g.shape[2])


def needle_fn(x, w, b, g):
    "needle_nb's layer: forward, then backward with the given output gradient."
    layer = nn.Conv(w.shape[2], w.shape[3], w.shape[0], stride=_stride(x, g))
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
        out = torch.nn.functional.conv2d(xt, wt, bt, stride=_stride(x, g), padding=w.shape[0] // 2)
        out.backward(gt)
        return (out.detach().numpy(), xt.grad.numpy(), wt.grad.numpy().transpose(2, 3, 1, 0), bt.grad.numpy())
    return step


def check_agree(fns):
    "Every contender computes the same output and gradients (float32 tolerances)."
    results = {name: fn() for name, fn in fns.items()}
    reference = results.get("numpy (by hand)", next(iter(results.values())))
    for name, result in results.items():
        for label, ours, theirs in zip(("output", "input grad", "weight grad", "bias grad"), result, reference):
            scale = max(1.0, float(np.abs(theirs).max()))
            if not np.allclose(ours, theirs, rtol=1e-3, atol=1e-3 * scale):
                raise AssertionError(f"{name}: {label} differs from the reference by {np.abs(ours - theirs).max():.3g}")


def resnet9_sgd_fns(batch, lr=0.01):
    "The ResNet9 SGD step, needle_nb and PyTorch, on the same weights and batch; checked to give the same first loss."
    from bench_resnet9 import torch_copy
    from needle_nb import optim
    from needle_nb.apps.models import ResNet9
    from needle_nb.apps.simple_ml import batch_step
    rs = np.random.RandomState(0)
    X, y = rs.rand(batch, 3, 32, 32).astype(np.float32), rs.randint(0, 10, batch)
    np.random.seed(0)
    model = ResNet9()
    def torch_step_fn():   # a copy of the weights and an optimizer of its own per PyTorch row
        reference = torch_copy(model)
        opt_t = torch.optim.SGD(reference.parameters(), lr=lr)
        Xt, yt = torch.tensor(X), torch.tensor(y)
        def torch_step():
            opt_t.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(reference(Xt), yt)
            loss.backward()
            opt_t.step()
            return loss.item()
        return torch_step
    fns = {}
    if torch is not None:
        fns["PyTorch"] = torch_step_fn()
        off = without_onednn(torch_step_fn())   # the reference row: PyTorch on its BLAS paths
        if off is not None: fns["PyTorch, oneDNN off"] = off
    opt, loss_fn = optim.SGD(model.parameters(), lr=lr), nn.SoftmaxLoss()
    Xn, yn = ndl.Tensor(X, requires_grad=False), ndl.Tensor(y, requires_grad=False)
    fns["needle_nb"] = lambda: batch_step(model, loss_fn, Xn, yn, opt)[1].item()
    with threadpool_limits(1):
        first = {name: fn() for name, fn in fns.items()}
    for name in fns:
        if name != "needle_nb" and not np.isclose(first["needle_nb"], first[name], rtol=1e-4):
            raise AssertionError(f"ResNet9: first-step losses differ: {first}")
    return fns


def workloads(quick: bool) -> dict:
    "name -> (description, {contender: fn}), every contender already checked against the others."
    conv = {"conv 16->32 K3": ("nn.Conv(16, 32, 3), batch 64, 32x32, fwd+bwd with the input's gradient",
                               (64, 16, 32, 32, 3, 1), (4, 3, 4, 8, 3, 1)),
            "conv 3->16 K7 s4": ("nn.Conv(3, 16, 7, stride=4), batch 128, 32x32, fwd+bwd with the input's gradient",
                                 (128, 3, 16, 32, 7, 4), (4, 3, 4, 16, 7, 4))}
    out = {}
    for name, (text, full, small) in conv.items():
        batch, c_in, c_out, size, kernel, stride = small if quick else full
        data = layer_data(batch, c_in, c_out, size, kernel, stride=stride)
        fns = {"needle_nb": needle_fn(*data)}
        if stride == 1: fns["numpy (by hand)"] = numpy_fn(*data)
        if torch is not None: fns["PyTorch"] = torch_fn(*data)
        with threadpool_limits(1): check_agree(fns)
        out[name] = (text if not quick else f"{name}, batch {batch}, {size}x{size} (quick)", fns)
    batch = 4 if quick else 128
    out["ResNet9 SGD step"] = (f"ResNet9 SGD step (lr 0.01), batch {batch}, 3x32x32, images without gradient",
                               resnet9_sgd_fns(batch))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 thread, few repeats (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timings per contender (default 9; quick 3)")
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default 1 2; quick 1)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)
    thread_counts = args.threads or ([1] if args.quick else [1, 2])
    if torch is None: print("torch is not installed: skipping the PyTorch row")
    print(f"python {platform.python_version()}, numpy {np.__version__}, torch {getattr(torch, '__version__', None)}, "
          f"{os.cpu_count()} CPUs; float32; medians of {repeats}, contenders taking turns")
    report = {"workloads": {}, "repeats": repeats}
    for name, (text, fns) in workloads(args.quick).items():
        print(f"{text}")
        entry = report["workloads"][name] = {}
        for threads in thread_counts:
            rows = {label: Row(fn, threads=threads, blas_threads=threads) for label, fn in fns.items()}
            results = compare(rows, repeats, warmup=2, lead=1 if threads > 1 else 0)
            ratios = {}
            if "PyTorch" in results: ratios["needle_nb / PyTorch"] = results["needle_nb"]["median"] / results["PyTorch"]["median"]
            if "PyTorch, oneDNN off" in results:   # a reference, not a target
                ratios["needle_nb / PyTorch without oneDNN"] = (results["needle_nb"]["median"]
                                                                / results["PyTorch, oneDNN off"]["median"])
            if "numpy (by hand)" in results:
                ratios["needle_nb / numpy by hand"] = results["needle_nb"]["median"] / results["numpy (by hand)"]["median"]
            entry[threads] = {"results": results, "ratios": ratios}
            cells = "   ".join(f"{label} {fmt_time(r['median']).strip()}" for label, r in results.items())
            shown = "   ".join(f"ratio {label} {value:5.2f}×" for label, value in ratios.items())
            target = TARGETS[name]
            verdict = (f"  (target ≤ {target}×: {'meets' if ratios['needle_nb / PyTorch'] <= target else 'misses'})"
                       if "needle_nb / PyTorch" in ratios else "")
            print(f"  {threads} thread{'s' if threads > 1 else ' '}: {cells}   {shown}{verdict}")
    # the first workload at one thread, in the form the issue-14 report had (the tests read it)
    first = report["workloads"]["conv 16->32 K3"][thread_counts[0]]
    report["results"] = {("PyTorch (1 thread)" if label == "PyTorch" else label): r for label, r in first["results"].items()}
    report["ratios"] = {("needle_nb / PyTorch (1 thread)" if label == "needle_nb / PyTorch" else label): v
                        for label, v in first["ratios"].items()}
    print(f"  ratio needle_nb / numpy by hand (conv 16->32, {thread_counts[0]} thread) "
          f"{report['ratios']['needle_nb / numpy by hand']:.2f}×  target ≤ {TARGET_VS_NUMPY}×")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
