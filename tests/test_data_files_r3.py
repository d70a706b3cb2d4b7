"""Bad data files and bad batch sizes (issue #26, item 6): each is refused with an error naming the file and
where in it (record index, byte offset), or naming `batch_size`, and nothing is changed (files, dictionary, RNG).
"""
import io, os, pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from needle_nb.data import (CIFAR10Dataset, Corpus, DataLoader, Dictionary, NDArrayDataset, batchify,
                            read_cifar10_binary_batch, read_cifar10_python_batch, write_cifar10_batch)
from needle_nb.data import text as text_data
from needle_nb.data.vision import CorruptDataError
from needle_nb.data.text import CorpusDecodeError


def images(n, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, 3072)).astype(np.uint8)


def refused(path, fn, *match):
    "Run fn, which must raise CorruptDataError naming `path` and each of `match`; the file must be unchanged."
    before = Path(path).read_bytes()
    with pytest.raises(CorruptDataError) as info: fn()
    message = str(info.value)
    assert str(path) in message, message
    for m in match: assert m in message, (m, message)
    assert Path(path).read_bytes() == before
    return info.value


# ---------------------------------------------------------------------------------------------
# CIFAR-10 python batches
# ---------------------------------------------------------------------------------------------
def test_the_error_is_a_value_error_and_an_unpickling_error():
    assert issubclass(CorruptDataError, ValueError) and issubclass(CorruptDataError, pickle.UnpicklingError)


def test_a_truncated_python_batch_is_refused_naming_the_file(tmp_path):
    whole = tmp_path / "data_batch_1"
    write_cifar10_batch(whole, images(3), [1, 2, 3])
    raw = whole.read_bytes()
    assert read_cifar10_python_batch(whole)[1].tolist() == [1, 2, 3]   # the whole file reads
    cut = tmp_path / "test_batch"
    for n in sorted({0, 1, 2, 3, 10, 40, 100, len(raw) // 3, len(raw) // 2, len(raw) - 2, len(raw) - 1}):
        cut.write_bytes(raw[:n])
        error = refused(cut, lambda: read_cifar10_python_batch(cut), f"({n} bytes)", "truncated")
        assert isinstance(error, ValueError) and isinstance(error, pickle.UnpicklingError)
        assert isinstance(error.__cause__, (EOFError, pickle.UnpicklingError)), repr(error.__cause__)
    refused(cut, lambda: CIFAR10Dataset(str(tmp_path), train=False), "test_batch")


@pytest.mark.parametrize("seed", range(8))
def test_a_garbage_python_batch_is_refused_naming_the_file(tmp_path, seed):
    path = tmp_path / "test_batch"
    rs = np.random.RandomState(seed)
    garbage = rs.randint(0, 256, 64 + 50 * seed).astype(np.uint8).tobytes()
    if seed % 2: garbage = b"\x80\x02" + garbage        # a protocol-2 header, then noise
    path.write_bytes(garbage)
    refused(path, lambda: read_cifar10_python_batch(path), "not a readable CIFAR-10 python batch")


def test_a_refused_global_names_the_file_and_the_global(tmp_path):
    class Opens:
        def __reduce__(self): return (open, (str(tmp_path / "created"), "w"))
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": Opens(), b"labels": [0]}, protocol=2))
    refused(path, lambda: read_cifar10_python_batch(path), "refusing to load the global io.open")
    assert not (tmp_path / "created").exists()


@pytest.mark.parametrize("batch, named", [
    ({b"labels": [1, 2]}, "lacks the key b'data'"),
    ({b"data": images(2)}, "lacks the key b'labels'"),
    ({"data": images(2), "labels": [1, 2]}, "lacks the key b'data'"),      # str keys: not needle's encoding="bytes"
    ([1, 2], "got list"),
    ({b"data": images(2).reshape(2, 3, 32, 32), b"labels": [1, 2]}, "b'data' is uint8 of shape (2, 3, 32, 32)"),
    ({b"data": images(2)[:, :100], b"labels": [1, 2]}, "b'data' is uint8 of shape (2, 100)"),
    ({b"data": images(2).astype(np.int16), b"labels": [1, 2]}, "b'data' is int16 of shape (2, 3072)"),
    ({b"data": [[0] * 3072] * 2, b"labels": [1, 2]}, "b'data' is list"),
    ({b"data": images(2), b"labels": [1]}, "b'labels' is int64 of shape (1,); expected 2 integers"),
    ({b"data": images(2), b"labels": [[1, 2]]}, "b'labels' is int64 of shape (1, 2)"),
    ({b"data": images(2), b"labels": [1.0, 2.0]}, "b'labels' is float64 of shape (2,)"),
    ({b"data": images(2), b"labels": [1, [2, 3]]}, "b'labels' is not a list of integers"),
])
def test_a_python_batch_with_wrong_contents_names_the_key_and_shape(tmp_path, batch, named):
    path = tmp_path / "data_batch_3"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    refused(path, lambda: read_cifar10_python_batch(path), named)


@pytest.mark.parametrize("labels, record, value", [([0, 1, 10, 3], 2, 10), ([-1, 0, 0, 0], 0, -1),
                                                   ([9, 9, 9, 255], 3, 255)])
def test_a_python_label_outside_0_9_names_the_file_and_record(tmp_path, labels, record, value):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": images(4), b"labels": labels}, protocol=2))
    refused(path, lambda: read_cifar10_python_batch(path), f"record {record} has label {value}, outside 0-9")
    refused(path, lambda: CIFAR10Dataset(str(tmp_path), train=False), f"record {record}")


# ---------------------------------------------------------------------------------------------
# CIFAR-10 binary batches
# ---------------------------------------------------------------------------------------------
def test_a_binary_label_outside_0_9_names_the_file_and_record(tmp_path):
    path = tmp_path / "test_batch.bin"
    write_cifar10_batch(path, images(5), [0, 1, 2, 3, 4], format="binary")
    data, labels = read_cifar10_binary_batch(path)
    assert labels.tolist() == [0, 1, 2, 3, 4] and np.array_equal(data, images(5))
    raw = bytearray(path.read_bytes())
    raw[3 * 3073] = 12; raw[4 * 3073] = 200        # records 3 and 4
    path.write_bytes(bytes(raw))
    refused(path, lambda: read_cifar10_binary_batch(path), "record 3 has label 12, outside 0-9", "2 records")
    refused(path, lambda: CIFAR10Dataset(str(tmp_path), train=False), "record 3")


def test_a_truncated_or_empty_binary_batch_is_refused(tmp_path):
    path = tmp_path / "test_batch.bin"
    write_cifar10_batch(path, images(2), [0, 1], format="binary")
    raw = path.read_bytes()
    path.write_bytes(raw[:-1])
    refused(path, lambda: read_cifar10_binary_batch(path), "6145 bytes", "3073-byte", "1 records and 3072 bytes over")
    path.write_bytes(b"")
    refused(path, lambda: read_cifar10_binary_batch(path), "empty file")


# ---------------------------------------------------------------------------------------------
# text corpora
# ---------------------------------------------------------------------------------------------
def test_a_corpus_that_is_not_utf8_names_the_file_offset_and_line(tmp_path):
    good = "the cat sat\nthe dog ran\n".encode()
    bad_line = "a café".encode("latin-1") + b"\n"         # é in latin-1: 0xe9, not UTF-8
    (tmp_path / "train.txt").write_bytes(good + bad_line)
    (tmp_path / "test.txt").write_bytes(b"the cat\n")
    offset = len(good) + len("a caf")
    with pytest.raises(CorpusDecodeError) as info: Corpus(tmp_path)
    error = info.value
    assert isinstance(error, UnicodeDecodeError) and isinstance(error, ValueError)
    message = str(error)
    assert str(tmp_path / "train.txt") in message and f"byte offset {offset}" in message and "line 3" in message
    assert (error.offset, error.line, error.object[error.start:error.end]) == (offset, 3, b"\xe9")
    with open(tmp_path / "train.txt", "rb") as f: assert f.read()[error.offset] == 0xE9


def test_a_bad_corpus_file_leaves_the_dictionary_unchanged(tmp_path):
    (tmp_path / "train.txt").write_text("one two\n")
    (tmp_path / "test.txt").write_text("two three\n")
    corpus = Corpus(tmp_path)
    words = list(corpus.dictionary.idx2word)
    bad = tmp_path / "more.txt"
    bad.write_bytes(b"four five\nsix \xff seven\n")
    with pytest.raises(CorpusDecodeError, match="byte offset 14 \\(line 2\\)"): corpus.tokenize(bad)
    assert corpus.dictionary.idx2word == words and len(corpus.dictionary.word2idx) == len(words)
    # a bad byte past max_lines is never read, as needle's line-by-line loop never reaches it
    assert corpus.tokenize(bad, max_lines=1) == [corpus.dictionary.word2idx[w] for w in ["four", "five", "<eos>"]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "bé", "日本", " ", "\t", "\n", "\r", "\r\n", "\ufeff", "\x0c", "\u2028", "\x85"]),
                max_size=30),
       st.one_of(st.none(), st.integers(0, 6)))
