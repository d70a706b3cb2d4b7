"""needle_nb's benchmark suite: one command, ratios against references timed in the same run.

    python benchmarks/bench.py            # full run (a few minutes), writes benchmarks/results.json
    python benchmarks/bench.py --quick    # tiny sizes, seconds: what CI runs so the suite never rots

Every figure is the median of repeated timings after warm-up (min-max alongside). The frameworks
of one workload take turns (round-robin), so a load spike on a shared machine hits all of them
alike. BLAS is pinned to one thread (threadpoolctl) and PyTorch to one thread, so the ratios
compare the frameworks, not thread scheduling; the big step is also timed with both libraries at
their default threads (PyTorch's and numpy's BLAS). PyTorch rows are left out when torch is not installed. Nothing here fails on a
timing: targets are printed (and saved) next to the measured ratios.
"""
from __future__ import annotations
import argparse, gc, json, os, platform, resource, sys, time, tracemalloc
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

try:
    import torch
except ImportError:  # the suite still runs: the PyTorch rows are left out
    torch = None

import needle_nb as ndl
import needle_nb.autograd as autograd
import needle_nb.data as data
import needle_nb.init as init
import needle_nb.nn as nn
import needle_nb.optim as optim

HERE = Path(__file__).resolve().parent
TORCH_DEFAULT_THREADS = torch.get_num_threads() if torch is not None else None


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
class Row:
    """One contestant of a workload: `fn()` is timed; `threads` (PyTorch's) and `blas_threads`
    (numpy's BLAS, through threadpoolctl) are set around its turns, outside the timed region."""
    def __init__(self, fn, threads=None, blas_threads=1): self.fn, self.threads, self.blas_threads = fn, threads, blas_threads


def without_onednn(fn):
    """`fn` run with PyTorch's oneDNN (mkldnn) kernels switched off, or None where PyTorch has none.

    A reference row, not a contestant: on CPUs PyTorch runs convolutions and LSTMs through oneDNN's JIT-compiled,
    fused kernels; without them it takes its BLAS-based paths (im2col and gemm, one gemm per LSTM step), which
    are what a numpy framework can match. The ratio against this row says how much of a gap is oneDNN's."""
    if torch is None or not torch.backends.mkldnn.is_available(): return None
    import warnings
    def off():
        with warnings.catch_warnings():   # torch warns about TF32 on Intel GPUs each time the flags are set
            warnings.simplefilter("ignore")
            with torch.backends.mkldnn.flags(enabled=False): return fn()
    return off


def _set_torch_threads(n):
    if torch is not None and n is not None and torch.get_num_threads() != n: torch.set_num_threads(n)


def compare(rows: dict, repeats: int, number: int = 1, warmup: int = 3, lead: int = 0) -> dict:
    """Time every row round-robin: `repeats` turns each of `number` calls, after `warmup` calls.

    `lead`: untimed calls at the start of each turn. A multi-threaded row needs one: its thread pool went to
    sleep while the other rows ran, and waking it costs more than a step here, which no training loop (one
    library, step after step) pays.

    Returns name -> {"median", "min", "max"} seconds per call.
    """
    for row in rows.values():
        _set_torch_threads(row.threads or 1)
        with threadpool_limits(row.blas_threads):
            for _ in range(warmup): row.fn()
    times = {name: [] for name in rows}
    for _ in range(repeats):
        for name, row in rows.items():
            _set_torch_threads(row.threads or 1)
            fn = row.fn
            with threadpool_limits(row.blas_threads):
                for _ in range(lead): fn()
                start = time.perf_counter()
                for _ in range(number): fn()
                times[name].append((time.perf_counter() - start) / number)
    _set_torch_threads(1)
    return {name: {"median": float(np.median(t)), "min": float(np.min(t)), "max": float(np.max(t))}
            for name, t in times.items()}


