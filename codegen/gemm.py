"""Row-major GEMM for generated kernels, with transpose flags, alpha and beta.

``gemm32(ta, tb, a, b, c, alpha, beta)`` computes ``c = alpha * op(a) @ op(b) + beta * c``
for C-contiguous 2-D float32 arrays (``op(a)`` is ``a.T`` when ``ta``); ``gemm64`` is the
float64 twin. Transposes are BLAS flags, never copies.

Where NumPy ships its own OpenBLAS (``numpy.libs/libscipy_openblas64_*``, the PyPI
wheels) the call goes straight to its ``cblas_?gemm`` (64-bit integers). Numba's own
``np.dot`` uses SciPy's OpenBLAS instead; on this machine (Zen 5, 1 thread) that one is
about 2x slower on the skinny shapes of a convolution's weight gradient (LeNet conv1:
(6 x 36864) @ (36864 x 25) 1.0 -> 0.5 ms; conv2 (16 x 4096) @ (4096 x 150) 0.78 -> 0.38 ms).
Elsewhere ``np.dot`` is the fallback (``KIND`` says which is active). The generated
source imports ``gemm32``/``gemm64`` under the name of the active kind, so cached
machine code never refers to a library the current process has not loaded.

>>> import numpy as np
>>> a = np.ones((2, 3), np.float32); c = np.zeros((3, 3), np.float32)
>>> gemm32(True, False, a, a, c, 1.0, 0.0); float(c[0, 0])
2.0
"""
from __future__ import annotations

import ctypes
import glob
import os

import numpy as np
from numba import njit, types

FLAGS = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _numpy_openblas():
    """Path of NumPy's bundled ILP64 OpenBLAS if it exports cblas_sgemm/dgemm, else None."""
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "libscipy_openblas64_*"))):
        try:
            lib = ctypes.CDLL(path)
            lib.scipy_cblas_sgemm64_, lib.scipy_cblas_dgemm64_   # noqa: B018
        except (OSError, AttributeError):
            continue
        return os.path.abspath(path)
    return None


_LIB = None if os.environ.get("GRAPHC_GEMM") == "npdot" else _numpy_openblas()

if _LIB is not None:
    import llvmlite.binding as llb

    llb.load_library_permanently(_LIB)   # so Numba (and its cache) can link the symbols
    KIND = "numpy_openblas64"

    def _cblas(name, real):
        i32, i64, ptr = types.int32, types.int64, types.intp
        return types.ExternalFunction(name, types.void(
            i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr, i64, real, ptr, i64))

    _sgemm = _cblas("scipy_cblas_sgemm64_", types.float32)
    _dgemm = _cblas("scipy_cblas_dgemm64_", types.float64)

    @njit(**FLAGS)
    def gemm32(ta, tb, a, b, c, alpha, beta):
        k = a.shape[0] if ta else a.shape[1]
        _sgemm(_ROW_MAJOR, _TRANS if ta else _NO_TRANS, _TRANS if tb else _NO_TRANS,
               c.shape[0], c.shape[1], k, np.float32(alpha), a.ctypes.data, a.shape[1],
               b.ctypes.data, b.shape[1], np.float32(beta), c.ctypes.data, c.shape[1])

    @njit(**FLAGS)
    def gemm64(ta, tb, a, b, c, alpha, beta):
        k = a.shape[0] if ta else a.shape[1]
        _dgemm(_ROW_MAJOR, _TRANS if ta else _NO_TRANS, _TRANS if tb else _NO_TRANS,
               c.shape[0], c.shape[1], k, np.float64(alpha), a.ctypes.data, a.shape[1],
               b.ctypes.data, b.shape[1], np.float64(beta), c.ctypes.data, c.shape[1])
else:
    KIND = "npdot"

    @njit(**FLAGS)
    def _npdot(ta, tb, a, b, c, alpha, beta):
        # np.dot cannot scale or accumulate: only the plain product is used by callers
        # that need no alpha/beta; otherwise the product goes through c's own update
        if alpha == 1.0 and beta == 0.0:
            if ta:
                if tb:
                    np.dot(a.T, b.T, c)
                else:
                    np.dot(a.T, b, c)
            elif tb:
                np.dot(a, b.T, c)
            else:
                np.dot(a, b, c)
            return
        p = (np.dot(a.T, b.T) if tb else np.dot(a.T, b)) if ta else \
            (np.dot(a, b.T) if tb else np.dot(a, b))
        for i in range(c.shape[0]):
            for j in range(c.shape[1]):
                c[i, j] = alpha * p[i, j] + beta * c[i, j]

    gemm32 = gemm64 = _npdot


def import_line() -> str:
    """The generated module's import of the active GEMM (its kind is part of the source,
    hence of the cache key)."""
    return f"from graphc.codegen.gemm import gemm32, gemm64  # gemm: {KIND}"
