"""Attention and the Transformer (nbs/04e_nn_transformer), in float64 against PyTorch:
`scaled_dot_product_attention` (with and without a causal mask), `torch.nn.MultiheadAttention` and
`torch.nn.TransformerEncoderLayer` with our weights copied in, and a line-by-line torch re-implementation
of needle's Transformer; plus finite differences, needle's draws and dropout, and shapes.

Layouts: our projections are `Linear` weights `(in, out)`; torch's `in_proj_weight` stacks
`[W_q; W_k; W_v]`, each `(out, in)`, so each block is our weight transposed.
"""
import math

import numpy as np
import pytest

import needle_nb as ndl
import needle_nb.nn as nn


def t64(rs, *shape, device=None):
    return ndl.Tensor(rs.randn(*shape), device=device)


def needle_mask(i, j):
    "True where query i may not see key j: needle's j > i + (j_len - i_len)."
    return np.triu(np.ones((i, j), dtype=bool), j - i + 1)


# --- MultiHeadAttention ---------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T_q,T_kv", [(5, 5), (3, 6)])
def test_attention_against_scaled_dot_product_attention(torch, rs, device, causal, T_q, T_kv):
    q, k, v = t64(rs, 2, 3, T_q, 4, device=device), t64(rs, 2, 3, T_kv, 4, device=device), \
        t64(rs, 2, 3, T_kv, 4, device=device)
    qt, kt, vt = (torch.tensor(x.numpy(), requires_grad=True) for x in (q, k, v))
    result, probs = nn.MultiHeadAttention(causal=causal, device=device, dtype="float64")(q, k, v)
    # torch's is_causal aligns the mask top-left; needle's aligns it bottom-right: pass needle's explicitly
    mask = None if not causal else torch.tensor(~needle_mask(T_q, T_kv))
    expected = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
    if causal and T_q == T_kv:
        same = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
        np.testing.assert_allclose(same.detach().numpy(), expected.detach().numpy(), atol=1e-14)
    np.testing.assert_allclose(result.numpy(), expected.detach().numpy(), atol=1e-12)
    assert probs.shape == (2, 3, T_q, T_kv)
    np.testing.assert_allclose(probs.numpy().sum(-1), 1, atol=1e-12)
    if causal: assert (probs.numpy()[..., needle_mask(T_q, T_kv)] == 0).all()
    w = rs.randn(*result.shape)
    (result * ndl.Tensor(w, device=device, requires_grad=False)).sum().backward()
    (expected * torch.tensor(w)).sum().backward()
    for ours, theirs in [(q, qt), (k, kt), (v, vt)]:
        np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), atol=1e-12)


def test_causal_mask_is_needles():
    attention = nn.MultiHeadAttention(causal=True)
    mask = attention.create_causal_mask(3, 5, ndl.cpu())
    assert mask.shape == (1, 1, 3, 5)
    expected = np.where(needle_mask(3, 5), -np.finfo(np.float32).max, 0.0)
    np.testing.assert_array_equal(np.asarray(mask)[0, 0], expected)   # a numpy array or an NDArray


def test_attention_gradient_matches_finite_differences(rs):
    attention = nn.MultiHeadAttention(causal=True, dtype="float64")
    q, k, v = t64(rs, 1, 2, 3, 4), t64(rs, 1, 2, 3, 4), t64(rs, 1, 2, 3, 4)
    ndl.gradient_check(lambda q, k, v: attention(q, k, v)[0], q, k, v, backward=True)
    ndl.gradient_check(lambda q, k: attention(q, k, v)[1], q, k, backward=True)   # probs do not depend on v


def test_masked_scores_stay_finite_even_when_huge(rs):
    "Scores of 1e30 next to the mask: no inf, no NaN, and the masked entries still get exactly 0."
    attention = nn.MultiHeadAttention(causal=True, dtype="float64")
    q = ndl.Tensor(rs.randn(1, 1, 4, 2) * 1e15)
    k = ndl.Tensor(rs.randn(1, 1, 4, 2) * 1e15)
    v = t64(rs, 1, 1, 4, 2)
    result, probs = attention(q, k, v)
    result.sum().backward()
    for array in (result.numpy(), probs.numpy(), q.grad.numpy(), k.grad.numpy(), v.grad.numpy()):
        assert np.isfinite(array).all()
    assert (probs.numpy()[0, 0][needle_mask(4, 4)] == 0).all()