# ----------------------------------------------------------------------------------------------
# MLP training steps: needle_nb, hand-written numpy, PyTorch (the same weights and data)
# ----------------------------------------------------------------------------------------------
def mlp_data(sizes, batch, seed=0):
    rs = np.random.RandomState(seed)
    X = rs.randn(batch, sizes[0]).astype(np.float32)
    y = rs.randint(0, sizes[-1], batch)
    weights = [(rs.randn(i, o) / np.sqrt(i)).astype(np.float32) for i, o in zip(sizes[:-1], sizes[1:])]
    biases = [np.zeros((1, o), np.float32) for o in sizes[1:]]
    return X, y, weights, biases


def needle_mlp(weights, biases):
    "An `nn.Sequential` of Linear/ReLU layers holding copies of `weights`, `biases` (needle layout)."
    layers = []
    for i, (W, b) in enumerate(zip(weights, biases)):
        lin = nn.Linear(*W.shape)
        lin.weight.data, lin.bias.data = W.copy(), b.copy()
        layers += [lin] + ([nn.ReLU()] if i < len(weights) - 1 else [])
    return nn.Sequential(*layers)


def needle_step_fn(sizes, batch, lr=0.01, momentum=0.9):
    "One needle_nb training step, written as a needle hw2 user writes it."
    X, y, weights, biases = mlp_data(sizes, batch)
    model, loss_fn = needle_mlp(weights, biases), nn.SoftmaxLoss()
    opt = optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    Xt, yt = ndl.Tensor(X, requires_grad=False), ndl.Tensor(y, requires_grad=False)
    def step():
        opt.reset_grad()
        loss = loss_fn(model(Xt), yt)
        loss.backward()
        opt.step()
        return loss
    step.model = model
    return step


def numpy_step_fn(sizes, batch, lr=0.01, momentum=0.9):
    "The same step written by hand in numpy: forward, backward and needle's SGD rule, float32 throughout."
    X, y, weights, biases = mlp_data(sizes, batch)
    params = weights + biases
    velocity = [None] * len(params)
    rows = np.arange(batch)
    def step():
        acts, h = [X], X
        for i, (W, b) in enumerate(zip(weights, biases)):
            h = h @ W + b
            if i < len(weights) - 1: h = np.maximum(h, 0)
            acts.append(h)
        shifted = h - h.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        loss = (np.log(total[:, 0]) - shifted[rows, y]).mean()
        g = exp / total
        g[rows, y] -= 1
        g /= batch
        grads_w, grads_b = [None] * len(weights), [None] * len(weights)
        for i in reversed(range(len(weights))):
            grads_w[i] = acts[i].T @ g
            grads_b[i] = g.sum(axis=0, keepdims=True)
            if i > 0: g = (g @ weights[i].T) * (acts[i] > 0)
        for k, (p, grad) in enumerate(zip(params, grads_w + grads_b)):
            v = velocity[k]
            if v is None: velocity[k] = v = (1 - momentum) * grad
            else:
                v *= momentum
                v += (1 - momentum) * grad
            p -= lr * v
        return loss
    return step


def torch_step_fn(sizes, batch, lr=0.01, momentum=0.9):
    "The same step in PyTorch eager mode (its Linear stores W transposed; `dampening` gives needle's rule)."
    X, y, weights, biases = mlp_data(sizes, batch)
    layers = []
    for i, (W, b) in enumerate(zip(weights, biases)):
        lin = torch.nn.Linear(*W.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T.copy())); lin.bias.copy_(torch.from_numpy(b[0]))
        layers += [lin] + ([torch.nn.ReLU()] if i < len(weights) - 1 else [])
    model = torch.nn.Sequential(*layers)
    # u = m u + (1 - dampening) g with dampening = m is needle's u = m u + (1 - m) g
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, dampening=momentum)
    # PyTorch's first step sets u = g; needle's starts from u = 0, which a zero buffer reproduces
    for p in model.parameters(): opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()
    def step():
        opt.zero_grad()
        loss = loss_fn(model(Xt), yt)
        loss.backward()
        opt.step()
        return loss
    return step


