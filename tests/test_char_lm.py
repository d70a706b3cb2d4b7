"""The character-level language-model chapter's lab module (nbs/13a_char_lm, apps.char_lm): the n-gram
baselines against direct counting, checkpoints (size, round trip, vocabulary check), sampling; the
committed full-run checkpoints are loaded, and scored on a held-out play when the corpus is installed."""
import numpy as np
import pytest

import needle_nb as ndl
from needle_nb.data import batchify
from needle_nb.apps import char_lm as lm
from needle_nb.apps import shakespeare as sh
from needle_nb.apps.simple_ml import evaluate_ptb


def test_unigram_and_bigram_tables_count_what_they_should():
    rs = np.random.RandomState(0)
    ids = rs.randint(0, 5, 400)
    uni = lm.unigram_model(ids, 6)                                  # id 5 never occurs
    np.testing.assert_allclose(uni, (np.bincount(ids, minlength=6) + 1) / (400 + 6))
    counts = lm.bigram_counts(ids, 6)
    assert counts.sum() == 399 and counts[2, 3] == sum(1 for a, b in zip(ids[:-1], ids[1:]) if (a, b) == (2, 3))
    table = lm.interpolated_bigram(counts, uni, 0.7)
    np.testing.assert_allclose(table.sum(axis=1), 1.0)
    np.testing.assert_allclose(table[1], 0.7 * counts[1] / counts[1].sum() + 0.3 * uni)
    np.testing.assert_allclose(table[5], uni)                       # unseen context: the unigram
    with pytest.raises(ValueError, match="lam"): lm.interpolated_bigram(counts, uni, 1.5)


def test_ngram_cross_entropy_scores_the_targets_evaluate_ptb_scores():
    rs = np.random.RandomState(1)
    ids = rs.randint(0, 4, 203)
    batches = batchify(ids, 5)
    table = rs.dirichlet(np.ones(4), size=4)
    expected = -np.mean([np.log(table[batches[i - 1, j], batches[i, j]])
                         for i in range(1, len(batches)) for j in range(5)])
    assert lm.ngram_cross_entropy(table, batches) == pytest.approx(expected)
    uni = rs.dirichlet(np.ones(4))
    assert lm.ngram_cross_entropy(uni, batches) == pytest.approx(-np.log(uni[batches[1:]]).mean())


def test_tuning_picks_the_validation_minimum():
    rs = np.random.RandomState(2)
    # a Markov chain with strong but imperfect transitions: the best weight is strictly inside (0, 1)
    P = np.full((4, 4), 0.05) + np.eye(4)[[1, 2, 3, 0]] * 0.8
    def chain(n):
        x = [0]
        for _ in range(n - 1): x.append(rs.choice(4, p=P[x[-1]]))
        return np.array(x)
    train, valid = chain(300), batchify(chain(2000), 4)
    uni = lm.unigram_model(train, 4)
    lams = np.linspace(0, 1, 21)
    best, losses = lm.tune_interpolation(lm.bigram_counts(train, 4), uni, valid, lams)
    assert best == lams[losses.argmin()] and losses.min() < losses[0] and losses.min() <= losses[-1]


def test_checkpoint_round_trip_and_vocabulary_check(tmp_path):
    chars = sh.char_dictionary("abc de\n")
    config = dict(lm.LSTM_CONFIG, embedding_size=4, hidden_size=6)
    model = lm.make_char_lm(config, len(chars), seed=3)
    lm.save_char_lm(model, chars, tmp_path / "m.npz")
    again, vocab = lm.load_char_lm(config, tmp_path / "m.npz", chars)
    assert vocab.idx2word == chars.idx2word
    for a, b in zip(model.parameters(), again.parameters()): np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="differ"): lm.load_char_lm(config, tmp_path / "m.npz", sh.char_dictionary("xyz"))


@pytest.mark.parametrize("config", [dict(lm.LSTM_CONFIG, embedding_size=4, hidden_size=6),
                                    dict(lm.TRANSFORMER_CONFIG, embedding_size=8, hidden_size=8, num_layers=1,
                                         num_head=2, dim_head=4, seq_len=5)], ids=["lstm", "transformer"])
def test_sample_is_seeded_and_uses_the_vocabulary(config):
    chars = sh.char_dictionary("to be or not\n")
    model = lm.make_char_lm(config, len(chars))
    text = lm.sample(model, chars, "to ", n_chars=20, seed=1)
    assert text.startswith("to ") and len(text) == 23 and set(text) <= set(chars.idx2word)
    assert text == lm.sample(model, chars, "to ", n_chars=20, seed=1)
    with pytest.raises(ValueError, match="temperature"): lm.sample(model, chars, "to", temperature=0)


@pytest.mark.parametrize("config,name", [(lm.LSTM_CONFIG, "char_lm_lstm.npz"),
                                         (lm.TRANSFORMER_CONFIG, "char_lm_transformer.npz")])
def test_committed_checkpoints_are_small_and_load(config, name):
    """The full run's checkpoints: at most 1 MB, loadable, trained on this split's characters, and scored on a
    slice of a test play: each model better than the interpolated bigram by 0.2 nats/char (the chapter checks
    the whole test plays with the full 0.3-nat margin; a 24,000-character slice gets a looser bound)."""
    path = lm.CHECKPOINT_DIR / name
    assert path.exists(), f"{path}: the full run (NEEDLE_NB_FULL=1 nbdev-test nbs/13a_char_lm.ipynb) writes it"
    assert path.stat().st_size <= 1_000_000
    model, chars = lm.load_char_lm(config, path)
    assert 70 <= len(chars) <= 100
    if sh.find_plays() is None: pytest.skip("the corpus is not installed: the checkpoint is not scored")
    split = sh.split_plays(sh.read_plays())
    assert chars.idx2word == sh.char_dictionary(split["train"]).idx2word
    macbeth = batchify(sh.encode(sh.read_plays()["macbeth"][:24_000], chars), 16)
    train_ids = sh.encode(split["train"], chars)
    uni = lm.unigram_model(train_ids, len(chars))
    counts = lm.bigram_counts(train_ids, len(chars))
    lam, _ = lm.tune_interpolation(counts, uni, batchify(sh.encode(split["valid"], chars), 16))
    bigram = lm.interpolated_bigram(counts, uni, lam)
    loss = evaluate_ptb(model, macbeth, 64)[1]
    assert loss < lm.ngram_cross_entropy(bigram, macbeth) - 0.2, loss


def test_side_by_side_jobs_run_apart_on_one_blas_thread_each():
    """Each job runs in a process of its own on one BLAS thread: two training processes that each start a BLAS
    thread per core made the chapter's training steps 7-17x slower on two shared cores."""
    import os
    from threadpoolctl import threadpool_info
    def blas_threads(): return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}
    side = lm.train_side_by_side({"threads": blas_threads, "pid": os.getpid, "order": lambda: "kept"})
    assert list(side) == ["threads", "pid", "order"] and side["order"] == "kept"
    assert side["threads"] == {1} and side["pid"] != os.getpid()
    with pytest.raises(RuntimeError, match="job 'broken' failed: ZeroDivisionError"):
        lm.train_side_by_side({"fine": lambda: 1, "broken": lambda: 1 / 0})
