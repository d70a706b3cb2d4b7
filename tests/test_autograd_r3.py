"""`needle_nb.autograd.detect_anomaly`: the first op that makes a NaN or an infinity raises, forward or backward,
naming the op, the shapes and the user's line (PyTorch's `torch.autograd.detect_anomaly`); off, nothing changes."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import needle_nb as ndl
from needle_nb import autograd
from needle_nb.autograd import Tensor, detect_anomaly

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")   # numpy's own divide-by-zero warnings


def _softmax_by_hand(z):
    return ndl.log(ndl.exp(z) / ndl.exp(z).sum(axes=(1,)).reshape((z.shape[0], 1)))


LOGITS = [[50.0, -60.0, 0.0], [1.0, 2.0, 3.0]]


def test_off_by_default_and_the_underflow_passes_silently():
    assert not autograd.is_anomaly_enabled()
    out = _softmax_by_hand(Tensor(LOGITS))
    assert np.isneginf(out.numpy()[0, 1])


def test_forward_names_the_op_shapes_and_the_users_line():
    with pytest.raises(RuntimeError) as info:
        with detect_anomaly(): _softmax_by_hand(Tensor(LOGITS))
    message = str(info.value)
    assert message.startswith("detect_anomaly: Log produced 1 infinite of 6 values")
    assert "shapes (2, 3) float32" in message
    assert __file__ in message and "in _softmax_by_hand" in message          # the user's frame...
    assert "return ndl.log(ndl.exp(z) / ndl.exp(z)" in message                # ...and its source line
    assert "needle_nb/ops.py" not in message and "needle_nb/autograd.py" not in message
    assert not autograd.is_anomaly_enabled()   # restored after the exception


def test_the_fix_runs_clean_forward_and_backward():
    logits = Tensor(LOGITS)
    with detect_anomaly():
        out = ndl.logsoftmax(logits)
        ndl.summation(out).backward()
    np.testing.assert_allclose(out.numpy()[0], [0.0, -110.0, -50.0], atol=1e-4)
    assert np.isfinite(logits.grad.numpy()).all()


def test_nan_named_too_and_multi_input_shapes():
    a, b = Tensor([0.0, 1.0]), Tensor([[0.0, 2.0]])
    with pytest.raises(RuntimeError, match=r"EWiseDiv produced 1 NaN of 2 values.*shapes \(2,\) float32, \(1, 2\) float32"):
        with detect_anomaly(): a / b


def test_values_already_bad_do_not_raise_again():
    x = Tensor([-np.inf, 0.0, np.nan])
    with detect_anomaly():
        y = ndl.exp(x)          # exp(-inf) = 0 and nan stays nan: the op made no new bad value
        z = y + 1.0
    assert np.isnan(z.numpy()[2])


def test_integer_ops_are_not_checked():
    with detect_anomaly():
        t = Tensor(np.array([1, 2], dtype=np.int64)) + 3
    assert t.numpy().tolist() == [4, 5]


def test_tuple_valued_ops_are_checked():
    x = Tensor([1.0, 2.0])
    with pytest.raises(RuntimeError, match="FusedAddScalars"):
        with detect_anomaly(): autograd.fused_add_scalars(x, np.inf, 0.0)


def test_backward_names_the_op_whose_gradient_turns_infinite():
    x = Tensor([0.0, 4.0])
    with detect_anomaly():
        root = x ** 0.5                      # finite forward: sqrt(0) = 0
        with pytest.raises(RuntimeError) as info: ndl.summation(root).backward()
    message = str(info.value)
    assert message.startswith("detect_anomaly: the gradient of PowerScalar")
    assert "input 0 (shape (2,)) has 1 infinite of 2 values" in message
    assert "root = x ** 0.5" in message and __file__ in message


def test_backward_without_a_recorded_line_says_so():
    x = Tensor([0.0, 4.0])
    root = x ** 0.5                          # made outside anomaly mode
    with detect_anomaly():
        with pytest.raises(RuntimeError, match="created outside detect_anomaly"): ndl.summation(root).backward()


def test_backward_nan_caught_where_torch_catches_it(torch):
    "sqrt(x)·0 at x = 0: 0·∞ = NaN in sqrt's gradient; torch's anomaly mode names SqrtBackward0, ours the power op."
    x = Tensor([0.0, 1.0])
    with detect_anomaly():
        y = (x ** 0.5) * 0.0
        with pytest.raises(RuntimeError, match="gradient of PowerScalar.*1 NaN of 2"): ndl.summation(y).backward()
    xt = torch.tensor([0.0, 1.0], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autograd.detect_anomaly():
            with pytest.raises(RuntimeError, match="SqrtBackward0.*nan"): ((xt.sqrt()) * 0.0).sum().backward()


def test_backward_does_not_check_its_own_ops_as_forward_ops():
    "The gradient's computation is checked once, as a gradient: a bad gradient is never reported as a forward op."
    x = Tensor([0.0])
    with detect_anomaly():
        with pytest.raises(RuntimeError, match="the gradient of"): ndl.summation(x ** 0.5).backward()
    assert not autograd.is_anomaly_enabled()


def test_decorator_global_switch_and_nesting():
    @detect_anomaly()
    def bad(): return ndl.log(Tensor([0.0]))
    with pytest.raises(RuntimeError, match="Log produced"): bad()
    autograd.set_detect_anomaly(True)
    try:
        assert autograd.is_anomaly_enabled()
        with detect_anomaly(check_nan=False):
            assert not autograd.is_anomaly_enabled()
            ndl.log(Tensor([0.0]))           # switched off inside
        assert autograd.is_anomaly_enabled()
    finally:
        autograd.set_detect_anomaly(False)
    assert not autograd.is_anomaly_enabled()


def test_gradient_check_and_create_graph_work_under_anomaly_mode():
    x = Tensor([0.5, 1.5], dtype="float64")
    with detect_anomaly():
        ndl.summation(ndl.exp(x) * x).backward(create_graph=True)
        ndl.summation(x.grad).backward()
    np.testing.assert_allclose(x.grad.numpy(), np.exp([0.5, 1.5]) * ([0.5, 1.5] + np.array(2.0)), rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, (3, 4), elements=st.floats(-5, 5)))
def test_anomaly_mode_changes_no_value_or_gradient(a):
    def run():
        x = Tensor(a, dtype="float64")
        out = ndl.summation(ndl.logsoftmax(ndl.tanh(x) * 3.0) + ndl.exp(x) * 0.1)
        out.backward()
        return out.numpy(), x.grad.numpy()
    plain = run()
    with detect_anomaly(): checked = run()
    for p, c in zip(plain, checked): np.testing.assert_array_equal(p, c)