def bench_training_step(sizes, batch, repeats, number, default_threads=False):
    "Time the step at one thread each; with `default_threads`, also both libraries at their defaults."
    rows = {"numpy (by hand)": Row(numpy_step_fn(sizes, batch)), "needle_nb": Row(needle_step_fn(sizes, batch))}
    if torch is not None: rows["PyTorch (1 thread)"] = Row(torch_step_fn(sizes, batch), threads=1)
    results = compare(rows, repeats, number=number)
    if default_threads and torch is not None:
        # a separate round: multi-threaded BLAS workers spin after each call and would slow the
        # one-thread contestants timed right after them. Each turn is a block of consecutive steps after one
        # untimed step, as in a training loop: timed one call after the other library's (the previous
        # method), each step paid for waking its pool, 3.3-3.5 ms against minima of 1.4 ms (benchmarks/NOTES.md)
        results.update(compare({
            "needle_nb (default threads)": Row(needle_step_fn(sizes, batch), blas_threads=os.cpu_count()),
            "PyTorch (default threads)": Row(torch_step_fn(sizes, batch), threads=TORCH_DEFAULT_THREADS)},
            repeats, number=max(number, 10), lead=1))
    return results


def check_steps_agree(sizes=(16, 32, 2), batch=8, steps=3):
    "The three implementations compute the same losses: the comparison is of equal work."
    fns = [numpy_step_fn(list(sizes), batch), needle_step_fn(list(sizes), batch)]
    if torch is not None: fns.append(torch_step_fn(list(sizes), batch))
    losses = np.array([[float(f().item()) for _ in range(steps)] for f in fns])
    if not np.allclose(losses, losses[0], rtol=1e-4, atol=1e-5):
        raise AssertionError(f"the step implementations disagree: losses {losses.tolist()}")


# ----------------------------------------------------------------------------------------------
# One tracked elementwise op
# ----------------------------------------------------------------------------------------------
def bench_tracked_add(repeats, number):
    rs = np.random.RandomState(0)
    a_np, b_np = rs.rand(4, 4).astype(np.float32), rs.rand(4, 4).astype(np.float32)
    a, b = ndl.Tensor(a_np), ndl.Tensor(b_np)
    assert (a + b).op is not None            # really tracked
    rows = {"numpy (untracked)": Row(lambda: a_np + b_np), "needle_nb": Row(lambda: a + b)}
    if torch is not None:
        ta, tb = torch.tensor(a_np, requires_grad=True), torch.tensor(b_np, requires_grad=True)
        rows["PyTorch (1 thread)"] = Row(lambda: ta + tb, threads=1)
    return compare(rows, repeats, number=number, warmup=number)


# ----------------------------------------------------------------------------------------------
# Initializer sampling
# ----------------------------------------------------------------------------------------------
def bench_init(n, repeats):
    t = ndl.Tensor(np.zeros((n, n), np.float32), requires_grad=False)
    rows = {"needle_nb xavier_uniform_": Row(lambda: init.xavier_uniform_(t)),
            "needle_nb kaiming_normal_": Row(lambda: init.kaiming_normal_(t))}
    if torch is not None:
        tt = torch.empty(n, n)
        rows["PyTorch xavier_uniform_"] = Row(lambda: torch.nn.init.xavier_uniform_(tt), threads=1)
        rows["PyTorch kaiming_normal_"] = Row(lambda: torch.nn.init.kaiming_normal_(tt), threads=1)
    return compare(rows, repeats, warmup=1)


