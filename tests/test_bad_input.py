"""Bad input never passes silently (issue 13).

- `BAD`: a table of bad inputs across every layer (backend, autograd, ops, init, nn, optim, data). Each
  must raise an exception of the documented type whose message names the offending value, and leave
  the object it was called on byte-identical (parameters, gradients, buffers, registries, optimizer
  and scheduler state, files, and both random streams).
- The edge cases that must give a correct result (PyTorch's value, or needle's on purpose).
- hypothesis strategies for shapes and axes: every reduction and transpose either agrees with numpy or
  raises a `ValueError`, never wraps an axis around.
"""
import gzip, math, os, re, warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import needle_nb as ndl
import needle_nb.apps.init_studies as studies
from needle_nb import init, nn, optim
from needle_nb.autograd import Tensor, no_grad
from needle_nb.backend import rng
from needle_nb.data import DataLoader, NDArrayDataset, RandomCrop, RandomFlipHorizontal, parse_mnist


# --- snapshots: everything a failing call could have changed --------------------------------------
def _tensor_state(t):
    if t is None: return None
    grad = None if t.grad is None else _tensor_state(t.grad)
    data = t.numpy()
    return (data.tobytes(), data.shape, str(data.dtype), t.requires_grad, grad, t.op is None)

def snapshot(obj):
    "A comparable picture of `obj` and of both random streams."
    if isinstance(obj, Tensor): own = _tensor_state(obj)
    elif isinstance(obj, nn.Module):
        own = [(name, _tensor_state(t)) for name, t in obj.state_dict().items()]
        own += [(name, m.training, {r: list(m.__dict__[r]) for r in ("_parameters", "_buffers", "_modules")},
                 [_tensor_state(p.grad) if p.grad is not None else None for p in m._parameters.values() if p is not None])
                for name, m in obj.named_modules()]
    elif isinstance(obj, optim.Optimizer):
        own = ({k: getattr(obj, k) for k in obj.hyperparameters + obj.counters},
               {(i, k): v.tobytes() for i, s in obj.state.items() for k, v in s.items()},
               [_tensor_state(p) for p in obj.params])
    elif isinstance(obj, optim.LRScheduler):
        own = ({k: v for k, v in vars(obj).items() if k != "optimizer"}, snapshot(obj.optimizer))
    elif isinstance(obj, DataLoader):
        own = (obj._iterator, [o.tobytes() for o in getattr(obj, "ordering", [])])
    elif isinstance(obj, (str, os.PathLike)):
        own = (open(obj, "rb").read(), os.stat(obj).st_mode)
    else: own = None
    return own, np.random.get_state()[1].tobytes(), rng().bit_generator.state


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.npz"
    nn.save({"w": Tensor([1.0, 2.0])}, path)
    return str(path)


def model():
    np.random.seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))

def trained_params():
    "Two parameters with gradients and an Adam that has taken one step."
    w, b = Tensor(np.ones((2, 3), np.float32)), Tensor(np.zeros(3, np.float32))
    opt = optim.Adam([w, b], lr=0.1)
    (Tensor(np.ones((4, 2), np.float32)) @ w + b).sum().backward()
    opt.step()
    return w, b, opt

def adam_with_state():
    return trained_params()[2]

def sgd_with_bad_grad():
    w, b = Tensor(np.ones((2, 3), np.float32)), Tensor(np.zeros(3, np.float32))
    w.grad, b.grad = Tensor(np.ones((2, 3), np.float32)), Tensor(np.ones((2, 2), np.float32))
    return optim.SGD([w, b], lr=0.1, momentum=0.5)


def sgd_edited(edit):
    "An SGD with momentum after one step, gradients still set, whose state `edit(opt.state)` then changes by hand."
    w, b = Tensor(np.ones((2, 3), np.float32)), Tensor(np.zeros(3, np.float32))
    opt = optim.SGD([w, b], lr=0.1, momentum=0.5)
    (Tensor(np.ones((4, 2), np.float32)) @ w + b).sum().backward()
    opt.step()
    edit(opt.state)
    return opt

def adam_edited(edit):
    "`trained_params()`'s Adam, whose state `edit(opt.state)` then changes by hand (parameter 0 first in a step)."
    opt = trained_params()[2]
    edit(opt.state)
    return opt

def int_requiring_grad():
    "An integer tensor whose requires_grad was switched on after construction (the constructor refuses it)."
    x = Tensor(np.array([1, 2, 3]))
    x.requires_grad = True
    return x


def scheduler():
    return optim.StepLR(optim.SGD([Tensor([1.0])], lr=0.1), step_size=2)

def loader():
    return DataLoader(NDArrayDataset(np.arange(6.0)), batch_size=2)

def no_grad_result():
    x = Tensor([1.0, 2.0])
    with no_grad(): y = x * 2
    return y

