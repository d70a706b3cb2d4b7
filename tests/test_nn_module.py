"""The Module system: registration, tree walks, train/eval, state dicts, repr and hooks (nbs/04_nn_module)."""
import numpy as np
import pytest

import needle_nb as ndl
import needle_nb.nn as nn
from needle_nb.nn import Module, Parameter, Buffer


class ScaleAdd(Module):
    def __init__(self, s=1.0, b=0.0, device=None):
        super().__init__()
        self.s = Parameter([s], device=device)
        self.b = Parameter([b], device=device)
    def forward(self, x): return x * self.s + self.b


class Containers(Module):
    "Sub-modules and parameters in an attribute, a list, a dict of lists, and a shared one."
    def __init__(self):
        super().__init__()
        self.first = ScaleAdd(2.0)
        shared = ScaleAdd(3.0)
        self.paths = [shared, ScaleAdd(4.0)]
        self.nested = {"a": [ScaleAdd(5.0)], "again": shared}
        self.extra = [Parameter([7.0])]
        self.plain = [1, "x", None]
    def forward(self, x): return self.first(x)


# --- registration -----------------------------------------------------------------------------
def test_setattr_routes_into_registries():
    m = ScaleAdd()
    m.child = ScaleAdd()
    m.register_buffer("stat", Buffer([0.0]))
    m.label = "plain"
    assert list(m._parameters) == ["s", "b"] and list(m._modules) == ["child"] and list(m._buffers) == ["stat"]
    assert not {"s", "b", "child", "stat"} & set(m.__dict__)
    assert m.s is m._parameters["s"] and m.child is m._modules["child"] and m.__dict__["label"] == "plain"
    del m.s, m.child, m.stat
    assert not hasattr(m, "s") and not hasattr(m, "child") and not hasattr(m, "stat")
    with pytest.raises(AttributeError, match="nothere"): m.nothere


def test_reassignment_moves_between_registries():
    m = ScaleAdd()
    m.s = ScaleAdd()                      # a parameter name now holds a module
    assert "s" not in m._parameters and m._modules["s"] is m.s
    m.s = None                            # None keeps the slot as a disabled child
    assert m._modules["s"] is None and m.s is None


def test_none_placeholders_and_type_errors():
    m = ScaleAdd()
    m.register_parameter("bias2", None)
    assert m.bias2 is None and "bias2" not in dict(m.named_parameters())
    m.bias2 = Parameter([1.0])
    assert m.bias2 in m.parameters()
    with pytest.raises(TypeError, match="Tensor or None expected"): m.s = np.ones(1)
    with pytest.raises(TypeError, match="Parameter"): m.register_parameter("w", ndl.Tensor([1.0]))
    with pytest.raises(KeyError, match="contain"): m.register_parameter("a.b", None)
    m.register_buffer("stat", Buffer([1.0]))
    m.stat = ndl.Tensor([2.0])            # PyTorch: a buffer accepts any Tensor
    assert m._buffers["stat"].numpy()[0] == 2.0


def test_a_plain_tensor_replaces_a_parameter_as_in_needle():
    "needle's tests assign plain Tensors (copied PyTorch weights) to parameter attributes."
    m = ScaleAdd()
    names = list(m.state_dict())
    weight = ndl.Tensor([4.0])
    m.s = weight
    assert m.s is weight and m._parameters["s"] is weight and "s" not in m.__dict__
    assert list(m.state_dict()) == names and m.state_dict()["s"] is weight
    assert dict(m.named_parameters())["s"] is weight and any(p is weight for p in m.parameters())
    m.load_state_dict({"s": np.array([2.0]), "b": np.array([0.5])})
    assert weight.numpy()[0] == 2.0                  # loading writes into the swapped-in tensor
    m.other = ndl.Tensor([1.0])                      # a new attribute stays a plain attribute
    assert "other" not in dict(m.named_parameters()) and m.__dict__["other"] is not None
    m.s = None                                       # None still disables the slot
    assert m.s is None and "s" not in dict(m.named_parameters())


def test_forgetting_super_init_is_explained():
    class NoInit(Module):
        def __init__(self): self.w = Parameter([1.0])
    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\).*NoInit"): NoInit()

    class NoInitPlain(Module):
        def __init__(self): self.p = 0.5
        def forward(self, x): return x
    m = NoInitPlain()
    for action in (lambda: m(1), m.parameters, lambda: m.training):
        with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"): action()