def test_attention_dropout_is_needles_draw_on_the_probabilities(rs):
    q, k, v = t64(rs, 2, 2, 3, 4), t64(rs, 2, 2, 3, 4), t64(rs, 2, 2, 3, 4)
    attention = nn.MultiHeadAttention(dropout=0.3, dtype="float64")
    clean, clean_probs = nn.MultiHeadAttention(dtype="float64")(q, k, v)
    np.random.seed(7)
    result, probs = attention(q, k, v)
    np.random.seed(7)
    keep = np.random.rand(2, 2, 3, 3) <= 0.7
    np.testing.assert_allclose(probs.numpy(), clean_probs.numpy() * keep / 0.7, atol=1e-12)
    np.testing.assert_allclose(result.numpy(), probs.numpy() @ v.numpy(), atol=1e-12)
    attention.eval()
    np.testing.assert_allclose(attention(q, k, v)[0].numpy(), clean.numpy(), atol=1e-14)


def test_attention_shape_errors_are_named(rs):
    attention = nn.MultiHeadAttention()
    with pytest.raises(ValueError, match="do not match"): attention(t64(rs, 1, 2, 3, 4), t64(rs, 1, 2, 3, 5),
                                                                    t64(rs, 1, 2, 3, 5))
    with pytest.raises(ValueError, match=r"\(B, H, T, D\)"): attention(t64(rs, 2, 3, 4), t64(rs, 2, 3, 4),
                                                                      t64(rs, 2, 3, 4))


# --- AttentionLayer --------------------------------------------------------------------------------
def test_attention_layer_draws_and_names_are_needles():
    ndl.manual_seed(3)
    layer = nn.AttentionLayer(6, 2, 4, k_features=5, out_features=7)
    np.random.seed(3)
    for projection, fan_in, fan_out in [(layer.q_projection, 6, 8), (layer.k_projection, 5, 8),
                                        (layer.v_projection, 6, 8), (layer.out_projection, 8, 7)]:
        bound = math.sqrt(2) * math.sqrt(3 / fan_in)
        expected = (np.random.rand(fan_in, fan_out) * 2 * bound - bound).astype(np.float32)
        np.testing.assert_array_equal(projection.weight.numpy(), expected)
        assert projection.bias is None
    assert [n for n, _ in layer.named_parameters()][:6] == [
        "prenorm_q.weight", "prenorm_q.bias", "prenorm_k.weight", "prenorm_k.bias", "prenorm_v.weight", "prenorm_v.bias"]
    assert layer.attn.causal and layer.prenorm_k.dim == 5


