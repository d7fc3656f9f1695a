"""Numba's start-up without scipy.linalg (codegen/numba_start.py): a new process that
compiles and runs a training step never imports scipy.linalg, while Numba's np.dot and a
later ``import scipy.linalg`` work as usual."""
import os
import subprocess
import sys
import textwrap

import pytest

from graphc.codegen import numba_start

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import graphc as gc
    from graphc.codegen import blas
    import numba.np.linalg

    net = gc.nn.Sequential(gc.nn.Linear(6, 5), gc.nn.ReLU(), gc.nn.Linear(5, 3))
    m = gc.compile(net, input_shape=(None, 6), loss="cross_entropy",
                   optimizer=gc.optim.SGD(lr=0.1))
    loss = m.train_step(np.ones((4, 6), np.float32), np.array([0, 1, 2, 0]))
    assert np.isfinite(loss)
    if blas.KIND != "scipy":                   # with SciPy's BLAS it is imported for use
        assert "scipy.linalg" not in sys.modules, "scipy.linalg was imported"
    import numba.np.arraymath
    assert numba.np.arraymath._HAVE_BLAS
    assert numba.np.linalg.ensure_blas.__qualname__ == "ensure_blas"   # the original
    assert numba.np.arraymath.ensure_blas is numba.np.linalg.ensure_blas

    from numba import njit
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.testing.assert_allclose(njit(lambda p, q: np.dot(p, q))(a, a.T), a @ a.T)
    import scipy.linalg
    assert hasattr(scipy.linalg.cython_blas, "__pyx_capi__")
    print("ok")
""")


def test_new_process_runs_a_step_without_scipy_linalg(tmp_path):
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_missing_scipy_reads_as_numba_expects(monkeypatch):
    """Without SciPy the check raises ImportError, so Numba sets _HAVE_BLAS = False."""
    monkeypatch.setattr(numba_start.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="scipy"):
        numba_start._scipy_blas_present()


WARM_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import graphc as gc

    def model(width):
        gc.manual_seed(0)
        net = gc.nn.Sequential(gc.nn.Linear(6, width), gc.nn.ReLU(), gc.nn.Linear(width, 3))
        return gc.compile(net, input_shape=(None, 6), loss="cross_entropy",
                          optimizer=gc.optim.SGD(lr=0.1))

    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6)
    y = np.array([0, 1, 2, 0])
    m = model(5)
    losses = [float(m.train_step(x, y)) for _ in range(3)]
    # convolution and pooling kernels run on Numba's threads (prange) where it can:
    # their threads start from the cached code's own reload hooks
    gc.manual_seed(0)
    conv = gc.compile(gc.nn.Sequential(gc.nn.Conv2d(1, 2, 3), gc.nn.ReLU(), gc.nn.MaxPool2d(2),
                                       gc.nn.Flatten(), gc.nn.Linear(2 * 3 * 3, 3)),
                      input_shape=(None, 1, 8, 8), loss="cross_entropy",
                      optimizer=gc.optim.SGD(lr=0.1))
    images = np.linspace(-1, 1, 4 * 64, dtype=np.float32).reshape(4, 1, 8, 8)
    losses += [float(conv.train_step(images, y)) for _ in range(3)]
    print("losses", losses)
    if sys.argv[1] == "warm":
        # loaded from the cache without Numba's registries (only their refresh imports
        # the first) or its NumPy support (only compiling graphc's kernels needs it)
        assert "numba.np.polynomial.polynomial_core" not in sys.modules
        assert "numba.np.arraymath" not in sys.modules
        other = model(7)          # not in the cache: Numba compiles it, refreshing in full
        assert np.isfinite(other.train_step(x, y))
        assert "numba.np.polynomial.polynomial_core" in sys.modules
        from numba import njit, typed, types
        @njit
        def count(keys):          # user code needing the registries compiles as usual
            d = typed.Dict.empty(types.int64, types.int64)
            for k in keys:
                d[k] = d.get(k, 0) + 1
            return len(d)
        assert count(np.array([1, 2, 2, 5])) == 3
    print("ok")
""")


def test_warm_start_loads_cached_kernels_without_numba_registries(tmp_path):
    """A new process with graphc's and Numba's caches filled reads the training step's
    machine code without Numba's registry refresh, computes the same losses as the
    process that compiled it, and can still compile a new model and user Numba code."""
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(tmp_path / "graphc-cache"),
               NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    runs = {}
    for kind in ("cold", "warm"):
        out = subprocess.run([sys.executable, "-c", WARM_CHILD, kind], capture_output=True,
                             text=True, timeout=600, cwd=tmp_path, env=env)
        assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
        runs[kind] = [line for line in out.stdout.splitlines() if line.startswith("losses")]
    assert runs["warm"] == runs["cold"]