# --- walks ------------------------------------------------------------------------------------
def test_named_parameters_order_containers_and_sharing():
    m = Containers()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["extra.0", "first.s", "first.b", "paths.0.s", "paths.0.b", "paths.1.s", "paths.1.b",
                     "nested.a.0.s", "nested.a.0.b"]
    assert len({id(p) for p in m.parameters()}) == len(m.parameters()) == 9
    assert isinstance(m.parameters(), list)
    assert [n for n, _ in m.named_parameters(recurse=False)] == ["extra.0"] == [n for n, _ in m.named_parameters(recursive=False)]
    assert [n for n, _ in m.named_modules()] == ["", "first", "paths.0", "paths.1", "nested.a.0"]
    assert [n for n, _ in m.named_children()] == ["first", "paths.0", "paths.1", "nested.a.0"]
    assert len(m.modules()) == 5 and m.modules()[0] is m


def test_containers_are_searched_at_call_time():
    m = Containers()
    before = len(m.parameters())
    m.paths.append(ScaleAdd())
    m.nested["b"] = (ScaleAdd(),)
    assert len(m.parameters()) == before + 4
    m.paths.clear()
    assert "paths.1.s" not in dict(m.named_parameters())


def test_named_buffers_and_prefix():
    bn = nn.BatchNorm1d(3)
    model = nn.Sequential(nn.Linear(2, 3), bn)
    assert [n for n, _ in model.named_buffers()] == ["1.running_mean", "1.running_var"]
    assert [n for n, _ in model.named_parameters(prefix="net")][0] == "net.0.weight"
    assert model.buffers()[0] is bn.running_mean


def test_train_eval_reach_every_module():
    m = Containers()
    assert m.eval() is m
    assert not any(mod.training for mod in m.modules())
    assert not m.nested["a"][0].training
    assert m.train() is m and all(mod.training for mod in m.modules())


def test_zero_grad_and_apply():
    m = Containers()
    (m.first(ndl.Tensor([1.0])) + m.paths[0](ndl.Tensor([2.0]))).sum().backward()
    assert m.first.s.grad is not None
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    order = []
    assert m.apply(lambda mod: order.append(mod)) is m
    assert order[-1] is m and order[0] is m.first
    m.apply(lambda mod: [p.__setattr__("data", p * 0) for p in mod.parameters(recurse=False)])
    assert all(float(p.numpy().sum()) == 0 for p in m.parameters())


def test_to_keeps_parameter_identity(device):
    m = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    params = m.parameters()
    m(ndl.Tensor(np.ones((4, 3), dtype=np.float32))).sum().backward()
    assert m.to(device) is m
    assert m.parameters() == params and all(p.device == device for p in params + m.buffers())
    assert all(p.grad.device == device for p in params)
    m.to(dtype="float64")
    assert all(p.dtype == np.float64 for p in m.parameters() + m.buffers())
    out = m(ndl.Tensor(np.ones((4, 3)), device=device))
    assert out.device == device and out.dtype == np.float64


# --- state dicts ------------------------------------------------------------------------------
def test_state_dict_keys_and_references():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2, bias=False), nn.BatchNorm1d(2))
    sd = model.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "2.weight", "3.weight", "3.bias", "3.running_mean", "3.running_var"]
    assert sd["0.weight"] is model[0].weight
    m = ScaleAdd()
    m.register_buffer("tmp", Buffer([0.0]), persistent=False)
    assert "tmp" not in m.state_dict() and "tmp" in dict(m.named_buffers())


def test_state_dict_matches_torch_names(torch):
    ours = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.BatchNorm1d(2))
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2),
                                 torch.nn.BatchNorm1d(2))
    torch_keys = [k for k in theirs.state_dict() if not k.endswith("num_batches_tracked")]
    assert list(ours.state_dict()) == torch_keys


