"""Datasets, transforms and the DataLoader (`needle_nb.data`), against needle's formulas and draws.

The MNIST reader is tested on small IDX files written here (gzipped and plain); nothing is downloaded.
"""
import gzip, struct

import numpy as np
import pytest

import needle_nb as ndl
from needle_nb.data import (Dataset, NDArrayDataset, DataLoader, RandomFlipHorizontal, RandomCrop,
                            MNISTDataset, parse_mnist)


# ---------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------
def needle_crop(img, shift_x, shift_y, padding):
    "needle's RandomCrop on explicit shifts: zero-pad, then take the window at (p + sx, p + sy)."
    H, W, C = img.shape
    padded = np.zeros((H + 2 * padding, W + 2 * padding, C), img.dtype)
    padded[padding:padding + H, padding:padding + W] = img
    return padded[padding + shift_x:padding + shift_x + H, padding + shift_y:padding + shift_y + W]


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_flip_follows_needles_draw(p):
    img = np.random.RandomState(0).rand(4, 5, 2).astype(np.float32)
    transform = RandomFlipHorizontal(p)
    np.random.seed(3)
    draws = np.random.rand(50)
    np.random.seed(3)
    for u in draws:
        out = transform(img)
        np.testing.assert_array_equal(out, img[:, ::-1, :] if u < p else img)
    assert np.random.rand() == np.random.RandomState(3).rand(51)[-1]   # exactly one draw per call


@pytest.mark.parametrize("padding", [0, 1, 3])
def test_crop_follows_needles_draw_and_formula(padding):
    img = np.random.RandomState(1).randint(0, 255, size=(6, 7, 3)).astype(np.uint8)
    transform = RandomCrop(padding)
    np.random.seed(5)
    shifts = [np.random.randint(low=-padding, high=padding + 1, size=2) for _ in range(40)]
    np.random.seed(5)
    seen = set()
    for shift_x, shift_y in shifts:
        out = transform(img)
        assert out.shape == img.shape and out.dtype == img.dtype
        np.testing.assert_array_equal(out, needle_crop(img, shift_x, shift_y, padding))
        seen.add((int(shift_x), int(shift_y)))
    assert all(abs(sx) <= padding and abs(sy) <= padding for sx, sy in seen)
    if padding: assert len(seen) > 1


def test_crop_shift_direction():
    "Output pixel (i, j) is input pixel (i + shift_x, j + shift_y): the image moves by (-shift_x, -shift_y)."
    img = np.arange(25, dtype=np.float32).reshape(5, 5, 1) + 1
    shifted = needle_crop(img, 1, -2, padding=2)
    assert shifted[0, 2, 0] == img[1, 0, 0] and shifted[0, 0, 0] == 0 and shifted[4, 4, 0] == 0


def test_transforms_compose_in_order_in_dataset():
    class Images(Dataset):
        def __init__(self, images, transforms): super().__init__(transforms); self.images = images
        def __len__(self): return len(self.images)
        def __getitem__(self, i): return (self.apply_transforms(self.images[i]),)
    img = np.random.RandomState(0).rand(1, 4, 4, 1)
    dataset = Images(img, [RandomCrop(1), RandomFlipHorizontal(0.5)])
    np.random.seed(11)
    (out,) = dataset[0]
    np.random.seed(11)
    shift_x, shift_y = np.random.randint(low=-1, high=2, size=2)
    flip = np.random.rand() < 0.5
    expected = needle_crop(img[0], shift_x, shift_y, 1)
    np.testing.assert_array_equal(out, expected[:, ::-1] if flip else expected)
    first = img[0]
    assert Images(img, None).apply_transforms(first) is first


# ---------------------------------------------------------------------------------------------
# NDArrayDataset and DataLoader
# ---------------------------------------------------------------------------------------------
def arrays(n=10):
    rs = np.random.RandomState(0)
    return rs.randn(n, 3).astype(np.float32), rs.randint(0, 5, n), rs.randn(n, 2, 2)


