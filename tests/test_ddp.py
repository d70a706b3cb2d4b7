"""DistributedDataParallel across processes (nbs/05b_distributed.ipynb, issue #24).

The data-parallel argument, checked: N ranks, each with its own b examples of a batch, take the same
steps as one process with the whole batch of N·b (float64, to 1e-10 relative), for SGD with momentum
and weight decay and for Adam, for an MLP and for a conv net whose BatchNorm2d becomes SyncBatchNorm.
After every step the parameters are equal *bit for bit* on every rank (all ranks apply the same
averaged gradient to the same start). Each launch goes through `run_mpi`, whose timeout kills every
rank, so no test can hang; the fixtures are tests/test_distributed.py's.
"""
import time

import numpy as np
import pytest

import needle_nb as ndl
from needle_nb import nn, optim
from needle_nb import distributed as dist

from test_distributed import mpirun, assert_ok  # noqa: F401 (mpirun is a fixture)

# Each script defines `make()` (the model, the same on every rank for a given seed), `batch(k)` (step k's
# whole batch) and the optimizer's arguments; COMMON trains a reference on the whole batch in the same
# process and DDP on this rank's shard, comparing after every step.
COMMON = """
    def whole(k): return batch(k)
    def shard(k):
        X, Y = batch(k); b = len(X) // world
        return X[rank * b:(rank + 1) * b], Y[rank * b:(rank + 1) * b]
    def step(model, opt, X, Y):
        opt.reset_grad()
        loss = nn.SoftmaxLoss()(model(ndl.Tensor(X, dtype="float64")), ndl.Tensor(Y))
        loss.backward(); opt.step()
        return loss
    ref = make(0); ref_opt = OPT(ref.parameters(), **KW)
    local = make(100 + rank)               # a different start on each rank: DDP broadcasts rank 0's ...
    if rank == 0: local = make(0)          # ... which is the reference's
    local = PREPARE(local)
    ddp = dist.DistributedDataParallel(local, bucket_cap_mb=BUCKET_MB)
    opt = OPT(ddp.parameters(), **KW)
    for k in range(STEPS):
        step(ref, ref_opt, *whole(k)); step(ddp, opt, *shard(k))
        for (name, p), q in zip(ddp.module.named_parameters(), ref.parameters()):
            a, r = p.numpy(), q.numpy()
            err = np.abs(a - r).max() / max(np.abs(r).max(), 1e-300)
            assert err < 1e-10, f"step {k}: {name} differs from the whole batch's by {err:.2e} (relative)"
            every = dist.all_gather([ndl.Tensor(np.zeros_like(a), dtype="float64") for _ in range(world)],
                                    ndl.Tensor(a, dtype="float64"))
            assert all(np.array_equal(e.numpy(), a) for e in every), f"step {k}: {name} is not equal across ranks"
        for (name, p), q in zip(ddp.module.named_buffers(), ref.buffers()):
            assert np.abs(p.numpy() - q.numpy()).max() <= 1e-10 * max(np.abs(q.numpy()).max(), 1.0), (k, name)
"""

MLP = """
    PREPARE = lambda model: model
    def make(seed):
        np.random.seed(seed)
        return nn.Sequential(nn.Linear(6, 16, dtype="float64"), nn.ReLU(), nn.Linear(16, 16, dtype="float64"),
                             nn.ReLU(), nn.Linear(16, 4, dtype="float64"))
    def batch(k):
        rs = np.random.RandomState(k)
        return rs.randn(4 * world, 6), rs.randint(0, 4, 4 * world)
"""

CONV = """
    def make(seed):
        np.random.seed(seed)
        return nn.Sequential(nn.Conv(3, 4, 3, dtype="float64"), nn.BatchNorm2d(4, dtype="float64"), nn.ReLU(),
                             nn.Conv(4, 4, 3, stride=2, dtype="float64"), nn.BatchNorm2d(4, dtype="float64"),
                             nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 3, dtype="float64"))
    # each rank's batch norms see only its shard: SyncBatchNorm gives them the whole batch's statistics
    PREPARE = nn.SyncBatchNorm.convert_sync_batchnorm
    def batch(k):
        rs = np.random.RandomState(k)
        return rs.randn(2 * world, 3, 6, 6) * 2 + 1, rs.randint(0, 3, 2 * world)
"""


def _script(model: str, opt: str, kw: str, steps: int = 4, bucket_mb: float = 25, then: str = "") -> str:
    return model + f"\n    OPT, KW, STEPS, BUCKET_MB = {opt}, dict({kw}), {steps}, {bucket_mb}\n" + COMMON + then + "    ok()\n"


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("opt, kw", [("optim.SGD", "lr=0.1, momentum=0.9, weight_decay=0.01"),
                                     ("optim.Adam", "lr=0.01, weight_decay=0.001")], ids=["sgd", "adam"])
