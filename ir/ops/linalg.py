"""Matrix products."""
from __future__ import annotations

from ..errors import ShapeError
from ..registry import FusionKind, OpDef, Sample, register
from ..types import TensorType, format_shape
from . import _cuda
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


def _vjp_of(op):
    """The VJP of ``op`` (matmul or batch_matmul) in the same op: C = op(A) op(B); the
    four layouts of d/dA and d/dB as products with flags, no copies."""
    def vjp(g, node, grad):
        a, b = node.args
        ta, tb = node.attrs["ta"], node.attrs["tb"]
        mm = lambda x, y, tx, ty: g.add(op, [x, y], {"ta": tx, "tb": ty})  # noqa: E731
        if not ta and not tb:
            return [mm(grad, b, False, True), mm(a, grad, True, False)]
        if not ta and tb:
            return [mm(grad, b, False, False), mm(grad, a, True, False)]
        if ta and not tb:
            return [mm(b, grad, False, True), mm(a, grad, False, False)]
        return [mm(b, grad, True, True), mm(grad, a, True, True)]
    return vjp


def _kernel(ctx):
    # BLAS gemm with the transposes as flags (graphc.codegen.blas), never a copy
    a, b = ctx.args
    ctx.emit(f"gemm({a}, {b}, {ctx.out}, {ctx.attrs['ta']}, {ctx.attrs['tb']}, 1.0, 0.0)")


def _cuda_kernel(ctx):
    """Tiled shared-memory matmul: each block computes one tile x tile block of the output;
    with leading dims (batch_matmul), blockIdx.z walks the leading indices."""
    a, b, out = ctx.args[0], ctx.args[1], ctx.out
    ta, tb, t = ctx.attrs["ta"], ctx.attrs["tb"], ctx.tile
    rank = ctx.out_type.rank
    lead = [f"l{d}" for d in range(rank - 2)]
    pre = "".join(f"{name}, " for name in lead)
    ind = "    " if lead else ""
    zero = ctx.lit(0.0)
    ctx.emit(f"sa = cuda.shared.array(({t}, {t}), {ctx.nbtype})")
    ctx.emit(f"sb = cuda.shared.array(({t}, {t}), {ctx.nbtype})")
    ctx.emit("tx = cuda.threadIdx.x")
    ctx.emit("ty = cuda.threadIdx.y")
    ctx.emit(f"row = cuda.blockIdx.y * {t} + ty")
    ctx.emit(f"col = cuda.blockIdx.x * {t} + tx")
    ctx.emit(f"m = {out}.shape[{rank - 2}]")
    ctx.emit(f"n = {out}.shape[{rank - 1}]")
    ctx.emit(f"k = {a}.shape[{rank - 2 if ta else rank - 1}]")
    if lead:
        ctx.emit(f"for z in range(cuda.blockIdx.z, {_leading(out, rank)}, cuda.gridDim.z):")
        _cuda.unravel(ctx, "z", [(lead[d], f"{out}.shape[{d}]") for d in range(rank - 2)],
                      ind)
    ctx.emit(f"{ind}acc = {zero}")
    ctx.emit(f"{ind}for k0 in range(0, k, {t}):")
    ctx.emit(f"{ind}    ka = k0 + tx")
    ctx.emit(f"{ind}    kb = k0 + ty")
    ctx.emit(f"{ind}    if row < m and ka < k:")
    ctx.emit(f"{ind}        sa[ty, tx] = {a}[{pre}{'ka, row' if ta else 'row, ka'}]")
    ctx.emit(f"{ind}    else:")
    ctx.emit(f"{ind}        sa[ty, tx] = {zero}")
    ctx.emit(f"{ind}    if kb < k and col < n:")
    ctx.emit(f"{ind}        sb[ty, tx] = {b}[{pre}{'col, kb' if tb else 'kb, col'}]")
    ctx.emit(f"{ind}    else:")
    ctx.emit(f"{ind}        sb[ty, tx] = {zero}")
    ctx.emit(f"{ind}    cuda.syncthreads()")
    ctx.emit(f"{ind}    for kk in range({t}):")
    ctx.emit(f"{ind}        acc += sa[ty, kk] * sb[kk, tx]")
    ctx.emit(f"{ind}    cuda.syncthreads()")
    ctx.emit(f"{ind}if row < m and col < n:")
    ctx.emit(f"{ind}    {out}[{pre}row, col] = acc")
    grid = (f"max(1, ({out}.shape[{rank - 1}] + {t - 1}) // {t}), "
            f"max(1, ({out}.shape[{rank - 2}] + {t - 1}) // {t})")
    if lead:
        grid += f", max(1, min(65535, {_leading(out, rank)}))"
    ctx.launch = (f"({grid})", f"({t}, {t})")


