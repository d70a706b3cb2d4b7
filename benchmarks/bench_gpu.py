"""needle_nb on the cuda device (cupy) against PyTorch CUDA, timed in the same run.

    python benchmarks/bench_gpu.py [--out results_gpu.json] [--profile profile.txt]

Needs cupy and a GPU (and PyTorch with CUDA for the reference rows); prints a line and exits 0
where there is none. TF32 is off on both sides (CUPY_TF32=0, torch's allow_tf32 flags False), so
both compute true float32 matrix products. Each figure is the median of timed steps after
warm-up, with the device synchronised before the clock is read; the contestants take turns.

Workloads (issue 18): an MLP training step at batch 4096, widths 4096-4096-4096-10 (target
<= 1.3x PyTorch), a small MLP step (batch 128, 784-256-128-10) that shows the per-op launch and
Python overhead, and a ResNet9 training step at batch 128 (target <= 4x; needle's ResNet9 from
`needle_nb.apps.models`, the same network built from torch.nn, cuDNN on).
"""
from __future__ import annotations
import argparse, cProfile, io, json, os, platform, pstats, statistics, sys, time

os.environ.setdefault("CUPY_TF32", "0")   # before cupy is imported: full float32 matmuls

import numpy as np

import needle_nb as ndl
import needle_nb.nn as nn
import needle_nb.optim as optim
from needle_nb.apps.simple_ml import batch_step

try:
    import torch
except ImportError:
    torch = None


def _sync_all():
    import cupy
    cupy.cuda.Device().synchronize()
    if torch is not None and torch.cuda.is_available(): torch.cuda.synchronize()


def compare(steps: dict, repeats: int, warmup: int) -> dict:
    "Median seconds per call of each step, round-robin, synchronised around each call."
    for fn in steps.values():
        for _ in range(warmup): fn()
        _sync_all()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            _sync_all()
            start = time.perf_counter()
            fn()
            _sync_all()
            times[name].append(time.perf_counter() - start)
    return {name: {"median": statistics.median(t), "min": min(t), "max": max(t)} for name, t in times.items()}


def needle_sgd_step(model, X, y, lr):
    "A function doing one SGD step of `model` on `(X, y)` with the softmax loss (needle's training step)."
    loss_fn, opt = nn.SoftmaxLoss(), optim.SGD(model.parameters(), lr=lr)
    def step(): return batch_step(model, loss_fn, X, y, opt)[1]
    return step


def torch_sgd_step(model, X, y, lr):
    "The same step in PyTorch."
    loss_fn, opt = torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=lr)
    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(X), y)
        loss.backward()
        opt.step()
        return loss
    return step


def needle_mlp_step(widths, batch, lr=0.01):
    "One SGD step of an MLP on the cuda device; data made once, on the device."
    device = ndl.cuda()
    np.random.seed(0)
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out, device=device))
        if i < len(widths) - 2: layers.append(nn.ReLU())
    rs = np.random.RandomState(1)
    X = ndl.Tensor(rs.randn(batch, widths[0]).astype(np.float32), device=device, requires_grad=False)
    y = ndl.Tensor(rs.randint(0, widths[-1], batch), device=device, requires_grad=False)
    return needle_sgd_step(nn.Sequential(*layers), X, y, lr)


