"""Numba's start-up, cut to what graphc's kernels need.

**Warm start: load, do not refresh.** Before reading a cached kernel Numba refreshes its
target context; a process's first refresh imports and installs all of Numba's typing
and lowering registries (160-260 ms here), which only a compile uses.
:func:`load_without_refresh` makes a dispatcher read its cached machine code with only
Numba's runtime started; graphc applies it to every kernel it generates. A warm start
then imports neither the registries nor Numba's NumPy support.

**Compile: NumPy support without ``scipy.linalg``.** Numba's ``numba.np.arraymath``
checks at import that SciPy's BLAS is there by importing ``scipy.linalg.cython_blas``,
which imports the whole ``scipy.linalg`` package (155-180 ms here). graphc's kernels do
not use SciPy's BLAS (NumPy's OpenBLAS is called directly, ``codegen/blas.py``), so
before a generated kernel is compiled :func:`import_numpy_support` imports
``numba.np.arraymath`` with that check answered by looking for the same module's file,
plus Numba's own check of SciPy's BLAS integer width. The real ``scipy.linalg`` import
happens when something first uses it (Numba's ``np.dot``, ``GRAPHC_BLAS=scipy``):
``numba.np.linalg.ensure_blas`` is the original again once the import is done. Where
Numba's internals are not as expected, or ``arraymath`` is already loaded, this does the
plain import.

>>> import_numpy_support()
>>> import numba.np.arraymath
>>> numba.np.arraymath._HAVE_BLAS       # np.dot stays available to Numba code
True
"""
from __future__ import annotations

import functools
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


# Numba's Cache.load_overload without its target_context.refresh(). Rebuilding cached
# machine code needs only its symbols: Numba's C helpers (registered when the context is
# made) and the runtime's (NRT, rtsys.initialize); a parallel kernel's threads start
# from the cached result's own reload hooks. On a miss the dispatcher compiles through
# Numba's compiler, which refreshes the contexts in full first.
def _load_overload_without_refresh(cache, sig, target_context):
    from numba.core.runtime import rtsys
    rtsys.initialize(target_context)
    cres = None
    with cache._guard_against_spurious_io_errors():   # as Numba's: a racing writer
        cres = cache._load_overload(sig, target_context)
    if cres is None:
        import_numpy_support()        # Numba compiles next: keep scipy.linalg out of it
    return cres


def load_without_refresh(dispatcher) -> bool:
    """Make the CPU ``dispatcher`` load its cached machine code without Numba's registry
    refresh (see above); returns whether it did (False for anything else: another
    target, no cache, or Numba's cache internals not as expected).

    >>> import numpy as np
    >>> from graphc.codegen.runtime import first_outside     # @njit(cache=True)
    >>> load_without_refresh(first_outside), first_outside(np.arange(5), 0, 3)
    (True, 3)
    >>> load_without_refresh(len)
    False
    """
    from numba.core.caching import Cache
    from numba.core.registry import CPUDispatcher
    cache = getattr(dispatcher, "_cache", None)
    if not (isinstance(dispatcher, CPUDispatcher) and isinstance(cache, Cache)
            and hasattr(cache, "_load_overload")
            and hasattr(cache, "_guard_against_spurious_io_errors")):
        return False
    # an instance attribute: only this dispatcher's loads change, not Numba's class
    cache.load_overload = functools.partial(_load_overload_without_refresh, cache)
    return True