def truncated_gzip(tmp_path):
    payload = np.random.RandomState(0).bytes(4000)
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + payload)[:200])
    return str(path)

X = lambda: Tensor(np.arange(6.0).reshape(2, 3))
W = lambda: Tensor(np.zeros((4, 3), np.float32))

# (id, make the object (or None), the bad call on it, exception type, text the message must contain)
BAD = [
    # backend and autograd: what a tensor may hold, where it lives
    ("Tensor of strings", None, lambda _: Tensor(["1", "2"]), TypeError, "'1'"),
    ("Tensor(None)", None, lambda _: Tensor(None), TypeError, "NoneType"),
    ("Tensor of objects", None, lambda _: Tensor(np.array([1, "a"], dtype=object)), TypeError, "object"),
    ("Tensor({})", None, lambda _: Tensor({}), TypeError, "dict"),
    ("Tensor ragged list", None, lambda _: Tensor([[1, 2], [3]]), ValueError, "[[1, 2], [3]]"),
    ("Tensor dtype str", None, lambda _: Tensor([1.0], dtype="U3"), TypeError, "U3"),
    ("Tensor copy dtype str", X, lambda x: Tensor(x, dtype="U3"), TypeError, "U3"),
    ("astype str", X, lambda x: x.astype("U3"), TypeError, "U3"),
    ("Tensor device typo", None, lambda _: Tensor([1.0], device="gpu"), ValueError, "'gpu'"),
    ("Tensor device int", None, lambda _: Tensor([1.0], device=3), TypeError, "int 3"),
    ("cuda index", None, lambda _: ndl.cuda(-1), ValueError, "-1"),
    ("bool of 2 values", X, lambda x: bool(x), RuntimeError, "(2, 3)"),
    ("len of 0-d", lambda: Tensor(3.0), lambda x: len(x), TypeError, "0-d"),
    ("backward under no_grad", no_grad_result, lambda y: y.backward(), RuntimeError, "no_grad"),
    ("backward of an integer leaf requiring grad", int_requiring_grad, lambda x: (x * 2.5).sum().backward(),
     RuntimeError, "floating point"),
    ("backward out_grad shape", X, lambda x: (x * 2).backward(Tensor(np.ones(3))), ValueError, "(3,)"),
    ("to unknown device", X, lambda x: x.to("tpu"), ValueError, "'tpu'"),
    # ops: axes are never wrapped around, operands are numbers or arrays
    ("summation axis 5", X, lambda x: ndl.summation(x, axes=(5,)), ValueError, "axis 5"),
    ("summation axis -3", X, lambda x: ndl.summation(x, axes=(-3,)), ValueError, "axis -3"),
    ("sum axis 2", X, lambda x: x.sum(2), ValueError, "axis 2"),
    ("summation repeated axis", X, lambda x: ndl.summation(x, axes=(1, -1)), ValueError, "twice"),
    ("summation float axis", X, lambda x: ndl.summation(x, axes=(0.5,)), ValueError, "0.5"),
    ("amax axis 5", X, lambda x: ndl.amax(x, axes=(5,)), ValueError, "axis 5"),
    ("logsumexp axis 2", X, lambda x: ndl.logsumexp(x, axes=(2,)), ValueError, "axis 2"),
    ("softmax axis 3", X, lambda x: ndl.softmax(x, axes=(3,)), ValueError, "axis 3"),
    ("transpose 3 axes", X, lambda x: ndl.transpose(x, (0, 1, 2)), ValueError, "(0, 1, 2)"),
    ("transpose axis 5", X, lambda x: x.transpose((0, 5)), ValueError, "5"),
    ("stack of nothing", None, lambda _: ndl.stack([]), ValueError, "empty"),
    ("split axis 5", X, lambda x: ndl.split(x, 5), ValueError, "axis 5"),
    ("add a string", X, lambda x: x + "a", TypeError, "'a'"),
    ("mul None", X, lambda x: x * None, TypeError, "None"),
    ("matmul shapes", X, lambda x: x @ x, ValueError, "(2, 3)"),
    ("reshape size", X, lambda x: x.reshape((4, 2)), ValueError, "(4, 2)"),
    ("reshape -2", X, lambda x: x.reshape((-2, 3)), ValueError, "(-2, 3)"),
    ("gelu approximate", X, lambda x: ndl.gelu(x, "fast"), ValueError, "'fast'"),
    # init: sizes are integers, bounds finite, labels whole
    ("rand float size", None, lambda _: init.rand(2.5, 3), TypeError, "2.5"),
    ("zeros negative size", None, lambda _: init.zeros(-1, 2), ValueError, "-1"),
    ("rand infinite bound", None, lambda _: init.rand(3, low=-math.inf), ValueError, "-inf"),
    ("randn nan std", None, lambda _: init.randn(3, std=math.nan), ValueError, "nan"),
    ("init device typo", None, lambda _: init.zeros(2, device="cuda:x"), ValueError, "'cuda:x'"),
    ("uniform_ -inf", W, lambda t: init.uniform_(t, -math.inf, 1), ValueError, "-inf"),
    ("uniform_ a > b", W, lambda t: init.uniform_(t, 1, 0), ValueError, "a=1"),
    ("normal_ nan mean", W, lambda t: init.normal_(t, mean=math.nan), ValueError, "nan"),
    ("normal_ negative std", W, lambda t: init.normal_(t, std=-1.0), ValueError, "-1.0"),
    ("trunc_normal_ inf mean", W, lambda t: init.trunc_normal_(t, mean=math.inf), ValueError, "inf"),
    ("trunc_normal_ a >= b", W, lambda t: init.trunc_normal_(t, a=1.0, b=1.0), ValueError, "a=1.0"),
    ("one_hot fractional", None, lambda _: init.one_hot(3, [0.5, 1, 2]), ValueError, "0.5"),
    ("one_hot nan", None, lambda _: init.one_hot(3, np.array([np.nan, 1.0])), ValueError, "nan"),
    ("one_hot out of range", None, lambda _: init.one_hot(3, [3]), ValueError, "3"),
    ("one_hot float n", None, lambda _: init.one_hot(2.5, [0]), TypeError, "float"),
    # nn: layers, the module tree, state dicts and checkpoints
    ("SoftmaxLoss fractional label", lambda: Tensor(np.zeros((3, 3), np.float32)),
     lambda z: nn.SoftmaxLoss()(z, Tensor([0.5, 1, 2])), ValueError, "0.5"),
    ("Embedding fractional index", lambda: nn.Embedding(5, 2),
     lambda m: m(Tensor([1.5, 2.0])), ValueError, "1.5"),
    ("Embedding index range", lambda: nn.Embedding(5, 2), lambda m: m(Tensor([7])), IndexError, "7"),
    ("Linear wrong features", lambda: nn.Linear(3, 4), lambda m: m(Tensor(np.ones((2, 5)))), ValueError, "(2, 5)"),
    ("BatchNorm1d empty batch", model, lambda m: m(Tensor(np.zeros((0, 3), np.float32))), ValueError, "batch size 0"),
    ("BatchNorm1d momentum", None, lambda _: nn.BatchNorm1d(3, momentum=2.0), ValueError, "2.0"),
    ("BatchNorm1d eps", None, lambda _: nn.BatchNorm1d(3, eps=-1.0), ValueError, "-1.0"),
    ("Dropout p", None, lambda _: nn.Dropout(1.5), ValueError, "1.5"),
    ("LayerNorm1d eps", None, lambda _: nn.LayerNorm1d(3, eps=-1.0), ValueError, "-1.0"),
    ("LeakyReLU slope", None, lambda _: nn.LeakyReLU("a"), TypeError, "'a'"),
    ("LSTM hidden_size 0", None, lambda _: nn.LSTM(3, 0), ValueError, "hidden_size"),
    ("RNN num_layers 1.5", None, lambda _: nn.RNN(3, 4, num_layers=1.5), ValueError, "1.5"),
    ("RNNCell input_size 0", None, lambda _: nn.RNNCell(0, 4), ValueError, "input_size"),
    ("to int8", model, lambda m: m.to("int8"), TypeError, "int8"),
    ("to bool dtype", model, lambda m: m.to(dtype=np.bool_), TypeError, "bool"),
    ("to neither", model, lambda m: m.to("gpu"), TypeError, "'gpu'"),
    ("to unavailable device", model, lambda m: m.to("cuda:7"), ndl.backend.DeviceUnavailableError, "cuda(7)"),
    ("assign _parameters", model, lambda m: setattr(m, "_parameters", nn.Parameter([1.0])), KeyError, "_parameters"),
    ("register_buffer training", model, lambda m: m.register_buffer("training", Tensor([1.0])), KeyError, "training"),
    ("load_state_dict(None)", model, lambda m: m.load_state_dict(None), TypeError, "NoneType"),
    ("load_state_dict shape", model,
     lambda m: m.load_state_dict({**m.state_dict(), "0.weight": np.zeros((2, 2))}), RuntimeError, "(2, 2)"),
    ("save(model, path)", "checkpoint", lambda p: nn.save(model(), p), TypeError, "state_dict()"),
    ("save non-str key", "checkpoint", lambda p: nn.save({1: Tensor([1.0])}, p), ValueError, "1"),
    ("save object array", "checkpoint", lambda p: nn.save({"a": np.array([None])}, p), ValueError, "'a'"),
    # optim: hyperparameters, parameter lists, gradients and state
    ("SGD negative lr", None, lambda _: optim.SGD([Tensor([1.0])], lr=-0.1), ValueError, "-0.1"),
    ("SGD momentum 1", None, lambda _: optim.SGD([Tensor([1.0])], momentum=1.0), ValueError, "momentum"),
    ("SGD negative momentum", None, lambda _: optim.SGD([Tensor([1.0])], momentum=-0.5), ValueError, "-0.5"),
    ("SGD negative weight decay", None, lambda _: optim.SGD([Tensor([1.0])], weight_decay=-1e-4), ValueError, "-0.0001"),
    ("SGD nan lr", None, lambda _: optim.SGD([Tensor([1.0])], lr=math.nan), ValueError, "nan"),
    ("SGD string lr", None, lambda _: optim.SGD([Tensor([1.0])], lr="0.1"), TypeError, "'0.1'"),
    ("Adam beta2 = 1", None, lambda _: optim.Adam([Tensor([1.0])], beta2=1.0), ValueError, "beta2"),
    ("Adam beta1 > 1", None, lambda _: optim.Adam([Tensor([1.0])], beta1=1.5), ValueError, "1.5"),
    ("Adam negative eps", None, lambda _: optim.Adam([Tensor([1.0])], eps=-1e-8), ValueError, "eps"),
    ("empty parameter list", None, lambda _: optim.SGD([]), ValueError, "empty"),
    ("same parameter twice", W, lambda w: optim.SGD([w, w]), ValueError, "parameter 1"),
    ("SGD(tensor)", W, lambda w: optim.SGD(w), TypeError, "single Tensor"),
    ("integer parameter", None, lambda _: optim.SGD([Tensor(np.array([1, 2]))]), TypeError, "int64"),
    ("step with a wrong-shaped grad", sgd_with_bad_grad, lambda o: o.step(), ValueError, "(2, 2)"),
    # state edited by hand, on parameter 1: a step that failed half-way would have moved parameter 0
    ("SGD state of another shape", lambda: sgd_edited(lambda s: s[1].update(momentum_buffer=np.zeros((2, 3), np.float32))),
     lambda o: o.step(), ValueError, "'momentum_buffer' has shape (2, 3)"),
    ("Adam state of another shape", lambda: adam_edited(lambda s: s[1].update(exp_avg=np.zeros((1, 3), np.float32))),
     lambda o: o.step(), ValueError, "'exp_avg' has shape (1, 3)"),
    ("Adam state of integers", lambda: adam_edited(lambda s: s[1].update(exp_avg_sq=np.zeros(3, np.int64))),
     lambda o: o.step(), ValueError, "int64"),
    ("Adam state missing", lambda: adam_edited(lambda s: s[1].pop("exp_avg")), lambda o: o.step(), ValueError, "no 'exp_avg'"),
    ("set lr negative later", adam_with_state, lambda o: setattr(o, "lr", -0.1), ValueError, "-0.1"),
    ("set beta2 = 1 later", adam_with_state, lambda o: setattr(o, "beta2", 1.0), ValueError, "beta2"),
    ("load a partial Adam state", adam_with_state,
     lambda o: o.load_state_dict({k: v for k, v in o.state_dict().items() if k != "state.0.exp_avg_sq"}),
     KeyError, "exp_avg_sq"),
    ("load Adam state beta2 = 1", adam_with_state,
     lambda o: o.load_state_dict({**o.state_dict(), "beta2": 1.0}), ValueError, "beta2"),
    ("optimizer load None", adam_with_state, lambda o: o.load_state_dict(None), TypeError, "NoneType"),
    ("StepLR step_size 0", None, lambda _: optim.StepLR(optim.SGD([Tensor([1.0])]), step_size=0), ValueError, "0"),
    ("StepLR step_size 2.5", None, lambda _: optim.StepLR(optim.SGD([Tensor([1.0])]), step_size=2.5), TypeError, "2.5"),
    ("Cosine T_max 0", None, lambda _: optim.CosineAnnealingLR(optim.SGD([Tensor([1.0])]), T_max=0), ValueError, "0"),
    ("scheduler load bad key", scheduler,
     lambda s: s.load_state_dict({"last_epoch": 5, "bogus": 1}), KeyError, "'bogus'"),
    # data: loaders, transforms, files
    ("batch_size 0", None, lambda _: DataLoader(NDArrayDataset(np.zeros(3)), batch_size=0), ValueError, "0"),
    ("batch_size True", None, lambda _: DataLoader(NDArrayDataset(np.zeros(3)), batch_size=True), ValueError, "True"),
    ("loader device typo", None, lambda _: DataLoader(NDArrayDataset(np.zeros(3)), device="gpu0"), ValueError, "'gpu0'"),
    ("next before iter", loader, lambda l: next(l), TypeError, "iter(loader)"),
    ("flip a 2-D image", None, lambda _: RandomFlipHorizontal()(np.zeros((4, 4))), ValueError, "(4, 4)"),
    ("crop a 1-D image", None, lambda _: RandomCrop(1)(np.zeros(4)), ValueError, "(4,)"),
    ("crop padding", None, lambda _: RandomCrop(-1), ValueError, "-1"),
    ("flip p", None, lambda _: RandomFlipHorizontal(p=2), ValueError, "2"),
    ("truncated gzip", "truncated_gzip", lambda p: parse_mnist(p, p), ValueError, "images-idx3-ubyte.gz"),
]


