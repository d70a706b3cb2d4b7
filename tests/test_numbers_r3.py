"""Issue #26 item 1: every place that takes a number takes it in every form needle does.

needle's own homework tests pass `np.random.randn(1)` (a one-element array) as the scalar of
`divide_scalar`; numpy scalars of any dtype, 0-d arrays and bools are numbers too. Strings, None,
Tensors, non-numeric arrays and arrays of more (or fewer) than one element are refused with a
TypeError that names the argument, and a refused setting changes nothing.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import needle_nb as ndl
from needle_nb import nn, optim
from needle_nb.backend import as_number

NUMERIC_DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                  np.uint8, np.uint16, np.uint32, np.uint64]


def number_forms(v):
    "The forms needle accepts for the number `v` (non-negative, whole where an int dtype needs it)."
    forms = [v, float(v), np.array(v), np.array([v]), np.array([[v]]), [v]]
    forms += [dt(v) for dt in NUMERIC_DTYPES if dt(v) == v]
    return forms


BAD = [("2.0", "str"), (None, "NoneType"), (np.array([1.0, 2.0]), "2 elements"), (np.zeros(0), "0 elements"),
       (np.array(["2"]), "dtype"), (np.array([object()]), "dtype"), ([1.0, 2.0], "2 elements"),
       (2 + 1j, "complex"), (np.complex128(2), "dtype"), (ndl.Tensor([2.0]), "item()"), ({}, "dict")]


@pytest.mark.parametrize("form", number_forms(2), ids=lambda f: f"{type(f).__name__}{getattr(f, 'shape', '')}")
def test_as_number_gives_a_python_number(form):
    got = as_number(form)
    assert type(got) in (int, float) and got == 2


def test_bools_are_numbers():
    for b in (True, np.bool_(True), np.array([True])):
        assert as_number(b) == 1 and type(as_number(b)) is int
    assert as_number(False) == 0


@pytest.mark.parametrize("bad,says", BAD, ids=lambda b: type(b).__name__)
def test_as_number_refuses_what_is_not_one_number(bad, says):
    with pytest.raises(TypeError, match="lr") as e: as_number(bad, "lr")
    assert says in str(e.value)


SCALAR_OPS = [(ndl.add_scalar, np.add), (ndl.mul_scalar, np.multiply), (ndl.divide_scalar, np.divide),
              (ndl.power_scalar, np.power)]


@pytest.mark.parametrize("op,ref", SCALAR_OPS, ids=lambda o: getattr(o, "__name__", ""))
@pytest.mark.parametrize("form", number_forms(3), ids=lambda f: f"{type(f).__name__}{getattr(f, 'shape', '')}")
def test_scalar_ops_take_every_form_of_number(op, ref, form):
    x = np.abs(np.random.RandomState(0).randn(4, 5)).astype(np.float32) + 0.5
    out = op(ndl.Tensor(x), form)
    assert out.shape == (4, 5) and out.dtype == np.float32     # float32 stays float32, the shape is x's
    np.testing.assert_allclose(out.numpy(), ref(x, np.float32(3)), rtol=1e-6)


@pytest.mark.parametrize("op,ref", SCALAR_OPS, ids=lambda o: getattr(o, "__name__", ""))
@pytest.mark.parametrize("bad,says", BAD, ids=lambda b: type(b).__name__)
def test_scalar_ops_refuse_what_is_not_one_number(op, ref, bad, says):
    with pytest.raises(TypeError, match="scalar operand") as e: op(ndl.Tensor([1.0, 2.0]), bad)
    assert says in str(e.value)


def test_needles_homework_divide_scalar_with_a_one_element_array():
    "hw1's test_divide_scalar_backward, verbatim in spirit: scalar=np.random.randn(1)."
    np.random.seed(0)
    c = np.random.randn(1)
    x = ndl.Tensor(np.random.randn(5, 4))
    ndl.ops.gradient_check(ndl.divide_scalar, x, scalar=c, backward=True)
    np.testing.assert_allclose(ndl.divide_scalar(x, c).numpy(), x.numpy() / c[0], rtol=1e-12)
    y = ndl.Tensor(np.random.randn(5, 4))
    ndl.ops.gradient_check(ndl.mul_scalar, y, scalar=np.random.randn(1), backward=True)


@pytest.mark.parametrize("form", [np.float32(2.5), np.array(2.5), np.array([2.5]), True],
                         ids=lambda f: type(f).__name__)
def test_operators_with_a_number_on_either_side(form):
    x = ndl.Tensor(np.array([1.0, 2.0], np.float32))
    v = as_number(form)
    for got, want in [(x + form, [1 + v, 2 + v]), (x - form, [1 - v, 2 - v]), (x * form, [v, 2 * v]),
                      (x / form, [1 / v, 2 / v])]:
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(v=st.floats(0.01, 0.99), kind=st.sampled_from(["py", "np32", "0d", "1el", "2d1el"]))
def test_settings_take_every_form(v, kind):
    form = {"py": v, "np32": np.float32(v), "0d": np.array(v), "1el": np.array([v]), "2d1el": np.array([[v]])}[kind]
    want = float(np.float32(v)) if kind == "np32" else v
    assert nn.LeakyReLU(form).negative_slope == want
    assert nn.Dropout(form).p == want
    bn = nn.BatchNorm1d(3, eps=form, momentum=form)
    assert bn.eps == want and bn.momentum == want
    assert nn.LayerNorm1d(3, eps=form).eps == want
    model = nn.Linear(3, 2)
    sgd = optim.SGD(model.parameters(), lr=form, momentum=form, weight_decay=form)
    adam = optim.Adam(model.parameters(), lr=form, beta1=form, beta2=form, eps=form)
    for o in (sgd, adam):
        assert o.lr == want and type(o.lr) is float


def test_settings_refuse_bad_forms_and_change_nothing():
    model = nn.Linear(3, 2)
    opt = optim.SGD(model.parameters(), lr=0.1)
    for bad, says in BAD:
        with pytest.raises(TypeError, match="SGD: lr") as e: opt.lr = bad
        assert says in str(e.value)
        assert opt.lr == 0.1
        with pytest.raises(TypeError, match="LeakyReLU: negative_slope"): nn.LeakyReLU(bad)
        with pytest.raises(TypeError, match="Dropout: p"): nn.Dropout(bad)
        with pytest.raises(TypeError, match="BatchNorm1d: eps"): nn.BatchNorm1d(3, eps=bad)
        with pytest.raises(TypeError, match="clip_grad_norm_: max_norm"):
            optim.clip_grad_norm_(model.parameters(), bad)


def test_a_step_with_array_hyperparameters_matches_plain_floats():
    "An optimizer built with np.array([lr]) makes exactly the step that lr makes (needle's numbers)."
    np.random.seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    x = ndl.Tensor(np.random.randn(8, 4).astype(np.float32))
    oa = optim.Adam(a.parameters(), lr=0.01, weight_decay=0.001)
    ob = optim.Adam(b.parameters(), lr=np.array([0.01]), weight_decay=np.float64(0.001))
    for model, opt in ((a, oa), (b, ob)):
        for _ in range(3):
            opt.reset_grad(); (model(x) ** 2).sum().backward(); opt.step()
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(va, vb, err_msg=k)


def test_clip_grad_norm_takes_a_one_element_array():
    w = nn.Parameter(np.array([3.0, 4.0], np.float32))
    (w * w).sum().backward()          # grad (6, 8), norm 10
    total = optim.clip_grad_norm_([w], np.array([5.0]))
    assert abs(total - 10.0) < 1e-5
    np.testing.assert_allclose(w.grad.numpy(), [3.0, 4.0], rtol=1e-5)
