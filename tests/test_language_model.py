"""needle's LanguageModel (nbs/07_models) and its PTB loop, epoch_general_ptb / train_ptb / evaluate_ptb
(nbs/07a_simple_ml), per NEEDLE-API §6.1 and §6.3; the loop is compared with PyTorch on copied weights."""
import numpy as np
import pytest

import needle_nb as ndl
from needle_nb import nn
from needle_nb.data import batchify, get_batch
from needle_nb.apps.models import LanguageModel
from needle_nb.apps.simple_ml import epoch_general_ptb, train_ptb, evaluate_ptb


def stream(rs, n=600, vocab=12):
    return list(rs.randint(0, vocab, n))


@pytest.mark.parametrize("kind", ["rnn", "lstm", "transformer"])
def test_creation_order_and_shapes(kind):
    ndl.manual_seed(1)
    lm = LanguageModel(6, 13, 10, 2, kind, seq_len=9)
    ndl.manual_seed(1)
    embedding = nn.Embedding(13, 6)                              # needle's order: embedding, sequence model, linear
    seq = (nn.Transformer(6, 10, 2, sequence_len=9) if kind == "transformer"
           else (nn.RNN if kind == "rnn" else nn.LSTM)(6, 10, 2))
    parts = [embedding, seq, nn.Linear(6 if kind == "transformer" else 10, 13)]
    theirs = [p for m in parts for p in m.parameters()]
    assert len(lm.parameters()) == len(theirs)
    for a, b in zip(lm.parameters(), theirs): np.testing.assert_array_equal(a.numpy(), b.numpy())
    x = ndl.Tensor(np.random.RandomState(0).randint(0, 13, (9, 4)).astype(np.float32), requires_grad=False)
    logits, h = lm(x)
    assert logits.shape == (36, 13)
    if kind == "lstm": assert isinstance(h, tuple) and h[0].shape == h[1].shape == (2, 4, 10)
    elif kind == "rnn": assert h.shape == (2, 4, 10)
    else: assert h.shape == (9, 4, 6) and not h.numpy().any()


def test_bad_seq_model_is_named():
    with pytest.raises(ValueError, match="'gru'"): LanguageModel(4, 5, 6, seq_model="gru")
    with pytest.raises(TypeError, match="num_head"): LanguageModel(4, 5, 6, seq_model="lstm", num_head=2)


def test_transformer_options_reach_the_transformer():
    lm = LanguageModel(8, 5, 16, 1, "transformer", seq_len=6, num_head=2, dim_head=4)
    attn = lm.model.layers[0].attn
    assert (attn.num_head, attn.dim_head) == (2, 4) and lm.model.sequence_len == 6


def manual_epoch(model, batches, seq_len, opt=None, clip=None):
    "The loop of NEEDLE-API §6.3 written out: state carried and detached, token-weighted mean loss."
    np.random.seed(4)
    model.train() if opt else model.eval()
    h, total, correct, n_tokens = None, 0.0, 0, 0
    for i in range(0, len(batches) - 1, seq_len):
        X, y = get_batch(batches, i, seq_len)
        if opt: opt.reset_grad()
        out, h = model(X, h)
        h = tuple(t.detach() for t in h) if isinstance(h, tuple) else h.detach()
        loss = nn.SoftmaxLoss()(out, y)
        total += loss.item() * y.shape[0]; n_tokens += y.shape[0]
        correct += int((out.numpy().argmax(1) == y.numpy()).sum())
        if opt:
            loss.backward()
            if clip is not None: opt.clip_grad_norm(clip)
            opt.step()
    return correct / n_tokens, total / n_tokens


