"""Interleaved vectorisation for loops bound by the latency of their math.

A float32 loop that calls the fast-math polynomials (``fastmath.py``) is one long chain
of dependent operations per vector of elements: exp's range reduction, its polynomial,
then a division or two, then the chain's own arithmetic. LLVM's loop vectoriser decides
how many such vectors to keep in flight per iteration (its *interleave count*) from an
estimate of register pressure, and on AVX2's 16 registers it keeps one. Then each
iteration waits on the latency of its chain, and the out-of-order core cannot look far
enough ahead to overlap the next one. With four vectors in flight the elementwise chain
of the benchmarks (sigmoid * tanh + relu - softplus and its gradient) ran 15-17% faster
on one core of a Zen 2 (5.46 -> 4.54 ms over 4M floats), although the extra copies spill
registers to the stack: a spilled constant is read as a memory operand, which is cheap.

LLVM takes the count per loop from loop metadata or, for everything it compiles, from its
``-force-vector-interleave`` option; Numba offers neither per function, but it lets a
function choose its compiler (``pipeline_class``). :class:`InterleavedCompiler` is
Numba's compiler with that option set while it compiles the function (Numba compiles one
function at a time under its global compiler lock, so no other thread's function is
compiled with it; a callee compiled for the first time inside it would be, but generated
loops call only inlined helpers; a function loaded from the cache is not compiled at
all, its machine code is the interleaved one). Generated code names it only
on the loops that call the polynomials; every other loop keeps LLVM's own choice, which is
right for short bodies and needed for short runs (a forced count of 4 on 8-wide vectors
would leave a loop of 16 elements entirely to the scalar remainder).

>>> import numpy as np
>>> from numba import njit
>>> @njit(pipeline_class=InterleavedCompiler)
... def scale(a, out):
...     for i in range(a.size):
...         out[i] = a[i] * np.float32(2.0)
>>> out = np.empty(3, np.float32); scale(np.ones(3, np.float32), out); out
array([2., 2., 2.], dtype=float32)
"""
from __future__ import annotations

import contextlib
import re
import threading

import llvmlite.binding as llvm
from numba.core.compiler import Compiler

from . import fastmath
from .cache import module_version

#: vectors of a loop's elements in flight per iteration (4 measured best on Zen 2: 3 gave
#: the same, 2 half the gain, 6 and 8 no more)
INTERLEAVE = 4

_LOCK = threading.Lock()
_depth = 0


@contextlib.contextmanager
def forced_interleave(count: int = INTERLEAVE):
    """LLVM's loop vectoriser interleaves every loop it vectorises ``count`` times while
    this context is open (nested contexts keep the outermost count); back to LLVM's own
    choice (0) when it closes."""
    global _depth
    with _LOCK:
        if _depth == 0:
            llvm.set_option("graphc", f"-force-vector-interleave={count}")
        _depth += 1
    try:
        yield
    finally:
        with _LOCK:
            _depth -= 1
            if _depth == 0:
                llvm.set_option("graphc", "-force-vector-interleave=0")


class InterleavedCompiler(Compiler):
    """Numba's default compiler, with LLVM interleaving the function's vectorised loops
    :data:`INTERLEAVE` times (``@njit(pipeline_class=InterleavedCompiler)``)."""

    def compile_extra(self, func):
        with forced_interleave():
            return super().compile_extra(func)


# a call of one of the float32 polynomials, whose loops are latency-bound
_FAST_CALL = re.compile(r"\b(?:" + "|".join(fastmath.FUNCTIONS) + r")\(")


def wants_interleave(lines) -> bool:
    """Whether generated loop ``lines`` call the fast-math polynomials (and so should be
    compiled by :class:`InterleavedCompiler`).

    >>> wants_interleave(["    t2 = fsigmoid32(x0)"]), wants_interleave(["    t2 = x0 * x1"])
    (True, False)
    """
    return any(_FAST_CALL.search(line) for line in lines)


IMPORT_LINE = ("from graphc.codegen.interleave import InterleavedCompiler"
               f"  # interleave {module_version(__name__)} x{INTERLEAVE}")
PIPELINE_FLAG = "pipeline_class=InterleavedCompiler"