def test_ranks_train_an_mlp_as_one_process_with_the_whole_batch(mpirun, n, opt, kw):
    # a bucket of 1 kB: the MLP's 5 parameters travel in several buckets (launched in order, overlapped)
    assert_ok(mpirun(_script(MLP, opt, kw, steps=5, bucket_mb=0.001), n), n)


@pytest.mark.parametrize("n", [2, 3])
def test_a_conv_net_with_syncbatchnorm_trains_as_batchnorm2d_on_the_whole_batch(mpirun, n):
    # the reference (seed 0, in the same process) keeps BatchNorm2d over the whole batch; DDP's copy has SyncBatchNorm
    script = _script(CONV, "optim.SGD", "lr=0.05, momentum=0.9, weight_decay=0.001", steps=3,
                     then="    assert sum(type(m) is nn.SyncBatchNorm for m in ddp.modules()) == 2\n")
    assert_ok(mpirun(script, n), n)


def test_no_sync_accumulates_and_the_next_backward_averages_the_sum(mpirun):
    done = mpirun("""
        def make():
            np.random.seed(0)
            return nn.Sequential(nn.Linear(5, 7, dtype="float64"), nn.Tanh(), nn.Linear(7, 2, dtype="float64"))
        rs = np.random.RandomState(3)
        X, T = rs.randn(3, 2 * world, 5), rs.randn(3, 2 * world, 2)     # three micro-batches of 2 per rank
        def loss(model, x, t): return ((model(ndl.Tensor(x, dtype="float64")) - ndl.Tensor(t, dtype="float64")) ** 2).sum()
        ref = make()
        grads = []                                              # each whole micro-batch's gradient, one process
        for j in range(3):
            for p in ref.parameters(): p.grad = None
            loss(ref, X[j], T[j]).backward()
            grads.append([p.grad.numpy() for p in ref.parameters()])
        want = [sum(gs) / world for gs in zip(*grads)]           # all ranks' examples, summed, over the world
        ddp = dist.DistributedDataParallel(make())
        mine = slice(2 * rank, 2 * rank + 2)
        with ddp.no_sync():
            for j in range(2): loss(ddp, X[j][mine], T[j][mine]).backward()
        loss(ddp, X[2][mine], T[2][mine]).backward()
        for p, w in zip(ddp.parameters(), want):
            assert np.allclose(p.grad.numpy(), w, rtol=1e-12, atol=1e-14), (p.grad.numpy(), w)
        # a gradient reset between forwards starts a new accumulation, as PyTorch's zero_grad
        with ddp.no_sync(): loss(ddp, X[0][mine], T[0][mine]).backward()
        for p in ddp.parameters(): p.grad = None
        loss(ddp, X[1][mine], T[1][mine]).backward()
        for p in ref.parameters(): p.grad = None
        loss(ref, X[1], T[1]).backward()
        for p, q in zip(ddp.parameters(), ref.parameters()):
            assert np.allclose(p.grad.numpy(), q.grad.numpy() / world, rtol=1e-12, atol=1e-14)
        ok()
    """, 2)
    assert_ok(done, 2)


def test_models_that_differ_across_ranks_are_a_clear_error_on_every_rank(mpirun):
    done = mpirun("""
        width = 8 if rank != 2 else 9
        model = nn.Sequential(nn.Linear(4, width, dtype="float64"), nn.ReLU(), nn.Linear(width, 2, dtype="float64"))
        try:
            dist.DistributedDataParallel(model)
            raise AssertionError("no error")
        except RuntimeError as e:
            msg = str(e)
        print(f"rank {rank}: {msg}", flush=True)
        assert "the model differs across ranks" in msg and "'0.weight'" in msg, msg
        assert "(4, 8)" in msg and "(4, 9)" in msg and "rank 0" in msg and "rank 2" in msg, msg
        dist.barrier()     # every rank raised (none waits alone in a broadcast): the group is still usable
        ok()
    """, 3)
    assert_ok(done, 3)


def test_state_dict_is_prefixed_and_the_main_process_saves_the_bare_model(mpirun):
    done = mpirun("""
        import os, tempfile
        np.random.seed(rank)
        ddp = dist.DistributedDataParallel(nn.Sequential(nn.Linear(3, 4, dtype="float64"), nn.BatchNorm1d(4, dtype="float64")))
        assert list(ddp.state_dict()) == ["module." + k for k in ddp.module.state_dict()]
        path = os.path.join(os.getcwd(), "bare.npz")
        if dist.is_main_process(): nn.save(ddp.module.state_dict(), path)   # one writer
        dist.barrier()                                                       # then every rank reads
        bare = nn.Sequential(nn.Linear(3, 4, dtype="float64"), nn.BatchNorm1d(4, dtype="float64"))
        bare.load_state_dict(nn.load(path))
        for (k, a), b in zip(bare.state_dict().items(), ddp.module.state_dict().values()):
            assert np.array_equal(a.numpy(), b.numpy()), k
        ok()
    """, 2)
    assert_ok(done, 2)


