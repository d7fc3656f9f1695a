"""Numerical safety: large-magnitude float32 inputs stay finite where the math is, and
``check_finite=True`` names the first node that makes a NaN/Inf.

    pytest tests/test_numerics.py
"""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.codegen import compile_graph
from graphc.ir import Graph, NumericError, TensorType, interpret, verify
from graphc.passes import add_gradients

C = 6
# magnitudes up to 1e4, both signs, plus values around exp's float32 limit (88.7)
BIG = np.array([-1e4, -3e3, -100.0, -88.0, -1.0, 0.0, 1e-3, 1.0, 20.0, 88.0, 100.0, 1e4],
               dtype=np.float32)


def _mean(g, v):
    return g.add("reduce_mean", [v], {"axes": None})


@pytest.fixture(scope="module")
def stable_graph():
    """One graph (one compile) holding every op under test and its gradient."""
    f32 = "float32"
    g = Graph("stable")
    x = g.add_input(TensorType(("N", C), f32), "x")
    y = g.add_input(TensorType(("N",), "int64"), "y", "label")
    t = g.add_input(TensorType(("N", C), f32), "t", "label")
    e = g.add_input(TensorType(("N", C), f32), "e")      # exp's finite domain: x <= 88
    p = g.add_input(TensorType(("N", C), f32), "p")      # log's domain: x > 0
    outs = {name: g.add(name, [x]) for name in ("sigmoid", "softplus", "tanh")}
    outs["softmax"] = g.add("softmax", [x])
    outs["log_softmax"] = g.add("log_softmax", [x])
    outs["exp"] = g.add("exp", [e])
    outs["log"] = g.add("log", [p])
    outs["cross_entropy"] = g.add("softmax_cross_entropy", [x, y])
    # F.binary_cross_entropy_with_logits as graphc traces it: mean(softplus(x) - x*t)
    outs["bce_with_logits"] = _mean(g, g.add("sub", [outs["softplus"], g.add("mul", [x, t])]))
    outs["bce"] = g.add("binary_cross_entropy", [outs["sigmoid"], t])
    total = outs["cross_entropy"]
    for name in ("bce_with_logits", "sigmoid", "softplus", "tanh", "log_softmax", "softmax"):
        v = outs[name]
        total = g.add("add", [total, v if g.type_of(v).rank == 0 else _mean(g, v)])
    (outs["grad_x"],) = add_gradients(g, total, [x])
    outs["total"] = total
    # bce on sigmoid(x): float32 rounds sigmoid(20) to exactly 1 (log clamped at -100, as
    # torch does), so its oracle is the float32 interpreter, not float64 math
    (outs["grad_x_bce"],) = add_gradients(g, outs["bce"], [x])
    g.set_outputs(list(outs.values()), list(outs))
    verify(g)
    return g, compile_graph(g)


def _inputs(batch, rng):
    x = rng.choice(BIG, size=(batch, C)).astype(np.float32)
    x[0] = BIG[:C] if batch else x[0]
    return {"x": x,
            "y": rng.integers(0, C, size=batch),
            "t": rng.uniform(0, 1, size=(batch, C)).astype(np.float32),
            "e": rng.choice(BIG[BIG <= 88.0], size=(batch, C)).astype(np.float32),
            "p": rng.choice(np.abs(BIG[BIG != 0]), size=(batch, C)).astype(np.float32)}


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_large_magnitudes_stay_finite(stable_graph, batch):
    g, exe = stable_graph
    rng = np.random.default_rng(batch)
    inputs = _inputs(batch, rng)
    got = exe.run(inputs)
    # the oracle: the reference interpreter evaluated in float64
    g64 = _as_float64(g)
    with np.errstate(all="ignore"):
        want = interpret(g64, {k: (v.astype(np.float64) if v.dtype == np.float32 else v)
                               for k, v in inputs.items()})
        want32 = interpret(g, inputs)
    for name, a, b, b32 in zip(g.output_names, got, want, want32):
        if name in ("bce", "grad_x_bce"):
            b = b32.astype(np.float64)
        assert np.all(np.isfinite(a)), f"{name} is not finite for |x| up to 1e4: {a}"
        scale = max(float(np.max(np.abs(b))), 1.0)
        err = float(np.max(np.abs(a.astype(np.float64) - b)))
        assert err <= 1e-4 * scale, f"{name}: error {err:.3g} vs float64 (scale {scale:.3g})"


