"""graphc.codegen.blas.gemm (direct BLAS from generated code) against NumPy."""
import itertools

import numpy as np
import pytest
from numba import njit

from graphc.codegen.blas import gemm, gemm_reference


@njit(cache=False)
def _gemm(a, b, c, ta, tb, alpha, beta):
    gemm(a, b, c, ta, tb, alpha, beta)


@njit(cache=False)
def _gemm_strided(a, b, c):
    gemm(a[:, ::2], b, c, True, False, 2.0, 1.0)   # a non-contiguous view: copied


# empty sides, k = 0, vectors, odd sizes, a 10-class layer's weight gradient (10, 33, 256)
SHAPES = [(3, 4, 5), (1, 7, 2), (5, 1, 3), (1, 1, 1), (6, 5, 1), (4, 0, 3), (17, 33, 9),
          (40, 3, 50), (5, 60, 40), (40, 40, 40), (0, 3, 4), (3, 5, 260), (10, 33, 256),
          (1, 0, 300), (16, 9, 257)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_all_flags_shapes_alpha_beta(dtype):
    rng = np.random.default_rng(0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for (m, k, n), ta, tb in itertools.product(SHAPES, (False, True), (False, True)):
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
        c0 = rng.standard_normal((m, n)).astype(dtype)
        for alpha, beta in ((1.0, 0.0), (-0.5, 1.0), (2.0, 0.25)):
            c = c0.copy()
            _gemm(a, b, c, ta, tb, alpha, beta)
            want = alpha * ((a.T if ta else a) @ (b.T if tb else b)) + beta * c0
            np.testing.assert_allclose(c, want, rtol=tol, atol=tol,
                                       err_msg=f"{(m, k, n)} ta={ta} tb={tb} {alpha} {beta}")


def test_gemm_beta_zero_ignores_nan_in_output():
    a, b = np.ones((2, 3)), np.ones((3, 2))
    c = np.full((2, 2), np.nan)
    _gemm(a, b, c, False, False, 1.0, 0.0)
    assert np.array_equal(c, np.full((2, 2), 3.0))


def test_gemm_shape_mismatch_raises():
    with pytest.raises(ValueError, match="incompatible"):
        _gemm(np.ones((2, 3)), np.ones((4, 2)), np.ones((2, 2)), False, False, 1.0, 0.0)


def test_gemm_non_contiguous_operand():
    rng = np.random.default_rng(1)
    a, b, c0 = rng.standard_normal((4, 6)), rng.standard_normal((4, 2)), rng.standard_normal((3, 2))
    c = c0.copy()
    _gemm_strided(a, b, c)
    np.testing.assert_allclose(c, 2.0 * a[:, ::2].T @ b + c0, rtol=1e-12)


def test_gemm_python_reference_matches():
    rng = np.random.default_rng(2)
    a, b, c0 = rng.standard_normal((3, 4)), rng.standard_normal((5, 3)), rng.standard_normal((4, 5))
    c1, c2 = c0.copy(), c0.copy()
    gemm_reference(a, b, c1, True, True, 0.5, 2.0)
    gemm(a, b, c2, True, True, 0.5, 2.0)        # called from Python: the compiled one
    np.testing.assert_allclose(c1, c2, rtol=1e-12)


def test_both_blas_backends_agree_with_numpy():
    """NumPy's bundled OpenBLAS (cblas, row-major) when present, and SciPy's through
    Numba's numba_xxgemm (GRAPHC_BLAS=scipy): every flag pair, alpha/beta, vs NumPy."""
    import os
    import subprocess
    import sys
    code = (
        "import numpy as np\n"
        "from numba import njit\n"
        "from graphc.codegen import blas\n"
        "@njit\n"
        "def f(a, b, c, ta, tb, al, be):\n"
        "    blas.gemm(a, b, c, ta, tb, al, be)\n"
        "rng = np.random.default_rng(0)\n"
        "for dt, tol in (('float32', 1e-5), ('float64', 1e-12)):\n"
        "    for ta in (False, True):\n"
        "        for tb in (False, True):\n"
        "            a = rng.standard_normal((7, 20) if ta else (20, 7)).astype(dt)\n"
        "            b = rng.standard_normal((33, 7) if tb else (7, 33)).astype(dt)\n"
        "            c = rng.standard_normal((20, 33)).astype(dt)\n"
        "            want = 0.5 * ((a.T if ta else a) @ (b.T if tb else b)) + 2.0 * c\n"
        "            f(a, b, c, ta, tb, 0.5, 2.0)\n"
        "            assert np.allclose(c, want, rtol=tol, atol=tol), (dt, ta, tb)\n"
        "print(blas.KIND)\n")
    kinds = set()
    for env_value in (None, "scipy"):
        env = dict(os.environ)
        env.pop("GRAPHC_BLAS", None)
        if env_value:
            env["GRAPHC_BLAS"] = env_value
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        kinds.add(proc.stdout.strip().splitlines()[-1])
    assert "scipy" in kinds
