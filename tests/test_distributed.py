"""needle_nb.distributed across processes: each test writes a script to tmp_path and launches it with
`mpiexec -n N python -m mpi4py script.py` (run_mpi: a timeout that kills every rank, so no test can hang).

Each rank asserts inside its script (an AssertionError aborts all ranks through `-m mpi4py`) and prints
`OK rank r` at the end; the test requires rc 0 and one OK line per rank. Without mpi4py or mpiexec the
tests skip, except under CI=true, where the launch is part of what CI checks and the skip is a failure.
"""
import os, re, subprocess, sys, textwrap, time
import numpy as np
import pytest

import needle_nb
from needle_nb import distributed as dist

TIMEOUT = 60


def _mpi_missing() -> str:
    try: import mpi4py  # noqa: F401
    except ImportError: return "mpi4py is not installed (pip install 'needle-nb[distributed]')"
    if dist.mpiexec_path() is None: return "no mpiexec beside this Python or on PATH"
    return ""


@pytest.fixture
def mpirun(tmp_path):
    "`mpirun(source, n)`: run `source` on n ranks; returns the CompletedProcess."
    missing = _mpi_missing()
    if missing:
        if os.environ.get("CI", "").lower() == "true": pytest.fail(f"CI=true but {missing}")
        pytest.skip(missing)
    def run(source: str, n: int, timeout: float = TIMEOUT):
        path = tmp_path / f"script_{n}.py"
        path.write_text(PRELUDE + textwrap.dedent(source))
        return dist.run_mpi(path, n, timeout=timeout, cwd=tmp_path)
    return run


PRELUDE = textwrap.dedent("""
    import numpy as np
    import needle_nb as ndl
    from needle_nb import nn, optim
    from needle_nb import distributed as dist
    dist.init_process_group("mpi")
    rank, world = dist.get_rank(), dist.get_world_size()
    def ok(): print(f"OK rank {rank}", flush=True)
""")


def assert_ok(done, n):
    assert done.returncode == 0, f"rc={done.returncode}\n{done.stdout}\n{done.stderr}"
    # ranks' lines can interleave in mpiexec's forwarded stdout: find the markers, not whole lines
    assert sorted(map(int, re.findall(r"OK rank (\d+)", done.stdout))) == list(range(n)), done.stdout + done.stderr


def test_import_does_not_load_mpi4py():
    code = "import sys, needle_nb, needle_nb.distributed; assert 'mpi4py' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_world_of_one_without_init():
    assert not dist.is_initialized() and dist.get_rank() == 0 and dist.get_world_size() == 1
    t = needle_nb.Tensor([1.0, -2.0], dtype="float64")
    for op in ("sum", "mean", "max", "min"): assert dist.all_reduce(t, op).numpy().tolist() == [1.0, -2.0]
    with pytest.raises(ValueError, match="op must be one of"): dist.all_reduce(t, "avg")
    with pytest.raises(TypeError, match="floating dtype"): dist.all_reduce(needle_nb.Tensor([1, 2], dtype="int64"), "mean")
    assert "mpi4py" not in sys.modules or dist.is_initialized() is False


@pytest.mark.parametrize("n", [2, 3])
def test_collectives(mpirun, n):
    done = mpirun("""
        assert world == %d
        x = ndl.Tensor(np.arange(6.0).reshape(2, 3) * (rank + 1), dtype="float64")
        total = sum(np.arange(6.0).reshape(2, 3) * (r + 1) for r in range(world))
        for op, want in (("sum", total), ("mean", total / world),
                         ("max", np.arange(6.0).reshape(2, 3) * world), ("min", np.arange(6.0).reshape(2, 3))):
            y = ndl.Tensor(x.numpy(), dtype="float64")
            assert dist.all_reduce(y, op) is y
            assert np.array_equal(y.numpy(), want), (op, y.numpy(), want)
        i = ndl.Tensor(np.array([rank, 1]), dtype="int64")
        assert dist.all_reduce(i, "sum").numpy().tolist() == [sum(range(world)), world]
        assert i.dtype == np.int64
        b = ndl.Tensor(np.full(4, float(rank)), dtype="float32")
        dist.broadcast(b, src=world - 1)
        assert b.numpy().tolist() == [world - 1.0] * 4 and b.dtype == np.float32
        outs = [ndl.Tensor(np.zeros(2), dtype="float64") for _ in range(world)]
        dist.all_gather(outs, ndl.Tensor([rank, -rank], dtype="float64"))
        assert [o.numpy().tolist() for o in outs] == [[r, -r] for r in range(world)]
        m = nn.BatchNorm1d(3, dtype="float64")
        m.weight.cached_data = np.full(3, rank + 1.0); m.running_mean.cached_data = np.full(3, rank * 7.0)
        dist.broadcast_parameters(m, src=1)
        assert m.weight.numpy().tolist() == [2.0] * 3 and m.running_mean.numpy().tolist() == [7.0] * 3
        dist.barrier()
        ok()
    """ % n, n)
    assert_ok(done, n)


