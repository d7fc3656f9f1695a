"""Ops that move data without arithmetic: broadcast_to, reshape, transpose."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..registry import REQUIRED, FusionKind, OpDef, Sample, register
from ..types import TensorType, format_shape
from . import _cuda
from ._util import broadcast_shapes, unbroadcast


def _broadcast_infer(types, attrs):
    (x,) = types
    target = tuple(attrs["shape"])
    if len(target) < x.rank or broadcast_shapes(x.shape, target) != target:
        raise ShapeError(f"cannot broadcast {format_shape(x.shape)} to {format_shape(target)}")
    return TensorType(target, x.dtype)


register(OpDef(
    name="broadcast_to", infer=_broadcast_infer, kind=FusionKind.BROADCAST, arity=1,
    impl=lambda xs, a, shape: np.ascontiguousarray(np.broadcast_to(xs[0], shape)),
    scalar=lambda args, a, lit: args[0],
    vjp=lambda g, node, grad: [unbroadcast(g, grad, g.type_of(node.args[0]))],
    attrs={"shape": REQUIRED},
    samples=(Sample(shapes=((4,),), attrs={"shape": (3, 4)}),
             Sample(shapes=((3, 1),), attrs={"shape": (3, 5)}),
             Sample(shapes=((),), attrs={"shape": (2, 3)})),
    doc="NumPy broadcasting of the operand to a larger shape."))


def _reshape_infer(types, attrs):
    (x,) = types
    target = TensorType(tuple(attrs["shape"]), x.dtype)
    if x.numel_static() != target.numel_static():
        raise ShapeError(f"cannot reshape {format_shape(x.shape)} to {format_shape(target.shape)}: "
                         f"the sizes differ")
    return target


def _reshape_kernel(ctx):
    ctx.emit(f"{ctx.out} = {ctx.args[0]}.reshape({ctx.shape_expr(ctx.out_type)})")


register(OpDef(
    name="reshape", infer=_reshape_infer, kind=FusionKind.INJECTIVE, arity=1, view=True,
    impl=lambda xs, a, shape: xs[0].reshape(shape),
    kernel=_reshape_kernel, cuda_kernel=_reshape_kernel,   # a view in the driver, both targets
    vjp=lambda g, node, grad: [g.add("reshape", [grad], {"shape": g.type_of(node.args[0]).shape})],
    attrs={"shape": REQUIRED},
    samples=(Sample(shapes=((3, 4),), attrs={"shape": (2, 6)}),
             Sample(shapes=((3, 4),), attrs={"shape": ("N", 2, 2)}, batch_dims=(0,)),
             Sample(shapes=((1,),), attrs={"shape": ()})),
    doc="Same data, new shape (a view: no copy)."))


def _transpose_infer(types, attrs):
    (x,) = types
    perm = attrs["perm"]
    if perm is None:
        perm = tuple(reversed(range(x.rank)))
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"transpose perm {perm} is not a permutation of {x.rank} axes")
    return TensorType(tuple(x.shape[p] for p in perm), x.dtype)


def _perm(node_attrs, rank):
    perm = node_attrs["perm"]
    return tuple(reversed(range(rank))) if perm is None else tuple(perm)


def _transpose_vjp(g, node, grad):
    perm = _perm(node.attrs, len(node.shape))
    inv = tuple(int(i) for i in np.argsort(perm))
    return [g.add("transpose", [grad], {"perm": inv})]


def _transpose_kernel(ctx):
    x, out = ctx.args[0], ctx.out
    rank = ctx.out_type.rank
    perm = _perm(ctx.attrs, rank)
    idx = [f"i{k}" for k in range(rank)]
    src = [None] * rank
    for k, axis in enumerate(perm):
        src[axis] = idx[k]
    for k in range(rank):
        ctx.emit("    " * k + f"for i{k} in range({out}.shape[{k}]):")
    ctx.emit("    " * rank + f"{out}[{', '.join(idx)}] = {x}[{', '.join(src)}]")


def _transpose_cuda(ctx):
    x, out = ctx.args[0], ctx.out
    rank = ctx.out_type.rank
    perm = _perm(ctx.attrs, rank)
    idx = [f"i{k}" for k in range(rank)]
    src = [None] * rank
    for k, axis in enumerate(perm):
        src[axis] = idx[k]
    _cuda.grid_stride(ctx, f"{out}.size")
    _cuda.unravel(ctx, "idx", [(idx[k], f"{out}.shape[{k}]") for k in range(rank)], "    ")
    ctx.emit(f"    {out}[{_cuda.index(idx)}] = {x}[{_cuda.index(src)}]")


register(OpDef(
    name="transpose", infer=_transpose_infer, kind=FusionKind.INJECTIVE, arity=1,
    impl=lambda xs, a, shape: np.ascontiguousarray(np.transpose(xs[0], a["perm"])),
    kernel=_transpose_kernel, cuda_kernel=_transpose_cuda, vjp=_transpose_vjp, attrs={"perm": None},
    samples=(Sample(shapes=((3, 4),)), Sample(shapes=((2, 3, 4),), attrs={"perm": (1, 2, 0)})),
    doc="Permute axes (reverses them by default)."))
