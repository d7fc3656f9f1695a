"""Matrix products."""
from __future__ import annotations

from ..errors import ShapeError
from ..registry import FusionKind, OpDef, Sample, register
from ..types import TensorType, format_shape
from ._util import same_dtype


def _operand_shapes(types, attrs):
    a, b = types
    if a.rank != 2 or b.rank != 2:
        raise ShapeError(f"matmul needs 2-D operands, got {format_shape(a.shape)} and "
                         f"{format_shape(b.shape)}")
    sa = a.shape[::-1] if attrs["ta"] else a.shape
    sb = b.shape[::-1] if attrs["tb"] else b.shape
    return sa, sb


def _infer(types, attrs):
    dtype = same_dtype(types, "matmul")
    if dtype == "int64":
        raise ShapeError("matmul needs float operands")
    sa, sb = _operand_shapes(types, attrs)
    if sa[1] != sb[0]:
        ta = "ᵀ" if attrs["ta"] else ""
        tb = "ᵀ" if attrs["tb"] else ""
        raise ShapeError(f"cannot multiply {format_shape(sa)}{ta} by {format_shape(sb)}{tb}: "
                         f"inner sizes {sa[1]} and {sb[0]} differ")
    return TensorType((sa[0], sb[1]), dtype)


def _impl(xs, a, shape):
    x = xs[0].T if a["ta"] else xs[0]
    y = xs[1].T if a["tb"] else xs[1]
    return x @ y


def _vjp(g, node, grad):
    a, b = node.args
    ta, tb = node.attrs["ta"], node.attrs["tb"]
    mm = lambda x, y, tx, ty: g.add("matmul", [x, y], {"ta": tx, "tb": ty})  # noqa: E731
    # C = op(A) op(B); the four layouts of d/dA and d/dB as matmuls with flags, no copies
    if not ta and not tb:
        return [mm(grad, b, False, True), mm(a, grad, True, False)]
    if not ta and tb:
        return [mm(grad, b, False, False), mm(grad, a, True, False)]
    if ta and not tb:
        return [mm(b, grad, False, True), mm(a, grad, False, False)]
    return [mm(b, grad, True, True), mm(grad, a, True, True)]


def _kernel(ctx):
    # BLAS gemm with the transposes as flags (graphc.codegen.blas), never a copy
    a, b = ctx.args
    ctx.emit(f"gemm({a}, {b}, {ctx.out}, {ctx.attrs['ta']}, {ctx.attrs['tb']}, 1.0, 0.0)")


def _cuda_kernel(ctx):
    """Tiled shared-memory matmul: each block computes one tile x tile block of the output."""
    a, b, out = ctx.args[0], ctx.args[1], ctx.out
    ta, tb, t = ctx.attrs["ta"], ctx.attrs["tb"], ctx.tile
    zero = ctx.lit(0.0)
    ctx.emit(f"sa = cuda.shared.array(({t}, {t}), {ctx.nbtype})")
    ctx.emit(f"sb = cuda.shared.array(({t}, {t}), {ctx.nbtype})")
    ctx.emit("tx = cuda.threadIdx.x")
    ctx.emit("ty = cuda.threadIdx.y")
    ctx.emit(f"row = cuda.blockIdx.y * {t} + ty")
    ctx.emit(f"col = cuda.blockIdx.x * {t} + tx")
    ctx.emit(f"m = {out}.shape[0]")
    ctx.emit(f"n = {out}.shape[1]")
    ctx.emit(f"k = {a}.shape[{0 if ta else 1}]")
    ctx.emit(f"acc = {zero}")
    ctx.emit(f"for k0 in range(0, k, {t}):")
    ctx.emit("    ka = k0 + tx")
    ctx.emit("    kb = k0 + ty")
    ctx.emit("    if row < m and ka < k:")
    ctx.emit(f"        sa[ty, tx] = {a}[{'ka, row' if ta else 'row, ka'}]")
    ctx.emit("    else:")
    ctx.emit(f"        sa[ty, tx] = {zero}")
    ctx.emit("    if kb < k and col < n:")
    ctx.emit(f"        sb[ty, tx] = {b}[{'col, kb' if tb else 'kb, col'}]")
    ctx.emit("    else:")
    ctx.emit(f"        sb[ty, tx] = {zero}")
    ctx.emit("    cuda.syncthreads()")
    ctx.emit(f"    for kk in range({t}):")
    ctx.emit("        acc += sa[ty, kk] * sb[kk, tx]")
    ctx.emit("    cuda.syncthreads()")
    ctx.emit("if row < m and col < n:")
    ctx.emit(f"    {out}[row, col] = acc")
    ctx.launch = (f"(max(1, ({out}.shape[1] + {t - 1}) // {t}), "
                  f"max(1, ({out}.shape[0] + {t - 1}) // {t}))", f"({t}, {t})")


register(OpDef(
    name="matmul", infer=_infer, impl=_impl, kind=FusionKind.OUT_FUSABLE, arity=2,
    kernel=_kernel, cuda_kernel=_cuda_kernel, vjp=_vjp, attrs={"ta": False, "tb": False},
    samples=(Sample(shapes=((3, 4), (4, 5))),
             Sample(shapes=((3, 4), (5, 4)), attrs={"tb": True}),
             Sample(shapes=((4, 3), (4, 5)), attrs={"ta": True}),
             Sample(shapes=((4, 3), (5, 4)), attrs={"ta": True, "tb": True})),
    doc="2-D matrix product op(A) @ op(B); ta/tb transpose an operand without a copy."))
