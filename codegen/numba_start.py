"""Numba's start-up without importing ``scipy.linalg``.

On its first compile or cache load Numba imports its NumPy support, whose module
``numba.np.arraymath`` checks at import that SciPy's BLAS is there by importing
``scipy.linalg.cython_blas``. That imports the whole ``scipy.linalg`` package: 155-180
ms here, a third of a warm start (``benchmarks/compile_time.py``). graphc's kernels do
not use SciPy's BLAS (NumPy's OpenBLAS is called directly, ``codegen/blas.py``), so
:func:`import_numpy_support` imports ``numba.np.arraymath`` with that check answered by
looking for the same module's file, plus Numba's own check of SciPy's BLAS integer
width. The real ``scipy.linalg`` import happens when something first uses it (Numba's
``np.dot``, ``GRAPHC_BLAS=scipy``): ``numba.np.linalg.ensure_blas`` is the original
again once the import is done. Where Numba's internals are not as expected, or
``arraymath`` is already loaded, this does the plain import.

>>> import_numpy_support()
>>> import numba.np.arraymath
>>> numba.np.arraymath._HAVE_BLAS       # np.dot stays available to Numba code
True
"""
from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import sys
import threading

_LOCK = threading.Lock()


def _scipy_blas_present() -> None:
    """Raise ImportError unless ``scipy.linalg.cython_blas`` exists (not imported)."""
    spec = importlib.util.find_spec("scipy")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("scipy 0.16+ is required for linear algebra")
    found = [p for root in spec.submodule_search_locations
             for p in glob.glob(os.path.join(root, "linalg", "cython_blas.*"))]
    if not found:
        raise ImportError("scipy 0.16+ is required for linear algebra")


def import_numpy_support() -> None:
    """Import ``numba.np.arraymath`` without importing ``scipy.linalg``; idempotent."""
    if "numba.np.arraymath" in sys.modules:
        return
    with _LOCK:
        if "numba.np.arraymath" in sys.modules:
            return
        linalg = importlib.import_module("numba.np.linalg")
        original = getattr(linalg, "ensure_blas", None)
        check_width = getattr(linalg, "_check_lapack_int_width", None)
        if original is None or check_width is None:
            importlib.import_module("numba.np.arraymath")
            return

        def ensure_blas_present():
            _scipy_blas_present()
            check_width()

        linalg.ensure_blas = ensure_blas_present
        try:
            arraymath = importlib.import_module("numba.np.arraymath")
        finally:
            linalg.ensure_blas = original
        if getattr(arraymath, "ensure_blas", None) is ensure_blas_present:
            arraymath.ensure_blas = original