def _as_float64(g):
    """A float64 copy of ``g``: same ops, float64 inputs and constants."""
    out = Graph(g.name + "_f64")
    ids = {}
    for nid in g.inputs:
        t = g.type_of(nid)
        dt = "float64" if t.dtype == "float32" else t.dtype
        ids[nid] = out.add_input(TensorType(t.shape, dt), g.nx.nodes[nid]["name"],
                                 g.input_role(nid))
    for nid in g.topo_order():
        if nid in ids:
            continue
        attrs = dict(g.nx.nodes[nid]["attrs"])
        if attrs.get("dtype") == "float32":
            attrs["dtype"] = "float64"
        ids[nid] = out.add(g.op_of(nid), [ids[a] for a in g.args_of(nid)], attrs)
    out.set_outputs([ids[o] for o in g.outputs], list(g.output_names))
    return out


# ----------------------------------------------------------------- check_finite

class Log(gc.nn.Module):
    def forward(self, x):
        return gc.log(x)


@pytest.fixture(scope="module")
def log_model():
    net = gc.nn.Sequential(gc.nn.Linear(3, 2), Log())
    m = gc.compile(net, input_shape=(None, 3), loss="mse", optimizer=gc.optim.SGD(lr=0.1),
                   dtype="float64", check_finite=True)
    return m


def _reset(m):
    m.load_parameters({"0.weight": np.ones((2, 3)), "0.bias": np.zeros(2)})


def test_check_finite_names_the_first_bad_node_in_forward(log_model):
    _reset(log_model)
    good = log_model(np.ones((2, 3)))
    np.testing.assert_allclose(good, np.log(3.0) * np.ones((2, 2)))
    with pytest.raises(NumericError, match=r"first non-finite value in node %\d+: .* = log\("):
        log_model(-np.ones((2, 3)))     # linear output -3: log gives NaN


def test_check_finite_names_an_input(log_model):
    _reset(log_model)
    x = np.ones((2, 3))
    x[1, 2] = np.nan
    with pytest.raises(NumericError, match=r"input 'x' \(nan: 1 of 6"):
        log_model(x)


def test_check_finite_train_step_restores_parameters(log_model):
    _reset(log_model)
    before = log_model.parameters()
    with pytest.raises(NumericError, match=r"= log\("):
        log_model.train_step(-np.ones((4, 3)), np.zeros((4, 2)))
    y = np.zeros((4, 2))
    y[0, 0] = np.inf
    with pytest.raises(NumericError, match=r"input 'y' \(\+inf"):
        log_model.train_step(np.ones((4, 3)), y)
    after = log_model.parameters()
    for k in before:   # the failed steps wrote nothing
        np.testing.assert_array_equal(after[k], before[k])
    # and the model still trains normally afterwards
    loss = log_model.train_step(np.ones((4, 3)), np.zeros((4, 2)))
    assert np.isfinite(loss)
    assert not np.array_equal(log_model.parameters()["0.weight"], before["0.weight"])


def test_check_finite_off_does_not_raise():
    m = gc.compile(gc.nn.Sequential(gc.nn.Linear(3, 2), Log()), input_shape=(None, 3),
                   dtype="float64")
    m.load_parameters({"0.weight": np.ones((2, 3)), "0.bias": np.zeros(2)})
    with np.errstate(all="ignore"):
        out = m(-np.ones((1, 3)))
    assert np.all(np.isnan(out))
