"""Large elementwise graphs run in row chunks on several threads (codegen/parallel.py):
same results as one thread and as the NumPy interpreter; everything else stays whole."""
import numpy as np
import pytest
from forked import run_in_forked_child

import graphc as gc
from graphc.codegen import compile_graph
from graphc.codegen.parallel import MIN_CHUNK_ELEMENTS, chunk_bounds, row_split_plan
from graphc.codegen.schedule import build_schedule
from graphc.ir import BATCH, Graph, TensorType
from graphc.ir.interpreter import interpret

ROWS = 2 * MIN_CHUNK_ELEMENTS + 37      # two chunks, the second one ragged


def _chain(v):
    return gc.sum(gc.sigmoid(v) * gc.tanh(v) + 0.5 * gc.relu(v) - gc.softplus(v))


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setenv("GRAPHC_THREADS", "2")


def test_value_and_grad_in_chunks_matches_one_thread(two_threads, monkeypatch):
    x = np.random.default_rng(0).standard_normal(ROWS).astype(np.float32)
    vg = gc.value_and_grad(_chain)
    exe = vg.compiled((x,))
    loss, grad = exe.run([x])
    assert len(exe.last_chunks) == 2 and exe.last_chunks[-1][1] == ROWS
    monkeypatch.setenv("GRAPHC_THREADS", "1")
    whole = compile_graph(exe.graph)
    loss1, grad1 = whole.run([x])
    assert whole.split_plan is None and whole.last_chunks == []
    np.testing.assert_array_equal(grad, grad1)          # elementwise: bit for bit
    assert loss == pytest.approx(float(loss1), rel=1e-5)  # only the summation order differs
    ref = interpret(exe.graph, {exe.input_names[0]: x.astype(np.float64)})
    assert loss == pytest.approx(float(ref[0]), rel=1e-4)


def _batch_graph():
    """(N, 4) elementwise with a sum and a max of everything, the batch axis split."""
    g = Graph("batch_rows")
    x = g.add_input(TensorType((BATCH, 4), "float64"), "x")
    y = g.add_input(TensorType((BATCH, 4), "float64"), "y")
    prod = g.add("mul", [g.add("exp", [x]), y])
    g.set_outputs([prod, g.add("reduce_sum", [prod]), g.add("reduce_max", [x])])
    return g


def test_batch_axis_split_sum_and_max(two_threads):
    g = _batch_graph()
    exe = compile_graph(g)
    rng = np.random.default_rng(1)
    n = ROWS // 4 + 3
    x, y = rng.standard_normal((n, 4)), rng.standard_normal((n, 4))
    x[n - 2, 1] = 9.0                       # the maximum sits in the second chunk
    out = exe.run({"x": x, "y": y})
    assert len(exe.last_chunks) == 2
    ref = interpret(g, {"x": x, "y": y})
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-12)
    assert float(out[1]) == pytest.approx(float(ref[1]), rel=1e-9)
    assert float(out[2]) == 9.0
    small = exe.run({"x": x[:8], "y": y[:8]})   # too small to split: one call
    assert exe.last_chunks == []
    np.testing.assert_allclose(small[0], ref[0][:8], rtol=1e-12)


def _plan(build):
    g = Graph("p")
    build(g)
    return row_split_plan(g, build_schedule(g))


def test_what_stays_whole():
    vec = TensorType((ROWS,), "float32")
    mat = TensorType((BATCH, 8), "float32")

    def partial_sum(g):
        g.set_outputs([g.add("reduce_sum", [g.add_input(mat, "x")], {"axes": (1,)})])

    def sum_read_later(g):
        x = g.add_input(vec, "x")
        g.set_outputs([g.add("sub", [x, g.add("reduce_sum", [x])])])

    def matmul(g):
        w = g.add_input(TensorType((8, 8), "float32"), "w")
        g.set_outputs([g.add("matmul", [g.add_input(mat, "x"), w])])

    def dropout(g):
        x = g.add_input(vec, "x")
        seed = g.add_input(TensorType((), "int64"), "seed")
        g.set_outputs([g.add("dropout_mask", [x, seed], {"p": 0.5})])

    def two_shapes(g):
        g.set_outputs([g.add("exp", [g.add_input(vec, "x")]),
                       g.add("exp", [g.add_input(mat, "y")])])

    for build in (partial_sum, sum_read_later, matmul, dropout, two_shapes):
        assert _plan(build) is None, build.__name__

    def ok(g):
        g.set_outputs([g.add("tanh", [g.add_input(mat, "x")])])
    assert _plan(ok) is not None


@pytest.mark.parametrize("rows,row_size,chunks", [(ROWS, 1, 2), (1000, 3, 4), (7, 64, 3),
                                                  (130, 1, 2)])
def test_chunk_bounds_cover_rows_on_cache_lines(rows, row_size, chunks):
    b = chunk_bounds(rows, row_size, chunks)
    assert b[0][0] == 0 and b[-1][1] == rows and len(b) <= chunks
    assert all(hi == lo2 for (_, hi), (lo2, _) in zip(b, b[1:]))
    assert all((lo * row_size) % 64 == 0 for lo, _ in b)


def test_chunk_views_follow_reallocated_buffers(two_threads, monkeypatch):
    """Buffer sets are dropped least-recently-used; chunk views of a dropped set must not
    be reused when that batch size comes back with new buffers."""
    from graphc.codegen import runtime
    monkeypatch.setattr(runtime, "MAX_BATCH_SIZES", 2)
    g = _batch_graph()
    exe = compile_graph(g)
    rng = np.random.default_rng(3)
    base = ROWS // 4
    sizes = [base, base + 64, base, base + 128, base + 64]   # the last one was evicted
    for n in sizes:
        x, y = rng.standard_normal((n, 4)), rng.standard_normal((n, 4))
        out = exe.run({"x": x, "y": y})
        assert len(exe.last_chunks) == 2
        np.testing.assert_allclose(out[0], np.exp(x) * y, rtol=1e-12)
        assert float(out[1]) == pytest.approx(float((np.exp(x) * y).sum()), rel=1e-9)


def _split_sum(exe, x):
    return float(exe.run([x])[0])


def test_forked_child_runs_split_graphs(two_threads):
    """A child forked after the parent used the worker threads gets threads of its own
    (it inherits the pool object, not its threads: submitted chunks would never run)."""
    x = np.random.default_rng(4).standard_normal(ROWS).astype(np.float32)
    vg = gc.value_and_grad(_chain)
    exe = vg.compiled((x,))
    want = float(exe.run([x])[0])
    assert len(exe.last_chunks) == 2          # the parent's pool exists and was used
    assert run_in_forked_child(_split_sum, (exe, x), timeout=60) == pytest.approx(want, rel=1e-6)