def torch_mlp_step(widths, batch, lr=0.01):
    device = torch.device("cuda")
    torch.manual_seed(0)
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(torch.nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2: layers.append(torch.nn.ReLU())
    g = torch.Generator().manual_seed(1)
    X = torch.randn(batch, widths[0], generator=g).to(device)
    y = torch.randint(0, widths[-1], (batch,), generator=g).to(device)
    return torch_sgd_step(torch.nn.Sequential(*layers).to(device), X, y, lr)


def needle_resnet9_step(batch, lr=0.01):
    "One SGD step of needle's ResNet9 on CIFAR-shaped data (NCHW), on the cuda device."
    from needle_nb.apps.models import ResNet9
    device = ndl.cuda()
    np.random.seed(0)
    model = ResNet9(device=device)
    rs = np.random.RandomState(1)
    X = ndl.Tensor(rs.rand(batch, 3, 32, 32).astype(np.float32), device=device, requires_grad=False)
    y = ndl.Tensor(rs.randint(0, 10, batch), device=device, requires_grad=False)
    return needle_sgd_step(model, X, y, lr)


def torch_resnet9_step(batch, lr=0.01):
    "The same ResNet9 in torch.nn (bench_resnet9's `torch_copy`: needle's seeded weights copied), on the GPU."
    from needle_nb.apps.models import ResNet9
    from bench_resnet9 import torch_copy
    np.random.seed(0)
    model = torch_copy(ResNet9()).cuda()
    g = torch.Generator().manual_seed(1)
    X = torch.rand(batch, 3, 32, 32, generator=g).cuda()
    y = torch.randint(0, 10, (batch,), generator=g).cuda()
    return torch_sgd_step(model, X, y, lr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--profile", default=None, help="write a cProfile of needle_nb's big step here")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    if not ndl.cuda().enabled():
        print("bench_gpu: no usable cuda device here; nothing to time"); return 0
    import cupy
    have_torch = torch is not None and torch.cuda.is_available()
    if have_torch:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    props = cupy.cuda.runtime.getDeviceProperties(0)
    machine = {"gpu": props["name"].decode(), "cupy": cupy.__version__, "numpy": np.__version__,
               "torch": torch.__version__ if torch is not None else None, "python": platform.python_version(),
               "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(), "tf32": False}
    print("machine:", machine)
    results = {"machine": machine, "workloads": {}}
    workloads = {"mlp_big_step": ((4096, 4096, 4096, 10), 4096, 1.3),
                 "mlp_small_step": ((784, 256, 128, 10), 128, None)}
    for name, (widths, batch, target) in workloads.items():
        steps = {"needle_nb": needle_mlp_step(widths, batch)}
        if have_torch: steps["torch"] = torch_mlp_step(widths, batch)
        timing = compare(steps, repeats=args.repeats, warmup=5)
        row = {"widths": widths, "batch": batch, "target_ratio": target, "times": timing}
        if have_torch: row["ratio"] = timing["needle_nb"]["median"] / timing["torch"]["median"]
        results["workloads"][name] = row
        line = ", ".join(f"{k} {v['median'] * 1e3:.2f} ms" for k, v in timing.items())
        print(f"{name}: {line}" + (f"; ratio {row['ratio']:.2f}x" if have_torch else "")
              + (f" (target <= {target}x)" if target else ""), flush=True)
    try:
        import needle_nb.apps.models as models
        have_resnet9 = hasattr(models, "ResNet9")
    except ImportError:
        have_resnet9 = False
    if have_resnet9:
        steps = {"needle_nb": needle_resnet9_step(128)}
        if have_torch: steps["torch"] = torch_resnet9_step(128)
        timing = compare(steps, repeats=args.repeats, warmup=5)
        row = {"batch": 128, "target_ratio": 4.0, "times": timing}
        if have_torch: row["ratio"] = timing["needle_nb"]["median"] / timing["torch"]["median"]
        # what bounds it: the host's time to issue one step (the clock stops before the device finishes)
        issue = []
        for _ in range(10):
            _sync_all(); start = time.perf_counter(); steps["needle_nb"](); issue.append(time.perf_counter() - start)
        _sync_all()
        row["needle_nb_host_issue_median"] = statistics.median(issue)
        print(f"resnet9_step: needle_nb's host issues a step in {statistics.median(issue) * 1e3:.2f} ms "
              f"(the step takes {timing['needle_nb']['median'] * 1e3:.2f} ms synchronised)", flush=True)
        results["workloads"]["resnet9_step"] = row
        line = ", ".join(f"{k} {v['median'] * 1e3:.2f} ms" for k, v in timing.items())
        print(f"resnet9_step: {line}" + (f"; ratio {row['ratio']:.2f}x (target <= 4x)" if have_torch else ""), flush=True)
    else:
        print("resnet9_step: needle_nb.apps.models has no ResNet9 yet; skipped", flush=True)
    if args.profile:
        step = needle_resnet9_step(128) if have_resnet9 else needle_mlp_step(*workloads["mlp_big_step"][:2])
        for _ in range(3): step()
        _sync_all()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(5): step()
        _sync_all()
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
        with open(args.profile, "w") as f: f.write(text.getvalue())
    if args.out:
        with open(args.out, "w") as f: json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
