"""Gradients are plain leaves unless `backward(create_graph=True)` (PyTorch's rule): after `loss.backward(create_graph=False)` and
`del loss` the forward graph is freed; grad of grad works through `create_graph=True`."""
import gc, weakref

import numpy as np
import pytest

import needle_nb as ndl
from needle_nb import nn, optim
from needle_nb.autograd import Tensor
from conftest import assert_memory_flat


def _forward(rs):
    w = Tensor(rs.randn(4, 3))
    x = Tensor(rs.randn(5, 4), requires_grad=False)
    h = ndl.exp(x @ w)            # exp's gradient uses its output: a graph gradient would keep h alive
    r = ndl.relu(h - 1.0)
    loss = ndl.summation(r * r)
    return w, [h, r], loss


def test_gradients_are_plain_leaves(rs):
    w, _, loss = _forward(rs)
    loss.backward(create_graph=False)
    assert w.grad.op is None and w.grad.inputs == () and not w.grad.requires_grad
    assert isinstance(w.grad.numpy(), np.ndarray) and w.grad.shape == w.shape


def test_intermediates_die_with_the_output_by_reference_counting(rs):
    w, inter, loss = _forward(rs)
    refs = [weakref.ref(t) for t in inter] + [weakref.ref(loss)]
    del inter
    loss.backward(create_graph=False)
    gc.disable()
    try:
        del loss
        assert [r() for r in refs] == [None] * len(refs)   # freed at once, no cycle collector needed
    finally:
        gc.enable()
    assert w.grad is not None   # the gradient outlives the graph


def test_create_graph_keeps_the_graph_alive_through_the_gradient(rs):
    w, inter, loss = _forward(rs)
    ref = weakref.ref(inter[0])
    del inter
    loss.backward(create_graph=True)
    del loss
    gc.collect()
    assert ref() is not None            # reachable from w.grad's graph, as asked
    assert w.grad.requires_grad and w.grad.op is not None
    w.grad = None
    gc.collect()
    assert ref() is None


def test_grad_of_grad_with_create_graph_matches_torch(torch, rs):
    a = rs.randn(3, 4)
    x = Tensor(a, dtype="float64")
    y = ndl.summation(ndl.exp(x) * ndl.tanh(x) * x)
    y.backward(create_graph=True)
    ndl.summation(x.grad * x.grad).backward()
    xt = torch.tensor(a, requires_grad=True)
    (g,) = torch.autograd.grad((xt.exp() * xt.tanh() * xt).sum(), xt, create_graph=True)
    (g * g).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-10)


def test_grad_of_grad_by_finite_differences(rs):
    a = rs.randn(5)
    f = lambda t: ndl.summation(ndl.log(ndl.exp(t) + 1.0) * t)
    x = Tensor(a, dtype="float64")
    f(x).backward(create_graph=True)
    ndl.summation(x.grad).backward()   # d/dx Σ f'(x) = f''(x), elementwise
    def first(v):
        t = Tensor(v, dtype="float64"); f(t).backward(); return t.grad.numpy().sum()
    eps = 1e-6
    fd = np.array([(first(a + eps * e) - first(a - eps * e)) / (2 * eps) for e in np.eye(5)])
    np.testing.assert_allclose(x.grad.numpy(), fd, rtol=1e-6, atol=1e-8)


def test_backward_of_a_plain_gradient_says_create_graph(rs):
    w, _, loss = _forward(rs)
    loss.backward(create_graph=False)
    with pytest.raises(RuntimeError, match="create_graph=True"): w.grad.backward()


def test_retain_graph_is_accepted_and_backward_twice_works(rs):
    w, _, loss = _forward(rs)
    loss.backward(retain_graph=True, create_graph=False)
    first = w.grad.numpy().copy()
    loss.backward(create_graph=False)
    np.testing.assert_array_equal(w.grad.numpy(), first)


def test_gradient_values_unchanged_by_create_graph(rs):
    w, _, loss = _forward(rs)
    loss.backward(create_graph=False)
    plain = w.grad.numpy().copy()
    loss.backward(create_graph=True)
    np.testing.assert_array_equal(w.grad.numpy(), plain)


def test_no_grad_mode_is_restored_after_backward_even_on_error(rs):
    w, _, loss = _forward(rs)
    loss.backward(create_graph=False)
    assert ndl.autograd.is_grad_enabled()
    with ndl.autograd.no_grad():
        loss.backward(create_graph=True)
        assert not ndl.autograd.is_grad_enabled()
    class Broken(ndl.autograd.TensorOp):
        def compute(self, a): return a * 1
        def gradient(self, out_grad, node): raise ZeroDivisionError("boom")
    with pytest.raises(ZeroDivisionError): ndl.summation(Broken()(w)).backward()
    assert ndl.autograd.is_grad_enabled()


def test_a_long_training_loop_keeps_memory_flat(rs):
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = Tensor(rs.randn(32, 8), requires_grad=False)
    y = Tensor(rs.randint(0, 3, 32), requires_grad=False)
    loss_fn = nn.SoftmaxLoss()
    def step():
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward(create_graph=False)
        opt.step()
        return loss
    assert_memory_flat(step, warmup=50, steps=300)


def test_no_step_graph_is_held_between_steps(rs):
    "Between steps (gradients set, loss dropped) only the model's leaves and their gradients live."
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x = Tensor(rs.randn(32, 8), requires_grad=False)
    y = Tensor(rs.randint(0, 3, 32), requires_grad=False)
    gc.collect()
    before = ndl.autograd.TENSOR_COUNTER
    loss = nn.SoftmaxLoss()(model(x), y)
    loss.backward(create_graph=False)
    del loss
    gc.collect()
    # one gradient per parameter, nothing else
    assert ndl.autograd.TENSOR_COUNTER - before == len(model.parameters())


def test_needles_default_backward_records_so_hw1_grad_of_grad_runs_unchanged():
    "needle's hw1 test_compute_gradient (its gradient-of-gradient part), verbatim: needle wins over PyTorch."
    x2 = ndl.Tensor([6])
    x3 = ndl.Tensor([0])
    y = x2 * x2 + x2 * x3
    y.backward()
    grad_x2 = x2.grad
    grad_x3 = x3.grad
    # gradient of gradient
    grad_x2.backward()
    grad_x2_x2 = x2.grad
    grad_x2_x3 = x3.grad
    x2_val = x2.numpy()
    x3_val = x3.numpy()
    assert y.numpy() == x2_val * x2_val + x2_val * x3_val
    assert grad_x2.numpy() == 2 * x2_val + x3_val
    assert grad_x3.numpy() == x2_val
    assert grad_x2_x2.numpy() == 2
    assert grad_x2_x3.numpy() == 1


def test_under_no_grad_the_default_backward_gives_plain_leaves():
    x = ndl.Tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    with ndl.no_grad(): y.backward()
    assert not x.grad.requires_grad