@pytest.mark.parametrize("make, call, error, text", [pytest.param(*row[1:], id=row[0]) for row in BAD])
def test_bad_input_is_rejected_and_changes_nothing(make, call, error, text, tmp_path, checkpoint):
    if make == "checkpoint": obj = checkpoint
    elif make == "truncated_gzip": obj = truncated_gzip(tmp_path)
    else: obj = make() if make is not None else None
    before = snapshot(obj)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a warning instead of the error would be a silent pass in practice
        with pytest.raises(error) as caught:
            call(obj)
    assert text in str(caught.value), f"message {str(caught.value)!r} does not name {text!r}"
    assert snapshot(obj) == before, "the failing call changed the object or a random stream"


# --- results that must be right ---------------------------------------------------------------------
def test_integer_tensors_stay_integer_and_record_no_gradient(torch):
    labels = Tensor(np.array([-1, 2]))          # needle's default requires_grad=True: accepted, not raised
    assert labels.dtype == np.int64 and not labels.requires_grad
    np.testing.assert_allclose(ndl.sigmoid(labels).numpy(), torch.sigmoid(torch.tensor([-1.0, 2.0])).numpy(), rtol=1e-6)
    for f, expected in [(lambda t: 2 / t, [-2.0, 1.0]), (lambda t: t / 2, [-0.5, 1.0]), (lambda t: t ** -1, [-1.0, 0.5]),
                        (lambda t: ndl.logsumexp(t), [math.log(math.exp(-1) + math.exp(2))]),
                        (lambda t: ndl.tanh(t), np.tanh([-1.0, 2.0]))]:
        np.testing.assert_allclose(f(labels).numpy(), expected, rtol=1e-12)
    w = Tensor([1.0, 1.0])
    (w * labels).sum().backward()
    assert labels.grad is None and w.grad.numpy().tolist() == [-1.0, 2.0]
    cast = w.astype("int32")                    # a cast to integers ends the graph, as in PyTorch
    assert not cast.requires_grad and cast.op is None


