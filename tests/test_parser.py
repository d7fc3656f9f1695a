"""The text IR parses back into an identical graph; DOT and JSON exports."""
import json
import math

import numpy as np
import pytest

import graphc as gc
from graphc.ir import (Graph, GraphError, OpError, ShapeError, TensorType, format_graph,
                       interpret, parse_graph, to_dot, to_json)


def assert_identical(a: Graph, b: Graph):
    assert a.name == b.name
    assert a.inputs == b.inputs and a.outputs == b.outputs
    assert a.output_names == b.output_names and a.aliases == b.aliases
    assert a.meta == b.meta
    assert dict(a.nx.nodes(data=True)) == dict(b.nx.nodes(data=True))
    assert sorted(a.nx.edges(keys=True, data=True)) == sorted(b.nx.edges(keys=True, data=True))


@pytest.fixture(scope="module")
def model():
    gc.manual_seed(0)
    net = gc.nn.Sequential(gc.nn.Linear(4, 6), gc.nn.Tanh(), gc.nn.Linear(6, 3))
    return gc.compile(net, input_shape=(None, 4), loss="cross_entropy",
                      optimizer=gc.optim.SGD(lr=0.1, momentum=0.9), dtype="float64")


@pytest.mark.parametrize("kind", ["forward", "gradients", "train"])
def test_round_trip_of_compiled_graphs(model, kind):
    g = model._graph(kind)
    text = format_graph(g)
    back = parse_graph(text)
    assert_identical(g, back)
    assert format_graph(back) == text


def test_round_trip_keeps_groups_odd_names_and_special_attrs():
    g = Graph("odd graph")
    x = g.add_input(TensorType(("N", 3), "float32"), "x  with spaces")
    c = g.add("constant", [], {"value": math.inf, "shape": (), "dtype": "float32"})
    y = g.add("minimum", [x, c], name="-")
    z = g.add("exp", [y], name="it's, #odd @k9")
    w = g.add("mul", [z, z], name="plain.name")
    g.set_group(y, 0)
    g.set_group(z, 0)
    g.set_outputs([w, z], [None, "out, 1"])
    g.meta["label_classes"] = {"y": 3}
    back = parse_graph(format_graph(g))
    assert_identical(g, back)
    # parsed graphs stay usable: new ids do not collide, equal nodes are shared
    assert back.add("exp", [y]) == z
    assert back.add("neg", [w]) == max(g.nx.nodes) + 1


def test_parsed_graph_computes_the_same(model):
    g = model._graph("gradients")
    back = parse_graph(format_graph(g))
    rng = np.random.default_rng(0)
    vals = {"x": rng.standard_normal((5, 4)), "y": np.array([0, 1, 2, 1, 0])}
    vals.update(model._graph_parameters())
    ins = [vals[n] for n in g.input_names()]
    for a, b in zip(interpret(g, ins), interpret(back, ins)):
        np.testing.assert_array_equal(a, b)


GOOD = """graph t {
  %0: f32[N, 3] = input[role='data']  # x
  %1: f32[N, 3] = exp(%0)
  return %1  # y
}"""


@pytest.mark.parametrize("edit, exc, where", [
    (lambda t: t.replace("graph t {", "graf t {"), GraphError, "<ir>:1:"),
    (lambda t: t.replace("exp(%0)", "expo(%0)"), OpError, "<ir>:3:"),
    (lambda t: t.replace("%1: f32[N, 3] = exp", "%1: f32[N, 4] = exp"), GraphError, "<ir>:3:"),
    (lambda t: t.replace("exp(%0)", "exp(%7)"), GraphError, "<ir>:3:"),
    (lambda t: t.replace("%1: f32", "%0: f32"), GraphError, "<ir>:3:"),
    (lambda t: t.replace("exp(%0)", "exp(%0, %0)"), GraphError, "<ir>:3:"),
    (lambda t: t.replace("f32[N, 3] = exp", "f99[N, 3] = exp"), ShapeError, "<ir>:3:"),
    (lambda t: t.replace("return %1  # y", "return %1  # y, z"), GraphError, "<ir>:4:"),
    (lambda t: t.replace("  return %1  # y\n", ""), GraphError, "missing 'return'"),
    (lambda t: t[:-1], GraphError, "missing closing"),
    (lambda t: t.replace("}", "  alias output 3 -> input 0\n}"), GraphError, "<ir>:5:"),
    (lambda t: t.replace("role='data'", "role='weird'"), GraphError, "<ir>:2:"),
    (lambda t: t.replace("exp(%0)", "exp(%0)[bogus=1]"), OpError, "<ir>:3:"),
])
def test_malformed_ir_names_the_line(edit, exc, where):
    assert parse_graph(GOOD).outputs == [1]
    with pytest.raises(exc) as info:
        parse_graph(edit(GOOD))
    assert where in str(info.value)
    assert "\n" not in str(info.value)


def test_dot_shows_groups_as_clusters(model):
    g = model._graph("forward").copy()
    ops = [n for n in g.topo_order() if g.op_of(n) in ("add", "tanh")]
    for n in ops:
        g.set_group(n, 7)
    dot = to_dot(g)
    assert dot.startswith('digraph "forward" {') and dot.rstrip().endswith("}")
    cluster = dot.split('subgraph "cluster_k7" {')[1].split("  }")[0]
    assert sorted(int(line.split()[0][1:]) for line in cluster.splitlines()
                  if line.strip().startswith("n")) == sorted(ops)
    assert dot.count(" -> ") == g.nx.number_of_edges() + len(g.outputs)


def test_json_is_node_link(model):
    g = model._graph("train")
    data = json.loads(to_json(g))
    assert len(data["nodes"]) == len(g) and len(data["edges"]) == g.nx.number_of_edges()
    assert data["graph"]["inputs"] == g.inputs and data["graph"]["outputs"] == g.outputs
    node = {n["id"]: n for n in data["nodes"]}[g.inputs[0]]
    assert node["op"] == "input" and node["shape"] == ["N", 4] and node["dtype"] == "float64"


def test_attributes_of_the_wrong_kind_are_graph_errors_with_the_line():
    head = "graph g {\n  %0: f64[N, 2] = input[role='data']  # x\n"
    for body in ("%1: f64[N, 2] = reshape(%0)[shape=None]",
                 "%1: f64[N] = reduce_sum(%0)[axes=1, keepdims=False]",
                 "%1: f64[] = constant[dtype='float64', shape=3, value=1.0]"):
        with pytest.raises(GraphError, match="<ir>:3: "):
            parse_graph(head + f"  {body}\n  return %1\n}}")
    with pytest.raises(GraphError, match="needs the IR text as a str"):
        parse_graph(None)


def test_a_name_holding_a_group_marker_round_trips():
    """' @k1' inside a quoted name was read as the kernel group of the line."""
    g = Graph("g")
    x = g.add_input(TensorType((2,), "float64"), "fc @k1.x")
    y = g.add("exp", [x], name="fc @k1.weight")
    g.set_group(y, 3)
    g.set_outputs([y])
    back = parse_graph(format_graph(g))
    assert format_graph(back) == format_graph(g)
    assert back.nx.nodes[back.outputs[0]]["name"] == "fc @k1.weight"
