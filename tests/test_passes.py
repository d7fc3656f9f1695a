"""cse, fold, simplify, dce: each rewrite keeps values (interpreter as oracle) and does
what it claims; hypothesis builds random graphs from the registry's ops and checks
optimized == unoptimized == interpreter, values and gradients."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from graphc.ir import FusionKind, ShapeError, Graph, TensorType, all_ops, interpret, verify
from graphc.passes import add_gradients, cse, dce, fold, simplify
from graphc.ir.ops._util import broadcast_shapes
from graphc.pipeline import optimize

F64 = "float64"


@pytest.fixture(autouse=True)
def _verify_each(monkeypatch):
    monkeypatch.setenv("GRAPHC_VERIFY", "1")


def ops_of(g):
    return [g.op_of(n) for n in g.topo_order()]


def run_both(g, inputs, **opt):
    """(outputs of g as built, outputs after the pipeline), both by the interpreter."""
    before = interpret(g, inputs)
    h, _ = optimize(g.copy(), **opt)
    verify(h)
    return before, interpret(h, inputs), h


# ------------------------------------------------------------------ simplify rules
def _graph(shape=(2, 3)):
    g = Graph("t")
    return g, g.add_input(TensorType(shape, F64), "x")


def _pos_x(shape=(2, 3)):
    return {"x": np.random.default_rng(0).uniform(0.5, 2.0, shape)}


RULE_CASES = {
    "mul_one": lambda g, x: g.add("mul", [x, g.constant(1.0, F64)]),
    "one_mul": lambda g, x: g.add("mul", [g.constant(1.0, F64), x]),
    "div_one": lambda g, x: g.add("div", [x, g.constant(1.0, F64)]),
    "add_zero": lambda g, x: g.add("add", [g.constant(0.0, F64), x]),
    "sub_zero": lambda g, x: g.add("sub", [x, g.constant(0.0, F64)]),
    "neg_neg": lambda g, x: g.add("neg", [g.add("neg", [x])]),
    "log_exp": lambda g, x: g.add("log", [g.add("exp", [x])]),
    "pow_one": lambda g, x: g.add("pow", [x], {"exponent": 1.0}),
    "transpose2": lambda g, x: g.add("transpose", [g.add("transpose", [x])]),
    "reshape_same": lambda g, x: g.add("reshape", [x], {"shape": (2, 3)}),
}


@pytest.mark.parametrize("case", sorted(RULE_CASES))
def test_identity_rules_return_the_operand(case):
    g, x = _graph()
    g.set_outputs([RULE_CASES[case](g, x)])
    before, after, h = run_both(g, _pos_x())
    assert h.outputs == [x], ops_of(h)
    np.testing.assert_allclose(after[0], before[0], rtol=1e-12)


def test_sub_self_becomes_zeros_of_the_shape():
    g = Graph("t")
    x = g.add_input(TensorType(("N", 3), F64), "x")
    g.set_outputs([g.add("sub", [x, x])])
    before, after, h = run_both(g, {"x": np.ones((4, 3))})
    assert h.op_of(h.outputs[0]) == "constant"
    assert after[0].shape == (4, 3) and np.all(after[0] == before[0])


def test_exp_log_only_where_the_operand_is_non_negative():
    g, x = _graph()
    safe = g.add("exp", [g.add("log", [g.add("sigmoid", [x])])])
    unsafe = g.add("exp", [g.add("log", [x])])          # x < 0 gives nan: keep it
    g.set_outputs([safe, unsafe])
    inputs = {"x": np.array([[-1.0, 0.5, 2.0], [3.0, -0.2, 1.0]])}
    before, after, h = run_both(g, inputs)
    assert h.op_of(h.outputs[0]) == "sigmoid"
    assert h.op_of(h.outputs[1]) == "exp"
    np.testing.assert_allclose(after[0], before[0], rtol=1e-12)
    np.testing.assert_array_equal(np.isnan(after[1]), np.isnan(before[1]))


def test_transpose_composition_with_perms():
    g = Graph("t")
    x = g.add_input(TensorType((2, 3, 4), F64), "x")
    t = g.add("transpose", [g.add("transpose", [x], {"perm": (1, 2, 0)})], {"perm": (2, 0, 1)})
    u = g.add("transpose", [g.add("transpose", [x], {"perm": (1, 2, 0)})], {"perm": (0, 2, 1)})
    g.set_outputs([t, u])
    inputs = {"x": np.arange(24.0).reshape(2, 3, 4)}
    before, after, h = run_both(g, inputs)
    assert h.outputs[0] == x
    assert ops_of(h).count("transpose") == 1
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)


def test_log_softmax_and_nll_become_stable_cross_entropy():
    g = Graph("t")
    x = g.add_input(TensorType(("N", 4), F64), "x")
    y = g.add_input(TensorType(("N",), "int64"), "y")
    lp = g.add("log", [g.add("softmax", [x])])
    g.set_outputs([g.add("nll_loss", [lp, y])])
    inputs = {"x": np.array([[1.0, 2.0, 3.0, 0.5], [0.0, -1.0, 2.0, 1.0]]), "y": np.array([2, 0])}
    before, after, h = run_both(g, inputs)
    assert ops_of(h) == ["input", "input", "softmax_cross_entropy"]
    np.testing.assert_allclose(after[0], before[0], rtol=1e-12)
    # the stable form survives logits where softmax underflows to 0
    big = {"x": np.array([[0.0, 1000.0, 0.0, 0.0]]), "y": np.array([0])}
    assert np.isinf(interpret(g, big)[0])
    np.testing.assert_allclose(interpret(h, big)[0], 1000.0)


# ------------------------------------------------------------------ fold / cse / dce
def test_fold_uniform_constants_and_static_reductions():
    g = Graph("t")
    x = g.add_input(TensorType(("N", 3), F64), "x")
    c = g.add("mul", [g.constant(2.0, F64), g.add("exp", [g.constant(0.0, F64)])])  # 2
    s = g.add("reduce_sum", [g.constant(0.5, F64, (3, 4))], {"axes": (1,)})        # 2 each
    n = g.add("shape_size", [g.constant(1.0, F64, (3, 4))], {"axes": (0, 1), "dtype": F64})
    batch = g.add("reduce_sum", [g.constant(1.0, F64, ("N", 3))], {"axes": (0,)})  # N: kept
    out = g.add("add", [g.add("mul", [x, c]), g.add("add", [s, g.add("add", [n, batch])])])
    g.set_outputs([out])
    before, after, h = run_both(g, {"x": np.ones((5, 3))}, fuse=False)
    consts = [h.op_of(a) for a in (c, s, n) if a in h]
    assert "exp" not in ops_of(h) and "shape_size" not in ops_of(h)
    assert ops_of(h).count("reduce_sum") == 1       # the batch-sized one stays
    np.testing.assert_allclose(after[0], before[0], rtol=1e-12)
    assert after[0][0, 0] == 2.0 + 2.0 + 12.0 + 5.0 and consts == []


def _lecture_backprop_graph():
    """delta = a(1 - a) * (delta_next @ Theta), with a = sigmoid(z) spelled twice: the
    backward copy reads sigmoid(neg(neg(z))), as a rewritten subgraph leaves it."""
    g = Graph("backprop")
    x = g.add_input(TensorType(("N", 3), F64), "x")
    w = g.add_input(TensorType((4, 3), F64), "W")
    theta = g.add_input(TensorType((2, 4), F64), "Theta")
    dnext = g.add_input(TensorType(("N", 2), F64), "delta_next")
    z = g.add("matmul", [x, w], {"tb": True})
    a = g.add("sigmoid", [z])
    a2 = g.add("sigmoid", [g.add("neg", [g.add("neg", [z])])])
    one = g.constant(1.0, F64)
    delta = g.add("mul", [g.add("mul", [a2, g.add("sub", [one, a2])]),
                          g.add("matmul", [dnext, theta])])
    g.set_outputs([a, delta], ["a", "delta"])
    rng = np.random.default_rng(1)
    inputs = {"x": rng.normal(size=(5, 3)), "W": rng.normal(size=(4, 3)),
              "Theta": rng.normal(size=(2, 4)), "delta_next": rng.normal(size=(5, 2))}
    return g, inputs


def test_cse_removes_the_recomputed_sigmoid_in_backprop():
    g, inputs = _lecture_backprop_graph()
    no_cse, _ = optimize(g.copy(), fuse=False, disable=("cse",))
    assert ops_of(no_cse).count("sigmoid") == 2       # simplify alone leaves the duplicate
    h, pm = optimize(g.copy(), fuse=False)
    assert ops_of(h).count("sigmoid") == 1
    assert "neg" not in ops_of(h)
    for a, b in zip(interpret(h, inputs), interpret(g, inputs)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    nodes = {r.name: r.nodes for r in pm.records}
    assert nodes["cse"] < nodes["fold"]


def test_dce_leaves_no_node_that_no_output_uses():
    g = Graph("t")
    x = g.add_input(TensorType((3,), F64), "x")
    dead = g.add("exp", [g.add("sin", [x])])
    g.add("mul", [dead, dead])
    g.set_outputs([g.add("neg", [x])])
    h = dce(g.copy())
    live = set(h.inputs)
    import networkx as nx
    for o in h.outputs:
        live |= nx.ancestors(h.nx, o) | {o}
    assert set(h.nx.nodes) == live
    assert ops_of(h) == ["input", "neg"]


# ------------------------------------------------------------------ random graphs
SAFE_UNARY = sorted(n for n, o in all_ops().items()
                    if o.kind == FusionKind.ELEMWISE and o.arity == 1 and o.differentiable
                    and not o.attrs and n not in ("exp", "log", "sqrt", "abs", "cast")
                    and all(s.domain(0) == "real" for s in o.samples))
BINARY = sorted(n for n, o in all_ops().items()
                if o.kind == FusionKind.ELEMWISE and o.arity == 2 and o.differentiable
                and n != "div")
REDUCE = sorted(n for n, o in all_ops().items()
                if o.kind == FusionKind.REDUCTION and o.arity == 1 and "axes" in o.attrs)
ROW = sorted(n for n, o in all_ops().items()
             if o.kind == FusionKind.REDUCTION and o.arity == 1 and "axis" in o.attrs)
# patterns the rewrites look for, so random graphs exercise them
PATTERNS = ["neg_neg", "mul_one", "add_zero", "sub_self", "log_exp"]
SHAPES = {"x": ("N", 4), "w": (4,), "b": ("N", 1)}


def _broadcasts(s1, s2):
    try:
        broadcast_shapes(s1, s2)
        return True
    except ShapeError:
        return False


@st.composite
def random_graph(draw, max_ops=7):
    g = Graph("random")
    pool = [g.add_input(TensorType(s, F64), n, "param") for n, s in SHAPES.items()]
    for _ in range(draw(st.integers(2, max_ops))):
        kind = draw(st.sampled_from(["unary", "binary", "binary", "reduce", "row", "pattern"]))
        a = draw(st.sampled_from(pool))
        if kind == "unary":
            new = g.add(draw(st.sampled_from(SAFE_UNARY)), [a])
        elif kind == "binary":
            ok = [b for b in pool if _broadcasts(g.type_of(a).shape, g.type_of(b).shape)]
            new = g.add(draw(st.sampled_from(BINARY)), [a, draw(st.sampled_from(ok))])
        elif kind == "row":
            if g.type_of(a).rank == 0:
                continue
            new = g.add(draw(st.sampled_from(ROW)), [a])
        elif kind == "reduce":
            rank = g.type_of(a).rank
            if rank == 0:
                continue
            axes = tuple(sorted(draw(st.sets(st.integers(0, rank - 1), min_size=1))))
            new = g.add(draw(st.sampled_from(REDUCE)), [a],
                        {"axes": axes, "keepdims": draw(st.booleans())})
        else:
            p = draw(st.sampled_from(PATTERNS))
            t = g.type_of(a)
            if p == "neg_neg":
                new = g.add("neg", [g.add("neg", [a])])
            elif p == "mul_one":
                new = g.add("mul", [a, g.constant(1.0, F64)])
            elif p == "add_zero":
                new = g.add("add", [g.constant(0.0, F64, t.shape), a])
            elif p == "sub_self":
                new = g.add("add", [a, g.add("sub", [a, a])])
            else:
                new = g.add("log", [g.add("exp", [g.add("tanh", [a])])])
        pool.append(new)
    last = pool[-1]
    t = g.type_of(last)
    loss = g.add("reduce_sum", [last], {"axes": tuple(range(t.rank))}) if t.rank else last
    grads = add_gradients(g, loss, g.inputs)
    g.set_outputs([last, loss] + grads)
    return g


def random_inputs(seed, batch=3):
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(-1.5, 1.5, tuple(batch if d == "N" else d for d in s))
            for n, s in SHAPES.items()}


def assert_close(got, want):
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graph(), st.integers(0, 2**16))
def test_random_graphs_optimized_equal_interpreter(g, seed):
    inputs = random_inputs(seed)
    want = interpret(g, inputs)
    for fuse in (False, True):
        h, _ = optimize(g.copy(), fuse=fuse)
        assert_close(interpret(h, inputs), want)
