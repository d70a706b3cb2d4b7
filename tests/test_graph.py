"""The computation-graph pictures of `needle_nb.apps.graph` (issue 19).

- the graph holds exactly the values of `find_topo_sort`, one op node per computed value, and one
  edge per (input, value) pair, on random expressions (hypothesis);
- `backward_step` is the order `backward()` really visits the nodes (recorded by wrapping the ops);
- gradients appear only after `backward()`, with the norm of `.grad`;
- grouping by module keeps exactly the edges between modules; the node cap is respected;
- the drawing: every arrow points right, text is at least 9 pt, no two boxes overlap;
- `import needle_nb` loads neither networkx nor matplotlib nor this module.
"""
import subprocess, sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import needle_nb as ndl
from needle_nb import nn
from needle_nb.autograd import Tensor, find_topo_sort, fused_add_scalars
from needle_nb.apps.graph import computation_graph, draw_graph, layout_columns, plot_graph, trace_modules

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]

UNARY = {"exp": lambda a: (a * 0.1).exp(), "relu": lambda a: a.relu(), "neg": lambda a: -a,
         "scale": lambda a: a * 0.5, "tanh": lambda a: a.tanh()}
BINARY = {"add": lambda a, b: a + b, "mul": lambda a, b: a * b, "sub": lambda a, b: a - b}

# a recipe: leaves (True: requires a gradient), then steps (op name, two picks among the values so far)
steps = st.lists(st.tuples(st.sampled_from(sorted(UNARY) + sorted(BINARY)), st.integers(0, 1000),
                           st.integers(0, 1000)), min_size=1, max_size=12)
leaves = st.lists(st.booleans(), min_size=1, max_size=4).filter(any)


def build(leaf_flags, recipe, seed=0):
    "The leaves and the output `sum(last value)` of a random expression on (3,) float64 tensors."
    rs = np.random.RandomState(seed)
    xs = [Tensor(rs.randn(3), requires_grad=flag) for flag in leaf_flags]
    values = list(xs)
    for name, i, j in recipe:
        a, b = values[i % len(values)], values[j % len(values)]
        values.append(UNARY[name](a) if name in UNARY else BINARY[name](a, b))
    return xs, values[-1].sum()


def value_of(graph, n): return graph.nodes[n]["value"]


@settings(max_examples=40, deadline=None)
@given(leaves, steps)
def test_graph_is_find_topo_sort(leaf_flags, recipe):
    xs, out = build(leaf_flags, recipe)
    if out.op is None: return   # no input requires a gradient: nothing was recorded
    order = find_topo_sort([out])
    graph = computation_graph(out)
    values = sorted((n for n in graph if graph.nodes[n]["kind"] == "value"), key=lambda n: graph.nodes[n]["index"])
    assert [value_of(graph, n) for n in values] == order   # same nodes, same order (identity: Tensor has no __eq__)
    assert all(value_of(graph, f"v{i}") is node for i, node in enumerate(order))
    ops = {n for n in graph if graph.nodes[n]["kind"] == "op"}
    assert ops == {f"op{i}" for i, node in enumerate(order) if node.op is not None}
    index = {id(node): i for i, node in enumerate(order)}
    expected = {(f"v{index[id(inp)]}", f"op{i}") for i, node in enumerate(order) for inp in node.inputs}
    expected |= {(f"op{i}", f"v{i}") for i, node in enumerate(order) if node.op is not None}
    assert set(graph.edges) == expected
    for i, node in enumerate(order):   # the argument slots of each input
        for slot, inp in enumerate(node.inputs):
            assert slot in graph.edges[f"v{index[id(inp)]}", f"op{i}"]["slots"]
    assert graph.nodes[f"v{len(order) - 1}"]["role"] == "output"
    pos = layout_columns(graph)
    assert all(pos[u][0] < pos[v][0] for u, v in graph.edges)
    assert len(set(pos.values())) == len(graph)   # no two nodes in one place
    for column in {c for c, _ in pos.values()}:   # top to bottom in find_topo_sort's order
        ranks = [graph.nodes[n]["rank"] for n in sorted((n for n in graph if pos[n][0] == column), key=lambda n: pos[n][1])]
        assert ranks == sorted(ranks)


