"""Gradients at the edges of an op's domain, against PyTorch (float64), table-driven."""
import numpy as np
import pytest
import torch

import needle_nb as ndl

# (name, needle function, torch function, inputs)
CASES = [
    ("0**2 d/da", lambda a: a ** 2.0, lambda a: a ** 2.0, [[0.0, 1.0]]),
    ("x**0 d/dx at 0", lambda a: a ** 0, lambda a: a ** 0, [[0.0, 2.0]]),
    ("x**0.5 at 0 (inf)", lambda a: a ** 0.5, lambda a: a ** 0.5, [[0.0, 4.0]]),
    ("x**-1 at 0 (-inf)", lambda a: a ** -1, lambda a: a ** -1, [[0.0, 2.0]]),
    ("a**b, a=0, b=2", lambda a, b: a ** b, lambda a, b: a ** b, [[0.0, 0.0, 2.0], [2.0, 0.0, 3.0]]),
    ("a**b, a=0, b=0", lambda a, b: a ** b, lambda a, b: a ** b, [[0.0], [0.0]]),
    ("relu at 0", ndl.relu, torch.relu, [[-1.0, 0.0, 2.0]]),
    ("amax ties", lambda a: ndl.amax(a, axes=(1,)), lambda a: torch.amax(a, dim=1), [[[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]]),
    ("log at 0", ndl.log, torch.log, [[0.0, 1.0]]),
    ("exp overflow", ndl.exp, torch.exp, [[800.0, -800.0]]),
    ("tanh saturation", ndl.tanh, torch.tanh, [[40.0, -40.0, 1e-300]]),
    ("sigmoid saturation", ndl.sigmoid, torch.sigmoid, [[800.0, -800.0]]),
    ("logsumexp with -inf", lambda a: ndl.logsumexp(a, axes=(1,)), lambda a: torch.logsumexp(a, 1), [[[0.0, -np.inf]]]),
    ("logsumexp all -inf row (-inf, grad NaN)", lambda a: ndl.logsumexp(a, axes=(1,)), lambda a: torch.logsumexp(a, 1), [[[-np.inf, -np.inf]]]),
    ("logsoftmax all -inf row (NaN)", ndl.logsoftmax, lambda a: torch.log_softmax(a, -1), [[[-np.inf, -np.inf]]]),
    ("logsoftmax with -inf", ndl.logsoftmax, lambda a: torch.log_softmax(a, -1), [[[0.0, -np.inf, 1.0]]]),
    ("softmax with -inf", ndl.softmax, lambda a: torch.softmax(a, -1), [[[0.0, -np.inf, 1.0]]]),
]


@pytest.mark.parametrize("name,ours,theirs,inputs", CASES, ids=[c[0] for c in CASES])
def test_edge_gradient_as_torch(name, ours, theirs, inputs):
    xs = [ndl.Tensor(np.array(x, dtype=np.float64), requires_grad=True) for x in inputs]
    ts = [torch.tensor(np.array(x, dtype=np.float64), requires_grad=True) for x in inputs]
    with np.errstate(all="ignore"):
        out = ours(*xs)
        out.sum().backward()
    t_out = theirs(*ts)
    t_out.sum().backward()
    np.testing.assert_allclose(out.numpy(), t_out.detach().numpy())
    for x, t in zip(xs, ts):
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), err_msg=name)


def test_max_ties_split_as_amax_not_as_max_dim():
    # on purpose: Tensor.max is needle's reduction (no indices), so its ties share as torch.amax's;
    # torch.max(x, dim) returns an index and puts the whole gradient on it
    x = ndl.Tensor(np.array([[1.0, 3.0, 3.0]]), requires_grad=True)
    x.max(axes=(1,)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0.0, 0.5, 0.5]])