def test_ndarray_dataset():
    X, y, Z = arrays()
    dataset = NDArrayDataset(X, y, Z)
    assert len(dataset) == 10
    item = dataset[3]
    assert len(item) == 3 and np.array_equal(item[0], X[3]) and item[1] == y[3]
    batch = dataset[np.array([7, 2])]
    np.testing.assert_array_equal(batch[2], Z[[7, 2]])
    from_tensor = NDArrayDataset(ndl.Tensor(X))
    np.testing.assert_array_equal(from_tensor[1][0], X[1])
    with pytest.raises(ValueError, match=r"\[\(10, 3\), \(4,\)\]"): NDArrayDataset(X, y[:4])
    with pytest.raises(ValueError): NDArrayDataset()


@pytest.mark.parametrize("batch_size", [1, 3, 10, 16])
def test_loader_in_order(device, batch_size):
    X, y, Z = arrays()
    loader = DataLoader(NDArrayDataset(X, y, Z), batch_size=batch_size, device=device)
    batches = list(loader)
    assert len(batches) == len(loader) == -(-10 // batch_size)
    assert [b[0].shape[0] for b in batches][:-1] == [batch_size] * (len(batches) - 1)
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in batches]), X)
    np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in batches]), y)
    for bx, by, bz in batches:
        assert bx.dtype == np.float32 and by.dtype == y.dtype and bz.dtype == np.float64
        assert not bx.requires_grad and not by.requires_grad and bx.op is None
        assert bx.device == device
    assert [list(o) for o in loader.ordering] == [list(o) for o in np.array_split(
        np.arange(10), range(batch_size, 10, batch_size))]


def test_loader_shuffle_uses_global_permutation_each_epoch():
    X, y, _ = arrays(11)
    loader = DataLoader(NDArrayDataset(X, y), batch_size=4, shuffle=True)
    np.random.seed(42)
    epochs = [[b[1].numpy() for b in loader] for _ in range(3)]
    np.random.seed(42)
    for batches in epochs:
        order = np.random.permutation(11)
        expected = np.array_split(order, range(4, 11, 4))
        assert len(batches) == len(expected)
        for got, indices in zip(batches, expected): np.testing.assert_array_equal(got, y[indices])
    assert not all(np.array_equal(np.concatenate(epochs[0]), np.concatenate(e)) for e in epochs[1:])
    ids = sorted(np.concatenate([b[0].numpy() for b in loader]).tolist())
    assert ids == sorted(X.tolist())   # an epoch visits every example once


def test_loader_iterates_twice_without_shuffle_and_matches_needle_loop():
    X, y, _ = arrays()
    loader = DataLoader(NDArrayDataset(X, y), batch_size=4)
    first = [b[0].numpy() for b in loader]
    second = [b[0].numpy() for b in loader]
    for a, b in zip(first, second): np.testing.assert_array_equal(a, b)
    # needle hw2's check: batch i equals dataset[i * batch_size:(i + 1) * batch_size]
    for i, (bx, by) in enumerate(loader):
        truth = loader.dataset[i * 4:(i + 1) * 4]
        np.testing.assert_array_equal(bx.numpy(), truth[0]); np.testing.assert_array_equal(by.numpy(), truth[1])


def test_batches_do_not_alias_dataset_storage():
    "Fancy indexing copies; a dataset that returns views gets its batches copied."
    class SliceDataset(Dataset):
        def __init__(self, data): super().__init__(); self.data = data
        def __len__(self): return len(self.data)
        def __getitem__(self, idx): return (self.data[idx.min():idx.max() + 1],)   # a view
    data = np.arange(12, dtype=np.float32).reshape(6, 2)
    for dataset in [NDArrayDataset(data.copy()), SliceDataset(data.copy())]:
        storage = dataset.arrays[0] if isinstance(dataset, NDArrayDataset) else dataset.data
        (batch,) = next(iter(DataLoader(dataset, batch_size=2)))
        storage[...] = -1
        np.testing.assert_array_equal(batch.numpy(), [[0, 1], [2, 3]])


def test_loader_single_array_items_and_edge_cases():
    class Plain(Dataset):
        def __len__(self): return 5
        def __getitem__(self, i): return np.asarray(i) * 10
    (batch,) = next(iter(DataLoader(Plain(), batch_size=2)))
    np.testing.assert_array_equal(batch.numpy(), [0, 10])
    empty = DataLoader(NDArrayDataset(np.zeros((0, 2))), batch_size=3)
    assert len(empty) == 0 and list(empty) == []
    for bad in [0, -1, 2.5, None]:
        with pytest.raises(ValueError, match="batch_size"): DataLoader(NDArrayDataset(np.zeros(3)), batch_size=bad)


