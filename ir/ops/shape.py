"""Ops that move data without arithmetic: broadcast_to, reshape, transpose."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..registry import REQUIRED, FusionKind, OpDef, Sample, register
from ..types import BATCH, TensorType, format_shape
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


def _copy_nest(ctx, over: str, dst: str, dst_index, src: str, src_index):
    """Loops over the shape of array ``over`` (indices i0, i1, ...) around one copy
    ``dst[dst_index] = src[src_index]`` (index lists of source text)."""
    rank = len(dst_index)
    for k in range(rank):
        ctx.emit("    " * k + f"for i{k} in range({over}.shape[{k}]):")
    ctx.emit("    " * rank + f"{dst}[{', '.join(dst_index)}] = {src}[{', '.join(src_index)}]")


def _grid_copy(ctx, dst: str, dst_index, src: str, src_index):
    """CUDA: a grid-stride loop over ``dst`` (indices i0, ...) copying one element each."""
    rank = ctx.out_type.rank
    _cuda.grid_stride(ctx, f"{ctx.out}.size")
    _cuda.unravel(ctx, "idx", [(f"i{k}", f"{ctx.out}.shape[{k}]") for k in range(rank)],
                  "    ")
    ctx.emit(f"    {dst}[{_cuda.index(dst_index)}] = {src}[{_cuda.index(src_index)}]")


def _transpose_vjp(g, node, grad):
    perm = _perm(node.attrs, len(node.shape))
    inv = tuple(int(i) for i in np.argsort(perm))
    return [g.add("transpose", [grad], {"perm": inv})]


def _transpose_source(ctx):
    rank = ctx.out_type.rank
    idx = [f"i{k}" for k in range(rank)]
    src = [None] * rank
    for k, axis in enumerate(_perm(ctx.attrs, rank)):
        src[axis] = idx[k]
    return idx, src


def _transpose_kernel(ctx):
    idx, src = _transpose_source(ctx)
    _copy_nest(ctx, ctx.out, ctx.out, idx, ctx.args[0], src)


def _transpose_cuda(ctx):
    idx, src = _transpose_source(ctx)
    _grid_copy(ctx, ctx.out, idx, ctx.args[0], src)


register(OpDef(
    name="transpose", infer=_transpose_infer, kind=FusionKind.INJECTIVE, arity=1,
    impl=lambda xs, a, shape: np.ascontiguousarray(np.transpose(xs[0], a["perm"])),
    kernel=_transpose_kernel, cuda_kernel=_transpose_cuda, vjp=_transpose_vjp, attrs={"perm": None},
    samples=(Sample(shapes=((3, 4),)), Sample(shapes=((2, 3, 4),), attrs={"perm": (1, 2, 0)})),
    doc="Permute axes (reverses them by default)."))


# --- slice: basic indexing with static bounds ------------------------------
# ``index`` holds one (start, stop, step) per axis, normalised as ``slice.indices``
# gives them (a negative step may stop at -1, i.e. before element 0); the batch axis
# is only ever taken whole, as (0, None, 1).

def _check_index(x, index, what):
    if len(index) != x.rank:
        raise ShapeError(f"{what}: index has {len(index)} entries for rank-{x.rank} shape "
                         f"{format_shape(x.shape)}")
    out = []
    for axis, ((start, stop, step), extent) in enumerate(zip(index, x.shape)):
        if extent == BATCH:
            if (start, stop, step) != (0, None, 1):
                raise ShapeError(f"{what}: the batch axis {axis} can only be taken whole")
            out.append(BATCH)
            continue
        n = 0 if step == 0 or stop is None else len(range(start, stop, step))
        if n < 1 or not (0 <= start < extent and 0 <= start + (n - 1) * step < extent):
            raise ShapeError(f"{what}: range ({start}, {stop}, {step}) selects nothing or "
                             f"leaves axis {axis} of extent {extent}")
        out.append(n)
    return tuple(out)


def _slice_infer(types, attrs):
    (x,) = types
    return TensorType(_check_index(x, attrs["index"], "slice"), x.dtype)


def _py_slices(index):
    return tuple(slice(a, (b if b is None or b >= 0 else None), c) for a, b, c in index)


def _slice_vjp(g, node, grad):
    return [g.add("slice_grad", [grad], {"index": node.attrs["index"],
                                         "shape": g.type_of(node.args[0]).shape})]


def _src_index(index, names):
    """Per axis: the source position of output index ``names[k]``."""
    out = []
    for name, (start, _, step) in zip(names, index):
        term = name if step == 1 else f"{name} * {step}"
        out.append(term if start == 0 else f"{start} + {term}")
    return out


def _slice_kernel(ctx):
    idx = [f"i{k}" for k in range(ctx.out_type.rank)]
    _copy_nest(ctx, ctx.out, ctx.out, idx, ctx.args[0], _src_index(ctx.attrs["index"], idx))


def _slice_cuda(ctx):
    idx = [f"i{k}" for k in range(ctx.out_type.rank)]
    _grid_copy(ctx, ctx.out, idx, ctx.args[0], _src_index(ctx.attrs["index"], idx))


register(OpDef(
    name="slice", infer=_slice_infer, kind=FusionKind.INJECTIVE, arity=1,
    impl=lambda xs, a, shape: np.ascontiguousarray(xs[0][_py_slices(a["index"])]),
    kernel=_slice_kernel, cuda_kernel=_slice_cuda, vjp=_slice_vjp,
    attrs={"index": REQUIRED},
    samples=(Sample(shapes=((5, 6),), attrs={"index": ((1, 4, 1), (0, 6, 2))}),
             Sample(shapes=((4, 5, 3),), attrs={"index": ((0, None, 1), (4, -1, -2), (2, 3, 1))},
                    batch_dims=(0,)),
             Sample(shapes=((6,),), attrs={"index": ((5, 0, -1),)})),
    doc="x[start:stop:step, ...] with static bounds per axis (a copy); the batch axis "
        "is taken whole"))


def _slice_grad_infer(types, attrs):
    (g,) = types
    full = TensorType(tuple(attrs["shape"]), g.dtype)
    if _check_index(full, attrs["index"], "slice_grad") != g.shape:
        raise ShapeError(f"slice_grad: gradient shape {format_shape(g.shape)} does not match "
                         f"index {attrs['index']} of {format_shape(full.shape)}")
    return full


def _slice_grad_impl(xs, a, shape):
    out = np.zeros(shape, dtype=xs[0].dtype)
    out[_py_slices(a["index"])] = xs[0]
    return out


def _slice_grad_kernel(ctx):
    g, out = ctx.args[0], ctx.out
    ctx.emit(f"{out}[:] = 0")
    idx = [f"i{k}" for k in range(ctx.out_type.rank)]
    _copy_nest(ctx, g, out, _src_index(ctx.attrs["index"], idx), g, idx)


def _slice_grad_cuda(ctx):
    """Each output element: the gradient element that lands on it, or 0."""
    g, out = ctx.args[0], ctx.out
    rank = ctx.out_type.rank
    idx = [f"j{k}" for k in range(rank)]
    _cuda.grid_stride(ctx, f"{out}.size")
    _cuda.unravel(ctx, "idx", [(idx[k], f"{out}.shape[{k}]") for k in range(rank)], "    ")
    ctx.emit("    hit = True")
    src = []
    for k, (start, _, step) in enumerate(ctx.attrs["index"]):
        ctx.emit(f"    d{k} = {idx[k]} - {start}")
        ctx.emit(f"    q{k} = d{k} // {step}")
        ctx.emit(f"    hit = hit and q{k} * {step} == d{k} and 0 <= q{k} < {g}.shape[{k}]")
        src.append(f"q{k}")
    ctx.emit(f"    {out}[{_cuda.index(idx)}] = {g}[{_cuda.index(src)}] if hit else 0")


register(OpDef(
    name="slice_grad", infer=_slice_grad_infer, kind=FusionKind.INJECTIVE, arity=1,
    impl=_slice_grad_impl, kernel=_slice_grad_kernel, cuda_kernel=_slice_grad_cuda,
    vjp=lambda g, node, grad: [g.add("slice", [grad], {"index": node.attrs["index"]})],
    attrs={"index": REQUIRED, "shape": REQUIRED},
    samples=(Sample(shapes=((3, 3),), attrs={"index": ((1, 4, 1), (0, 6, 2)),
                                             "shape": (5, 6)}),
             Sample(shapes=((4, 3, 1),), attrs={"index": ((0, None, 1), (4, -1, -2), (2, 3, 1)),
                                                "shape": ("N", 5, 3)}, batch_dims=(0,)),
             Sample(shapes=((5,),), attrs={"index": ((5, 0, -1),), "shape": (6,)})),
    doc="the gradient of slice: zeros of the sliced operand's shape with the gradient "
        "placed where the slice took its elements"))


# --- concat: operands joined along one (static) axis -----------------------

def _concat_infer(types, attrs):
    if not types:
        raise ShapeError("concat needs at least one operand")
    axis, first = attrs["axis"], types[0]
    if not 0 <= axis < first.rank:
        raise ShapeError(f"concat: axis {axis} is out of range for rank {first.rank}")
    dtypes = {t.dtype for t in types}
    if len(dtypes) > 1:
        raise ShapeError(f"concat needs operands of one dtype, got {sorted(dtypes)}")
    for t in types:
        if t.rank != first.rank or any(d != e for k, (d, e) in
                                       enumerate(zip(t.shape, first.shape)) if k != axis):
            raise ShapeError("concat: operands " + ", ".join(format_shape(u.shape) for u in types)
                             + f" differ outside axis {axis}")
        if t.shape[axis] == BATCH:
            raise ShapeError(f"concat: axis {axis} is the batch axis")
    return TensorType(first.shape[:axis] + (sum(t.shape[axis] for t in types),)
                      + first.shape[axis + 1:], first.dtype)


def _offsets(in_types, axis):
    offsets, at = [], 0
    for t in in_types:
        offsets.append(at)
        at += t.shape[axis]
    return offsets


def _concat_vjp(g, node, grad):
    axis = node.attrs["axis"]
    types = [g.type_of(a) for a in node.args]
    grads = []
    for t, at in zip(types, _offsets(types, axis)):
        index = tuple((0, None, 1) if d == BATCH else (0, d, 1) for d in t.shape)
        index = index[:axis] + ((at, at + t.shape[axis], 1),) + index[axis + 1:]
        grads.append(g.add("slice", [grad], {"index": index}))
    return grads


def _concat_kernel(ctx):
    axis, rank = ctx.attrs["axis"], ctx.out_type.rank
    idx = [f"i{k}" for k in range(rank)]
    for x, at in zip(ctx.args, _offsets(ctx.in_types, axis)):
        dst = list(idx)
        dst[axis] = f"{at} + i{axis}" if at else f"i{axis}"
        _copy_nest(ctx, x, ctx.out, dst, x, idx)


def _concat_cuda(ctx):
    axis, out, rank = ctx.attrs["axis"], ctx.out, ctx.out_type.rank
    idx = [f"j{k}" for k in range(rank)]
    _cuda.grid_stride(ctx, f"{out}.size")
    _cuda.unravel(ctx, "idx", [(idx[k], f"{out}.shape[{k}]") for k in range(rank)], "    ")
    offsets = _offsets(ctx.in_types, axis)
    last = len(offsets) - 1
    for n, (x, at) in enumerate(zip(ctx.args, offsets)):
        src = list(idx)
        src[axis] = f"{idx[axis]} - {at}" if at else idx[axis]
        ind = "        " if last else "    "
        if last:      # the operand whose range holds the output index along the axis
            ctx.emit("    else:" if n == last else
                     f"    {'if' if n == 0 else 'elif'} {idx[axis]} < {offsets[n + 1]}:")
        ctx.emit(f"{ind}{out}[{_cuda.index(idx)}] = {x}[{_cuda.index(src)}]")


register(OpDef(
    name="concat", infer=_concat_infer, kind=FusionKind.INJECTIVE, arity=None,
    impl=lambda xs, a, shape: np.concatenate(xs, axis=a["axis"]),
    kernel=_concat_kernel, cuda_kernel=_concat_cuda, vjp=_concat_vjp, attrs={"axis": 0},
    samples=(Sample(shapes=((2, 3), (4, 3)), attrs={"axis": 0}),
             Sample(shapes=((4, 2, 3), (4, 1, 3), (4, 3, 3)), attrs={"axis": 1},
                    batch_dims=(0, 0, 0)),
             Sample(shapes=((3,),), attrs={"axis": 0})),
    doc="operands joined along a static axis (torch.cat)"))
