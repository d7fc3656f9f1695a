"""Loops that call the float32 fast-math polynomials are compiled with four vectors in
flight (codegen/interleave.py); every other loop keeps LLVM's own interleave count."""
import re

import numpy as np
from numba import njit

import graphc as gc
from graphc.codegen import interleave
from graphc.codegen.fastmath import fsigmoid32, fsoftplus32, ftanh32

from test_fastmath import _chain_np

FLAG = interleave.PIPELINE_FLAG


def _decorator_of(source, name):
    lines = source.splitlines()
    return lines[lines.index(next(ln for ln in lines if ln.startswith(f"def {name}("))) - 1]


def test_polynomial_loops_and_only_they_are_interleaved():
    x = np.linspace(-30, 30, 3001, dtype=np.float32)
    # value and gradient of a sum: one blocked reduction loop, its block interleaved
    vg = gc.value_and_grad(lambda v: gc.sum(gc.sigmoid(v) * gc.tanh(v) + 0.5 * gc.relu(v)
                                            - gc.softplus(v)))
    src = vg.source(x)
    block = re.search(r"def (\w+_block)\(", src).group(1)
    assert FLAG in _decorator_of(src, block)
    total, grad = vg(x)
    xd = x.astype(np.float64)
    np.testing.assert_allclose(total, _chain_np(xd).sum(), rtol=1e-5)
    s, t = 1 / (1 + np.exp(-xd)), np.tanh(xd)
    np.testing.assert_allclose(grad, s * t * (1 - s - t) + 0.5 * (xd > 0), rtol=1e-5, atol=1e-6)

    # an elementwise loop over the whole tensor: compiled on its own, interleaved
    f = gc.jit(lambda v: gc.sigmoid(v) * gc.tanh(v) + 0.5 * gc.relu(v) - gc.softplus(v))
    src = f.source(x)
    (kernel,) = re.findall(r"def (k\d+\w*)\(", src)
    assert FLAG in _decorator_of(src, kernel)
    np.testing.assert_allclose(f(x), _chain_np(xd), rtol=1e-5, atol=1e-6)

    # no polynomial in the loop: inlined into the driver as before, LLVM's own count
    plain = gc.jit(lambda v: gc.relu(v) * 2.0 + v)
    assert FLAG not in plain.source(x).replace(interleave.IMPORT_LINE, "")
    np.testing.assert_array_equal(plain(x), np.maximum(x, 0) * 2 + x)
    # float64 keeps libm, whose loops do not vectorise: nothing to interleave
    assert FLAG not in f.source(xd).replace(interleave.IMPORT_LINE, "")


def _vector_divisions(fn, *args) -> int:
    fn(*args)
    ir = "\n".join(fn.inspect_llvm().values())
    return len(re.findall(r"= fdiv [a-z ]*<\d+ x float>", ir))


def _chain_loop(a, out):
    for i in range(a.size):
        x = a[i]
        s, t = fsigmoid32(x), ftanh32(x)
        out[i] = s * t * (np.float32(1.0) - s - t) - fsoftplus32(x)


def test_interleaved_compiler_keeps_four_vectors_in_flight_and_resets_llvm():
    a = np.linspace(-5, 5, 1000, dtype=np.float32)
    out, want = np.empty_like(a), np.empty_like(a)
    flags = dict(error_model="numpy", boundscheck=False, fastmath={"contract"})
    before = _vector_divisions(njit(**flags)(_chain_loop), a, want)
    wide = njit(pipeline_class=interleave.InterleavedCompiler, **flags)(_chain_loop)
    # three divisions per element (sigmoid, tanh, softplus), each in four vectors
    assert before >= 3 and _vector_divisions(wide, a, out) >= 3 * interleave.INTERLEAVE
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-7)
    # LLVM's option is back to its own choice for whatever is compiled next
    assert _vector_divisions(njit(**flags)(_chain_loop), a, want) == before