def test_a_parameter_without_gradient_is_named_at_the_next_forward(mpirun):
    done = mpirun("""
        class TwoHeads(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(3, 2, dtype="float64"), nn.Linear(3, 2, dtype="float64")
            def forward(self, x): return self.a(x)       # b never takes part
        ddp = dist.DistributedDataParallel(TwoHeads(), bucket_cap_mb=1e-5)
        x = ndl.Tensor(np.ones((2, 3)), dtype="float64")
        ddp(x).sum().backward()
        try:
            ddp(x); raise AssertionError("no error")
        except RuntimeError as e:
            assert "no gradient to ['b.weight', 'b.bias']" in str(e), str(e)
        ok()
    """, 2)
    assert_ok(done, 2)


def test_a_rank_failing_mid_training_aborts_the_job_naming_the_rank(mpirun):
    start = time.monotonic()
    done = mpirun(MLP + """
    PREPARE = None
    ddp = dist.DistributedDataParallel(make(0))
    opt = optim.SGD(ddp.parameters(), lr=0.1)
    for k in range(50):
        X, Y = batch(k)
        if rank == 2 and k == 3: raise FloatingPointError("rank two's loss became NaN")
        opt.reset_grad(); nn.SoftmaxLoss()(ddp(ndl.Tensor(X, dtype="float64")), ndl.Tensor(Y)).backward(); opt.step()
    ok()
    """, 3)
    assert done.returncode != 0 and time.monotonic() - start < 30
    text = done.stdout + done.stderr
    assert "FloatingPointError: rank two's loss became NaN" in text and "rank 2" in text, text


def _train(model, opt, steps=4, ddp=False):
    losses = []
    for k in range(steps):
        rs = np.random.RandomState(k)
        X, Y = rs.randn(8, 6), rs.randint(0, 4, 8)
        opt.reset_grad()
        loss = nn.SoftmaxLoss()(model(ndl.Tensor(X, dtype="float64")), ndl.Tensor(Y))
        loss.backward(); opt.step(); losses.append(loss.numpy())
    return losses


def test_in_one_process_ddp_is_the_model_to_the_bit():
    # no process group: a world of one, no communication; the hooks only pass the gradients through
    assert not dist.is_initialized()
    def make():
        np.random.seed(0)
        return nn.Sequential(nn.Linear(6, 16, dtype="float64"), nn.ReLU(), nn.Linear(16, 4, dtype="float64"))
    plain = make(); wrapped = dist.DistributedDataParallel(make())
    a = _train(plain, optim.Adam(plain.parameters(), lr=0.01))
    b = _train(wrapped, optim.Adam(wrapped.parameters(), lr=0.01))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for p, q in zip(plain.parameters(), wrapped.parameters()): assert np.array_equal(p.numpy(), q.numpy())
    assert "DistributedDataParallel" in repr(wrapped) and "world_size=1" in repr(wrapped)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="expected a needle_nb Module"): dist.DistributedDataParallel("model")
    for bad in (0, -1, True, "25"):
        with pytest.raises(ValueError, match="bucket_cap_mb must be a number > 0"):
            dist.DistributedDataParallel(nn.Linear(2, 2), bucket_cap_mb=bad)


def test_the_world_of_one_benchmark_runs_and_keeps_training_unchanged():
    # benchmarks/bench_ddp.py --quick: it asserts that DDP and plain end with bit-equal parameters, and
    # returns a ratio per workload (a measurement: its size is not asserted)
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ddp.py"
    spec = importlib.util.spec_from_file_location("bench_ddp", path)
    bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
    ratios = bench.main(["--quick", "--repeats", "2"])
    assert len(ratios) == 2 and all(r > 0 for r in ratios.values())


def test_the_lab_training_loop_prints_on_the_main_process_only(monkeypatch, capsys):
    from needle_nb.apps import simple_ml
    from needle_nb import data
    rs = np.random.RandomState(0)
    ds = data.NDArrayDataset(rs.rand(16, 4).astype("float32"), rs.randint(0, 2, 16))
    def run():
        np.random.seed(0)
        simple_ml.train(nn.Sequential(nn.Linear(4, 2)), data.DataLoader(ds, batch_size=8), epochs=1, progress=True)
        return capsys.readouterr().out
    assert "train_err" in run()                      # rank 0 (a world of one): the table
    monkeypatch.setattr(dist, "is_main_process", lambda: False)
    assert run() == ""                               # any other rank: silent
