"Round 3 (issue #26 §4): module cycles, parameter slots, load_state_dict and checkpoint files."
import os, pathlib
import numpy as np, pytest, torch
from hypothesis import given, settings, strategies as st
import needle_nb as ndl
import needle_nb.nn as nn


def snapshot(model): return {k: v.numpy().copy() for k, v in model.state_dict().items()}

def assert_same(before, model):
    after = snapshot(model)
    assert after.keys() == before.keys()
    for k in before: np.testing.assert_array_equal(after[k], before[k])


# --- cycles ------------------------------------------------------------------------------------
def test_two_module_cycle_refused_naming_attribute():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    a.b = b
    with pytest.raises(ValueError, match=r"'a'.*cycle"): b.a = a
    assert "a" not in b._modules and not hasattr(b, "a")
    assert list(a.state_dict()) == ["weight", "bias", "b.weight", "b.bias"]   # still walkable

def test_module_into_itself_refused():
    m = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="'me'.*itself"): m.me = m
    with pytest.raises(ValueError, match="'again'"): m.register_module("again", m)

def test_deep_cycle_and_containers_refused():
    inner = nn.Linear(2, 2)
    outer = nn.Sequential(nn.ReLU(), nn.Sequential(inner))
    with pytest.raises(ValueError, match="cycle"): inner.up = outer
    with pytest.raises(ValueError, match="cycle"): outer.append(outer)
    ml = nn.ModuleList([nn.ReLU()])
    with pytest.raises(ValueError, match="cycle"): ml.append(ml)
    with pytest.raises(ValueError, match="cycle"): ml.insert(0, ml)
    assert len(ml) == 1
    md = nn.ModuleDict({"r": nn.ReLU()})
    with pytest.raises(ValueError, match="'me'"): md["me"] = md
    holder = nn.Linear(1, 1)
    with pytest.raises(ValueError, match=r"'cells\.1'"): holder.cells = [nn.ReLU(), holder]
    with pytest.raises(ValueError, match=r"'d\.k'"): holder.d = {"k": nn.Sequential(holder)}
    assert not hasattr(holder, "cells") and not hasattr(holder, "d")

def test_shared_module_is_not_a_cycle():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    model.extra = shared
    assert len(model.parameters()) == 2

def test_cycle_made_later_through_a_list_is_an_error_not_recursion():
    m = nn.Linear(1, 1)
    m.items = []
    m.items.append(m)            # in place: no assignment to catch
    with pytest.raises(ValueError, match="ancestors"): m.state_dict()
    with pytest.raises(ValueError, match="ancestors"): m.apply(lambda mod: None)
    assert "cycle" in repr(m)
    assert len(m.parameters()) == 2 and len(m.modules()) == 1


# --- parameter slots ---------------------------------------------------------------------------
def test_plain_tensor_over_parameter_kept_as_needle():
    cell = nn.RNNCell(3, 4)
    w = ndl.Tensor(np.random.randn(3, 4).astype(np.float32))
    cell.W_ih = w                                   # needle's hw4 tests do this
    assert cell.W_ih is w and dict(cell.named_parameters())["W_ih"] is w

@pytest.mark.parametrize("value", ["weights", np.ones((2, 2)), 3.0, [1.0, 2.0], torch.ones(2, 2)])
def test_non_tensor_over_parameter_is_type_error_naming_attribute(value):
    m = nn.Linear(2, 2)
    before = snapshot(m)
    with pytest.raises(TypeError, match="parameter 'weight'.*Parameter"): m.weight = value
    assert_same(before, m)

def test_none_over_parameter_disables_it_as_pytorch():
    m = nn.Linear(2, 2)
    m.bias = None
    assert m.bias is None and list(m.state_dict()) == ["weight"]
    tm = torch.nn.Linear(2, 2); tm.bias = None      # PyTorch allows it too
    assert tm.bias is None


# --- load_state_dict ---------------------------------------------------------------------------
def bad_values():
    return {"None": None, "object": np.ones((3, 2), dtype=object), "str": np.full((3, 2), "x"),
            "bytes": np.full((3, 2), b"x"), "pystr": "hello",
            "nested None": [[1.0, None], [1.0, 2.0], [3.0, 4.0]]}

@pytest.mark.parametrize("kind", list(bad_values()))
def test_load_refuses_non_numbers_naming_key_and_changes_nothing(kind):
    m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    before = snapshot(m)
    state = {k: v + 1.0 for k, v in before.items()}     # every other value is good and differs
    state["0.weight"] = bad_values()[kind]
    with pytest.raises(RuntimeError, match=r"'0\.weight'") as e: m.load_state_dict(state)
    assert ("None" in str(e.value)) if kind == "None" else ("not numbers" in str(e.value))
    assert_same(before, m)

