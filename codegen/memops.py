"""Contiguous copies for generated kernels: ``copy_run(dst, d, src, s, n)``.

``dst[d:d + n] = src[s:s + n]`` for two 1-D arrays of one dtype, as one LLVM ``memcpy``
when both are contiguous (else an element loop). A Numba loop copying a short run, such
as the 24 pixels of one row of a convolution's column matrix, was unrolled by LLVM into
scalar moves and scatters: building LeNet conv1's columns for a batch of 64 took 250 us
that way and 66 us as memcpy. The runs must not overlap (generated code copies from an
input into planner scratch).

>>> import numpy as np
>>> from numba import njit
>>> @njit
... def shift(a, b):
...     copy_run(b, 1, a, 0, 3)
>>> a = np.arange(4.0); b = np.zeros(4); shift(a, b); b
array([0., 0., 1., 2.])
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from .cache import module_version


@intrinsic
def _memcpy_run(typingctx, dst, d, src, s, n):
    """The memcpy of :func:`copy_run` for contiguous arrays (no bounds checks)."""
    sig = types.none(dst, d, src, s, n)

    def codegen(context, builder, sig, args):
        from numba.np.arrayobj import make_array   # compiling only (warm starts load code)
        dst_v, d_v, src_v, s_v, n_v = args
        tys = sig.args
        intp = context.get_value_type(types.intp)
        dp = make_array(tys[0])(context, builder, dst_v).data
        sp = make_array(tys[2])(context, builder, src_v).data
        dp = builder.gep(dp, [context.cast(builder, d_v, tys[1], types.intp)])
        sp = builder.gep(sp, [context.cast(builder, s_v, tys[3], types.intp)])
        item = context.get_abi_sizeof(context.get_data_type(tys[0].dtype))
        nbytes = builder.mul(context.cast(builder, n_v, tys[4], types.intp),
                             ir.Constant(intp, item))
        i8p = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i8p, intp, ir.IntType(1)]),
            "llvm.memcpy.p0i8.p0i8.i64")
        builder.call(fn, [builder.bitcast(dp, i8p), builder.bitcast(sp, i8p), nbytes,
                          ir.Constant(ir.IntType(1), 0)])
        return context.get_dummy_value()
    return sig, codegen


def copy_run(dst, d, src, s, n):
    """``dst[d:d + n] = src[s:s + n]`` (1-D arrays, same dtype, runs not overlapping)."""
    dst[d:d + n] = src[s:s + n]


@overload(copy_run, inline="always")
def _ol_copy_run(dst, d, src, s, n):
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and dst.ndim == 1 and src.ndim == 1 and dst.dtype == src.dtype):
        raise TypingError("copy_run takes two 1-D arrays of one dtype")
    if dst.layout == "C" and src.layout == "C":
        def impl(dst, d, src, s, n):
            if n > 0:
                _memcpy_run(dst, d, src, s, n)
        return impl

    def impl_strided(dst, d, src, s, n):
        for i in range(n):
            dst[d + i] = src[s + i]
    return impl_strided


# the generated source names this module's hash: a changed copy gives new cache keys
IMPORT_LINE = f"from graphc.codegen.memops import copy_run  # memops {module_version(__name__)}"
