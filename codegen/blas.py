"""Direct BLAS matrix products for generated code: ``gemm`` with transpose flags, alpha, beta.

``gemm(a, b, c, ta, tb, alpha, beta)`` computes ``c = alpha * op(a) @ op(b) + beta * c``
in place (``op`` transposes when its flag is set) with one call of SciPy's BLAS
``sgemm``/``dgemm`` (the library Numba's ``np.dot`` also uses), through Numba's own
``numba_xxgemm`` helper. Compared with ``np.dot(a.T, b, c)`` it

- takes transposes as BLAS flags for any combination (no operand copy, whatever layout
  Numba would have given a ``.T`` view),
- accumulates: ``beta=1`` adds into ``c`` (an SGD update ``W -= lr * dZ.T @ X`` is one
  call with ``alpha=-lr, beta=1``: no gradient buffer, no update pass).

Which BLAS: where NumPy ships its own OpenBLAS (``numpy.libs/libscipy_openblas64_*``,
the PyPI wheels) the call goes straight to its row-major ``cblas_?gemm`` (64-bit
integers): one thread pool for NumPy and graphc instead of two, and here (OpenBLAS 0.3.31
against SciPy's 0.3.30, 1 thread) about 2x faster on a convolution's skinny weight-
gradient products (LeNet conv1 (6 x 36864) @ (36864 x 25): 1.0 -> 0.5 ms). Elsewhere, or
with ``GRAPHC_BLAS=scipy``, SciPy's BLAS through Numba's ``numba_xxgemm`` (``KIND`` says
which); the kind is part of the generated source, so cached machine code never refers
to a library this process has not loaded. For the column-major path, row-major
``C = op(A) op(B)`` is ``C^T = op(B)^T op(A)^T``: operands swapped, no data moves.

>>> import numpy as np
>>> from numba import njit
>>> @njit
... def step(w, dz, x, lr):
...     gemm(dz, x, w, True, False, -lr, 1.0)
>>> w = np.ones((2, 3)); dz = np.ones((4, 2)); x = np.ones((4, 3))
>>> step(w, dz, x, 0.5); w
array([[-1., -1., -1.],
       [-1., -1., -1.]])
"""
from __future__ import annotations

import ctypes
import glob
import os
import threading

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from .cache import module_version

_CHAR = ir.IntType(8)
_VOIDP = ir.IntType(8).as_pointer()
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112   # CBLAS enum values
NARROW_OUTPUT = 32   # products with an output this small (both sides) run on one BLAS thread


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


_LIB = None if os.environ.get("GRAPHC_BLAS") == "scipy" else _numpy_openblas()
_CBLAS = {}
if _LIB is not None:
    import llvmlite.binding as llb

    llb.load_library_permanently(_LIB)   # so Numba (and its cache) can link the symbols
    KIND = "numpy-openblas64"

    _get_threads = types.ExternalFunction("scipy_openblas_get_num_threads64_",
                                          types.int32())
    _set_threads = types.ExternalFunction("scipy_openblas_set_num_threads64_",
                                          types.void(types.int32))

    def _cblas_gemm(name, real, cast):
        i32, i64, ptr = types.int32, types.int64, types.intp
        fn = types.ExternalFunction(name, types.void(
            i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr, i64, real, ptr, i64))

        @njit(inline="always")
        def call(a, b, c, ta, tb, alpha, beta, m, k, n):
            # OpenBLAS splits a product's output between its threads; a tiny output (a
            # conv weight gradient, 6 x 25 over k = 36864) has nothing to split, and the
            # second thread only costs (LeNet's step 8.4 ms with 2 threads, 5.1 ms with 1,
            # on Zen 3). Such products run on one thread (setting the count costs ~0.3 us).
            # A tall one with a narrow side splits its long side well: LeNet's conv
            # forward products, 36864 x 25 @ 25 x 6 and 4096 x 150 @ 150 x 16, ran 1.4-1.9x
            # faster on 2 threads (Zen 4, alone), so one narrow side alone no longer
            # counts (LeNet step -5.5%, MLP unchanged; A/B of the rules in one process).
            narrow = max(m, n) <= NARROW_OUTPUT
            if narrow:
                threads = _get_threads()
                if threads > 1:
                    _set_threads(1)
            fn(_ROW_MAJOR, _TRANS if ta else _NO_TRANS, _TRANS if tb else _NO_TRANS,
               m, n, k, cast(alpha), a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1],
               cast(beta), c.ctypes.data, c.shape[1])
            if narrow and threads > 1:
                _set_threads(threads)
        return call

    _CBLAS = {types.float32: _cblas_gemm("scipy_cblas_sgemm64_", types.float32, np.float32),
              types.float64: _cblas_gemm("scipy_cblas_dgemm64_", types.float64, np.float64)}