@pytest.mark.parametrize("kind", ["rnn", "lstm", "transformer"])
def test_train_and_evaluate_follow_needles_loop(kind):
    rs = np.random.RandomState(0)
    batches = batchify(stream(rs), 8)                            # 75 rows: blocks of 10, the last of 4
    results = []
    for run in ("ours", "manual"):
        ndl.manual_seed(0)
        lm = LanguageModel(5, 12, 7, 1, kind, seq_len=10)
        if run == "ours":
            train = train_ptb(lm, batches, seq_len=10, n_epochs=2, lr=0.5, clip=0.25)
            test = evaluate_ptb(lm, batches, seq_len=10)
        else:
            opt = ndl.optim.SGD(lm.parameters(), lr=0.5)
            for _ in range(2): train = manual_epoch(lm, batches, 10, opt, clip=0.25)
            test = manual_epoch(lm, batches, 10)
        results.append((train, test, [p.numpy() for p in lm.parameters()]))
    (train_a, test_a, params_a), (train_b, test_b, params_b) = results
    np.testing.assert_allclose(train_a, train_b, rtol=1e-6)
    np.testing.assert_allclose(test_a, test_b, rtol=1e-6)
    for a, b in zip(params_a, params_b): np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_epoch_steps_by_seq_len_weights_by_tokens_and_clips(monkeypatch):
    batches = batchify(np.arange(90) % 9, 3)                    # 30 rows: blocks of 8, 8, 8, 5
    ndl.manual_seed(0)
    lm = LanguageModel(4, 9, 6, seq_model="lstm")
    seen, clipped = [], []
    real_forward = lm.forward
    def forward(x, h=None):
        seen.append((x.shape, None if h is None else tuple(t.requires_grad or t.op is not None for t in h)))
        return real_forward(x, h)
    monkeypatch.setattr(lm, "forward", forward)
    opt = ndl.optim.SGD(lm.parameters(), lr=0.1)
    monkeypatch.setattr(opt, "clip_grad_norm", lambda max_norm=0.25: clipped.append(max_norm))
    epoch_general_ptb(batches, lm, seq_len=8, opt=opt, clip=0.5)
    assert [s for s, _ in seen] == [(8, 3), (8, 3), (8, 3), (5, 3)]
    assert seen[0][1] is None and all(h == (False, False) for _, h in seen[1:])   # carried, detached
    assert clipped == [0.5] * 4
    clipped.clear()
    epoch_general_ptb(batches, lm, seq_len=8, opt=opt)
    assert clipped == []                                         # no clip given: never called


def test_evaluate_reseeds_with_4_and_changes_nothing():
    batches = batchify(np.arange(120) % 7, 4)
    ndl.manual_seed(0)
    lm = LanguageModel(4, 7, 6, seq_model="rnn")
    before = [p.numpy().copy() for p in lm.parameters()]
    np.random.seed(123)
    acc, loss = evaluate_ptb(lm, batches, seq_len=6)
    after_draw = np.random.rand()
    np.random.seed(4)
    assert after_draw == np.random.rand()                        # no draw was made after seeding with 4
    assert 0 <= acc <= 1 and loss > 0
    for p, b in zip(lm.parameters(), before): np.testing.assert_array_equal(p.numpy(), b)
    assert all(p.grad is None for p in lm.parameters())


def test_lstm_language_model_epoch_matches_torch(torch):
    "evaluate_ptb's loss and accuracy equal PyTorch's on the same weights (float64), state carried across blocks."
    rs = np.random.RandomState(3)
    tokens = stream(rs, 500, 11)
    batches = batchify(tokens, 5)
    ndl.manual_seed(0)
    lm = LanguageModel(6, 11, 8, 2, "lstm", dtype="float64")
    acc, loss = evaluate_ptb(lm, batches, seq_len=13, dtype="float64")
    emb = torch.nn.Embedding(11, 6).double(); lstm = torch.nn.LSTM(6, 8, 2).double(); lin = torch.nn.Linear(8, 11).double()
    with torch.no_grad():
        emb.weight.copy_(torch.tensor(lm.embedding.weight.numpy()))
        for l, cell in enumerate(lm.model.lstm_cells):
            getattr(lstm, f"weight_ih_l{l}").copy_(torch.tensor(cell.W_ih.numpy().T))
            getattr(lstm, f"weight_hh_l{l}").copy_(torch.tensor(cell.W_hh.numpy().T))
            getattr(lstm, f"bias_ih_l{l}").copy_(torch.tensor(cell.bias_ih.numpy()))
            getattr(lstm, f"bias_hh_l{l}").copy_(torch.tensor(cell.bias_hh.numpy()))
        lin.weight.copy_(torch.tensor(lm.linear.weight.numpy().T)); lin.bias.copy_(torch.tensor(lm.linear.bias.numpy()[0]))
        h, total, correct, n = None, 0.0, 0, 0
        b = torch.tensor(batches)
        for i in range(0, len(batches) - 1, 13):
            s = min(13, len(batches) - 1 - i)
            out, h = lstm(emb(b[i:i + s]), h)
            logits, y = lin(out.reshape(-1, 8)), b[i + 1:i + 1 + s].reshape(-1)
            total += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item(); n += len(y)
            correct += int((logits.argmax(1) == y).sum())
    np.testing.assert_allclose(loss, total / n, rtol=1e-10)
    assert acc == correct / n