def recorded_backward_order(out):
    "The non-leaf nodes in the order `backward()` asks their ops for gradients (ops wrapped for the call)."
    seen, wrapped = [], []
    for node in find_topo_sort([out]):
        if node.op is None or node.op in wrapped: continue
        original = node.op.gradient_as_tuple
        def spy(out_grad, n, original=original):
            seen.append(n); return original(out_grad, n)
        node.op.gradient_as_tuple = spy
        wrapped.append(node.op)
    try: out.backward()
    finally:
        for op in wrapped: del op.gradient_as_tuple
    return seen


@settings(max_examples=25, deadline=None)
@given(leaves, steps)
def test_backward_steps_are_backwards_visit(leaf_flags, recipe):
    xs, out = build(leaf_flags, recipe)
    if out.op is None: return
    graph = computation_graph(out)
    steps_of = {id(value_of(graph, n)): graph.nodes[n]["backward_step"] for n in graph
                if graph.nodes[n]["kind"] == "value"}
    visited = recorded_backward_order(out)
    assert [steps_of[id(n)] for n in visited] == sorted(steps_of[id(n)] for n in visited)
    assert steps_of[id(out)] == 1
    for n in graph:   # exactly the nodes that need a gradient are numbered, 1..k without gaps
        if graph.nodes[n]["kind"] == "value":
            assert (graph.nodes[n]["backward_step"] is None) == (not value_of(graph, n).requires_grad)
    numbered = sorted(s for s in steps_of.values() if s is not None)
    assert numbered == list(range(1, len(numbered) + 1))


@settings(max_examples=25, deadline=None)
@given(leaves, steps)
def test_gradients_appear_only_after_backward(leaf_flags, recipe):
    xs, out = build(leaf_flags, recipe)
    if out.op is None: return
    before = computation_graph(out)
    assert all(before.nodes[n].get("grad_norm") is None and before.nodes[n].get("grad_shape") is None for n in before)
    out.backward()
    after = computation_graph(out)
    for n in after:
        attrs = after.nodes[n]
        if attrs["kind"] != "value": continue
        value = attrs["value"]
        if value.requires_grad:
            assert attrs["grad_shape"] == str(value.grad.shape)
            assert attrs["grad_norm"] == pytest.approx(np.linalg.norm(value.grad.numpy()), rel=1e-12, abs=1e-300)
        else:
            assert attrs["grad_norm"] is None


def test_drawing_shows_gradients_only_after_backward():
    x2, x3 = Tensor([6.0]), Tensor([0.0])
    y = x2 * x2 + x2 * x3
    fig = draw_graph(y, names={"x2": x2, "x3": x3})
    assert not any("grad" in t.get_text() for t in fig.axes[0].texts)
    y.backward()
    y.backward()   # needle replaces .grad: still 12, not 24
    fig2 = draw_graph(y, names={"x2": x2, "x3": x3}, numbered=True)
    texts = [t.get_text() for t in fig2.axes[0].texts]
    assert "[5] x2\n(1,) float32\ngrad (1,) |g|=12" in texts
    assert "[3] x3\n(1,) float32\ngrad (1,) |g|=6" in texts
    assert texts.count("×2") == 1   # x2 * x2: one arrow into both slots, marked
    plt.close(fig); plt.close(fig2)


def boxes_overlap(fig) -> list:
    "Pairs of node boxes whose drawn extents intersect."
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_bbox_patch().get_window_extent(renderer) for t in fig.axes[0].texts if t.get_bbox_patch()]
    return [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]


def mlp_step(depth=1):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU())),
                          nn.Linear(4, 2))
    xb = Tensor(np.random.RandomState(0).randn(5, 3).astype(np.float32), requires_grad=False)
    yb = Tensor(np.array([0, 1, 0, 1, 1]), requires_grad=False)
    with trace_modules(model, depth=depth) as trace:
        loss = nn.SoftmaxLoss()(model(xb), yb)
    loss.backward()
    return model, trace, loss