else:
    KIND = "scipy"


@intrinsic
def _xxgemm(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Column-major BLAS ``?gemm`` on the data of C-contiguous arrays a, b, c."""
    dtype = c.dtype
    if a.dtype != dtype or b.dtype != dtype:
        raise TypingError("gemm: operands and output must share one dtype")
    sig = types.none(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, sig, args):
        # imported when compiling: a warm start loads machine code and never needs them
        from numba.np.arrayobj import make_array
        from numba.np.linalg import check_blas_return, ensure_blas, get_blas_kind
        ensure_blas()
        intp = context.get_value_type(types.intp)
        fnty = ir.FunctionType(ir.IntType(32), [_CHAR, _CHAR, _CHAR, intp, intp, intp,
                                                _VOIDP, _VOIDP, intp, _VOIDP, intp,
                                                _VOIDP, _VOIDP, intp])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        ta_, tb_, m_, n_, k_, al, a_, lda_, b_, ldb_, be, c_, ldc_ = args
        tys = sig.args

        def flag(v, ty):
            bit = context.cast(builder, v, ty, types.boolean)
            return builder.select(bit, ir.Constant(_CHAR, ord("t")), ir.Constant(_CHAR, ord("n")))

        def size(v, ty):
            return context.cast(builder, v, ty, types.intp)

        def scalar(v, ty):
            return builder.bitcast(cgutils.alloca_once_value(
                builder, context.cast(builder, v, ty, dtype)), _VOIDP)

        def data(v, ty):
            return builder.bitcast(make_array(ty)(context, builder, v).data, _VOIDP)

        kind = ir.Constant(_CHAR, ord(get_blas_kind(dtype, "gemm")))
        res = builder.call(fn, (kind, flag(ta_, tys[0]), flag(tb_, tys[1]),
                                size(m_, tys[2]), size(n_, tys[3]), size(k_, tys[4]),
                                scalar(al, tys[5]), data(a_, tys[6]), size(lda_, tys[7]),
                                data(b_, tys[8]), size(ldb_, tys[9]), scalar(be, tys[10]),
                                data(c_, tys[11]), size(ldc_, tys[12])))
        check_blas_return(context, builder, res)
        return context.get_dummy_value()
    return sig, codegen


def gemm_reference(a, b, c, ta=False, tb=False, alpha=1.0, beta=0.0):
    """``c[...] = alpha * op(a) @ op(b) + beta * c`` in NumPy (the tests' oracle)."""
    x = a.T if ta else a
    y = b.T if tb else b
    prod = alpha * (x @ y)
    c[...] = prod if beta == 0 else prod + beta * c


def _gemm_any(a, b, c, ta, tb, alpha, beta):
    """Typed by the overload below (per dtype and layout); only :func:`gemm` calls it."""
    gemm_reference(a, b, c, ta, tb, alpha, beta)


@njit(inline="always")
def _dims(a, b, c, ta, tb):
    m = a.shape[1] if ta else a.shape[0]
    k = a.shape[0] if ta else a.shape[1]
    kb = b.shape[1] if tb else b.shape[0]
    n = b.shape[0] if tb else b.shape[1]
    if k != kb or c.shape[0] != m or c.shape[1] != n:
        raise ValueError("gemm: incompatible shapes")
    return m, k, n


# Every contiguous product goes to BLAS. A few-rows path (c[i, :] += s * b[p, :] loops for
# a 10-class layer's weight gradient) was faster than SciPy's OpenBLAS once, and is now
# 2-3x slower than NumPy's here: 0.14-0.17 against 0.07 ms at (10 x 1024) @ (1024 x 256),
# 0.014-0.021 against 0.007 ms at k = 128; SciPy's BLAS also beat it (0.10 ms).
@overload(_gemm_any)
def _ol_gemm(a, b, c, ta, tb, alpha, beta):
    arrays = (a, b, c)
    if not all(isinstance(x, types.Array) and x.ndim == 2 for x in arrays):
        raise TypingError("gemm takes three 2-D arrays")
    if a.dtype != c.dtype or b.dtype != c.dtype or c.dtype not in (types.float32,
                                                                 types.float64):
        raise TypingError("gemm: a, b and c must all be float32 or all float64")
    if all(x.layout == "C" for x in arrays):
        cblas = _CBLAS.get(c.dtype)

        def impl(a, b, c, ta, tb, alpha, beta):
            m, k, n = _dims(a, b, c, ta, tb)
            if m == 0 or n == 0:
                return
            if k == 0:        # BLAS wants lda >= 1; the product is zero
                for i in range(m):   # loops, not c[:] = 0 / c *= beta: those compile
                    for j in range(n):   # Numba's array-expression machinery (~0.4 s)
                        c[i, j] = 0 if beta == 0 else c[i, j] * beta
                return
            if cblas is not None:
                cblas(a, b, c, ta, tb, alpha, beta, m, k, n)
            else:   # row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T
                _xxgemm(tb, ta, n, m, k, alpha, b, b.shape[1], a, a.shape[1], beta, c, n)
        return impl

    def impl_copy(a, b, c, ta, tb, alpha, beta):
        # non-contiguous views (never made by graphc's generated code): contiguous copies
        cc = np.ascontiguousarray(c)
        _gemm_any(np.ascontiguousarray(a), np.ascontiguousarray(b), cc, ta, tb, alpha, beta)
        c[:] = cc
    return impl_copy


# One compiled dispatcher, not an @overload that generated code calls directly: Numba
# compiles an overload again inside every function compiled with other flags (each fused
# reduction kernel has fastmath flags), and it specialises a dispatcher on literal
# True/False arguments; either way about 1.5 s per copy. ``gemm`` is inlined where it is
# called and hands ``_gemm_compiled`` plain bools and float64 scalars, so a model's
# products share one compilation per dtype, kept in Numba's cache across processes.
# One function per BLAS kind: Numba's cache knows a function by its name and file, and
# machine code calling NumPy's cblas must never be loaded where that library is not.
if KIND == "numpy-openblas64":
    @njit(cache=True, nogil=True)
    def _gemm_numpy_openblas64(a, b, c, ta, tb, alpha, beta):
        _gemm_any(a, b, c, ta, tb, alpha, beta)
    _gemm_compiled = _gemm_numpy_openblas64
else:
    @njit(cache=True, nogil=True)
    def _gemm_scipy(a, b, c, ta, tb, alpha, beta):
        _gemm_any(a, b, c, ta, tb, alpha, beta)
    _gemm_compiled = _gemm_scipy


@njit(inline="always")
def gemm(a, b, c, ta, tb, alpha, beta):
    """``c = alpha * op(a) @ op(b) + beta * c`` in place, by one BLAS call (see module)."""
    _gemm_compiled(a, b, c, ta == True, tb == True, np.float64(alpha), np.float64(beta))  # noqa: E712


# the generated source names this module's hash: a changed gemm gives new cache keys
IMPORT_LINE = f"from graphc.codegen.blas import gemm  # blas {module_version(__name__)} {KIND}"


class OneThread:
    """Context manager: NumPy's OpenBLAS runs on one thread inside it (process-wide,
    nestable across threads: the count is restored when the last holder leaves).

    A step whose convolutions split their samples across cores (``prange``) runs inside
    it: its products then run on the thread that calls them. Left at two threads, the
    OpenBLAS workers that spin after a threaded product and Numba's that spin after a
    parallel loop took each other's core: examples/resnet_digits.py's step at batch 256
    went from 18.6 to 32 ms. Without NumPy's OpenBLAS (``KIND`` "scipy") this does
    nothing, and convolutions stay serial (codegen/parallel.py: sample_parts).

    >>> with OneThread():
    ...     pass
    """

    _lock = threading.Lock()
    _holders = 0
    _saved = 1
    _lib = ctypes.CDLL(_LIB) if _LIB is not None else None

    def __enter__(self):
        cls = OneThread
        if cls._lib is None:
            return self
        with cls._lock:
            if cls._holders == 0:
                cls._saved = cls._lib.scipy_openblas_get_num_threads64_()
                if cls._saved != 1:
                    cls._lib.scipy_openblas_set_num_threads64_(1)
            cls._holders += 1
        return self

    def __exit__(self, *exc):
        cls = OneThread
        if cls._lib is None:
            return False
        with cls._lock:
            cls._holders -= 1
            if cls._holders == 0 and cls._saved != 1:
                cls._lib.scipy_openblas_set_num_threads64_(cls._saved)
        return False


def call(a: str, b: str, out: str, ta: bool, tb: bool, alpha: str = "1.0",
         beta: str = "0.0") -> str:
    """Source text of one ``gemm`` call (names of arrays, flags, scalar expressions)."""
    return f"gemm({a}, {b}, {out}, {ta}, {tb}, {alpha}, {beta})"