def test_requires_grad_switched_on_an_integer_tensor_is_refused_before_any_grad_changes(torch):
    w, x = Tensor([1.0, 2.0, 3.0]), int_requiring_grad()
    w.grad = old = Tensor([7.0, 7.0, 7.0])
    with pytest.raises(RuntimeError, match="only tensors of floating point dtype can require gradients") as caught:
        (w * x * 2.5).sum().backward()          # w's gradient is reached first: it must not be set either
    assert "(3,)" in str(caught.value) and "int64" in str(caught.value)
    assert w.grad is old and x.grad is None
    with pytest.raises(RuntimeError, match="floating point"):   # PyTorch refuses the same tensor, at once
        torch.tensor([1, 2, 3]).requires_grad = True
    x.requires_grad = False                     # switched back off, the graph is fine again
    (w * x * 2.5).sum().backward()
    assert w.grad.numpy().tolist() == [2.5, 5.0, 7.5] and x.grad is None


@pytest.mark.parametrize("edit, text", [
    (lambda s, w: s.__setitem__(1, np.zeros(3, np.float32)), "its state is a ndarray"),
    (lambda s, w: s[1].update(exp_avg=Tensor(np.zeros(3, np.float32))), "'exp_avg' is a Tensor"),
    (lambda s, w: s[1].update(exp_avg=[0.0, 0.0, 0.0]), "'exp_avg' is a list"),
    (lambda s, w: s[1].update(exp_avg=ndl.backend_ndarray.NDArray(np.zeros(3, np.float32))), "cpu_numpy()"),
], ids=["not a dict", "a Tensor", "a list", "another array type (device)"])
def test_optimizer_state_of_another_kind_is_refused_before_any_parameter_moves(edit, text):
    w, b, opt = trained_params()
    edit(opt.state, w)
    before = [(p.numpy().tobytes(), p.shape) for p in (w, b)] + [opt.state[0]["exp_avg"].tobytes(), opt.t]
    with pytest.raises(ValueError, match="parameter 1") as caught:
        opt.step()
    assert text in str(caught.value) and "nothing was updated" in str(caught.value)
    assert [(p.numpy().tobytes(), p.shape) for p in (w, b)] + [opt.state[0]["exp_avg"].tobytes(), opt.t] == before


