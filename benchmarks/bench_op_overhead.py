"""Per-op overhead: one tracked elementwise add on 4x4 float32 tensors.

At this size the arithmetic is nothing; what is timed is the framework's bookkeeping around it
(building the output tensor, recording the graph node, freeing it again). Compared in one run:

- numpy: `a + b` on plain arrays, untracked: the floor any numpy-backed framework pays;
- needle_nb: `a + b` on tensors with `requires_grad=True` (the graph is recorded), the same under
  `ndl.autograd.detect_anomaly()` (every output checked for NaN/inf, its creating line recorded: what
  the anomaly mode costs when on; when off it is one flag read per op, the plain tracked row), and the
  same add with nothing requiring a gradient (no graph), to show what recording costs;
- PyTorch on the CPU with one thread, `requires_grad=True` (skipped when torch is not installed).

Each framework runs `--number` adds per timing and is timed `--repeats` times after a warm-up,
the frameworks taking turns; the table shows the median and the min-max per add, and ratios to
numpy and to PyTorch from this same run.
This is a measurement, not a test: nothing fails on timing.

    python benchmarks/bench_op_overhead.py           # a few seconds
    python benchmarks/bench_op_overhead.py --quick   # a CI-sized smoke run, well under a second
"""
import argparse, platform, statistics, sys, time

import numpy as np

import needle_nb as ndl


def time_per_call(fn, number: int) -> float:
    "Seconds per call of `fn()`, over `number` calls."
    start = time.perf_counter()
    for _ in range(number): fn()
    return (time.perf_counter() - start) / number


def candidates(shape=(4, 4)):
    "(name, zero-argument function doing one add) for every framework available here."
    rs = np.random.RandomState(0)
    a_np, b_np = rs.rand(*shape).astype(np.float32), rs.rand(*shape).astype(np.float32)
    out = [("numpy (untracked)", lambda: a_np + b_np)]

    a, b = ndl.Tensor(a_np, requires_grad=True), ndl.Tensor(b_np, requires_grad=True)
    assert (a + b).op is not None and (a + b).dtype == np.float32      # really tracked, really float32
    out.append(("needle_nb (tracked)", lambda: a + b))
    def anomaly_add(anomaly=ndl.autograd.detect_anomaly()):
        with anomaly: return a + b
    out.append(("needle_nb (tracked, detect_anomaly on)", anomaly_add))   # off is the row above: one flag read
    a_const, b_const = ndl.Tensor(a_np, requires_grad=False), ndl.Tensor(b_np, requires_grad=False)
    assert (a_const + b_const).op is None
    out.append(("needle_nb (untracked)", lambda: a_const + b_const))

    try:
        import torch
    except ImportError:
        print("torch is not installed: skipping the PyTorch column")
    else:
        torch.set_num_threads(1)
        a_t = torch.tensor(a_np, requires_grad=True)
        b_t = torch.tensor(b_np, requires_grad=True)
        assert (a_t + b_t).grad_fn is not None
        out.append((f"torch {torch.__version__} (tracked, 1 thread)", lambda: a_t + b_t))
    return out


def run(number: int, repeats: int, warmup: int) -> list:
    "Time every candidate; returns rows (name, median, min, max) in seconds per add."
    named = candidates()
    for _, fn in named:
        for _ in range(warmup): fn()
    timings = {name: [] for name, _ in named}
    # round-robin: a load spike on this (shared) machine hits every framework, not just one
    for _ in range(repeats):
        for name, fn in named: timings[name].append(time_per_call(fn, number))
    return [(name, statistics.median(t), min(t), max(t)) for name, t in timings.items()]


def format_table(rows) -> str:
    medians = {name: median for name, median, _, _ in rows}
    numpy_median = medians["numpy (untracked)"]
    torch_median = next((m for name, m in medians.items() if name.startswith("torch")), None)
    header = f"{'framework':<40} {'median µs/add':>13} {'min-max µs/add':>16} {'x numpy':>8} {'x torch':>8}"
    lines = [header, "-" * len(header)]
    for name, median, low, high in rows:
        vs_torch = f"{median / torch_median:8.2f}" if torch_median else f"{'-':>8}"
        lines.append(f"{name:<40} {median * 1e6:13.2f} {f'{low * 1e6:.2f}-{high * 1e6:.2f}':>16} "
                     f"{median / numpy_median:8.2f} {vs_torch}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny CI-size run (numbers are noisy)")
    parser.add_argument("--number", type=int, default=None, help="adds per timing (default 20000; quick 200)")
    parser.add_argument("--repeats", type=int, default=None, help="timings per framework (default 15; quick 3)")
    args = parser.parse_args(argv)
    number = args.number or (200 if args.quick else 20_000)
    repeats = args.repeats or (3 if args.quick else 15)
    warmup = number // 10 + 10

    print(f"one tracked elementwise add, 4x4 float32: median of {repeats} timings of {number} adds each")
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
          f"{platform.system()}{' (quick run: noisy)' if args.quick else ''}")
    print()
    rows = run(number, repeats, warmup)
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