def _leading(array, rank):
    return " * ".join(f"{array}.shape[{d}]" for d in range(rank - 2))


register(OpDef(
    name="matmul", infer=_infer, impl=_impl, kind=FusionKind.OUT_FUSABLE, arity=2,
    kernel=_kernel, cuda_kernel=_cuda_kernel, vjp=_vjp_of("matmul"), attrs={"ta": False, "tb": False},
    samples=(Sample(shapes=((3, 4), (4, 5))),
             Sample(shapes=((3, 4), (5, 4)), attrs={"tb": True}),
             Sample(shapes=((4, 3), (4, 5)), attrs={"ta": True}),
             Sample(shapes=((4, 3), (5, 4)), attrs={"ta": True, "tb": True})),
    doc="2-D matrix product op(A) @ op(B); ta/tb transpose an operand without a copy."))


# --- batched: leading dims of both operands equal, a product per leading index ------

def _batch_infer(types, attrs):
    a, b = types
    dtype = same_dtype(types, "batch_matmul")
    if dtype == "int64":
        raise ShapeError("batch_matmul needs float operands")
    if a.rank < 3 or a.rank != b.rank or a.shape[:-2] != b.shape[:-2]:
        raise ShapeError(f"batch_matmul needs operands of one rank >= 3 with equal leading "
                         f"dims, got {format_shape(a.shape)} and {format_shape(b.shape)}")
    sa = a.shape[-2:][::-1] if attrs["ta"] else a.shape[-2:]
    sb = b.shape[-2:][::-1] if attrs["tb"] else b.shape[-2:]
    if sa[1] != sb[0]:
        raise ShapeError(f"cannot multiply {format_shape(a.shape)} by {format_shape(b.shape)} "
                         f"(ta={attrs['ta']}, tb={attrs['tb']}): inner sizes {sa[1]} and "
                         f"{sb[0]} differ")
    return TensorType(a.shape[:-2] + (sa[0], sb[1]), dtype)


def _batch_impl(xs, a, shape):
    x = xs[0].swapaxes(-1, -2) if a["ta"] else xs[0]
    y = xs[1].swapaxes(-1, -2) if a["tb"] else xs[1]
    return x @ y


def _batch_kernel(ctx):
    """One BLAS gemm per leading index, on 2-D slices of the operands seen as 3-D."""
    (a, b), out = ctx.args, ctx.out
    rank = ctx.out_type.rank
    for name in (a, b, out):
        ctx.emit(f"{name}_3 = {name}.reshape(({_leading(name, rank)}, {name}.shape[{rank - 2}], "
                 f"{name}.shape[{rank - 1}]))")
    ctx.emit(f"for i in range({out}_3.shape[0]):")
    ctx.emit(f"    gemm({a}_3[i], {b}_3[i], {out}_3[i], {ctx.attrs['ta']}, {ctx.attrs['tb']}, "
             f"1.0, 0.0)")


register(OpDef(
    name="batch_matmul", infer=_batch_infer, impl=_batch_impl, kind=FusionKind.OUT_FUSABLE,
    arity=2, kernel=_batch_kernel, cuda_kernel=_cuda_kernel, vjp=_vjp_of("batch_matmul"),
    attrs={"ta": False, "tb": False},
    samples=(Sample(shapes=((2, 3, 4), (2, 4, 5))),
             Sample(shapes=((3, 2, 3, 4), (3, 2, 5, 4)), attrs={"tb": True},
                    batch_dims=(0, 0)),
             Sample(shapes=((2, 4, 3), (2, 4, 5)), attrs={"ta": True}),
             Sample(shapes=((2, 4, 3), (2, 5, 4)), attrs={"ta": True, "tb": True})),
    doc="op(A) @ op(B) per leading index (rank >= 3, equal leading dims, which may "
        "include the batch); ta/tb transpose the last two axes without a copy."))