# ----------------------------------------------------------------------------------------------
# Memory across training steps
# ----------------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    "Peak resident memory of this process so far, in MB (Linux reports KB)."
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_memory(sizes, batch, steps, samples=10):
    """Train `steps` steps; sample the live tensor count and peak RSS, and count what only the cycle
    collector could free (0 means plain reference counting frees every step's graph)."""
    step = needle_step_fn(sizes, batch)
    for _ in range(10): step()
    gc.collect()
    collected = [0]
    def count_collected(phase, info):
        if phase == "stop": collected[0] += info["collected"]
    counts, rss = [], []
    gc.callbacks.append(count_collected)
    try:
        for i in range(steps):
            step()
            if i % max(1, steps // samples) == 0 or i == steps - 1:
                counts.append(autograd.TENSOR_COUNTER); rss.append(round(peak_rss_mb(), 1))
    finally:
        gc.callbacks.remove(count_collected)
    return {"steps": steps, "tensor_counts": counts, "peak_rss_mb": rss,
            "rss_growth_mb": round(rss[-1] - rss[0], 1), "tensor_count_spread": max(counts) - min(counts),
            "objects_freed_by_cycle_collector": collected[0]}


# ----------------------------------------------------------------------------------------------
# End to end: the digits MLP, 64-128-10, Adam
# ----------------------------------------------------------------------------------------------
def digits_split(seed=0):
    from sklearn.datasets import load_digits
    digits = load_digits()
    X, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
    order = np.random.RandomState(seed).permutation(len(X))
    cut = int(0.8 * len(X))
    return X[order[:cut]], y[order[:cut]], X[order[cut:]], y[order[cut:]]


def digits_needle(split, epochs, batch=32, lr=0.002):
    Xtr, ytr, Xte, yte = split
    ndl.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt, loss_fn = optim.Adam(model.parameters(), lr=lr), nn.SoftmaxLoss()
    loader = data.DataLoader(data.NDArrayDataset(Xtr, ytr), batch_size=batch, shuffle=True)
    for _ in range(epochs):
        for X, y in loader:
            opt.reset_grad()
            loss = loss_fn(model(X), y)
            loss.backward()
            opt.step()
    with ndl.no_grad():
        pred = model(ndl.Tensor(Xte, requires_grad=False)).numpy().argmax(1)
    return float((pred == yte).mean())


def digits_numpy(split, epochs, batch=32, lr=0.002, beta1=0.9, beta2=0.999, eps=1e-8):
    "The same training written by hand in numpy (forward, backward, Adam)."
    Xtr, ytr, Xte, yte = split
    rs = np.random.RandomState(0)
    params = [(rs.uniform(-1, 1, (64, 128)) * np.sqrt(6 / 64)).astype(np.float32), np.zeros((1, 128), np.float32),
              (rs.uniform(-1, 1, (128, 10)) * np.sqrt(6 / 128)).astype(np.float32), np.zeros((1, 10), np.float32)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    n, t = len(Xtr), 0
    for _ in range(epochs):
        order = np.random.permutation(n)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            X, y = Xtr[idx], ytr[idx]
            W1, b1, W2, b2 = params
            h = np.maximum(X @ W1 + b1, 0)
            z = h @ W2 + b2
            e = np.exp(z - z.max(axis=1, keepdims=True))
            g = e / e.sum(axis=1, keepdims=True)
            g[np.arange(len(y)), y] -= 1
            g /= len(y)
            gh = (g @ W2.T) * (h > 0)
            grads = [X.T @ gh, gh.sum(0, keepdims=True), h.T @ g, g.sum(0, keepdims=True)]
            t += 1
            for k, grad in enumerate(grads):
                m[k] *= beta1; m[k] += (1 - beta1) * grad
                v[k] *= beta2; v[k] += (1 - beta2) * grad * grad
                params[k] -= lr * (m[k] / (1 - beta1 ** t)) / (np.sqrt(v[k] / (1 - beta2 ** t)) + eps)
    W1, b1, W2, b2 = params
    pred = (np.maximum(Xte @ W1 + b1, 0) @ W2 + b2).argmax(1)
    return float((pred == yte).mean())


def digits_torch(split, epochs, batch=32, lr=0.002):
    Xtr, ytr, Xte, yte = split
    torch.manual_seed(0); np.random.seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt, loss_fn = torch.optim.Adam(model.parameters(), lr=lr), torch.nn.CrossEntropyLoss()
    Xtr_t, ytr_t = torch.from_numpy(Xtr), torch.from_numpy(ytr)
    n = len(Xtr)
    for _ in range(epochs):
        order = torch.from_numpy(np.random.permutation(n))
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            opt.zero_grad()
            loss = loss_fn(model(Xtr_t[idx]), ytr_t[idx])
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = model(torch.from_numpy(Xte)).argmax(1).numpy()
    return float((pred == yte).mean())


def bench_digits(epochs, repeats):
    split = digits_split()
    runs = {"numpy (by hand)": digits_numpy, "needle_nb": digits_needle}
    if torch is not None: runs["PyTorch (1 thread)"] = digits_torch
    accuracy = {name: fn(split, epochs) for name, fn in runs.items()}
    timings = compare({name: Row(lambda fn=fn: fn(split, epochs), threads=1) for name, fn in runs.items()},
                      repeats, warmup=0)
    return timings, accuracy


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def ratio_entry(label, results, num, den, target):
    value = results[num]["median"] / results[den]["median"] if num in results and den in results else None
    return {"label": label, "value": value, "target": target,
            "meets": None if value is None or target is None else bool(value <= target)}


def fmt_time(s):
    return f"{s * 1e6:8.1f} µs" if s < 1e-3 else f"{s * 1e3:8.2f} ms" if s < 1 else f"{s:8.2f} s "


def print_workload(w):
    print(f"\n## {w['title']}")
    for name, r in w["results"].items():
        print(f"  {name:28s} {fmt_time(r['median'])}   (min {fmt_time(r['min']).strip()}, "
              f"max {fmt_time(r['max']).strip()})")
    for r in w["ratios"]:
        if r["value"] is None: continue
        target = f"target ≤ {r['target']}×  ({'meets' if r['meets'] else 'misses'})" if r["target"] else ""
        print(f"  ratio {r['label']:38s} {r['value']:6.2f}×  {target}")


def blas_info():
    "What threadpoolctl sees: BLAS library, kernel (e.g. OpenBLAS core type) and threads."
    keep = ("internal_api", "prefix", "version", "architecture", "num_threads", "threading_layer")
    return [{k: lib.get(k) for k in keep if lib.get(k) is not None} for lib in threadpool_info()]


def machine_info(quick):
    env = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS") or k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {"python": platform.python_version(), "numpy": np.__version__, "needle_nb": ndl.__version__,
            "torch": getattr(torch, "__version__", None), "torch_default_threads": TORCH_DEFAULT_THREADS,
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
            "load_average": list(os.getloadavg()), "blas": blas_info(), "blas_env": env, "quick": quick,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (CI smoke run)")
    parser.add_argument("--json", default=None,
                        help="where to write the results (default: benchmarks/results.json; with --quick: nowhere)")
    parser.add_argument("--only", default=None, help="comma-separated workloads to run (default: all)")
    args = parser.parse_args(argv)
    q = args.quick
    only = set(args.only.split(",")) if args.only else None
    wanted = lambda name: only is None or name in only
    if torch is not None: torch.set_num_threads(1)
    report = {"machine": machine_info(q), "workloads": {}}
    print(f"needle_nb {ndl.__version__}, numpy {np.__version__}, torch {report['machine']['torch']}, "
          f"python {platform.python_version()}, {os.cpu_count()} cpus, load {report['machine']['load_average'][0]:.2f}")
    for lib in report["machine"]["blas"]:
        print(f"  {lib.get('internal_api')} {lib.get('version')} kernel {lib.get('architecture')} ({lib.get('prefix')})")
    if report["machine"]["blas_env"]: print(f"  environment: {report['machine']['blas_env']}")
    workloads = report["workloads"]
    check_steps_agree()
    with threadpool_limits(1):
        if wanted("big_step"):
            res = bench_training_step([784, 256, 128, 10], 8 if q else 128, repeats=3 if q else 40, number=1,
                                      default_threads=True)
            workloads["big_step"] = {"title": f"MLP 784-256-128-10, batch {8 if q else 128}, one SGD-momentum step",
                                     "results": res, "ratios": [
                ratio_entry("needle_nb / numpy by hand", res, "needle_nb", "numpy (by hand)", 1.15),
                ratio_entry("needle_nb / PyTorch (1 thread)", res, "needle_nb", "PyTorch (1 thread)", 1.0),
                ratio_entry("needle_nb / PyTorch, both at default threads", res, "needle_nb (default threads)",
                            "PyTorch (default threads)", 1.0)]}
        if wanted("tiny_step"):
            res = bench_training_step([16, 32, 2], 8, repeats=3 if q else 25, number=10 if q else 200)
            workloads["tiny_step"] = {"title": "MLP 16-32-2, batch 8, one SGD-momentum step", "results": res, "ratios": [
                ratio_entry("needle_nb / PyTorch (1 thread)", res, "needle_nb", "PyTorch (1 thread)", 0.7),
                ratio_entry("needle_nb / numpy by hand", res, "needle_nb", "numpy (by hand)", None)]}
        if wanted("tracked_add"):
            res = bench_tracked_add(repeats=3 if q else 25, number=200 if q else 20000)
            workloads["tracked_add"] = {"title": "one tracked 4×4 float32 add", "results": res, "ratios": [
                ratio_entry("needle_nb / PyTorch (1 thread)", res, "needle_nb", "PyTorch (1 thread)", 1.0),
                ratio_entry("needle_nb / numpy (untracked)", res, "needle_nb", "numpy (untracked)", None)]}
        if wanted("init"):
            n = 256 if q else 4096
            res = bench_init(n, repeats=3 if q else 15)
            workloads["init"] = {"title": f"initializer sampling, {n}×{n} float32", "results": res, "ratios": [
                ratio_entry("xavier_uniform_ needle_nb / PyTorch", res, "needle_nb xavier_uniform_", "PyTorch xavier_uniform_", 1.1),
                ratio_entry("kaiming_normal_ needle_nb / PyTorch", res, "needle_nb kaiming_normal_", "PyTorch kaiming_normal_", 1.5)]}
        if wanted("digits"):
            epochs = 1 if q else 20
            res, acc = bench_digits(epochs=epochs, repeats=1 if q else 5)
            workloads["digits"] = {"title": f"digits MLP 64-128-10, Adam, {epochs} epochs (wall time)",
                                   "results": res, "accuracy": acc, "ratios": [
                ratio_entry("needle_nb / PyTorch (1 thread)", res, "needle_nb", "PyTorch (1 thread)", 0.5),
                ratio_entry("needle_nb / numpy by hand", res, "needle_nb", "numpy (by hand)", None)]}
        for name in ("big_step", "tiny_step", "tracked_add", "init", "digits"):
            if name in workloads: print_workload(workloads[name])
        if "digits" in workloads:
            acc = workloads["digits"]["accuracy"]
            print("  test accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()) + "  (target ≥ 0.95)")
        if wanted("memory"):
            mem = bench_memory([784, 256, 128, 10], 8 if q else 128, steps=30 if q else 1000)
            workloads["memory"] = mem
            print(f"\n## memory across {mem['steps']} training steps (MLP 784-256-128-10)")
            print(f"  TENSOR_COUNTER samples: {mem['tensor_counts']}")
            print(f"  peak RSS (MB) samples:  {mem['peak_rss_mb']}")
            print(f"  objects freed only by the cycle collector: {mem['objects_freed_by_cycle_collector']}")
    out = args.json or (None if q else str(HERE / "results.json"))
    if out:
        Path(out).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main()