def test_load_none_message_says_none_and_expected_shape():
    m = nn.Linear(2, 3)
    with pytest.raises(RuntimeError, match=r"'weight' is None.*\(2, 3\)"):
        m.load_state_dict({"weight": None, "bias": np.zeros(3)})

@pytest.mark.parametrize("requires_grad", [False, True])
def test_load_pytorch_tensors(requires_grad):
    torch.manual_seed(0)
    tm = torch.nn.Linear(2, 3)
    m = nn.Linear(2, 3)
    state = {"weight": tm.weight.detach().T.clone().requires_grad_(requires_grad),
             "bias": tm.bias.detach().reshape(1, 3).clone().requires_grad_(requires_grad)}
    m.load_state_dict(state)
    np.testing.assert_allclose(m.weight.numpy(), tm.weight.detach().numpy().T)
    np.testing.assert_allclose(m.bias.numpy(), tm.bias.detach().numpy()[None])
    x = np.random.randn(4, 2).astype(np.float32)
    np.testing.assert_allclose(m(ndl.Tensor(x)).numpy(), tm(torch.tensor(x)).detach().numpy(), rtol=1e-6)

def test_load_pytorch_bfloat16_names_key_or_loads():
    m = nn.Linear(2, 3)
    before = snapshot(m)
    state = {"weight": torch.ones(2, 3, dtype=torch.bfloat16), "bias": torch.zeros(1, 3)}
    try: m.load_state_dict(state)
    except RuntimeError as e:
        assert "'weight'" in str(e); assert_same(before, m)
    else: np.testing.assert_array_equal(m.weight.numpy(), np.ones((2, 3)))

@settings(max_examples=40, deadline=None)
@given(bad=st.sampled_from(list(bad_values())), key=st.sampled_from(["0.weight", "0.bias", "1.weight", "1.bias"]),
       shape_bad=st.booleans())
def test_every_failed_load_changes_nothing(bad, key, shape_bad):
    m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    before = snapshot(m)
    state = {k: v * 2 + 1 for k, v in before.items()}
    state[key] = bad_values()[bad]
    if shape_bad: state["1.bias"] = np.zeros(5, np.float32) if key != "1.bias" else state["1.bias"]
    with pytest.raises(RuntimeError, match=repr(key).replace(".", r"\.")): m.load_state_dict(state)
    assert_same(before, m)


# --- save / load -------------------------------------------------------------------------------
def test_save_load_take_str_bytes_and_pathlike(tmp_path):
    state = {"w": ndl.Tensor([1.0, 2.0]), "b": np.arange(3)}
    for path in (str(tmp_path / "a.npz"), os.fsencode(tmp_path / "b.npz"), tmp_path / "c.npz"):
        nn.save(state, path)
        back = nn.load(path)
        assert list(back) == ["w", "b"]
        np.testing.assert_array_equal(back["b"].numpy(), np.arange(3))
    with open(os.fsencode(tmp_path / "b.npz"), "rb") as f: assert f.read(2) == b"PK"   # what open() takes

def test_save_refuses_non_numbers_naming_key_and_writes_nothing(tmp_path):
    path = tmp_path / "ck.npz"
    for bad in ["hello", np.array(["a", "b"]), object(), None, np.ones(2, dtype=object), {"nested": 1}]:
        with pytest.raises(ValueError, match="'bad'.*not numeric"): nn.save({"ok": np.ones(2), "bad": bad}, path)
        assert not path.exists()

def test_save_pytorch_tensor_requiring_grad(tmp_path):
    nn.save({"t": torch.ones(2, requires_grad=True)}, tmp_path / "t.npz")
    np.testing.assert_array_equal(nn.load(tmp_path / "t.npz")["t"].numpy(), [1.0, 1.0])

def test_load_refuses_string_members_without_pickle(tmp_path):
    path = tmp_path / "strings.npz"
    np.savez(path, names=np.array(["a", "b"]))       # readable with allow_pickle=False, but not numbers
    with pytest.raises(ValueError, match="'names'.*numeric"): nn.load(path)
    obj = tmp_path / "obj.npz"
    np.savez(obj, o=np.array([1, None], dtype=object))
    with pytest.raises(ValueError, match="not a needle_nb checkpoint"): nn.load(obj)
