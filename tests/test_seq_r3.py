"Round 3 (issue #26 §5): recurrent state forms, empty sequences, Embedding indices, attention head counts."
import numpy as np, pytest, torch
from hypothesis import given, settings, strategies as st
import needle_nb as ndl
import needle_nb.nn as nn

def T(*shape, dtype=np.float32): return ndl.Tensor(np.random.randn(*shape).astype(dtype))


# --- initial state in the wrong form -----------------------------------------------------------
def test_lstm_single_tensor_state_names_h0_c0_and_shape():
    lstm, X = nn.LSTM(3, 4, num_layers=2), T(5, 2, 3)
    with pytest.raises(TypeError, match=r"\(h0, c0\).*\(2, 2, 4\).*single Tensor"): lstm(X, T(2, 2, 4))
    with pytest.raises(ValueError, match=r"\(h0, c0\).*\(2, 2, 4\).*tuple of 1"): lstm(X, (T(2, 2, 4),))
    with pytest.raises(ValueError, match=r"tuple of 3"): lstm(X, (T(2, 2, 4),) * 3)
    with pytest.raises(ValueError, match=r"c0 must have shape \(2, 2, 4\), got \(1, 2, 4\)"): lstm(X, (T(2, 2, 4), T(1, 2, 4)))
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 2, 4\), got \(2, 3, 4\)"): lstm(X, (T(2, 3, 4), T(2, 2, 4)))
    with pytest.raises(TypeError, match=r"h0 must be a Tensor.*ndarray"): lstm(X, (np.zeros((2, 2, 4)), T(2, 2, 4)))

def test_lstm_cell_two_row_tensor_is_not_unpacked_as_h0_c0():
    cell = nn.LSTMCell(3, 4)
    # a (2, 4) tensor used to unpack into two (4,) rows; now it is refused
    with pytest.raises(TypeError, match=r"\(h0, c0\).*\(2, 4\)"): cell(T(2, 3), T(2, 4))
    with pytest.raises(ValueError, match="tuple of 1"): cell(T(2, 3), (T(2, 4),))
    h, c = cell(T(2, 3), [T(2, 4), T(2, 4)])          # a list pair works, as needle's unpacking
    assert h.shape == c.shape == (2, 4)

def test_rnn_given_a_pair_names_h0():
    rnn, X = nn.RNN(3, 4), T(5, 2, 3)
    with pytest.raises(TypeError, match=r"h0 must be a Tensor of shape \(1, 2, 4\).*tuple"): rnn(X, (T(1, 2, 4), T(1, 2, 4)))
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 2, 4\), got \(2, 4\)"): rnn(X, T(2, 4))
    with pytest.raises(TypeError, match=r"RNNCell: h must be a Tensor of shape \(2, 4\)"): nn.RNNCell(3, 4)(T(2, 3), (T(2, 4),))

def test_right_states_still_match_pytorch():
    torch.manual_seed(0); np.random.seed(0)
    t = torch.nn.LSTM(3, 4, num_layers=2).double()
    m = nn.LSTM(3, 4, num_layers=2, dtype="float64")
    for l, cell in enumerate(m.lstm_cells):
        cell.W_ih = ndl.Tensor(getattr(t, f"weight_ih_l{l}").detach().numpy().T.copy())
        cell.W_hh = ndl.Tensor(getattr(t, f"weight_hh_l{l}").detach().numpy().T.copy())
        cell.bias_ih = ndl.Tensor(getattr(t, f"bias_ih_l{l}").detach().numpy().copy())
        cell.bias_hh = ndl.Tensor(getattr(t, f"bias_hh_l{l}").detach().numpy().copy())
    x, h0, c0 = np.random.randn(5, 2, 3), np.random.randn(2, 2, 4), np.random.randn(2, 2, 4)
    out, (h, c) = m(ndl.Tensor(x), (ndl.Tensor(h0), ndl.Tensor(c0)))
    tout, (th, tc) = t(torch.tensor(x), (torch.tensor(h0), torch.tensor(c0)))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c.numpy(), tc.detach().numpy(), rtol=1e-10, atol=1e-12)


# --- length-0 sequences ------------------------------------------------------------------------
@pytest.mark.parametrize("num_layers", [1, 3])
def test_empty_sequence_gives_empty_output_and_initial_state(num_layers):
    X = T(0, 2, 3)
    h0 = T(num_layers, 2, 4)
    out, h_n = nn.RNN(3, 4, num_layers)(X, h0)
    assert out.shape == (0, 2, 4)
    np.testing.assert_array_equal(h_n.numpy(), h0.numpy())
    c0 = T(num_layers, 2, 4)
    out, (h_n, c_n) = nn.LSTM(3, 4, num_layers)(X, (h0, c0))
    assert out.shape == (0, 2, 4)
    np.testing.assert_array_equal(h_n.numpy(), h0.numpy()); np.testing.assert_array_equal(c_n.numpy(), c0.numpy())
    out, (h_n, c_n) = nn.LSTM(3, 4, num_layers)(X)
    assert h_n.shape == (num_layers, 2, 4) and not h_n.numpy().any() and not c_n.numpy().any()
    with pytest.raises(RuntimeError): torch.nn.LSTM(3, 4)(torch.zeros(0, 2, 3))   # what the chapter says torch does

def test_empty_sequence_gradient_reaches_initial_state():
    h0 = ndl.Tensor(np.random.randn(1, 2, 4), requires_grad=True)
    _, h_n = nn.RNN(3, 4, dtype="float64")(ndl.Tensor(np.zeros((0, 2, 3))), h0)
    h_n.sum().backward()
    np.testing.assert_array_equal(h0.grad.numpy(), np.ones((1, 2, 4)))


# --- Embedding indices -------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_embedding_refuses_nan_and_inf(bad):
    e = nn.Embedding(5, 2)
    with pytest.raises(ValueError, match="finite.*(nan|inf)"): e(ndl.Tensor(np.array([1.0, bad])))
    with pytest.raises(ValueError, match="finite"): e(np.array([[bad]], dtype=np.float64))

@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=8), st.sampled_from([np.float32, np.float64, np.int64]))
def test_embedding_whole_float_indices_keep_working(ids, dtype):
    e = nn.Embedding(10, 3)
    rows = e(ndl.Tensor(np.array(ids, dtype=dtype), dtype=dtype, requires_grad=False)).numpy()
    np.testing.assert_array_equal(rows, e.weight.numpy()[ids])


# --- attention head counts ---------------------------------------------------------------------
@pytest.mark.parametrize("num_head,dim_head,bad", [(0, 4, "num_head"), (2, 0, "dim_head"), (-1, 4, "num_head"),
                                                   (2.0, 4, "num_head"), (True, 4, "num_head"), (2, "4", "dim_head")])
def test_heads_refused_at_construction(num_head, dim_head, bad):
    with pytest.raises(ValueError, match=f"AttentionLayer: {bad} must be an integer >= 1"): nn.AttentionLayer(8, num_head, dim_head)
    with pytest.raises(ValueError, match=f"TransformerLayer: {bad}"): nn.TransformerLayer(8, num_head, dim_head, 16)
    with pytest.raises(ValueError, match=f"Transformer: {bad}"):
        nn.Transformer(8, 16, 0, num_head=num_head, dim_head=dim_head)   # no layer built: still checked

def test_numpy_integer_heads_accepted():
    layer = nn.AttentionLayer(8, np.int64(2), np.int32(4))
    assert layer(T(1, 3, 8)).shape == (1, 3, 8)