@pytest.mark.parametrize("n", [2, 3])
def test_a_failing_rank_aborts_every_rank(mpirun, n):
    # rank 1 raises while the others wait in an allreduce it never joins: without -m mpi4py this hangs
    start = time.monotonic()
    done = mpirun("""
        x = ndl.Tensor(np.ones(3), dtype="float64")
        dist.all_reduce(x)
        if rank == 1: raise ValueError("rank one broke mid-training")
        for step in range(1000): dist.all_reduce(x)
        ok()
    """, n)
    assert done.returncode != 0
    assert time.monotonic() - start < 30
    text = done.stdout + done.stderr
    assert "ValueError: rank one broke mid-training" in text
    assert "rank 1" in text, text


def test_run_mpi_times_out_and_kills_every_rank(mpirun):
    with pytest.raises(TimeoutError, match="ran past"):
        mpirun("""
            import time
            if rank == 0: time.sleep(300)
            dist.barrier()
        """, 2, timeout=5)


@pytest.mark.parametrize("n", [2, 3])
def test_sync_batchnorm_matches_batchnorm_on_the_whole_batch(mpirun, n):
    # unequal shards (rank r holds r + 2 images): the global count weights every image once
    done = mpirun("""
        rs = np.random.RandomState(1)
        sizes = [r + 2 for r in range(world)]
        x_all, g_all = rs.randn(sum(sizes), 3, 3, 3) * 4 + 3, rs.randn(sum(sizes), 3, 3, 3)
        w, b = rs.rand(3) + 0.5, rs.randn(3)
        def run(layer, x, g):
            layer.weight.cached_data, layer.bias.cached_data = w.copy(), b.copy()
            x = ndl.Tensor(x, dtype="float64", requires_grad=True)
            y = layer(x)
            (y * ndl.Tensor(g, dtype="float64")).sum().backward()
            return y.numpy(), x.grad.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy(), \\
                   layer.running_mean.numpy(), layer.running_var.numpy()
        lo = sum(sizes[:rank]); rows = slice(lo, lo + sizes[rank])
        sync = run(nn.SyncBatchNorm(3, dtype="float64"), x_all[rows], g_all[rows])
        whole = run(nn.BatchNorm2d(3, dtype="float64"), x_all, g_all)
        close = lambda a, b: np.allclose(a, b, rtol=1e-12, atol=1e-12)
        assert close(sync[0], whole[0][rows]) and close(sync[1], whole[1][rows])
        for i in (2, 3):   # weight and bias: local sums whose total over ranks is the whole batch's
            assert close(dist.all_reduce(ndl.Tensor(sync[i], dtype="float64")).numpy(), whole[i])
        assert close(sync[4], whole[4]) and close(sync[5], whole[5])
        bn = nn.SyncBatchNorm(3, dtype="float64")   # evaluation: the running statistics, no communication
        bn.eval(); assert np.array_equal(bn(ndl.Tensor(x_all[rows], dtype="float64")).numpy(),
                                         nn.BatchNorm2d(3, dtype="float64").eval()(ndl.Tensor(x_all[rows], dtype="float64")).numpy())
        ok()
    """, n)
    assert_ok(done, n)


def test_convert_sync_batchnorm_keeps_parameters_and_structure():
    from needle_nb import nn
    inner = nn.BatchNorm1d(4)
    model = nn.Sequential(nn.Linear(3, 4), inner, nn.Residual(nn.Sequential(inner)), nn.ReLU())
    params = model.parameters()
    keys = list(model.state_dict())
    out = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert out is model and list(model.state_dict()) == keys
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert model[1] is model[2].fn[0] and type(model[1]) is nn.SyncBatchNorm   # shared stays shared
    assert type(nn.SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm2d(2))) is nn.SyncBatchNorm
    with pytest.raises(TypeError, match="expected a Module"): nn.SyncBatchNorm.convert_sync_batchnorm("bn")