def test_optimizer_state_edited_by_hand_to_a_valid_array_is_used():
    "A hand-set state of the right shape, device and a floating dtype is state like any other (float64 included)."
    w, b, opt = trained_params()
    opt.state[1]["exp_avg"] = np.zeros(3, np.float64)
    opt.step()
    assert b.shape == (3,) and b.dtype == np.float32 and opt.t == 2


def test_a_list_operand_is_an_array_not_a_scalar():
    x = nn.Parameter([1.0, 2.0])
    (x + [[1, 2], [3, 4]]).sum().backward()
    assert x.grad.shape == (2,) and x.grad.numpy().tolist() == [2.0, 2.0]
    y = Tensor([2.0, 3.0])
    (y ** [1, 2]).sum().backward()
    assert y.grad.numpy().tolist() == [1.0, 6.0]


def test_softmax_loss_with_minus_inf_logit_matches_torch(torch):
    logits = np.array([[0.0, 1.0, -np.inf], [2.0, -np.inf, 0.5]], np.float32)
    labels = np.array([1, 0])
    ours = nn.SoftmaxLoss()(Tensor(logits), Tensor(labels))
    theirs = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels))
    np.testing.assert_allclose(ours.numpy(), theirs.item(), rtol=1e-6)
    assert math.isclose(float(nn.SoftmaxLoss()(Tensor(logits[:1]), Tensor([1])).numpy()), 0.3133, abs_tol=1e-4)
    x = Tensor(logits); nn.SoftmaxLoss()(x, Tensor(labels)).backward()
    assert np.isfinite(x.grad.numpy()).all()


