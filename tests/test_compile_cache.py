"""Compile-time caches: ``import graphc`` stays light, and compiling an identical model
again in one process reuses the optimized graph, the generated module and Numba's
machine code, while any change to the model or the options misses."""
import subprocess
import sys

import numpy as np
import pytest

import graphc as gc
import graphc.compiled as compiled


def _net(hidden=4):
    gc.manual_seed(0)
    return gc.nn.Sequential(gc.nn.Linear(3, hidden), gc.nn.ReLU(), gc.nn.Linear(hidden, 2))


def _compile(net, **kw):
    return gc.compile(net, input_shape=(None, 3), loss="mse", dtype="float64",
                      optimizer=gc.optim.SGD(lr=0.1), **kw)


@pytest.fixture
def count_passes(monkeypatch):
    calls = []
    real = compiled.optimize

    def counting(g, **kw):
        calls.append(g.name)
        return real(g, **kw)
    monkeypatch.setattr(compiled, "optimize", counting)
    return calls


@pytest.fixture(scope="module")
def first():
    m = _compile(_net())
    x, y = np.ones((5, 3)), np.zeros((5, 2))
    m.train_step(x, y)
    return m


def test_import_graphc_does_not_load_numba_or_heavy_modules():
    code = ("import sys, graphc; heavy = ('numba', 'scipy', 'sklearn', 'tqdm', 'matplotlib', "
            "'threadpoolctl', 'graphc.codegen'); print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_second_compile_reuses_graph_module_and_machine_code(first, count_passes):
    m = _compile(_net())
    assert count_passes == []                       # no pass ran
    exe1, exe2 = first._exe("train"), m._exe("train")
    assert exe2.module is exe1.module and exe2.schedule is exe1.schedule
    assert exe2 is not exe1                         # own buffers and lock
    assert exe2.timings["codegen"] == 0.0
    # same start, same data: the loss of the untrained model (NumPy oracle); training
    # the second model leaves the first model's parameters alone
    x, y = np.ones((5, 3)), np.zeros((5, 2))
    ref = _net()
    out = np.maximum(x @ ref[0].weight.data.T + ref[0].bias.data, 0) @ ref[2].weight.data.T \
        + ref[2].bias.data
    before = first.parameters()
    assert m.train_step(x, y) == pytest.approx(float(np.mean((out - y) ** 2)))
    after = first.parameters()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not np.array_equal(m.parameters()["2.weight"], ref[2].weight.data)   # it trained


@pytest.mark.parametrize("change", ["hidden", "fuse", "lr_momentum", "loss"])
def test_changed_model_or_option_misses(first, count_passes, change):
    if change == "hidden":
        _compile(_net(hidden=5))
    elif change == "fuse":
        _compile(_net(), fuse=False)
    elif change == "lr_momentum":
        gc.compile(_net(), input_shape=(None, 3), loss="mse", dtype="float64",
                   optimizer=gc.optim.SGD(lr=0.1, momentum=0.9))
    else:
        gc.compile(_net(), input_shape=(None, 3), loss="bce_with_logits", dtype="float64",
                   optimizer=gc.optim.SGD(lr=0.1))
    assert "train" in count_passes


def test_learning_rate_is_not_part_of_the_key(first, count_passes):
    gc.compile(_net(), input_shape=(None, 3), loss="mse", dtype="float64",
               optimizer=gc.optim.SGD(lr=0.5))          # lr is a run-time input
    assert count_passes == []


def test_fingerprint_sees_array_contents():
    from graphc.compiled import _canonical
    a = np.zeros(2000)
    b = a.copy()
    b[1000] = 1.0          # NumPy's repr of both arrays is the same elided text
    assert repr(a) == repr(b)
    assert _canonical(a) == _canonical(a.copy()) != _canonical(b)
    assert _canonical((("value", a),)) != _canonical((("value", b),))


def test_float32_step_compiles_as_one_function_and_gemm_once(tmp_path, monkeypatch):
    """What keeps a cold compile short: in a float32 step every kernel (fused reductions
    included) is inlined into the one cached driver, and every product goes through
    one compiled gemm signature (plain bool flags, float64 scalars), never one copy per
    caller, flag literal or scalar dtype."""
    from numba import types

    from graphc.codegen import blas
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))   # the driver is compiled here
    gc.manual_seed(0)
    net = gc.nn.Sequential(gc.nn.Linear(6, 5), gc.nn.ReLU(), gc.nn.Linear(5, 3))
    m = gc.compile(net, input_shape=(None, 6), loss="cross_entropy",
                   optimizer=gc.optim.SGD(lr=0.1))
    rng = np.random.default_rng(0)
    m.train_step(rng.standard_normal((4, 6)).astype(np.float32), np.array([0, 1, 2, 1]))
    src = m.source
    assert src.count("cache=True") == 1 and "fastmath={'contract'}" in src, src
    assert "reduce_sum" in src and src.count("gemm(") >= 5
    sigs = blas._gemm_compiled.signatures
    assert sigs and all(s[3] == types.boolean and s[4] == types.boolean
                        and s[5] == types.float64 and s[6] == types.float64 for s in sigs)
    contiguous = [s for s in sigs if all(a.layout == "C" for a in s[:3])]
    assert len(contiguous) == len({s[0].dtype for s in contiguous})   # one per dtype
