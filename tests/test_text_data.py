"""Text data (nbs/06b_text_data): needle's Dictionary, Corpus, batchify and get_batch (NEEDLE-API §5.3),
on corpora the tests write."""
import numpy as np
import pytest

import needle_nb as ndl
from needle_nb.data import Corpus, Dictionary, batchify, get_batch


def write_corpus(folder, train_lines, test_lines, valid_lines=()):
    for name, lines in [("train", train_lines), ("test", test_lines), ("valid", valid_lines)]:
        (folder / f"{name}.txt").write_text("".join(f" {line} \n" for line in lines))
    return folder


@pytest.fixture
def ptb_like(tmp_path):
    "A Penn-Treebank-shaped folder: pre-tokenized lines with <unk> and N."
    rs = np.random.RandomState(0)
    words = ["the", "<unk>", "N", "of", "a", "market", "stocks", "fell", "rose", "in"]
    make = lambda n: [" ".join(rs.choice(words, rs.randint(1, 12))) for _ in range(n)]
    return write_corpus(tmp_path, make(40), make(10), make(5))


def test_dictionary_ids_in_order_of_first_appearance():
    d = Dictionary()
    assert [d.add_word(w) for w in "b a b c a".split()] == [0, 1, 0, 2, 1]
    assert d.idx2word == ["b", "a", "c"] and d.word2idx == {"b": 0, "a": 1, "c": 2} and len(d) == 3


def test_corpus_is_train_then_test_with_one_dictionary(ptb_like):
    corpus = Corpus(ptb_like)
    train_lines = (ptb_like / "train.txt").read_text().splitlines()
    test_lines = (ptb_like / "test.txt").read_text().splitlines()
    # reference tokenizer: words then <eos> per line, train read first
    ref = Dictionary()
    expect = {}
    for split, lines in [("train", train_lines), ("test", test_lines)]:
        expect[split] = [ref.add_word(w) for line in lines for w in line.split() + ["<eos>"]]
    assert corpus.train == expect["train"] and corpus.test == expect["test"]
    assert corpus.dictionary.idx2word == ref.idx2word
    assert not hasattr(corpus, "valid")                       # needle reads no validation split
    assert len(corpus.train) == sum(len(l.split()) + 1 for l in train_lines)
    decoded = " ".join(corpus.dictionary.idx2word[i] for i in corpus.train)
    assert decoded == " <eos> ".join(" ".join(l.split()) for l in train_lines) + " <eos>"


def test_corpus_max_lines(ptb_like):
    full, first3 = Corpus(ptb_like), Corpus(ptb_like, max_lines=3)
    n3 = sum(len(l.split()) + 1 for l in (ptb_like / "train.txt").read_text().splitlines()[:3])
    assert first3.train == full.train[:n3]
    assert first3.test == [first3.dictionary.word2idx[full.dictionary.idx2word[i]] for i in full.test[:len(first3.test)]]
    assert Corpus(ptb_like, max_lines=0).train == []
    with pytest.raises(ValueError, match="max_lines"): Corpus(ptb_like, max_lines=-1)


def test_corpus_missing_file_is_named(tmp_path):
    (tmp_path / "train.txt").write_text("a b\n")
    with pytest.raises(FileNotFoundError, match="test.txt"): Corpus(tmp_path)


@pytest.mark.parametrize("n,bs", [(26, 4), (100, 7), (64, 64), (10, 1)])
def test_batchify_columns_are_contiguous_chunks(n, bs):
    data = list(range(n))
    out = batchify(data, bs, ndl.cpu(), "float32")
    nbatch = n // bs
    assert isinstance(out, np.ndarray) and out.shape == (nbatch, bs) and len(out) == nbatch
    for j in range(bs): np.testing.assert_array_equal(out[:, j], data[j * nbatch:(j + 1) * nbatch])
    np.testing.assert_array_equal(out, np.array(data[:nbatch * bs]).reshape(bs, nbatch).T)


def test_batchify_rejects_what_cannot_fill_a_row():
    with pytest.raises(ValueError, match="3 tokens"): batchify([1, 2, 3], 4)
    with pytest.raises(ValueError, match="batch_size"): batchify([1, 2, 3], 0)


def test_get_batch_shapes_targets_and_device(device, ptb_like):
    corpus = Corpus(ptb_like)
    batches = batchify(corpus.train, 8, device=device, dtype="float32")
    nbatch = len(batches)
    starts = list(range(0, nbatch - 1, 5))
    for i in starts:
        X, y = get_batch(batches, i, 5, device=device)
        seq_len = min(5, nbatch - 1 - i)
        assert X.shape == (seq_len, 8) and y.shape == (seq_len * 8,)
        assert X.device == device and y.device == device
        assert X.dtype == np.float32 and y.dtype == np.float32 and not X.requires_grad
        np.testing.assert_array_equal(X.numpy(), batches[i:i + seq_len])
        np.testing.assert_array_equal(y.numpy(), batches[i + 1:i + 1 + seq_len].reshape(-1))
    # one epoch of truncated BPTT reads every row but the last once
    seen = np.concatenate([get_batch(batches, i, 5)[0].numpy() for i in starts])
    np.testing.assert_array_equal(seen, batches[:-1])


def test_get_batch_default_device_and_bad_rows():
    batches = batchify(np.arange(30), 3)
    X, y = get_batch(batches, 0, 4)
    assert X.device == ndl.default_device() and X.dtype == np.float32
    X, y = get_batch(batches, 0, 4, dtype="float64")
    assert X.dtype == y.dtype == np.float64
    with pytest.raises(IndexError, match="row 9"): get_batch(batches, 9, 4)
    with pytest.raises(ValueError, match="bptt"): get_batch(batches, 0, 0)


def test_needle_names_in_ndl_data():
    import needle_nb.data.text as text
    for name in ["Dictionary", "Corpus", "batchify", "get_batch"]:
        assert getattr(ndl.data, name) is getattr(text, name)