@pytest.mark.parametrize("scale", [1.0, 1e4, 1e6])
def test_log_softmax_and_loss_as_precise_as_torch(torch, scale):
    z = (np.random.RandomState(1).randn(64, 10) * scale).astype(np.float32)
    y = np.random.RandomState(2).randint(0, 10, 64)
    exact = torch.log_softmax(torch.tensor(z, dtype=torch.float64), -1).numpy()
    ours = np.abs(ndl.logsoftmax(Tensor(z)).numpy() - exact).max()
    theirs = np.abs(torch.log_softmax(torch.tensor(z), -1).numpy() - exact).max()
    assert ours <= theirs * 1.01 + 1e-7, (ours, theirs)
    exact_loss = torch.nn.functional.cross_entropy(torch.tensor(z, dtype=torch.float64), torch.tensor(y)).item()
    theirs_loss = torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(y)).item()
    ours_loss = float(nn.SoftmaxLoss()(Tensor(z), Tensor(y)).numpy())
    assert abs(ours_loss - exact_loss) <= 2 * abs(theirs_loss - exact_loss) + 1e-6 * max(1, abs(exact_loss))


def test_float_labels_with_whole_values_are_needle_labels():
    "needle carries labels as float32: whole values are accepted, as the same integers."
    z = Tensor(np.random.RandomState(0).randn(3, 3).astype(np.float32))
    test = nn.SoftmaxLoss()(z, Tensor([0.0, 1.0, 2.0])).numpy()
    assert test == nn.SoftmaxLoss()(z, Tensor(np.array([0, 1, 2]))).numpy()


def test_zero_d_and_empty_softmax_family(torch):
    for ours, theirs in [(ndl.softmax, lambda t: torch.softmax(t, -1)), (ndl.logsoftmax, lambda t: torch.log_softmax(t, -1))]:
        x, tx = Tensor(np.float64(0.7)), torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        out, tout = ours(x), theirs(tx)
        (out * 3.0).backward(); (tout * 3.0).backward()
        assert out.shape == () and math.isclose(out.item(), tout.item(), abs_tol=1e-12)
        assert math.isclose(x.grad.item(), tx.grad.item(), abs_tol=1e-12)
    lse = ndl.logsumexp(Tensor(np.zeros((3, 0))), axes=(1,))
    assert lse.shape == (3,) and (lse.numpy() == -np.inf).all()
    assert torch.logsumexp(torch.zeros(3, 0), 1).tolist() == lse.numpy().tolist()
    assert ndl.softmax(Tensor(np.zeros((3, 0)))).shape == (3, 0)
    assert ndl.logsoftmax(Tensor(np.zeros((0, 4)))).shape == (0, 4)


def test_bool_len_and_backward_semantics():
    assert bool(Tensor([0.0])) is False and bool(Tensor([[2.0]])) is True
    assert len(Tensor(np.zeros((4, 2)))) == 4
    x = Tensor([1.0, 2.0])
    (x * x).backward()                          # needle: a non-scalar output starts from ones
    assert x.grad.numpy().tolist() == [2.0, 4.0]
    (x * 3.0).sum().backward()                  # needle: a second backward replaces .grad (PyTorch adds)
    assert x.grad.numpy().tolist() == [3.0, 3.0]