def test_load_state_dict_copies_into_same_objects(device):
    src, dst = nn.Linear(3, 2, device=device), nn.Linear(3, 2, device=device, dtype="float64")
    weight = dst.weight
    result = dst.load_state_dict(src.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert dst.weight is weight and weight.dtype == np.float64 and weight.device == device
    np.testing.assert_allclose(weight.numpy(), src.weight.numpy(), rtol=1e-7)
    src.weight.data = src.weight * 2          # the copy is independent of the source
    assert not np.allclose(weight.numpy(), src.weight.numpy())


def test_rejected_load_reports_everything_and_changes_nothing():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    bad = {k: v.numpy() * 0 + 1 for k, v in model.state_dict().items()}
    bad["0.weight"] = np.zeros((2, 3))        # transposed: a shape mismatch
    del bad["1.running_var"]
    bad["2.weight"] = np.zeros(1)
    bad["1.bias"] = np.array(["not", "numbers"])
    with pytest.raises(RuntimeError) as info: model.load_state_dict(bad)
    message = str(info.value)
    for fragment in ["'2.weight'", "'1.running_var'", "'0.weight'", "(2, 3)", "(3, 2)", "'1.bias'"]:
        assert fragment in message
    for k, v in model.state_dict().items(): np.testing.assert_array_equal(v.numpy(), before[k])


def test_non_strict_load_allows_missing_and_unexpected_but_not_mismatch():
    model = nn.Linear(3, 2)
    result = model.load_state_dict({"weight": np.ones((3, 2)), "other": np.zeros(1)}, strict=False)
    assert result.missing_keys == ["bias"] and result.unexpected_keys == ["other"]
    np.testing.assert_array_equal(model.weight.numpy(), np.ones((3, 2)))
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict({"weight": np.ones((2, 3))}, strict=False)


# --- repr and hooks ---------------------------------------------------------------------------
def test_repr_is_pytorchs_format():
    class SimpleNet(Module):
        def __init__(self):
            super().__init__()
            self.layer1 = nn.Linear(784, 128)
            self.activation = nn.ReLU()
            self.layer2 = nn.Linear(128, 10)
    assert repr(SimpleNet()) == ("SimpleNet(\n  (layer1): Linear(in_features=784, out_features=128, bias=True)\n"
                                 "  (activation): ReLU()\n  (layer2): Linear(in_features=128, out_features=10, bias=True)\n)")
    assert repr(nn.Sequential(nn.Dropout(0.1))) == "Sequential(\n  (0): Dropout(p=0.1)\n)"


def test_repr_matches_torch(torch):
    ours = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 2, bias=False), nn.Tanh()))
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(),
                                 torch.nn.Sequential(torch.nn.Linear(3, 2, bias=False), torch.nn.Tanh()))
    assert repr(ours) == repr(theirs)


def test_forward_hooks():
    m = ScaleAdd(2.0)
    calls = []
    handle = m.register_forward_hook(lambda mod, args, out: calls.append((mod, args[0].numpy()[0], out.numpy()[0])))
    m(ndl.Tensor([3.0]))
    assert calls == [(m, 3.0, 6.0)]
    handle.remove()
    m(ndl.Tensor([3.0]))
    assert len(calls) == 1 and not m._forward_hooks
    with m.register_forward_hook(lambda mod, args, out: out * 10):
        assert m(ndl.Tensor([1.0])).numpy()[0] == 20.0
    pre = m.register_forward_pre_hook(lambda mod, args: (args[0] + 1,))
    assert m(ndl.Tensor([1.0])).numpy()[0] == 4.0
    pre.remove()
    assert m(ndl.Tensor([1.0])).numpy()[0] == 2.0


def test_hooks_context_manager():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    def record(hook, module, args, output): hook.shape = output.shape
    x = ndl.Tensor(np.ones((5, 3), dtype=np.float32))
    with nn.Hooks(model.modules[:], record) as hooks:
        model(x)
        assert [h.shape for h in hooks] == [(5, 4), (5, 4), (5, 2)]
    assert all(not mod._forward_hooks for mod in model.modules())


def test_sequential_modules_is_needles_tuple_and_a_method():
    layers = [nn.Linear(2, 3), nn.ReLU()]
    model = nn.Sequential(*layers)
    assert isinstance(model.modules, tuple) and list(model.modules) == layers and model.modules[1] is layers[1]
    assert model.modules() == [model] + layers
    assert model[0] is layers[0] and len(model) == 2 and list(model[1:]) == layers[1:]


def test_module_tree_on_device(device):
    model = nn.Sequential(nn.Linear(3, 4, device=device), nn.ReLU(), nn.Linear(4, 2, device=device))
    out = model(ndl.Tensor(np.ones((2, 3), dtype=np.float32), device=device))
    out.sum().backward()
    assert out.device == device and all(p.grad.device == device for p in model.parameters())
    clone = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to(device)
    clone.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(clone(ndl.Tensor(np.ones((2, 3), dtype=np.float32), device=device)).numpy(),
                                  out.numpy())
