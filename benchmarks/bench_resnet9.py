"""One ResNet9 training step (needle's CIFAR-10 network): needle_nb against PyTorch, one thread each.

    python benchmarks/bench_resnet9.py             # batch 128, 3x32x32 images, Adam: the issue-14 target
    python benchmarks/bench_resnet9.py --quick     # batch 4, two repeats: the smoke run the tests do
    python benchmarks/bench_resnet9.py --profile   # also: where needle_nb's step spends its time (cProfile)

A step is what `train_cifar10` does per batch: reset the gradients, forward, `SoftmaxLoss`, backward,
`Adam.step()` (lr 1e-3, weight decay 1e-3). Both networks start from the same weights (needle's
ResNet9, seeded, copied into the same network built from `torch.nn`) and see the same batch; before
timing, one step of each is checked to give the same loss. BLAS and PyTorch are pinned to one thread;
the contenders take turns (round-robin, `bench.compare`) and the table shows the median per step.
Target (issue 14): needle_nb ≤ 3.5× PyTorch. Nothing fails on timing.
"""
from __future__ import annotations
import argparse, cProfile, io, platform, pstats, sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Row, compare, fmt_time, torch   # noqa: E402  (torch is None when it is not installed)

import needle_nb as ndl   # noqa: E402
from needle_nb import nn, optim   # noqa: E402
from needle_nb.apps.models import ConvBN, ResNet9   # noqa: E402
from needle_nb.apps.simple_ml import batch_step   # noqa: E402

TARGET_VS_TORCH = 3.5


def needle_step(model, X, y):
    "needle_nb: one Adam step of `model` on the batch `(X, y)`; returns the loss."
    opt = optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)
    loss_fn = nn.SoftmaxLoss()
    Xt, yt = ndl.Tensor(X, requires_grad=False), ndl.Tensor(y, requires_grad=False)
    def step(): return batch_step(model, loss_fn, Xt, yt, opt)[1].item()
    return step


def torch_copy(model):
    """The same network in PyTorch, in `model`'s dtype (float32 or float64), `model`'s weights copied (conv
    kernels permuted to (C_out, C_in, K, K), linear weights transposed). The tests and bench_gpu.py use it too."""
    tnn = torch.nn
    dtype = torch.float64 if model.parameters()[0].dtype == np.float64 else torch.float32
    def convbn(block):
        conv = tnn.Conv2d(block.conv.in_channels, block.conv.out_channels, block.conv.kernel_size,
                          stride=block.conv.stride, padding=block.conv.kernel_size // 2, dtype=dtype)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor(block.conv.weight.numpy()).permute(3, 2, 0, 1))
            conv.bias.copy_(torch.tensor(block.conv.bias.numpy()))
        return tnn.Sequential(conv, tnn.BatchNorm2d(block.conv.out_channels, dtype=dtype), tnn.ReLU())
    class Residual(tnn.Module):
        def __init__(self, fn): super().__init__(); self.fn = fn
        def forward(self, x): return self.fn(x) + x
    layers = []
    for m in model.model.modules:
        if isinstance(m, ConvBN): layers.append(convbn(m))
        elif isinstance(m, nn.Residual): layers.append(Residual(tnn.Sequential(*[convbn(b) for b in m.fn.modules])))
        elif isinstance(m, nn.Flatten): layers.append(tnn.Flatten())
        elif isinstance(m, nn.ReLU): layers.append(tnn.ReLU())
        elif isinstance(m, nn.Linear):
            linear = tnn.Linear(*m.weight.shape, dtype=dtype)
            with torch.no_grad():
                linear.weight.copy_(torch.tensor(m.weight.numpy()).T)
                linear.bias.copy_(torch.tensor(m.bias.numpy()).reshape(-1))
            layers.append(linear)
    return tnn.Sequential(*layers)


def torch_step(model, X, y):
    "PyTorch: the same step (Adam with L2 weight decay added to the gradient, as needle's)."
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(Xt), yt)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def profile_needle(fn, steps=3, top=18):
    "cProfile of `steps` needle_nb steps: the functions with the largest own time."
    prof = cProfile.Profile()
    with threadpool_limits(1):
        prof.enable()
        for _ in range(steps): fn()
        prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 4 and two repeats (a smoke run)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 128; quick 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per contender (default 7; quick 2)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of needle_nb's step")
    args = parser.parse_args(argv)
    batch = args.batch or (4 if args.quick else 128)
    repeats = args.repeats or (2 if args.quick else 7)
    rs = np.random.RandomState(0)
    X, y = rs.rand(batch, 3, 32, 32).astype(np.float32), rs.randint(0, 10, batch)
    np.random.seed(0)
    model = ResNet9()
    fns = {}
    if torch is not None:
        torch.set_num_threads(1)
        fns["PyTorch (1 thread)"] = torch_step(torch_copy(model), X, y)
    else: print("torch is not installed: skipping the PyTorch row")
    fns["needle_nb"] = needle_step(model, X, y)
    print(f"ResNet9 training step (forward, SoftmaxLoss, backward, Adam): batch {batch}, 3x32x32, float32; "
          f"median of {repeats}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, torch {getattr(torch, '__version__', None)}")
    with threadpool_limits(1):
        if torch is not None:   # same weights, same batch: the first step's losses agree
            first = {name: fn() for name, fn in fns.items()}
            if not np.isclose(first["needle_nb"], first["PyTorch (1 thread)"], rtol=1e-4):
                raise AssertionError(f"first-step losses differ: {first}")
        results = compare({name: Row(fn, threads=1) for name, fn in fns.items()}, repeats, warmup=1)
    for name, r in results.items():
        print(f"  {name:22s} {fmt_time(r['median'])}   (min {fmt_time(r['min']).strip()}, max {fmt_time(r['max']).strip()})")
    ratios = {}
    if torch is not None:
        value = results["needle_nb"]["median"] / results["PyTorch (1 thread)"]["median"]
        ratios["needle_nb / PyTorch (1 thread)"] = value
        print(f"  ratio needle_nb / PyTorch (1 thread)   {value:6.2f}×  target ≤ {TARGET_VS_TORCH}× "
              f"({'meets' if value <= TARGET_VS_TORCH else 'misses'})")
    if args.profile: print(profile_needle(fns["needle_nb"]))
    return {"batch": batch, "results": results, "ratios": ratios}


if __name__ == "__main__":
    main(sys.argv[1:])
