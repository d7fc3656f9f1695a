"""Convolutions (and pooling) split across cores: kernels that run their batch in parts
(``prange``) match the NumPy interpreter for uneven and empty parts, give the same result
on every run, leave OpenBLAS's thread count as they found it, and still run in a forked
child; graphc keeps them serial where the threading layer or the BLAS make parts unsafe."""
import ctypes

import numpy as np
import pytest
from forked import run_in_forked_child

from graphc.codegen import blas, parallel, runtime
from graphc.codegen.runtime import compile_graph
from graphc.ir import Graph, TensorType, interpret

PATHS = [   # (in channels, out channels, image side, stride): the kernels each takes
    (2, 4, 8, 1),    # taps (few output channels)
    (2, 10, 8, 1),   # per-sample columns; input gradient as a convolution
    (8, 10, 8, 1),   # weight gradient on pixel rows
    (8, 10, 4, 1),   # batched GEMMs (16 output pixels)
    (8, 10, 8, 2),   # input gradient by col2im (stride 2)
]


def _conv_graph(cin, cout, hw, stride):
    """Forward, input gradient and weight gradient of one 3x3 convolution."""
    g = Graph("parts")
    a = {"stride": (stride, stride), "padding": (1, 1), "dilation": (1, 1), "groups": 1}
    x = g.add_input(TensorType(("N", cin, hw, hw), "float32"), "x")
    w = g.add_input(TensorType((cout, cin, 3, 3), "float32"), "w")
    y = g.add("conv2d", [x, w], a)
    gout = g.add_input(g.type_of(y), "g")
    g.set_outputs([y, g.add("conv2d_grad_input", [gout, w], dict(a, in_hw=(hw, hw))),
                   g.add("conv2d_grad_weight", [x, gout], dict(a, kernel=(3, 3)))])
    return g


def _values(g, n, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(g.type_of(i).concrete(n)).astype(np.float32)
            for i in g.inputs]


def _compile_in_parts(g, parts, monkeypatch):
    monkeypatch.setattr(runtime, "sample_parts", lambda: parts)
    return compile_graph(g)


@pytest.mark.parametrize("cin,cout,hw,stride", PATHS)
def test_parts_match_the_interpreter(cin, cout, hw, stride, monkeypatch):
    g = _conv_graph(cin, cout, hw, stride)
    exe = _compile_in_parts(g, 3, monkeypatch)
    assert "prange(3)" in exe.source and exe.one_blas_thread
    for n in (7, 1, 0):      # uneven parts, two empty parts, all empty
        vals = _values(g, n, n)
        got = exe.run(vals)
        again = exe.run(vals)
        for name, want, a, b in zip(("y", "dx", "dw"), interpret(g, vals), got, again):
            np.testing.assert_allclose(a, want, rtol=1e-4, atol=1e-4, err_msg=f"{name}, batch {n}")
            np.testing.assert_array_equal(a, b, err_msg=f"{name} changed between runs")


@pytest.mark.parametrize("kernel,stride,padding", [((2, 2), (2, 2), (0, 0)),   # tiled
                                                    ((3, 3), (2, 2), (1, 1))])  # overlapping
def test_pooling_in_parts_matches_the_interpreter(kernel, stride, padding, monkeypatch):
    g = Graph("pool_parts")
    a = {"kernel": kernel, "stride": stride, "padding": padding}
    x = g.add_input(TensorType(("N", 3, 9, 9), "float32"), "x")
    mx, av = g.add("max_pool2d", [x], a), g.add("avg_pool2d", [x], a)
    gm = g.add_input(g.type_of(mx), "gm")
    g.set_outputs([mx, av, g.add("max_pool2d_grad", [x, gm], a),
                   g.add("avg_pool2d_grad", [gm], dict(a, in_hw=(9, 9)))])
    exe = _compile_in_parts(g, 3, monkeypatch)
    assert exe.source.count("prange(") == 4
    for n in (7, 1, 0):
        vals = _values(g, n, n)
        for name, want, got in zip(("max", "avg", "d max", "d avg"), interpret(g, vals),
                                   exe.run(vals)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{name}, {n}")


def _openblas_threads():
    lib = ctypes.CDLL(blas._LIB)
    return lib.scipy_openblas_get_num_threads64_()


@pytest.mark.skipif(blas.KIND != "numpy-openblas64", reason="needs NumPy's OpenBLAS")
def test_one_blas_thread_inside_and_restored_after():
    before = _openblas_threads()
    with blas.OneThread():
        with blas.OneThread():
            assert _openblas_threads() == 1
        assert _openblas_threads() == 1     # the outer holder still runs
    assert _openblas_threads() == before


def test_layers_and_settings_that_keep_convolutions_serial(monkeypatch):
    import numba
    monkeypatch.setattr(parallel, "thread_count", lambda: 4)
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 3)
    monkeypatch.setattr(blas, "KIND", "numpy-openblas64")
    for layer, want in (("omp", 3), ("tbb", 3), ("workqueue", 1), (None, 1)):
        monkeypatch.setattr(parallel, "threading_layer", lambda layer=layer: layer)
        assert parallel.sample_parts() == want, layer
    monkeypatch.setattr(parallel, "threading_layer", lambda: "omp")
    monkeypatch.setattr(blas, "KIND", "scipy")          # no handle on SciPy's threads
    assert parallel.sample_parts() == 1
    monkeypatch.setattr(blas, "KIND", "numpy-openblas64")
    monkeypatch.setattr(parallel, "thread_count", lambda: 1)   # GRAPHC_THREADS=1
    assert parallel.sample_parts() == 1


def _run(exe, vals):
    out = exe.run(vals)
    return exe.one_blas_thread, [o.tolist() for o in out]


def test_forked_child_runs_a_parallel_conv_graph(monkeypatch):
    """GNU OpenMP kills a forked child that runs a parallel loop after its parent did:
    the child must get the same results from a serial build instead."""
    g = _conv_graph(2, 10, 8, 1)
    exe = _compile_in_parts(g, 2, monkeypatch)
    vals = _values(g, 4, 0)
    want = exe.run(vals)          # the parent has now run parallel loops
    one_blas_thread, got = run_in_forked_child(_run, (exe, vals), timeout=300)
    assert one_blas_thread == (parallel.threading_layer() != "omp")   # rebuilt serial
    for a, b in zip(want, got):
        np.testing.assert_allclose(np.asarray(b, np.float32), a, rtol=1e-5, atol=1e-5)