def test_device_strings_are_accepted_everywhere():
    cpu = ndl.cpu()
    assert ndl.resolve_device("cpu") is cpu and ndl.resolve_device(" CPU ") is cpu
    assert ndl.resolve_device("cuda") == ndl.cuda() and ndl.resolve_device("cuda:1") == ndl.cuda(1)
    assert ndl.resolve_device("cuda()") == ndl.cuda() and ndl.resolve_device("cuda(2)") == ndl.cuda(2)
    assert Tensor([1.0], device="cpu").device is cpu and Tensor([1.0]).to("cpu").device is cpu
    assert init.zeros(2, device="cpu").device is cpu and init.rand(2, device="cpu").device is cpu
    assert nn.Linear(2, 3, device="cpu").weight.device is cpu
    m = nn.Linear(2, 3)
    assert m.to("cpu") is m and m.to("float64").weight.dtype == np.float64
    assert DataLoader(NDArrayDataset(np.zeros(2)), device="cpu").device is cpu


def test_linear_on_one_row_gives_one_row(torch):
    layer = nn.Linear(3, 4)
    row = np.array([1.0, -2.0, 0.5], np.float32)
    out = layer(Tensor(row))
    assert out.shape == (4,)
    np.testing.assert_allclose(out.numpy(), layer(Tensor(row[None])).numpy()[0], rtol=1e-6)


def test_batchnorm_batch_of_one_warns_and_keeps_needles_update():
    bn = nn.BatchNorm1d(2)
    with pytest.warns(UserWarning, match="size 1"):
        out = bn(Tensor(np.array([[1.0, 2.0]], np.float32)))
    np.testing.assert_allclose(out.numpy(), [[0.0, 0.0]])
    np.testing.assert_allclose(bn.running_var.numpy(), [0.9, 0.9], rtol=1e-6)      # (1 - m)·1 + m·0
    np.testing.assert_allclose(bn.running_mean.numpy(), [0.1, 0.2], rtol=1e-6)


def test_loader_iterations_are_independent_and_draw_one_permutation_each():
    data = NDArrayDataset(np.arange(3.0))
    loader = DataLoader(data, batch_size=1)
    pairs = [(a[0].item(), b[0].item()) for a in loader for b in loader]
    assert len(pairs) == 9 and len(set(pairs)) == 9
    it = iter(loader)                           # needle's style: iter(loader), then next(loader)
    assert next(loader)[0].item() == 0.0 and next(loader)[0].item() == 1.0 and next(it)[0].item() == 2.0
    shuffled = DataLoader(NDArrayDataset(np.arange(7.0)), batch_size=3, shuffle=True)
    np.random.seed(5)
    epochs = [np.concatenate([b[0].numpy() for b in shuffled]) for _ in range(3)]
    np.random.seed(5)
    assert all((e == np.random.permutation(7)).all() for e in epochs)   # one draw per epoch, in order
    np.random.seed(5)
    outer = [[(a[0].numpy().tolist(), b[0].numpy().tolist()) for b in shuffled] for a in shuffled]
    assert len(outer) == 3 and all(len(row) == 3 for row in outer)


def test_checkpoint_keys_modes_and_symlinks(tmp_path):
    path = tmp_path / "c.npz"
    state = {"a": Tensor([1.0]), "a.npy": Tensor([2.0]), "x/y": Tensor([3.0]), "%41": Tensor([4.0]), "ü": Tensor([5.0])}
    nn.save(state, path)
    loaded = nn.load(path)
    assert list(loaded) == list(state)
    assert {k: v.item() for k, v in loaded.items()} == {k: v.item() for k, v in state.items()}
    os.chmod(path, 0o640)
    nn.save({"a": Tensor([1.0])}, path)
    assert os.stat(path).st_mode & 0o777 == 0o640
    link = tmp_path / "latest.npz"
    os.symlink(path, link)
    nn.save({"b": Tensor([7.0])}, link)
    assert os.path.islink(link) and list(nn.load(path)) == ["b"]
    assert os.stat(path).st_mode & 0o777 == 0o640
    fresh = tmp_path / "fresh.npz"
    nn.save({"b": Tensor([7.0])}, fresh)
    umask = os.umask(0); os.umask(umask)
    assert os.stat(fresh).st_mode & 0o777 == 0o666 & ~umask
    np.savez(tmp_path / "plain.npz", w=np.ones(2))   # numpy's own archives still load
    assert nn.load(tmp_path / "plain.npz")["w"].numpy().tolist() == [1.0, 1.0]


def test_trunc_normal_far_tail_is_fast_and_right():
    import time
    scipy_stats = pytest.importorskip("scipy.stats")
    ndl.manual_seed(3)
    for mean, std, a, b in [(0.0, 1.0, 1000.0, 2000.0), (0.0, 1.0, -2000.0, -1000.0), (1.0, 2.0, 9.0, 9.5),
                            (0.0, 1.0, -0.5, 40.0), (0.0, 1.0, -math.inf, -8.0)]:
        start = time.perf_counter()
        samples = init.trunc_normal_(Tensor(np.zeros((200, 250))), mean, std, a, b).numpy().ravel()
        assert time.perf_counter() - start < 5.0
        assert samples.min() >= a and samples.max() <= b
        cdf = scipy_stats.truncnorm((a - mean) / std, (b - mean) / std, loc=mean, scale=std).cdf
        ks = studies.ks_statistic(samples, cdf)
        assert ks < studies.ks_threshold(samples.size, 1e-6), (mean, std, a, b, ks)


