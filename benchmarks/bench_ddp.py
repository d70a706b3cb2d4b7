"""DistributedDataParallel in a world of one, against plain training (issue #24: within 5%).

Without `init_process_group` (or under `mpiexec -n 1`) DDP communicates nothing, but it still runs:
one post-accumulate-grad hook per parameter (which makes autograd count each leaf's uses), its
forward wrapper, and bucket bookkeeping. This script times one SGD-momentum training step of

- an MLP 784-256-128-10, batch 128 (the suite's `big_step`), and
- a small conv net (Conv-BN-ReLU ×2, Linear), batch 32, 3×32×32 (a ResNet9-like first stage),

plain and wrapped, taking turns (round-robin, medians of `--repeats`), and prints the ratio
DDP / plain for each, with the 1.05 target. Both run the same steps on the same data and start from
the same weights; the script checks that they end with the same parameters, bit for bit.
A measurement, not a test: nothing fails on timing.

    python benchmarks/bench_ddp.py            # ~20 s
    python benchmarks/bench_ddp.py --quick    # tiny sizes, a CI-sized smoke run
"""
import argparse, statistics, time

import numpy as np

import needle_nb as ndl
from needle_nb import nn, optim
from needle_nb import distributed as dist


def mlp():
    np.random.seed(0)
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


def conv_net():
    np.random.seed(0)
    return nn.Sequential(nn.Conv(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv(16, 32, 3, stride=2),
                         nn.BatchNorm2d(32), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16 * 16, 10))


def stepper(model, X, y):
    "One SGD-momentum step on (X, y), as a zero-argument function."
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.SoftmaxLoss()
    def step():
        opt.reset_grad()
        loss_fn(model(X), y).backward(create_graph=False)
        opt.step()
    return step


def workloads(quick: bool):
    rs = np.random.RandomState(0)
    b_mlp, b_conv = (16, 4) if quick else (128, 32)
    Xm = ndl.Tensor(rs.rand(b_mlp, 784).astype("float32"), requires_grad=False)
    ym = ndl.Tensor(rs.randint(0, 10, b_mlp), requires_grad=False)
    Xc = ndl.Tensor(rs.rand(b_conv, 3, 32, 32).astype("float32"), requires_grad=False)
    yc = ndl.Tensor(rs.randint(0, 10, b_conv), requires_grad=False)
    return [("MLP 784-256-128-10, batch %d" % b_mlp, mlp, Xm, ym), ("conv net, batch %d, 3x32x32" % b_conv, conv_net, Xc, yc)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke run)")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 31)
    assert dist.get_world_size() == 1, "run this in one process (world size 1)"
    print(f"DDP at world size 1 vs plain training; medians of {repeats} steps, taking turns\n")
    print(f"{'workload':34s} {'plain':>10s} {'DDP':>10s} {'DDP/plain':>10s}  target")
    ratios = {}
    for name, make, X, y in workloads(args.quick):
        plain_model, ddp = make(), dist.DistributedDataParallel(make())
        steps = {"plain": stepper(plain_model, X, y), "DDP": stepper(ddp, X, y)}
        times = {k: [] for k in steps}
        for s in steps.values(): s()   # warm-up (same number of steps for both: they stay equal)
        for _ in range(repeats):
            for k, s in steps.items():
                start = time.perf_counter(); s(); times[k].append(time.perf_counter() - start)
        for p, q in zip(plain_model.parameters(), ddp.module.parameters()):
            assert np.array_equal(p.numpy(), q.numpy()), "DDP at world size 1 changed the training"
        med = {k: statistics.median(v) for k, v in times.items()}
        ratios[name] = med["DDP"] / med["plain"]
        print(f"{name:34s} {med['plain'] * 1e3:8.2f}ms {med['DDP'] * 1e3:8.2f}ms {ratios[name]:10.3f}  <= 1.05"
              f" {'meets' if ratios[name] <= 1.05 else 'MISSES'}")
    return ratios


if __name__ == "__main__":
    main()
