"""DistributedSampler (issue #24, part) against PyTorch's torch.utils.data.DistributedSampler, and
DataLoader(sampler=): in one process for many (length, num_replicas, rank, drop_last), and across 3 MPI ranks.
"""
import json, os, re, textwrap

import numpy as np
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler as TorchSampler

from needle_nb import distributed as dist
from needle_nb.data import DataLoader, DistributedSampler, NDArrayDataset

CASES = [(n, R, drop) for n in (0, 1, 2, 5, 7, 10, 12, 13) for R in (1, 2, 3, 4, 5) for drop in (False, True)]


@pytest.mark.parametrize("n, R, drop_last", CASES)
def test_unshuffled_shards_are_pytorchs(n, R, drop_last):
    data = list(range(n))
    for rank in range(R):
        ours = DistributedSampler(data, num_replicas=R, rank=rank, shuffle=False, drop_last=drop_last)
        theirs = TorchSampler(data, num_replicas=R, rank=rank, shuffle=False, drop_last=drop_last)
        assert list(ours) == list(theirs), (rank, list(ours), list(theirs))
        assert len(ours) == len(theirs) == ours.num_samples and ours.total_size == theirs.total_size
        assert all(type(i) is int for i in ours)


@pytest.mark.parametrize("n, R, drop_last", [c for c in CASES if c[0] > 0])
def test_shuffled_shards_have_pytorchs_properties(n, R, drop_last):
    "torch draws with a torch.Generator: compare the structure, not the order."
    def shards(epoch, seed=3):
        out = []
        for rank in range(R):
            s = DistributedSampler(range(n), num_replicas=R, rank=rank, seed=seed, drop_last=drop_last)
            s.set_epoch(epoch)
            out.append(list(s))
        return out
    epoch0 = shards(0)
    torch_lengths = [len(list(TorchSampler(range(n), R, r, seed=3, drop_last=drop_last))) for r in range(R)]
    assert [len(s) for s in epoch0] == torch_lengths                    # equal lengths, PyTorch's
    dealt = [epoch0[p % R][p // R] for p in range(len(epoch0[0]) * R)]   # the shared order, undealt
    if drop_last:
        assert len(set(dealt)) == len(dealt) == R * (n // R)            # no repeats, the tail cut
    else:
        assert sorted(dealt[:n]) == list(range(n))                      # every index exactly once before padding
        assert dealt[n:] == (dealt[:n] * R)[:len(dealt) - n]            # padded by wrapping around
    assert dealt[:R * (n // R)] == np.random.default_rng(3).permutation(n)[:R * (n // R)].tolist()
    assert shards(0) == epoch0                                          # same epoch, same order
    if n > 2: assert shards(1) != epoch0 and shards(0, seed=4) != epoch0


def test_set_epoch_reshuffles_and_leaves_the_global_generator():
    np.random.seed(11)
    before = np.random.get_state()[1].copy()
    s = DistributedSampler(range(50), num_replicas=2, rank=1)
    orders = []
    for epoch in range(3):
        s.set_epoch(epoch)
        orders.append(list(s))
        assert list(s) == orders[-1]                                    # re-iterable, deterministic
    assert len({tuple(o) for o in orders}) == 3 and s.epoch == 2
    assert np.array_equal(np.random.get_state()[1], before)
    assert s.indices().dtype == np.int64


def test_defaults_come_from_needle_nb_distributed():
    s = DistributedSampler(range(7))
    assert (s.num_replicas, s.rank, s.shuffle, s.seed, s.drop_last, s.epoch) == (dist.get_world_size(), dist.get_rank(), True, 0, False, 0)
    assert sorted(s) == list(range(7)) and len(s) == 7
    t = DistributedSampler(range(7), num_replicas=np.int64(2), rank=np.int8(1), seed=np.uint32(2))
    assert (type(t.num_replicas), type(t.rank), type(t.seed)) == (int, int, int) and len(t) == 4


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_replicas=3, rank=3), ValueError, r"invalid rank 3, rank should be in the interval \[0, 2\]"),
    (dict(num_replicas=3, rank=-1), ValueError, "invalid rank -1"),
    (dict(rank=1), ValueError, r"invalid rank 1, .*\[0, 0\]"),                 # a world of one
    (dict(num_replicas=0, rank=0), ValueError, "num_replicas must be at least 1, got 0"),
    (dict(num_replicas=True, rank=0), ValueError, "num_replicas must be an integer, got the bool True"),
    (dict(num_replicas=2, rank=False), ValueError, "rank must be an integer, got the bool False"),
    (dict(num_replicas=2.0, rank=0), ValueError, r"num_replicas must be an integer, got 2.0 \(float\)"),
    (dict(num_replicas=2, rank="1"), ValueError, "rank must be an integer"),
    (dict(shuffle=1), ValueError, "shuffle must be a bool, got 1"),
    (dict(drop_last="yes"), ValueError, "drop_last must be a bool"),
    (dict(seed=-1), ValueError, "seed must be an integer >= 0"),
    (dict(seed=True), ValueError, "seed must be an integer, got the bool"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match): DistributedSampler(range(10), **kwargs)


def test_bad_epochs_and_datasets():
    s = DistributedSampler(range(10), num_replicas=2, rank=0)
    for bad, match in ((-1, "epoch must be >= 0"), (True, "the bool"), (1.5, "epoch must be an integer")):
        with pytest.raises(ValueError, match=match): s.set_epoch(bad)
    assert s.epoch == 0
    with pytest.raises(TypeError, match="must have a length"): DistributedSampler(iter(range(3)), 1, 0)
    grows = list(range(10))
    s = DistributedSampler(grows, num_replicas=2, rank=0)
    grows.append(10)
    with pytest.raises(RuntimeError, match="has 11 items but had 10"): list(s)


# ---------------------------------------------------------------------------------------------
# DataLoader(sampler=)
# ---------------------------------------------------------------------------------------------
def values(loader): return [b[0].numpy().tolist() for b in loader]


def test_loader_follows_the_sampler_each_epoch():
    dataset = NDArrayDataset(np.arange(100, 110))
    s = DistributedSampler(dataset, num_replicas=3, rank=2, seed=1)
    loader = DataLoader(dataset, batch_size=3, sampler=s)
    assert len(loader) == 2
    state = np.random.get_state()[1].copy()
    epoch0 = values(loader)
    assert sum(epoch0, []) == [100 + i for i in s] and [len(b) for b in epoch0] == [3, 1]
    assert values(loader) == epoch0                           # no set_epoch: the same order again
    s.set_epoch(1)
    epoch1 = values(loader)
    assert sum(epoch1, []) == [100 + i for i in s] and epoch1 != epoch0
    assert np.array_equal(np.random.get_state()[1], state)    # the sampler path draws nothing globally


def test_any_iterable_of_indices_is_a_sampler():
    dataset = NDArrayDataset(np.arange(10) * 10)
    assert values(DataLoader(dataset, batch_size=2, sampler=[9, 0, 9, np.int64(3)])) == [[90, 0], [90, 30]]
    assert len(DataLoader(dataset, batch_size=2, sampler=range(0, 10, 3))) == 2
    assert values(DataLoader(dataset, batch_size=4, sampler=np.array([], dtype=int))) == []
    one_shot = DataLoader(dataset, batch_size=5, sampler=(i for i in [1, 2]))   # a generator: one epoch, as PyTorch's
    assert values(one_shot) == [[10, 20]] and values(one_shot) == []
    with pytest.raises(TypeError, match="sampler with a length"): len(one_shot)
    theirs = TorchSampler(range(10), num_replicas=4, rank=3, shuffle=True, seed=2)   # PyTorch's sampler works too
    assert sum(values(DataLoader(dataset, batch_size=2, sampler=theirs)), []) == [10 * i for i in theirs]


def test_sampler_errors():
    dataset = NDArrayDataset(np.arange(10))
    with pytest.raises(ValueError, match="sampler option is mutually exclusive with shuffle"):
        DataLoader(dataset, sampler=[0, 1], shuffle=True)
    with pytest.raises(TypeError, match="sampler must be an iterable of indices, got int"): DataLoader(dataset, sampler=3)
    loader = DataLoader(dataset, batch_size=2, sampler=[0, 1])
    first = values(loader)
    loader.sampler = [0, 10]
    with pytest.raises(IndexError, match=r"index 10 \(its item 1\), outside 0..9"): iter(loader)
    assert [o.tolist() for o in loader.ordering] == [[0, 1]] and first == [[0, 1]]   # the old order kept
    for bad, match in (([0.5, 1.0], "integer indices, got float64"), ([-1], "index -1"), ([[0, 1]], r"shape \(1, 2\)"),
                       ([True, False], "integer indices, got bool")):
        with pytest.raises((TypeError, IndexError), match=match): iter(DataLoader(dataset, sampler=bad))


def test_without_a_sampler_the_draws_are_needles():
    dataset = NDArrayDataset(np.arange(9))
    np.random.seed(0)
    got = [values(DataLoader(dataset, batch_size=4, shuffle=True)) for _ in range(2)]
    np.random.seed(0)
    want = [np.random.permutation(9) for _ in range(2)]
    assert got == [[w[:4].tolist(), w[4:8].tolist(), w[8:].tolist()] for w in want]
    assert DataLoader(dataset, batch_size=4).sampler is None


# ---------------------------------------------------------------------------------------------
# three ranks under mpiexec
# ---------------------------------------------------------------------------------------------
def _mpi_missing() -> str:
    try: import mpi4py  # noqa: F401
    except ImportError: return "mpi4py is not installed (pip install 'needle-nb[distributed]')"
    if dist.mpiexec_path() is None: return "no mpiexec beside this Python or on PATH"
    return ""


SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    from needle_nb import distributed as dist
    from needle_nb.data import DataLoader, DistributedSampler, NDArrayDataset
    import needle_nb as ndl
    dist.init_process_group("mpi")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 3
    dataset = NDArrayDataset(np.arange(10))
    sampler = DistributedSampler(dataset, seed=7)          # num_replicas and rank from the process group
    assert (sampler.num_replicas, sampler.rank, len(sampler)) == (3, rank, 4)
    loader = DataLoader(dataset, batch_size=3, sampler=sampler)
    def gathered():
        mine = ndl.Tensor(np.array(sum((b[0].numpy().tolist() for b in loader), []), dtype=np.float64), dtype="float64")
        outs = [ndl.Tensor(np.zeros(len(sampler)), dtype="float64") for _ in range(world)]
        dist.all_gather(outs, mine)
        return [o.numpy().astype(int).tolist() for o in outs]
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        epochs.append(gathered())
    if rank == 0: print("SHARDS " + json.dumps(epochs), flush=True)
    print(f"OK rank {rank}", flush=True)
""")


def test_three_ranks_share_ten_examples(tmp_path):
    missing = _mpi_missing()
    if missing:
        if os.environ.get("CI", "").lower() == "true": pytest.fail(f"CI=true but {missing}")
        pytest.skip(missing)
    path = tmp_path / "sampler_3.py"
    path.write_text(SCRIPT)
    done = dist.run_mpi(path, 3, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, f"rc={done.returncode}\n{done.stdout}\n{done.stderr}"
    assert sorted(map(int, re.findall(r"OK rank (\d+)", done.stdout))) == [0, 1, 2], done.stdout + done.stderr
    epochs = json.loads(re.search(r"SHARDS (\[.*\])", done.stdout).group(1))
    for epoch, shards in enumerate(epochs):
        assert [len(s) for s in shards] == [4, 4, 4]                      # padded to equal length
        dealt = [shards[p % 3][p // 3] for p in range(12)]
        assert sorted(dealt[:10]) == list(range(10))                      # disjoint before padding, covering
        assert dealt[10:] == dealt[:2]                                    # the padding wraps around
        assert dealt[:10] == np.random.default_rng(7 + epoch).permutation(10).tolist()
    assert epochs[0] != epochs[1]                                         # set_epoch changed the order
