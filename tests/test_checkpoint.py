"""Checkpoint files (nbs/04_nn_module): `save`/`load` round trips, bad files, atomic writes."""
import io, os, pickle, zipfile

import numpy as np
import pytest

import needle_nb as ndl
import needle_nb.nn as nn
import needle_nb.nn.module as module

save = getattr(ndl, "save", nn.save)
load = getattr(ndl, "load", nn.load)


def make_model():
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.BatchNorm1d(3), nn.Linear(3, 2, bias=False))


def test_round_trip_into_a_fresh_model(tmp_path, device):
    model = make_model().to(device)
    model(ndl.Tensor(np.random.RandomState(0).randn(5, 4).astype(np.float32), device=device))  # moves running stats
    save(model.state_dict(), tmp_path/"model.npz")
    state = load(tmp_path/"model.npz", device=device)
    assert list(state) == list(model.state_dict())
    assert all(isinstance(v, ndl.Tensor) and v.device == device for v in state.values())
    fresh = make_model().to(device)
    fresh.load_state_dict(state)
    for (name, ours), theirs in zip(model.state_dict().items(), fresh.state_dict().values()):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=name)
        assert ours.dtype == theirs.dtype


def test_dtypes_shapes_and_awkward_keys_survive(tmp_path):
    state = {"file": np.arange(3, dtype=np.int64), "allow_pickle": np.array([True, False]),
             "a.b.c": ndl.Tensor(np.ones((2, 0, 3))), "scalar": np.float64(2.5), "f16": np.ones(2, np.float16)}
    save(state, str(tmp_path/"weird.ckpt"))        # any file name: no extension is added
    assert os.listdir(tmp_path) == ["weird.ckpt"]
    loaded = load(tmp_path/"weird.ckpt")
    assert list(loaded) == list(state)
    for key, value in state.items():
        expected = np.asarray(value.numpy() if isinstance(value, ndl.Tensor) else value)
        assert loaded[key].dtype == expected.dtype and loaded[key].shape == expected.shape
        np.testing.assert_array_equal(loaded[key].numpy(), expected)


def test_file_is_a_plain_npz(tmp_path):
    save({"w": np.arange(4.0)}, tmp_path/"m.npz")
    with np.load(tmp_path/"m.npz", allow_pickle=False) as archive:
        np.testing.assert_array_equal(archive["w"], np.arange(4.0))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"): load(tmp_path/"nope.npz")


def _bad_files(tmp_path):
    good = tmp_path/"good.npz"
    save(make_model().state_dict(), good)
    data = good.read_bytes()
    pickled = io.BytesIO()
    np.savez(pickled, obj=np.array([{"a": 1}], dtype=object))
    foreign_zip = io.BytesIO()
    with zipfile.ZipFile(foreign_zip, "w") as z: z.writestr("data.pkl", pickle.dumps({"w": 1}))
    npy = io.BytesIO()
    np.save(npy, np.ones(3))
    return {"truncated": data[: len(data) // 2], "cut_header": data[:20], "empty": b"",
            "garbage": os.urandom(256), "pickled": pickled.getvalue(), "foreign_zip": foreign_zip.getvalue(),
            "plain_npy": npy.getvalue(), "pickle": pickle.dumps({"w": np.ones(2)}),
            "corrupt_middle": data[:200] + bytes(200) + data[400:]}


@pytest.mark.parametrize("kind", ["truncated", "cut_header", "empty", "garbage", "pickled", "foreign_zip",
                                  "plain_npy", "pickle", "corrupt_middle"])
def test_bad_files_raise_value_error_naming_the_file(tmp_path, kind):
    path = tmp_path/f"{kind}.npz"
    path.write_bytes(_bad_files(tmp_path)[kind])
    with pytest.raises(ValueError, match=kind):
        state = load(path)
        make_model().load_state_dict(state)   # a corrupt-but-readable file must at least not load silently


def test_failed_save_leaves_the_old_file_and_no_debris(tmp_path, monkeypatch):
    path = tmp_path/"model.npz"
    save({"w": np.ones(3)}, path)
    good = path.read_bytes()
    calls = []
    real_write = np.lib.format.write_array
    def failing_write(f, array, **kwargs):
        calls.append(1)
        if len(calls) == 2: raise OSError("disk full (simulated)")
        return real_write(f, array, **kwargs)
    monkeypatch.setattr(np.lib.format, "write_array", failing_write)
    with pytest.raises(OSError, match="simulated"): save({"a": np.zeros(1000), "b": np.zeros(5)}, path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["model.npz"]


def test_unsaveable_values_are_rejected_before_writing(tmp_path):
    path = tmp_path/"model.npz"
    with pytest.raises(ValueError, match="'bad'"): save({"ok": np.ones(2), "bad": np.array([object()])}, path)
    with pytest.raises(ValueError, match="keys"): save({3: np.ones(2)}, path)
    assert os.listdir(tmp_path) == []


def test_save_and_load_live_in_module():
    assert nn.save is module.save and nn.load is module.load