@pytest.mark.parametrize("causal", [False, True])
def test_attention_layer_against_torch_multihead_attention(torch, rs, causal):
    "Our layer = torch's MultiheadAttention (no biases) on layer-normalized inputs, weights copied across."
    B, T_q, T_kv, E, heads = 2, 4, 6, 8, 2
    layer = nn.AttentionLayer(E, heads, E // heads, causal=causal, dtype="float64")
    for norm in (layer.prenorm_q, layer.prenorm_k, layer.prenorm_v):   # make the norms' affine parts matter
        norm.weight.data = ndl.Tensor(rs.randn(E)); norm.bias.data = ndl.Tensor(rs.randn(E))
    theirs = torch.nn.MultiheadAttention(E, heads, bias=False, batch_first=True).double()
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.tensor(np.concatenate(
            [p.weight.numpy().T for p in (layer.q_projection, layer.k_projection, layer.v_projection)])))
        theirs.out_proj.weight.copy_(torch.tensor(layer.out_projection.weight.numpy().T))
    q, kv = t64(rs, B, T_q, E), t64(rs, B, T_kv, E)
    out = layer(q, kv, kv)
    qt, kvt = (torch.tensor(x.numpy(), requires_grad=True) for x in (q, kv))
    F = torch.nn.functional
    norm = lambda x, m: F.layer_norm(x, (E,), torch.tensor(m.weight.numpy()), torch.tensor(m.bias.numpy()), 1e-5)
    mask = torch.tensor(needle_mask(T_q, T_kv)) if causal else None
    expected, _ = theirs(norm(qt, layer.prenorm_q), norm(kvt, layer.prenorm_k), norm(kvt, layer.prenorm_v),
                         attn_mask=mask, need_weights=False)
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), atol=1e-12)
    w = rs.randn(*out.shape)
    (out * ndl.Tensor(w, requires_grad=False)).sum().backward()
    (expected * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(q.grad.numpy(), qt.grad.numpy(), atol=1e-11)
    np.testing.assert_allclose(kv.grad.numpy(), kvt.grad.numpy(), atol=1e-11)
    grad_in = theirs.in_proj_weight.grad.numpy()
    for i, projection in enumerate((layer.q_projection, layer.k_projection, layer.v_projection)):
        np.testing.assert_allclose(projection.weight.grad.numpy(), grad_in[i * E:(i + 1) * E].T, atol=1e-11)
    np.testing.assert_allclose(layer.out_projection.weight.grad.numpy(), theirs.out_proj.weight.grad.numpy().T,
                               atol=1e-11)


def test_attention_layer_self_attention_default_and_errors(rs):
    layer = nn.AttentionLayer(6, 3, 2, dtype="float64")
    x = t64(rs, 2, 5, 6)
    np.testing.assert_array_equal(layer(x).numpy(), layer(x, x, x).numpy())
    with pytest.raises(ValueError, match=r"k must be \(B, T, 6\)"): layer(x, t64(rs, 2, 5, 4))


# --- TransformerLayer -------------------------------------------------------------------------------
def torch_transformer_layer(torch, params, x, heads, causal):
    "needle's TransformerLayer written in torch, from our parameters (a name -> torch tensor dict)."
    F = torch.nn.functional
    B, T, D = x.shape
    x2 = x.reshape(B * T, D)
    def split_heads(name):
        normed = F.layer_norm(x2, (D,), params[f"attn.prenorm_{name}.weight"], params[f"attn.prenorm_{name}.bias"], 1e-5)
        return (normed @ params[f"attn.{name}_projection.weight"]).reshape(B, T, heads, -1).transpose(1, 2)
    q, k, v = split_heads("q"), split_heads("k"), split_heads("v")
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal: scores = scores.masked_fill(torch.tensor(needle_mask(T, T)), -math.inf)
    o = torch.softmax(scores, -1) @ v
    x = x + (o.transpose(1, 2).reshape(B * T, -1) @ params["attn.out_projection.weight"]).reshape(B, T, D)
    y = F.layer_norm(x.reshape(B * T, D), (D,), params["layernorm.weight"], params["layernorm.bias"], 1e-5)
    y = torch.relu(y @ params["linear1.weight"] + params["linear1.bias"]) @ params["linear2.weight"] + params["linear2.bias"]
    return x + y.reshape(B, T, D)


@pytest.mark.parametrize("causal", [False, True])
def test_transformer_layer_against_torch_reimplementation(torch, rs, device, causal):
    ndl.manual_seed(0)
    layer = nn.TransformerLayer(8, 2, 3, 16, causal=causal, device=device, dtype="float64")
    for name, p in layer.named_parameters():    # non-trivial norms, so every parameter matters
        if "norm" in name: p.data = ndl.Tensor(rs.randn(*p.shape), device=device)
    params = {n: torch.tensor(p.numpy(), requires_grad=True) for n, p in layer.named_parameters()}
    x = t64(rs, 3, 5, 8, device=device)
    xt = torch.tensor(x.numpy(), requires_grad=True)
    out, expected = layer(x), torch_transformer_layer(torch, params, xt, 2, causal)
    assert out.shape == (3, 5, 8)
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), atol=1e-12)
    w = rs.randn(3, 5, 8)
    (out * ndl.Tensor(w, device=device, requires_grad=False)).sum().backward()
    (expected * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), atol=1e-11)
    for name, p in layer.named_parameters():
        assert p.grad.shape == p.shape, name
        np.testing.assert_allclose(p.grad.numpy(), params[name].grad.numpy(), atol=1e-11, err_msg=name)


def test_transformer_layer_against_torch_encoder_layer(torch, rs):
    """At initialization our three pre-norms are equal, and then the block is PyTorch's pre-norm
    `TransformerEncoderLayer` (ReLU, no dropout) with zero attention biases."""
    D, heads, hidden = 8, 2, 16
    ndl.manual_seed(1)
    layer = nn.TransformerLayer(D, heads, D // heads, hidden, dtype="float64")
    theirs = torch.nn.TransformerEncoderLayer(D, heads, hidden, dropout=0.0, batch_first=True, norm_first=True).double()
    a = layer.attn
    with torch.no_grad():
        theirs.self_attn.in_proj_weight.copy_(torch.tensor(np.concatenate(
            [p.weight.numpy().T for p in (a.q_projection, a.k_projection, a.v_projection)])))
        theirs.self_attn.in_proj_bias.zero_()
        theirs.self_attn.out_proj.weight.copy_(torch.tensor(a.out_projection.weight.numpy().T))
        theirs.self_attn.out_proj.bias.zero_()
        for ours, mine in [(layer.linear1, theirs.linear1), (layer.linear2, theirs.linear2)]:
            mine.weight.copy_(torch.tensor(ours.weight.numpy().T)); mine.bias.copy_(torch.tensor(ours.bias.numpy()[0]))
    x = t64(rs, 2, 6, D)
    xt = torch.tensor(x.numpy(), requires_grad=True)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(6, dtype=torch.float64)
    out, expected = layer(x), theirs(xt, src_mask=mask, is_causal=True)
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), atol=1e-12)
    out.sum().backward(); expected.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), atol=1e-11)
    np.testing.assert_allclose(layer.linear1.weight.grad.numpy(), theirs.linear1.weight.grad.numpy().T, atol=1e-11)
    # torch's one norm1 plays our three pre-norms: its gradient is the sum of theirs
    np.testing.assert_allclose(sum(getattr(a, f"prenorm_{n}").weight.grad.numpy() for n in "qkv"),
                               theirs.norm1.weight.grad.numpy(), atol=1e-11)