def test_figure_is_legible_at_natural_size():
    model, trace, loss = mlp_step()
    for fig in [draw_graph(loss, trace=trace, max_nodes=None, title="an MLP step"),
                draw_graph(loss, trace=trace, group_by_module=True), draw_graph(loss, max_nodes=9)]:
        assert all(t.get_fontsize() >= 9 for t in fig.axes[0].texts)
        assert not boxes_overlap(fig)
        renderer = fig.canvas.get_renderer()   # every text inside the figure
        frame = fig.bbox
        for t in fig.axes[0].texts:
            box = t.get_window_extent(renderer)
            assert box.x0 >= frame.x0 - 1 and box.x1 <= frame.x1 + 1 and box.y0 >= frame.y0 - 1 and box.y1 <= frame.y1 + 1
        plt.close(fig)


@pytest.mark.parametrize("max_width", [3.0, 5.0, 8.5])
def test_wide_graphs_wrap_into_bands_that_fit(max_width):
    "With `max_width`, the columns wrap into bands no wider than it; each band still reads left to right."
    x = Tensor(np.ones(3, dtype=np.float32))
    h = x
    for _ in range(12): h = (h * 0.9).tanh()
    out = h.sum()
    out.backward()
    wide = draw_graph(out, max_nodes=None, names={"x": x})
    fig = draw_graph(out, max_nodes=None, names={"x": x}, max_width=max_width)
    assert fig.get_size_inches()[0] <= max_width + 1e-9 < wide.get_size_inches()[0]
    assert len(fig.bands) > 1 and sorted(c for band in fig.bands for c in band) == list(range(len(wide.bands[0])))
    assert set(fig.graph) == set(wide.graph) and set(fig.graph.edges) == set(wide.graph.edges)
    assert all(t.get_fontsize() >= 9 for t in fig.axes[0].texts) and not boxes_overlap(fig)
    columns = layout_columns(fig.graph)
    band_of = {c: b for b, band in enumerate(fig.bands) for c in band}
    for u, v in fig.graph.edges:   # arrows never go back a band; within a band they point right
        bu, bv = band_of[columns[u][0]], band_of[columns[v][0]]
        assert bu <= bv and (bu < bv or columns[u][0] < columns[v][0])
    for f in (fig, wide): plt.close(f)


def members_of(grouped) -> dict:
    "{fine node: its box} for the nodes a grouped graph collapsed."
    return {m: g for g in grouped if grouped.nodes[g]["kind"] == "module" for m in grouped.nodes[g]["members"]}


@pytest.mark.parametrize("depth", [1, 2])
def test_grouping_keeps_the_edges_between_modules(depth):
    model, trace, loss = mlp_step(depth)
    fine = computation_graph(loss, trace=trace)
    grouped = computation_graph(loss, trace=trace, group_by_module=True)
    box = members_of(grouped)
    mapped = {n: box.get(n, n) for n in fine}
    assert set(mapped.values()) == set(grouped)   # every node drawn once: in a box, or as itself
    assert set(grouped.edges) == {(mapped[u], mapped[v]) for u, v in fine.edges if mapped[u] != mapped[v]}
    labels = {grouped.nodes[g]["label"] for g in grouped if grouped.nodes[g]["kind"] == "module"}
    assert labels == set(trace.order)
    expected = {1: {"0", "1", "2", "3"}, 2: {"2.fn"}}[depth]
    assert labels == expected
    # each box holds exactly its module's parameters
    params = {g: {fine.nodes[m]["name"] for m in grouped.nodes[g]["members"] if fine.nodes[m].get("role") == "parameter"}
              for g in grouped if grouped.nodes[g]["kind"] == "module"}
    for g, names in params.items():
        prefix = grouped.nodes[g]["label"] + "."
        assert names == {n for n, _ in model.named_parameters() if n.startswith(prefix)}
    assert all(not m._forward_hooks for m in model.modules())