# ---------------------------------------------------------------------------------------------
# MNIST IDX files
# ---------------------------------------------------------------------------------------------
def write_idx(path, magic, array, compress=True, truncate=0):
    payload = struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    payload = payload[:len(payload) - truncate]
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f: f.write(payload)
    return str(path)


@pytest.fixture
def mnist_files(tmp_path):
    rs = np.random.RandomState(0)
    pixels, labels = rs.randint(0, 256, size=(7, 6, 5)), rs.randint(0, 10, size=7)
    return (write_idx(tmp_path / "img.gz", 2051, pixels), write_idx(tmp_path / "lbl.gz", 2049, labels),
            pixels, labels, tmp_path)


@pytest.mark.parametrize("compress", [True, False])
def test_parse_mnist(mnist_files, compress):
    _, _, pixels, labels, tmp = mnist_files
    images = write_idx(tmp / "i.idx", 2051, pixels, compress)
    label_file = write_idx(tmp / "l.idx", 2049, labels, compress)
    X, y = parse_mnist(images, label_file)
    assert X.shape == (7, 30) and X.dtype == np.float32 and y.dtype == np.uint8
    np.testing.assert_allclose(X, pixels.reshape(7, 30) / 255.0, rtol=1e-7)
    assert X.min() >= 0 and X.max() <= 1
    np.testing.assert_array_equal(y, labels)


def test_parse_mnist_errors(mnist_files):
    images, label_file, pixels, labels, tmp = mnist_files
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"): parse_mnist(label_file, label_file)
    with pytest.raises(ValueError, match="magic number 2051, expected 2049"): parse_mnist(images, images)
    short = write_idx(tmp / "short.gz", 2051, pixels, truncate=3)
    with pytest.raises(ValueError, match="found 207 bytes"): parse_mnist(short, label_file)
    fewer = write_idx(tmp / "fewer.gz", 2049, labels[:5])
    with pytest.raises(ValueError, match="7 images .* but 5 labels"): parse_mnist(images, fewer)


def test_mnist_dataset_items_and_loader(device, mnist_files):
    images, label_file, pixels, labels, _ = mnist_files
    dataset = MNISTDataset(images, label_file)
    assert len(dataset) == 7
    X, y = dataset[4]
    assert X.shape == (30,) and y == labels[4]
    np.testing.assert_allclose(X, pixels[4].reshape(-1) / 255.0)
    batches = list(DataLoader(dataset, batch_size=3, device=device))
    assert [b[0].shape for b in batches] == [(3, 30), (3, 30), (1, 30)]
    assert batches[0][0].dtype == np.float32 and batches[0][1].dtype == np.uint8
    np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in batches]), labels)


def test_mnist_transforms_follow_needles_draws(mnist_files):
    images, label_file, pixels, _, _ = mnist_files
    dataset = MNISTDataset(images, label_file, transforms=[RandomCrop(2), RandomFlipHorizontal()])
    plain = MNISTDataset(images, label_file)

    def expected_for(index):
        shift_x, shift_y = np.random.randint(low=-2, high=3, size=2)
        flip = np.random.rand() < 0.5
        img = needle_crop(plain[index][0].reshape(6, 5, 1), shift_x, shift_y, 2)
        return (img[:, ::-1] if flip else img).reshape(-1)

    np.random.seed(0)
    singles = [dataset[i][0] for i in range(7)]
    np.random.seed(0)
    for i, got in enumerate(singles): np.testing.assert_array_equal(got, expected_for(i))
    np.random.seed(0)
    batch_X, batch_y = dataset[np.arange(7)]   # a batch draws per image, in order: same as one by one
    np.testing.assert_array_equal(batch_X, np.stack(singles))
    np.testing.assert_array_equal(batch_y, plain.labels)
    assert any(not np.array_equal(s, plain[i][0]) for i, s in enumerate(singles))