def test_transformer_language_model_sees_no_future_character():
    "Changing the characters after row t leaves the logits of rows 0..t alone: the causal mask holds end to end."
    rs = np.random.RandomState(5)
    ndl.manual_seed(0)
    lm = LanguageModel(8, 11, 16, 2, "transformer", seq_len=10, num_head=2, dim_head=4, dtype="float64")
    x = rs.randint(0, 11, (10, 3)).astype(np.float64)
    logits = lm(ndl.Tensor(x, dtype="float64"))[0].numpy().reshape(10, 3, 11)
    for t in (0, 4, 8):
        changed = x.copy()
        changed[t + 1:] = (changed[t + 1:] + 1 + rs.randint(0, 10, changed[t + 1:].shape)) % 11
        again = lm(ndl.Tensor(changed, dtype="float64"))[0].numpy().reshape(10, 3, 11)
        np.testing.assert_array_equal(again[:t + 1], logits[:t + 1])
        assert np.abs(again[t + 1:] - logits[t + 1:]).max() > 1e-3     # the later rows do read their inputs


def test_transformer_language_model_trains_as_torch(torch):
    """Two epochs of needle's loop (Adam, gradient clipping) on a Transformer LanguageModel give PyTorch's
    losses and weights (float64, weights copied in, each block seen alone), then the same evaluate_ptb loss.
    The character chapter's diagnosis: its Transformer's slow start is the recipe's, not a bug."""
    from test_transformer import torch_transformer_layer
    rs = np.random.RandomState(7)
    batches = batchify(stream(rs, 400, 11), 4)                   # 100 rows: blocks of 12, the last of 3
    ndl.manual_seed(0)
    lm = LanguageModel(8, 11, 16, 2, "transformer", seq_len=12, num_head=2, dim_head=4, dtype="float64")
    params = {n: torch.tensor(p.numpy(), requires_grad=True) for n, p in lm.named_parameters()}
    def torch_lm(x):
        T, B = x.shape
        h = params["embedding.weight"][x].transpose(0, 1) + params["model.positional_embedding.weight"][:T]
        for l in range(2):
            prefix = f"model.layers.{l}."
            h = torch_transformer_layer(torch, {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)},
                                        h, 2, causal=True)
        return h.transpose(0, 1).reshape(T * B, 8) @ params["linear.weight"] + params["linear.bias"]
    opt = ndl.optim.Adam(lm.parameters(), lr=0.01)
    torch_opt = torch.optim.Adam(params.values(), lr=0.01)
    b = torch.tensor(batches)
    for _ in range(2):
        ours = epoch_general_ptb(batches, lm, seq_len=12, opt=opt, clip=0.5, dtype="float64")
        total, n = 0.0, 0
        for i in range(0, len(batches) - 1, 12):
            s = min(12, len(batches) - 1 - i)
            torch_opt.zero_grad()
            y = b[i + 1:i + 1 + s].reshape(-1)
            loss = torch.nn.functional.cross_entropy(torch_lm(b[i:i + s]), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params.values(), 0.5)
            torch_opt.step()
            total += loss.item() * len(y); n += len(y)
        np.testing.assert_allclose(ours[1], total / n, rtol=1e-9)
    for name, p in lm.named_parameters():
        np.testing.assert_allclose(p.numpy(), params[name].detach().numpy(), rtol=1e-7, atol=1e-9, err_msg=name)
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(torch_lm(b[i:i + s]), b[i + 1:i + 1 + s].reshape(-1), reduction="sum").item()
                  for i in range(0, len(batches) - 1, 12) for s in [min(12, len(batches) - 1 - i)]]
    np.testing.assert_allclose(evaluate_ptb(lm, batches, seq_len=12, dtype="float64")[1], sum(losses) / (len(batches) - 1) / 4,
                               rtol=1e-10)