def test_a_module_called_twice_gets_two_boxes():
    import networkx as nx
    layer = nn.Linear(3, 3)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    x = Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=False)
    with trace_modules(model) as trace:
        out = model(x).sum()
    assert trace.order == ["0", "1", "0 (call 2)"]   # the tree lists the shared layer once
    grouped = computation_graph(out, trace=trace, group_by_module=True)
    assert {("m:0", "m:1"), ("m:1", "m:0 (call 2)"), ("m:0", "m:0 (call 2)")} <= set(grouped.edges)
    assert nx.is_directed_acyclic_graph(grouped)
    assert [grouped.nodes[g]["n_params"] for g in ("m:0", "m:0 (call 2)")] == [2, 0]   # the weights drawn once


@pytest.mark.parametrize("max_nodes", [2, 3, 7, 20, 83, 84, 500])
def test_node_cap(max_nodes):
    x = Tensor(np.ones(3))
    h = x
    for _ in range(20): h = (h * 0.9).tanh()
    out = h.sum()
    full = computation_graph(out)
    assert len(full) == 83
    capped = computation_graph(out, max_nodes=max_nodes)
    assert len(capped) <= max_nodes
    if max_nodes >= len(full):
        assert set(capped) == set(full) and capped.graph["note"] is None
        return
    assert capped.nodes["elided"]["count"] == len(full) - (len(capped) - 1)
    assert f"showing {len(capped) - 1} of 83 nodes" in capped.graph["note"]
    kept = [n for n in capped if n != "elided"]
    ranks = sorted((full.nodes[n]["rank"] for n in full), reverse=True)
    assert sorted((full.nodes[n]["rank"] for n in kept), reverse=True) == ranks[:len(kept)]   # nearest the output
    assert set(capped.subgraph(kept).edges) == set(full.subgraph(kept).edges)
    fig = plot_graph(capped)
    node_texts = [t for t in fig.axes[0].texts if t.get_bbox_patch() is not None]
    assert len(node_texts) == len(capped)
    assert any("raise max_nodes" in t.get_text() for t in fig.axes[0].texts)
    plt.close(fig)


def test_cap_on_grouped_graph():
    model, trace, loss = mlp_step()
    grouped = computation_graph(loss, trace=trace, group_by_module=True, max_nodes=4)
    assert len(grouped) == 4 and "elided" in grouped


def test_tuple_values_and_roles():
    x = Tensor([1.0, 2.0])
    c = Tensor([3.0, 4.0], requires_grad=False)
    pair = fused_add_scalars(x, 1.0, 10.0)
    out = (pair[0] * pair[1] * c).sum()
    out.backward()
    graph = computation_graph(out, names={"x": x, "c": c})
    roles = {graph.nodes[n]["name"]: graph.nodes[n]["role"] for n in graph if graph.nodes[n]["kind"] == "value"
             and graph.nodes[n]["name"]}
    assert roles == {"x": "leaf", "c": "constant"}
    tuple_node = next(n for n in graph if graph.nodes[n].get("op") == "FusedAddScalars" and n.startswith("v"))
    assert graph.nodes[tuple_node]["shape"] == "((2,), (2,))"
    assert graph.nodes[tuple_node]["grad_shape"] == "((2,), (2,))"
    plt.close(draw_graph(out))


def test_bad_input_is_refused_clearly():
    with pytest.raises(TypeError, match="needs a Tensor"): computation_graph(np.ones(3))
    out = (Tensor([1.0]) * 2.0).sum()
    with pytest.raises(ValueError, match="max_nodes must be"): computation_graph(out, max_nodes=1)
    with pytest.raises(ValueError, match="needs trace="): computation_graph(out, group_by_module=True)
    with pytest.raises(TypeError, match="needs a module"): trace_modules(object())
    with pytest.raises(ValueError, match="no sub-modules at depth 2"): trace_modules(nn.Linear(2, 2), depth=2)


def test_import_needle_nb_loads_no_graph_code():
    probe = ("import sys, needle_nb; print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('networkx', 'matplotlib') or m == 'needle_nb.apps.graph'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
    probe = ("import sys, needle_nb.apps.graph; print(sorted({m.split('.')[0] for m in sys.modules} & "
             "{'networkx', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout   # the lab module too imports them only when drawing
