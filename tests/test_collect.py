"""collect_terms: sums of products are expanded, cancelled and factored only where that
saves ops; values stay equal (interpreter on the graph as built is the oracle), and
hypothesis builds random add/sub/neg/mul trees to check both."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from graphc.ir import Graph, TensorType, format_graph, interpret, verify
from graphc.passes import add_gradients, collect_terms, dce
from graphc.pipeline import optimize

F64 = "float64"
TREE = {"add", "sub", "neg", "mul"}


def tree_ops(g):
    return sum(1 for n in g.nx if g.op_of(n) in TREE)


def collected(g):
    h = dce(collect_terms(g.copy()))
    verify(h)
    return h


def _inputs(g, shape=(7,), seed=0):
    rng = np.random.default_rng(seed)
    return {g.nx.nodes[i]["name"]: rng.uniform(-2.0, 2.0, shape) for i in g.inputs}


def _check_same_values(g, h, shape=(7,)):
    inputs = _inputs(g, shape)
    for want, got in zip(interpret(g, inputs), interpret(h, inputs)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_chain_gradient_is_factored():
    """d/dx sum(sigmoid*tanh + 0.5 relu - softplus) = s t (1 - s - t) + 0.5 [x > 0]."""
    g = Graph("chain")
    x = g.add_input(TensorType((7,), F64), "x")
    s, t = g.add("sigmoid", [x]), g.add("tanh", [x])
    y = g.add("sub", [g.add("add", [g.add("mul", [s, t]),
                                    g.add("mul", [g.constant(0.5, F64),
                                                  g.add("relu", [x])])]),
                      g.add("softplus", [x])])
    loss = g.add("reduce_sum", [y], {"axes": (0,)})
    (dx,) = add_gradients(g, loss, [x])
    g.set_outputs([loss, dx])
    before, _ = optimize(g.copy(), fuse=False, disable=("collect",))
    after, _ = optimize(g.copy(), fuse=False)
    assert tree_ops(after) <= tree_ops(before) - 4
    _check_same_values(g, after)
    xs = np.linspace(-3, 3, 7)
    sv, tv = 1 / (1 + np.exp(-xs)), np.tanh(xs)
    np.testing.assert_allclose(interpret(after, {"x": xs})[1],
                               sv * tv * (1 - sv - tv) + 0.5 * (xs > 0), rtol=1e-12)


def test_like_terms_cancel_to_an_operand():
    g = Graph("t")
    a, b, c = (g.add_input(TensorType((7,), F64), n) for n in "abc")
    ab = g.add("mul", [a, b])
    g.set_outputs([g.add("sub", [g.add("add", [ab, c]), g.add("mul", [b, a])])])
    h = collected(g)
    assert h.outputs == [c]


def test_no_rewrite_without_a_saving():
    """(a+b)*(a-b) expands to a*a - b*b: as many ops and worse rounding, so it stays."""
    g = Graph("t")
    a, b = (g.add_input(TensorType((7,), F64), n) for n in "ab")
    g.set_outputs([g.add("mul", [g.add("add", [a, b]), g.add("sub", [a, b])])])
    assert format_graph(collected(g)) == format_graph(dce(g.copy()))


def test_broadcast_atoms_and_integers_are_left_alone():
    g = Graph("t")
    x = g.add_input(TensorType((3, 4), F64), "x")
    bias = g.add_input(TensorType((4,), F64), "bias")
    # x*bias + x*x would factor as x*(bias + x); with a broadcast atom such products
    # could change shapes in general, so the tree is left as built
    g.set_outputs([g.add("add", [g.add("mul", [x, bias]), g.add("mul", [x, x])])])
    assert format_graph(collected(g)) == format_graph(dce(g.copy()))
    gi = Graph("i")
    n = gi.add_input(TensorType((3,), "int64"), "n")
    gi.set_outputs([gi.add("sub", [gi.add("add", [n, n]), n])])
    assert format_graph(collected(gi)) == format_graph(dce(gi.copy()))


def test_shared_inner_nodes_are_computed_once():
    """u = a*(b+c) feeds two outputs: it is an atom of both trees, never duplicated."""
    g = Graph("t")
    a, b, c = (g.add_input(TensorType((7,), F64), n) for n in "abc")
    u = g.add("mul", [a, g.add("add", [b, c])])
    o1 = g.add("sub", [g.add("add", [g.add("mul", [u, a]), g.add("mul", [u, b])]),
                       g.add("mul", [u, a])])
    o2 = g.add("mul", [u, c])
    g.set_outputs([o1, o2])
    h = collected(g)
    assert tree_ops(h) < tree_ops(dce(g.copy()))
    assert sum(1 for n in h.nx if h.op_of(n) == "add") == 1     # b + c, once
    _check_same_values(g, h)


def test_pass_is_switchable_by_name():
    g = Graph("t")
    a, b = (g.add_input(TensorType((7,), F64), n) for n in "ab")
    g.set_outputs([g.add("add", [g.add("mul", [a, b]), g.add("mul", [a, a])])])
    off, pm = optimize(g.copy(), fuse=False, disable=("collect",))
    on, _ = optimize(g.copy(), fuse=False)
    assert "collect" in [r.name for r in pm.records]
    assert tree_ops(off) == 3 and tree_ops(on) == 2           # a*b + a*a -> a*(b + a)


# ------------------------------------------------------------- random trees (hypothesis)
_CONSTS = st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0, 3.0])


@st.composite
def _trees(draw):
    g = Graph("rand")
    leaves = [g.add_input(TensorType((7,), F64), n) for n in "abc"]
    leaves.append(g.add("sin", [leaves[0]]))
    nodes = list(leaves)
    for _ in range(draw(st.integers(2, 14))):
        op = draw(st.sampled_from(["add", "sub", "mul", "mul", "neg", "const_mul"]))
        x = draw(st.sampled_from(nodes))
        if op == "neg":
            nodes.append(g.add("neg", [x]))
        elif op == "const_mul":
            nodes.append(g.add("mul", [g.constant(draw(_CONSTS), F64), x]))
        else:
            nodes.append(g.add(op, [x, draw(st.sampled_from(nodes))]))
    outs = draw(st.lists(st.sampled_from(nodes[len(leaves):]), min_size=1, max_size=2,
                         unique=True))
    g.set_outputs(outs)
    return g


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_trees())
def test_random_trees_keep_values_and_never_grow(g):
    h = collected(g)
    assert tree_ops(h) <= tree_ops(dce(g.copy()))
    inputs = _inputs(g)
    for want, got in zip(interpret(g, inputs), interpret(h, inputs)):
        np.testing.assert_allclose(got, want, rtol=1e-9,
                                   atol=1e-9 * (1 + np.abs(want).max()))


@pytest.mark.parametrize("depth", [6, 10])
def test_big_expansions_are_left_alone(depth):
    """(a+b)^(2^depth) by repeated squaring would expand to thousands of terms."""
    g = Graph("t")
    a, b = (g.add_input(TensorType((7,), F64), n) for n in "ab")
    e = g.add("add", [a, b])
    for _ in range(depth):
        e = g.add("mul", [e, e])
    g.set_outputs([e])
    assert format_graph(collected(g)) == format_graph(dce(g.copy()))
