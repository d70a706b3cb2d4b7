"""Vision data (nbs/06a_vision_data): CIFAR-10 batches in both formats, the restricted unpickler, MNIST and
Fashion-MNIST with downloads from a local HTTP server. Every file is written here; nothing leaves 127.0.0.1.
"""
import builtins, functools, gzip, io, hashlib, http.server, os, pickle, pickletools, socket, struct, threading, time

import numpy as np
import pytest

import needle_nb as ndl
import needle_nb.data.vision as vision
from needle_nb.data import (CIFAR10Dataset, DataLoader, FashionMNIST, MNIST, RandomFlipHorizontal,
                            RestrictedUnpickler, restricted_load, write_cifar10_batch)


# ---------------------------------------------------------------------------------------------
# the restricted unpickler
# ---------------------------------------------------------------------------------------------
class Reduces:
    "Pickles as a call of `fn(*args)`."
    def __init__(self, fn, *args): self.fn, self.args = fn, args
    def __reduce__(self): return self.fn, self.args


@pytest.mark.parametrize("make, named", [
    (lambda p: Reduces(builtins.open, str(p), "w"), "io.open"),
    (lambda p: Reduces(os.system, f"touch {p}"), f"{os.system.__module__}.system"),
    (lambda p: Reduces(builtins.exec, f"open({str(p)!r}, 'w')"), "__builtin__.exec"),   # protocol 2 spells builtins as Python 2 did
])
def test_malicious_pickle_is_refused_without_running(tmp_path, make, named):
    target = tmp_path/"created.txt"
    payload = pickle.dumps({b"data": np.zeros(3, np.uint8), b"labels": make(target)}, protocol=2)
    (tmp_path/"data_batch_1").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match=named.replace(".", r"\.")):
        restricted_load(tmp_path/"data_batch_1")
    assert not target.exists()
    for name in ["data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]:
        (tmp_path/name).write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        CIFAR10Dataset(str(tmp_path), train=True)
    assert not target.exists()
    pickle.loads(payload)              # the same bytes through plain pickle do run: the test is not vacuous
    assert target.exists()


def test_only_the_cifar_globals_are_allowed():
    assert set(vision.CIFAR_PICKLE_GLOBALS) == {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
    unpickler = RestrictedUnpickler(io.BytesIO(b""))
    with pytest.raises(pickle.UnpicklingError, match="numpy.load"): unpickler.find_class("numpy", "load")


def test_python3_numpy2_pickles_load(tmp_path):
    "Python 3 writes bytes with _codecs.encode and numpy 2 uses numpy._core: both spellings load."
    data = np.random.RandomState(0).randint(0, 256, (6, 3072)).astype(np.uint8)
    payload = pickle.dumps({b"batch_label": b"testing batch 1 of 1", b"labels": [1, 2, 3, 4, 5, 6], b"data": data,
                            b"filenames": [b"a.png"] * 6}, protocol=2)
    ops = {arg for op, arg, _ in pickletools.genops(payload) if op.name == "GLOBAL"}
    assert "numpy._core.multiarray _reconstruct" in ops and "_codecs encode" in ops
    (tmp_path/"test_batch").write_bytes(payload)
    ds = CIFAR10Dataset(str(tmp_path), train=False)
    np.testing.assert_array_equal(ds.X, (data.reshape(-1, 3, 32, 32) / 255.0).astype(np.float32))
    np.testing.assert_array_equal(ds.y, [1, 2, 3, 4, 5, 6])


# ---------------------------------------------------------------------------------------------
# CIFAR-10 batch files
# ---------------------------------------------------------------------------------------------
def test_full_size_python_batch_like_the_real_files(tmp_path):
    "A (10000, 3072) uint8 test batch, written as Python 2 + numpy 1 wrote it, read as needle reads it."
    rs = np.random.RandomState(1)
    data, labels = rs.randint(0, 256, (10000, 3072)).astype(np.uint8), rs.randint(0, 10, 10000)
    write_cifar10_batch(tmp_path/"test_batch", data, labels, batch_label="testing batch 1 of 1")
    raw = (tmp_path/"test_batch").read_bytes()
    assert raw[:2] == b"\x80\x02"
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(raw)]
    assert {arg for name, arg in ops if name == "GLOBAL"} == {
        "numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    assert not any(name in ("BINUNICODE", "SHORT_BINUNICODE") for name, _ in ops)   # Python 2 strings only
    reference = pickle.loads(raw, encoding="bytes")                                 # what needle does
    assert set(reference) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert reference[b"data"].shape == (10000, 3072) and reference[b"data"].dtype == np.uint8
    ds = CIFAR10Dataset(str(tmp_path), train=False)
    assert ds.X.shape == (10000, 3, 32, 32) and ds.X.dtype == np.float32 and len(ds) == 10000
    np.testing.assert_array_equal(ds.X, (reference[b"data"].reshape(-1, 3, 32, 32) / 255.0).astype(np.float32))
    np.testing.assert_array_equal(ds.y, labels)
    # channel-major rows: values 0..1023 of a row are the red plane
    np.testing.assert_array_equal(ds.X[5, 0].ravel() * 255, data[5, :1024])
    X, y = ds[np.array([3, 7])]
    assert X.shape == (2, 3, 32, 32) and list(y) == list(labels[[3, 7]])


@pytest.fixture
def cifar_folders(tmp_path):
    "Small batches (9 images each) of the same content in a python folder and a binary folder."
    rs = np.random.RandomState(2)
    py, binary = tmp_path/"py", tmp_path/"bin"
    py.mkdir(); binary.mkdir()
    content = {}
    for name in vision.CIFAR10_TRAIN_BATCHES + vision.CIFAR10_TEST_BATCHES:
        data, labels = rs.randint(0, 256, (9, 3072)).astype(np.uint8), rs.randint(0, 10, 9)
        write_cifar10_batch(py/name, data, labels)
        write_cifar10_batch(binary/f"{name}.bin", data, labels, format="binary")
        content[name] = data, labels
    return py, binary, content


def test_both_formats_give_the_same_dataset(cifar_folders):
    py, binary, content = cifar_folders
    for train, names in [(True, vision.CIFAR10_TRAIN_BATCHES), (False, vision.CIFAR10_TEST_BATCHES)]:
        a, b = CIFAR10Dataset(str(py), train), CIFAR10Dataset(str(binary), train, p=0.5)
        expected = np.concatenate([content[n][0] for n in names]).reshape(-1, 3, 32, 32) / 255.0
        np.testing.assert_array_equal(a.X, expected.astype(np.float32))
        np.testing.assert_array_equal(a.X, b.X)
        np.testing.assert_array_equal(a.y, np.concatenate([content[n][1] for n in names]))
        np.testing.assert_array_equal(a.y, b.y)
        assert a.X.min() >= 0 and a.X.max() <= 1 and np.issubdtype(a.y.dtype, np.integer)
    assert (binary/"data_batch_1.bin").stat().st_size == 9 * 3073


def test_dataset_in_dataloader_and_transforms(cifar_folders):
    py, _, _ = cifar_folders
    ds = CIFAR10Dataset(str(py), train=True)
    batches = list(DataLoader(ds, batch_size=16))
    assert [X.shape for X, _ in batches] == [(16, 3, 32, 32), (16, 3, 32, 32), (13, 3, 32, 32)]
    flipped = CIFAR10Dataset(str(py), train=True, transforms=[RandomFlipHorizontal(p=1.0)])
    np.testing.assert_array_equal(flipped[4][0], ds.X[4][:, :, ::-1])      # the width axis, not channels
    np.testing.assert_array_equal(flipped[np.array([0, 2])][0], ds.X[[0, 2]][..., ::-1])


def test_bad_files_are_named(tmp_path, cifar_folders):
    with pytest.raises(FileNotFoundError, match="test_batch"): CIFAR10Dataset(str(tmp_path/"none"), False)
    (tmp_path/"test_batch.bin").write_bytes(b"\x00" * 3074)
    with pytest.raises(ValueError, match="3073-byte"): CIFAR10Dataset(str(tmp_path), False)
    (tmp_path/"test_batch").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ValueError, match="not a CIFAR-10 batch"): CIFAR10Dataset(str(tmp_path), False)
    with pytest.raises(ValueError, match="uint8"): write_cifar10_batch(tmp_path/"x", np.zeros((2, 3072)), [0, 1])
    with pytest.raises(ValueError, match="labels"):
        write_cifar10_batch(tmp_path/"x", np.zeros((2, 3072), np.uint8), [0, 10])


# ---------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST and downloads
# ---------------------------------------------------------------------------------------------
def write_idx(path, magic, array):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">{1 + array.ndim}I", magic, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


@pytest.fixture
def idx_files(tmp_path):
    "The four IDX files of a tiny MNIST-like set (train: 6 images, test: 4)."
    rs, folder = np.random.RandomState(3), tmp_path/"served"
    folder.mkdir()
    content = {}
    for split, n in [("train", 6), ("t10k", 4)]:
        images, labels = rs.randint(0, 256, (n, 28, 28)), rs.randint(0, 10, n)
        write_idx(folder/f"{split}-images-idx3-ubyte.gz", 2051, images)
        write_idx(folder/f"{split}-labels-idx1-ubyte.gz", 2049, labels)
        content[split] = images, labels
    return folder, content


@pytest.fixture
def http_server(idx_files):
    "An http.server on 127.0.0.1 serving the IDX folder (in a thread); yields its base URL and the request log."
    folder, _ = idx_files
    requests = []
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k): super().__init__(*a, directory=str(folder), **k)
        def log_message(self, *args): requests.append(self.path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    server.shutdown(); server.server_close(); thread.join(5)


def local_md5s(folder): return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.mark.parametrize("cls", [MNIST, FashionMNIST])
def test_download_from_local_server(tmp_path, idx_files, http_server, monkeypatch, cls):
    folder, content = idx_files
    url, requests = http_server
    monkeypatch.setattr(cls, "md5s", local_md5s(folder))
    root = tmp_path/"root"
    ds = cls(root, train=False, download=True, mirrors=[url], timeout=5)
    assert sorted(p.name for p in root.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert len(ds) == 4 and ds[0][0].shape == (784,)
    np.testing.assert_allclose(ds[2][0], content["t10k"][0][2].ravel() / 255.0)
    np.testing.assert_array_equal(ds.labels, content["t10k"][1])
    n = len(requests)
    cls(root, train=False, download=True, mirrors=[url], timeout=5)      # present: nothing fetched again
    assert len(requests) == n
    train = cls(root, train=True, download=True, mirrors=[url + "missing/", url], timeout=5)   # first mirror 404s
    assert len(train) == 6 and any("missing" in r for r in requests)


def test_checksum_mismatch_keeps_nothing(tmp_path, idx_files, http_server, monkeypatch):
    folder, _ = idx_files
    url, _ = http_server
    md5s = local_md5s(folder)
    md5s["train-labels-idx1-ubyte.gz"] = "f" * 32
    monkeypatch.setattr(FashionMNIST, "md5s", md5s)
    with pytest.raises(OSError, match="expected f{32}"):
        FashionMNIST(tmp_path/"root", train=True, download=True, mirrors=[url], timeout=5)
    assert [p.name for p in (tmp_path/"root").iterdir()] == ["train-images-idx3-ubyte.gz"]   # no partial files


def test_official_checksums_are_the_published_ones():
    assert FashionMNIST.md5s["train-images-idx3-ubyte.gz"] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert MNIST.md5s["t10k-labels-idx1-ubyte.gz"] == "ec29112dd5afa0611ce80d1b7f02629c"
    assert FashionMNIST.mirrors == ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]


def test_download_timeout_is_bounded(tmp_path, monkeypatch):
    "A server that accepts but never answers: the download fails within about the timeout."
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0)); listener.listen(4)
    try:
        monkeypatch.setattr(MNIST, "md5s", {n: "0" * 32 for n in MNIST.md5s})
        start = time.perf_counter()
        with pytest.raises(OSError, match="could not download"):
            MNIST(tmp_path, train=False, download=True, mirrors=[f"http://127.0.0.1:{listener.getsockname()[1]}/"],
                  timeout=0.5)
        assert time.perf_counter() - start < 10
    finally:
        listener.close()


def test_missing_files_say_how_to_get_them(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="download=True"): MNIST(tmp_path)
    with pytest.raises(ValueError, match="root="): MNIST(None)
    monkeypatch.setattr(vision, "FASHION_MNIST_DEBIAN", tmp_path/"absent")
    with pytest.raises(FileNotFoundError, match="dpkg -x"): FashionMNIST()


def test_fashion_mnist_defaults_to_the_debian_folder(idx_files, monkeypatch):
    folder, content = idx_files
    monkeypatch.setattr(vision, "FASHION_MNIST_DEBIAN", folder)
    ds = FashionMNIST(train=True)
    assert ds.root == folder and len(ds) == 6
    np.testing.assert_array_equal(ds.labels, content["train"][1])


@pytest.mark.skipif(not vision.FASHION_MNIST_DEBIAN.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist():
    test = FashionMNIST(train=False)
    assert len(test) == 10000 and test.images.shape == (10000, 784) and test.images.dtype == np.float32
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert 0 <= test.images.min() and test.images.max() <= 1