def test_transformer_layer_dropout_is_seeded_and_off_in_eval(rs):
    ndl.manual_seed(0)
    layer = nn.TransformerLayer(8, 2, 4, 16, dropout=0.1, dtype="float64")
    x = t64(rs, 2, 5, 8)
    np.random.seed(3); first = layer(x).numpy()
    np.random.seed(3); again = layer(x).numpy()
    np.testing.assert_array_equal(first, again)
    layer.eval()
    clean = layer(x).numpy()
    assert not np.allclose(first, clean)
    layer.dropout.p = layer.attn.attn.dropout.p = 0.0
    layer.train()
    np.testing.assert_array_equal(layer(x).numpy(), clean)


def test_transformer_layer_sizes_and_errors(rs):
    layer = nn.TransformerLayer(8, 4, 5, 12)
    assert [n for n, _ in layer.named_parameters()][-6:] == [
        "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias", "layernorm.weight", "layernorm.bias"]
    assert layer.attn.q_projection.weight.shape == (8, 20) and layer.linear1.weight.shape == (8, 12)
    with pytest.raises(ValueError, match=r"\(B, T, 8\)"): layer(ndl.Tensor(np.zeros((2, 3, 7), np.float32)))


# --- Transformer -----------------------------------------------------------------------------------
def test_transformer_draws_positional_embedding_first():
    ndl.manual_seed(4)
    model = nn.Transformer(8, 16, 2, num_head=2, dim_head=4, sequence_len=12)
    np.random.seed(4)
    np.testing.assert_array_equal(model.positional_embedding.weight.numpy(),
                                  np.random.randn(12, 8).astype(np.float32))
    bound = math.sqrt(2) * math.sqrt(3 / 8)
    np.testing.assert_array_equal(model.layers[0].attn.q_projection.weight.numpy(),
                                  (np.random.rand(8, 8) * 2 * bound - bound).astype(np.float32))
    assert len(model.layers) == 2 and not model.batch_first


def test_transformer_against_torch_and_batch_first(torch, rs):
    ndl.manual_seed(0)
    T, B, D = 5, 3, 8
    model = nn.Transformer(D, 16, 2, num_head=2, dim_head=4, sequence_len=T + 2, dtype="float64")
    x = t64(rs, T, B, D)
    out, state = model(x)
    assert out.shape == (T, B, D) and state.shape == (T, B, D) and not state.numpy().any()
    params = {n: torch.tensor(p.numpy(), requires_grad=True) for n, p in model.named_parameters()}
    xt = torch.tensor(x.numpy(), requires_grad=True)
    h = xt.transpose(0, 1) + params["positional_embedding.weight"][:T]
    for l in range(2):
        h = torch_transformer_layer(torch, {k[len(f"layers.{l}."):]: v for k, v in params.items()
                                            if k.startswith(f"layers.{l}.")}, h, 2, causal=True)
    expected = h.transpose(0, 1)
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), atol=1e-12)
    w = rs.randn(T, B, D)
    (out * ndl.Tensor(w, requires_grad=False)).sum().backward()
    (expected * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), atol=1e-11)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), params[name].grad.numpy(), atol=1e-11, err_msg=name)
    # batch_first: the same model on (B, T, D)
    model.batch_first = True
    out_bf, _ = model(ndl.Tensor(x.numpy().transpose(1, 0, 2)))
    np.testing.assert_allclose(out_bf.numpy().transpose(1, 0, 2), out.numpy(), atol=1e-14)


def test_transformer_errors(rs):
    model = nn.Transformer(8, 16, 1, num_head=2, dim_head=4, sequence_len=4)
    with pytest.raises(ValueError, match="sequence_len=4"): model(ndl.Tensor(np.zeros((5, 2, 8), np.float32)))
    with pytest.raises(ValueError, match=r"\(T, B, D\) with D=8"): model(ndl.Tensor(np.zeros((3, 2, 6), np.float32)))
