"""Speed of the in-place initializers against torch.nn.init on a 4096x4096 float32 weight.

Run: python benchmarks/bench_init.py. torch uses one thread (numpy's ufuncs are single-threaded too).
Targets (issue: initializers): xavier_uniform_ <= 1.1x torch, kaiming_normal_ <= 1.5x torch.
Unlike torch, which writes into the tensor's storage, needle_nb allocates a fresh array each call
(its in-place rule: arrays are replaced, never written into), so the ratios include that allocation.
"""
import time

import numpy as np

import needle_nb.init as init
from needle_nb.autograd import Tensor


def best_of(fn, repeat=9):
    "The fastest of `repeat` runs, in seconds (the least disturbed by other processes)."
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(size=4096):
    import torch
    torch.set_num_threads(1)
    ours = Tensor(np.zeros((size, size), dtype=np.float32))
    theirs = torch.empty(size, size)
    cases = [("xavier_uniform_", init.xavier_uniform_, torch.nn.init.xavier_uniform_, 1.1),
             ("kaiming_normal_", init.kaiming_normal_, torch.nn.init.kaiming_normal_, 1.5),
             ("normal_", init.normal_, torch.nn.init.normal_, None),
             ("uniform_", init.uniform_, torch.nn.init.uniform_, None)]
    print(f"{size}x{size} float32, best of 9")
    for name, ours_fn, torch_fn, target in cases:
        t_ours, t_torch = best_of(lambda: ours_fn(ours)), best_of(lambda: torch_fn(theirs))
        goal = f"(target <= {target}x)" if target else ""
        print(f"{name:16s} needle_nb {t_ours * 1e3:6.1f} ms  torch {t_torch * 1e3:6.1f} ms  "
              f"ratio {t_ours / t_torch:4.2f}x {goal}")


if __name__ == "__main__":
    main()
