"""`Tensor.register_post_accumulate_grad_hook`: PyTorch's semantics (order, once per backward, final gradient,
remove), with needle's rule that each backward replaces `.grad`."""
import numpy as np
import pytest

import needle_nb as ndl
from needle_nb.autograd import Tensor


def _mlp(lib, params, x):
    "x @ w1 -> relu -> (w2 as the matmul's *first* operand) -> sum, the same graph in needle_nb and torch."
    w1, w2, w3 = params
    h = lib.relu(x @ w1) if lib is ndl else (x @ w1).relu()
    h = (w2 @ h.transpose() if lib is ndl else w2 @ h.T)   # (3, 4) @ (4, 5): w2 first
    return (h * w3).sum() if lib is not ndl else ndl.summation(h * w3)


def _params(rs):
    return [rs.randn(6, 4), rs.randn(3, 4), rs.randn(3, 5)]


def test_order_and_final_gradients_match_torch(torch, rs):
    arrays, x = _params(rs), rs.randn(5, 6)
    ours = [Tensor(a, dtype="float64") for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    seen_ours, seen_theirs = [], []
    for i, p in enumerate(ours):
        p.register_post_accumulate_grad_hook(lambda t, i=i: seen_ours.append((i, t.grad.numpy().copy())))
    for i, p in enumerate(theirs):
        p.register_post_accumulate_grad_hook(lambda t, i=i: seen_theirs.append((i, t.grad.numpy().copy())))
    _mlp(ndl, ours, Tensor(x, dtype="float64", requires_grad=False)).backward()
    _mlp(torch, theirs, torch.tensor(x)).backward()
    assert [i for i, _ in seen_ours] == [i for i, _ in seen_theirs] == [2, 1, 0]
    for (_, g), (_, h) in zip(seen_ours, seen_theirs): np.testing.assert_allclose(g, h, rtol=1e-12)
    # what the hook saw is what `.grad` holds after backward: it was final
    for (i, g) in seen_ours: np.testing.assert_array_equal(g, ours[i].grad.numpy())


def test_called_once_per_backward_after_all_contributions(torch):
    x = Tensor([1.0, 2.0])
    calls = []
    x.register_post_accumulate_grad_hook(lambda t: calls.append(t.grad.numpy().copy()))
    y = x * x + x * 3.0 + ndl.exp(x)   # four uses of x: one call, with the sum of all four
    y.backward()
    assert len(calls) == 1
    xt = torch.tensor([1.0, 2.0], requires_grad=True)
    (xt * xt + xt * 3.0 + xt.exp()).sum().backward()
    np.testing.assert_allclose(calls[0], xt.grad.numpy(), rtol=1e-6)


def test_two_backwards_call_twice_and_each_sees_its_own_gradient(torch):
    # needle replaces .grad on each backward, PyTorch adds: the hook sees this pass's gradient here,
    # the running sum in torch; the difference of torch's two observations is our second.
    x = Tensor([1.0, 2.0])
    calls = []
    x.register_post_accumulate_grad_hook(lambda t: calls.append(t.grad.numpy().copy()))
    (x * 3.0).backward()
    (x * x).backward()
    xt = torch.tensor([1.0, 2.0], requires_grad=True)
    seen = []
    xt.register_post_accumulate_grad_hook(lambda t: seen.append(t.grad.numpy().copy()))
    (xt * 3.0).sum().backward()
    (xt * xt).sum().backward()
    assert len(calls) == len(seen) == 2
    np.testing.assert_allclose(calls[0], seen[0])
    np.testing.assert_allclose(calls[1], seen[1] - seen[0])


def test_remove_unregisters_and_is_idempotent():
    x = Tensor([1.0])
    a, b = [], []
    ha = x.register_post_accumulate_grad_hook(lambda t: a.append(1))
    x.register_post_accumulate_grad_hook(lambda t: b.append(1))
    (x * 2.0).backward()
    ha.remove(); ha.remove()
    (x * 2.0).backward()
    assert a == [1] and b == [1, 1]
    with x.register_post_accumulate_grad_hook(lambda t: a.append(2)):
        (x * 2.0).backward()
    (x * 2.0).backward()
    assert a == [1, 2]


def test_hooks_run_in_registration_order_and_may_remove_themselves():
    x = Tensor([1.0])
    log = []
    handles = []
    handles.append(x.register_post_accumulate_grad_hook(lambda t: (log.append("first"), handles[0].remove())[-1]))
    x.register_post_accumulate_grad_hook(lambda t: log.append("second"))
    (x * 2.0).backward(); (x * 2.0).backward()
    assert log == ["first", "second", "second"]


def test_gradients_unchanged_by_hooks(rs):
    arrays, x = _params(rs), rs.randn(5, 6)
    plain = [Tensor(a, dtype="float64") for a in arrays]
    hooked = [Tensor(a, dtype="float64") for a in arrays]
    handles = [p.register_post_accumulate_grad_hook(lambda t: None) for p in hooked]
    xs = Tensor(x, dtype="float64", requires_grad=False)
    _mlp(ndl, plain, xs).backward(); _mlp(ndl, hooked, xs).backward()
    for p, q in zip(plain, hooked): np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy())
    for h in handles: h.remove()


def test_output_that_is_a_leaf_runs_its_hook():
    x = Tensor([1.0, 2.0])
    calls = []
    x.register_post_accumulate_grad_hook(lambda t: calls.append(t.grad.numpy().tolist()))
    x.backward()
    assert calls == [[1.0, 1.0]]


def test_refusals_as_torch(torch):
    x = Tensor([1.0])
    with pytest.raises(RuntimeError, match="non-leaf"): (x * 2.0).register_post_accumulate_grad_hook(print)
    with pytest.raises(RuntimeError, match="doesn't require gradient"):
        Tensor([1.0], requires_grad=False).register_post_accumulate_grad_hook(print)
    with pytest.raises(TypeError, match="callable"): x.register_post_accumulate_grad_hook(3)
    h = x.register_post_accumulate_grad_hook(lambda t: 5)
    with pytest.raises(TypeError, match="return None"): (x * 2.0).backward()
    h.remove()
    xt = torch.ones(1, requires_grad=True)
    with pytest.raises(RuntimeError, match="non-leaf"): (xt * 2).register_post_accumulate_grad_hook(print)