def test_lines_read_as_text_mode_reads_them(tmp_path_factory, pieces, max_lines):
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_bytes("".join(pieces).encode("utf-8"))
    with open(path, encoding="utf-8") as f: assert list(text_data._utf8_lines(path)) == list(f)
    reference, d = [], Dictionary()   # needle's tokenize, verbatim in spirit: text mode, line by line
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if max_lines is not None and n >= max_lines: break
            reference.extend(d.add_word(w) for w in line.split() + ["<eos>"])
    corpus = Corpus.__new__(Corpus); corpus.dictionary = Dictionary()
    assert corpus.tokenize(path, max_lines) == reference and corpus.dictionary.idx2word == d.idx2word


# ---------------------------------------------------------------------------------------------
# batch sizes
# ---------------------------------------------------------------------------------------------
BAD_BATCH_SIZES = [0, -1, True, False, np.True_, 2.0, np.float32(2), "2", None, [2]]


@pytest.mark.parametrize("batch_size", BAD_BATCH_SIZES, ids=repr)
def test_bad_batch_sizes_are_refused_naming_batch_size(batch_size):
    state = np.random.get_state()[1].copy()
    with pytest.raises(ValueError, match="DataLoader: batch_size must be a positive integer"):
        DataLoader(NDArrayDataset(np.arange(4.0)), batch_size=batch_size, shuffle=True)
    with pytest.raises(ValueError, match="batchify: batch_size must be a positive integer"):
        batchify(np.arange(10), batch_size)
    assert np.array_equal(np.random.get_state()[1], state)


@pytest.mark.parametrize("batch_size", [np.int8(2), np.uint16(2), np.int64(2), np.array(2)], ids=repr)
def test_numpy_integers_are_batch_sizes(batch_size):
    loader = DataLoader(NDArrayDataset(np.arange(5)), batch_size=batch_size)
    assert [b[0].numpy().tolist() for b in loader] == [[0, 1], [2, 3], [4]] and len(loader) == 3
    assert type(loader.batch_size) is int
    assert np.array_equal(batchify(np.arange(7), batch_size), batchify(np.arange(7), 2))
