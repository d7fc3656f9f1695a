"""A copying call (``Executable.run(copy=True)``, which gc.jit, gc.grad and a model's
forward use) has the driver write the outputs it returns straight into new arrays
instead of copying them out of the runtime's buffers: values as before, and no returned
array shares memory with the runtime or with another call's results."""
import numpy as np
import pytest

import graphc as gc
from graphc.codegen import compile_graph
from graphc.ir import Graph, TensorType, interpret


def _chain(v):
    return gc.sum(gc.sigmoid(v) * gc.tanh(v) + 0.5 * gc.relu(v) - gc.softplus(v))


def _assert_apart(results, runtime):
    arrays = [r for r in results if isinstance(r, np.ndarray) and r.size]
    for i, a in enumerate(arrays):
        for b in arrays[i + 1:] + list(runtime):
            assert not np.shares_memory(a, b)


@pytest.mark.parametrize("n", [1000, 1 << 19])   # one native call; row chunks on threads
def test_value_and_grad_returns_new_arrays_with_the_same_values(n, monkeypatch):
    monkeypatch.setenv("GRAPHC_THREADS", "2")
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    vg = gc.value_and_grad(_chain)
    exe = vg.compiled((x,))
    first, second = vg(x), vg(x)
    assert bool(exe.last_chunks) == (n > 1000)
    assert exe._plans()[1]            # the gradient was written into a new array
    ref = exe.run([x], copy=False)            # the runtime's own buffers
    np.testing.assert_array_equal(first[1], ref[1])
    np.testing.assert_array_equal(second[1], ref[1])
    assert first[0] == second[0]
    _assert_apart([first[1], second[1]], exe.buffers_for(None))
    g = exe.graph
    want = interpret(g, {g.input_names()[0]: x.astype(np.float64)})
    np.testing.assert_allclose(first[1], want[1], rtol=1e-5, atol=1e-6)


def test_an_output_in_a_reused_array_and_an_output_listed_twice():
    # unfused: exp -> neg -> exp, the last exp takes the first one's array (liveness plan)
    g = Graph("reuse")
    x = g.add_input(TensorType(("N", 4), "float64"), "x")
    a = g.add("exp", [x])
    c = g.add("exp", [g.add("neg", [a])])
    g.set_outputs([c, c, g.add("reduce_sum", [c], {"axes": (0,), "keepdims": False})])
    exe = compile_graph(g)
    assert exe.schedule.shares.get(c) == a
    xv = np.random.default_rng(1).standard_normal((3, 4))
    got = exe.run([xv])
    want = interpret(g, {"x": xv})
    for o, w in zip(got, want):
        np.testing.assert_allclose(o, w, rtol=1e-12)
    assert got[0] is not got[1]
    _assert_apart(got + exe.run([xv]), exe.buffers_for(3))


def test_model_forward_and_gradients_hand_out_new_arrays():
    gc.manual_seed(0)
    m = gc.compile(gc.nn.Sequential(gc.nn.Linear(5, 7), gc.nn.ReLU(), gc.nn.Linear(7, 3)),
                   input_shape=(None, 5), loss="cross_entropy",
                   optimizer=gc.optim.SGD(lr=0.1))
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((4, 5)).astype(np.float32), rng.integers(0, 3, 4)
    out1, out2 = m(x), m(x)
    np.testing.assert_array_equal(out1, out2)
    grads = m.gradients(x, y)
    _assert_apart([out1, out2, *grads.values()],
                  m._exe("forward").buffers_for(4) + m._exe("gradients").buffers_for(4))
    ref = interpret(m._graph("forward"),
                    dict(zip(m._graph("forward").input_names(), m._inputs("forward", x))))
    np.testing.assert_allclose(out1, ref[0], rtol=1e-5, atol=1e-6)