def test_trunc_normal_without_scipy_matches(monkeypatch):
    "The numpy-only inverse (Newton on log Φ) agrees with scipy's `ndtri_exp` where scipy is installed."
    special = pytest.importorskip("scipy.special")
    y = np.array([-1e4, -700.0, -50.0, -3.0, -0.7, -1e-3, -1e-12])
    ours = np.array([init._ndtri_exp_scalar(v) for v in y])
    np.testing.assert_allclose(ours, special.ndtri_exp(y), rtol=1e-9)
    for x in [-1e3, -30.0, -19.0, -5.0, 0.3, 6.0]:
        assert math.isclose(init._log_ndtr(x), float(special.log_ndtr(x)), rel_tol=1e-9)


# --- hypothesis: shapes and axes --------------------------------------------------------------------
shapes = st.lists(st.integers(0, 3), min_size=1, max_size=4).map(tuple)
axes_lists = st.lists(st.integers(-5, 5), min_size=1, max_size=3).map(tuple)


def numpy_or_error(f):
    try: return f(), None
    except (ValueError, IndexError, TypeError) as e: return None, e


@settings(max_examples=80, deadline=None)
@given(shape=shapes, axes=axes_lists)
def test_reductions_agree_with_numpy_or_raise(shape, axes):
    data = np.random.RandomState(0).randn(*shape)
    x = Tensor(data)
    for ours, theirs in [(ndl.summation, lambda a: data.sum(axis=a)),
                         (ndl.amax, lambda a: data.max(axis=a)),
                         (ndl.logsumexp, lambda a: np.log(np.exp(data).sum(axis=a)))]:
        with np.errstate(divide="ignore"): expected, numpy_error = numpy_or_error(lambda: theirs(axes))
        if numpy_error is not None:
            with pytest.raises(ValueError):
                ours(x, axes=axes)
        else:
            np.testing.assert_allclose(ours(x, axes=axes).numpy(), expected, rtol=1e-10)
    assert (x.numpy() == data).all()


@settings(max_examples=60, deadline=None)
@given(shape=shapes, i=st.integers(-5, 5), j=st.integers(-5, 5))
def test_transpose_and_split_agree_with_numpy_or_raise(shape, i, j):
    data = np.arange(math.prod(shape), dtype=np.float64).reshape(shape)
    x = Tensor(data)
    expected, error = numpy_or_error(lambda: np.swapaxes(data, i, j))
    if error is not None:
        with pytest.raises(ValueError): ndl.transpose(x, (i, j))
    else:
        assert (ndl.transpose(x, (i, j)).numpy() == expected).all()
    if -len(shape) <= i < len(shape):
        parts = ndl.split(x, i)
        assert len(parts) == shape[i]
    else:
        with pytest.raises(ValueError, match=f"axis {i}"): ndl.split(x, i)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple))
def test_softmax_family_on_any_shape_matches_torch(shape):
    torch = pytest.importorskip("torch")
    data = np.random.RandomState(1).randn(*shape)
    for ours, theirs in [(ndl.softmax, torch.softmax), (ndl.logsoftmax, torch.log_softmax)]:
        x, tx = Tensor(data), torch.tensor(data, requires_grad=True)
        out, tout = ours(x), theirs(tx, -1)
        np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-10, atol=1e-12)
        weights = np.random.RandomState(2).randn(*shape)
        (out * Tensor(weights)).sum().backward(); (tout * torch.tensor(weights)).sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("max_norm, error, fragment", [(-1.0, ValueError, "-1.0"), (float("nan"), ValueError, "nan"),
                                                       ("1", TypeError, "'1'"), (None, TypeError, "None"),
                                                       (np.array([1.0, 2.0]), TypeError, "2 elements")])
# a bool is a number here (max_norm=True clips to 1, as PyTorch's float(True)): tests/test_numbers_r3.py
def test_clip_grad_norm_refuses_a_bad_bound_and_changes_no_gradient(max_norm, error, fragment):
    from needle_nb.optim import SGD, clip_grad_norm_
    w = ndl.Tensor([3.0, 4.0])
    (w * w).sum().backward()
    before = w.grad.numpy().copy()
    with pytest.raises(error, match=re.escape(fragment)): clip_grad_norm_([w], max_norm)
    with pytest.raises(error, match=re.escape(fragment)): SGD([w], lr=0.1).clip_grad_norm(max_norm)
    np.testing.assert_array_equal(w.grad.numpy(), before)
