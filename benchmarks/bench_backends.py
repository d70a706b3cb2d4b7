"""The MLP big step (784-256-128-10, batch 128, SGD with momentum) on each array backend.

NEEDLE_BACKEND is read when needle_nb is imported, so each backend runs in its own process; the
ratio nd / np is the issue's speed target (≤ 3×). Both processes use one BLAS thread and are timed in
CPU time (`time.process_time`): this compares the backends, not thread scheduling, and stays meaningful
on a machine shared with other jobs, where wall-clock medians swing by 5× from run to run.

    python benchmarks/bench_backends.py            # 30 timed steps per backend
    python benchmarks/bench_backends.py --quick    # 5 steps (what a smoke test can afford)
"""
import json, os, subprocess, sys

TARGET = 3.0

STEP = r"""
import json, sys, time
import numpy as np
import needle_nb as ndl
from needle_nb import nn, optim
from needle_nb.apps.simple_ml import batch_step
steps = int(sys.argv[1])
np.random.seed(0)
model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
opt, loss_fn = optim.SGD(model.parameters(), lr=0.01, momentum=0.9), nn.SoftmaxLoss()
X = ndl.Tensor(np.random.rand(128, 784).astype(np.float32), requires_grad=False)
y = ndl.Tensor(np.random.randint(0, 10, 128), requires_grad=False)
assert type(X.cached_data).__name__ == ("NDArray" if ndl.BACKEND == "nd" else "ndarray")
def step(): return batch_step(model, loss_fn, X, y, opt)[1]
for _ in range(3): step()
times = []
for _ in range(steps):
    start = time.process_time(); step(); times.append(time.process_time() - start)
print(json.dumps({"backend": ndl.BACKEND, "median_s": float(np.median(times)), "loss": float(step().numpy())}))
"""


def run(backend: str, steps: int) -> dict:
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    env = dict(os.environ, NEEDLE_BACKEND=backend, **threads)
    out = subprocess.run([sys.executable, "-c", STEP, str(steps)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
    steps = 5 if "--quick" in argv else 30
    results = {b: run(b, steps) for b in ("np", "nd")}
    ratio = results["nd"]["median_s"] / results["np"]["median_s"]
    for b, r in results.items(): print(f"  {b}: {r['median_s'] * 1e3:7.2f} ms CPU time per step (loss after: {r['loss']:.4f})")
    print(f"  ratio nd / np: {ratio:.2f}×  target ≤ {TARGET}× ({'meets' if ratio <= TARGET else 'misses'})")
    return {"results": results, "ratio": ratio}


if __name__ == "__main__":
    main(sys.argv[1:])
