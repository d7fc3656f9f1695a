"""Reductions over axes: reduce_sum, reduce_mean, reduce_max."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..registry import FusionKind, OpDef, Sample, register
from ..types import TensorType
from . import _cuda
from ._util import expand_to, float_dtype, reduced_shape

_ATTRS = {"axes": None, "keepdims": False}


def _axes(attrs, rank):
    axes = attrs["axes"]
    return tuple(range(rank)) if axes is None else tuple(axes)


def _infer(name):
    def infer(types, attrs):
        (x,) = types
        float_dtype(x, name)
        axes = _axes(attrs, x.rank)
        if any(not 0 <= a < x.rank for a in axes) or len(set(axes)) != len(axes):
            raise ShapeError(f"axes {axes} invalid for rank {x.rank}")
        return TensorType(reduced_shape(x.shape, axes, attrs["keepdims"]), x.dtype)
    return infer


def _keep_shape(node, x_type):
    axes = _axes(node.attrs, x_type.rank)
    return reduced_shape(x_type.shape, axes, True), axes


def _sum_vjp(g, node, grad):
    xt = g.type_of(node.args[0])
    keep, _ = _keep_shape(node, xt)
    return [expand_to(g, grad, keep, xt.shape)]


def _mean_vjp(g, node, grad):
    xt = g.type_of(node.args[0])
    keep, axes = _keep_shape(node, xt)
    count = g.add("shape_size", [node.args[0]], {"axes": axes, "dtype": xt.dtype})
    return [g.add("div", [expand_to(g, grad, keep, xt.shape), count])]


def _max_vjp(g, node, grad):
    # like torch.amax: ties share the gradient evenly
    x = node.args[0]
    xt = g.type_of(x)
    keep, axes = _keep_shape(node, xt)
    mask = g.add("eq", [x, expand_to(g, node.id, keep, xt.shape)])
    count = g.add("reduce_sum", [mask], {"axes": axes, "keepdims": True})
    share = g.add("div", [expand_to(g, grad, keep, xt.shape),
                          expand_to(g, count, keep, xt.shape)])
    return [g.add("mul", [share, mask])]


def reduction_kernel(combine, init, finish=None):
    """Loop-nest template: ``combine(acc, x)`` folds each element into its output slot."""
    def kernel(ctx):
        x, out = ctx.args[0], ctx.out
        xt = ctx.in_types[0]
        rank = xt.rank
        axes = _axes(ctx.attrs, rank)
        kept = [k for k in range(rank) if k not in axes]
        idx = [f"i{k}" for k in range(rank)]
        out_idx = [idx[k] if k not in axes else "0" for k in range(rank)] \
            if ctx.attrs["keepdims"] else [idx[k] for k in kept]
        oref = f"{out}[{', '.join(out_idx)}]" if out_idx else f"{out}[()]"
        count = "(" + (" * ".join(f"{x}.shape[{a}]" for a in axes) or "1") + ")"
        trailing = list(axes) == list(range(rank - len(axes), rank))
        if trailing:
            # reduced axes innermost: accumulate in a register
            depth = 0
            for k in kept:
                ctx.emit("    " * depth + f"for i{k} in range({x}.shape[{k}]):")
                depth += 1
            ctx.emit("    " * depth + f"acc = {init(ctx)}")
            inner = depth
            for a in axes:
                ctx.emit("    " * inner + f"for i{a} in range({x}.shape[{a}]):")
                inner += 1
            ctx.emit("    " * inner + f"acc = {combine('acc', f'{x}[{chr(44).join(idx)}]' if idx else f'{x}[()]')}")
            value = finish("acc", count, ctx) if finish else "acc"
            ctx.emit("    " * depth + f"{oref} = {value}")
            return
        ctx.emit(f"{out}[:] = {init(ctx)}" if ctx.out_type.rank else f"{out}[()] = {init(ctx)}")
        for depth, k in enumerate(range(rank)):
            ctx.emit("    " * depth + f"for i{k} in range({x}.shape[{k}]):")
        ctx.emit("    " * rank + f"{oref} = {combine(oref, f'{x}[{chr(44).join(idx)}]')}")
        if finish:
            ctx.emit(f"scale = {finish(ctx.lit(1.0), count, ctx)}")
            ctx.emit(f"{out} *= scale" if ctx.out_type.rank else f"{out}[()] *= scale")
    return kernel


def cuda_reduction(combine, init, finish=None):
    """CUDA template: one block per output element, threads stride over the reduced
    elements, then a shared-memory tree reduction; thread 0 stores the result."""
    def kernel(ctx):
        x, out = ctx.args[0], ctx.out
        rank = ctx.in_types[0].rank
        axes = _axes(ctx.attrs, rank)
        kept = [k for k in range(rank) if k not in axes]
        idx = [f"i{k}" for k in range(rank)]
        if ctx.attrs["keepdims"]:
            out_idx = [idx[k] if k not in axes else "0" for k in range(rank)]
        else:
            out_idx = [idx[k] for k in kept]
        nout = _cuda.product([f"{x}.shape[{k}]" for k in kept])
        count = _cuda.product([f"{x}.shape[{a}]" for a in axes])
        _cuda.shared_scratch(ctx)
        ctx.emit(f"count = {count}")
        _cuda.block_rows(ctx, nout, "o")
        _cuda.unravel(ctx, "o", [(idx[k], f"{x}.shape[{k}]") for k in kept], "    ")
        ctx.emit(f"    acc = {init(ctx)}")
        ctx.emit(f"    for r in range(tid, count, {ctx.threads}):")
        _cuda.unravel(ctx, "r", [(idx[a], f"{x}.shape[{a}]") for a in axes], "        ")
        ctx.emit(f"        acc = {combine('acc', f'{x}[{_cuda.index(idx)}]')}")
        _cuda.tree_reduce(ctx, "acc", combine, "total", "    ")
        value = finish("total", "count", ctx) if finish else "total"
        ctx.emit(f"    if tid == 0:")
        ctx.emit(f"        {out}[{_cuda.index(out_idx)}] = {value}")
    return kernel


def _mean_finish(acc, count, ctx):
    # count is a product "a * b": parenthesise it (acc / a * b is (acc / a) * b)
    return f"{acc} / ({count})"


_SAMPLES = (Sample(shapes=((3, 4),), attrs={"axes": (1,)}),
            Sample(shapes=((3, 4),), attrs={"axes": (0,), "keepdims": True}),
            Sample(shapes=((2, 3, 4),), attrs={"axes": (0, 2)}),
            Sample(shapes=((3, 4),), attrs={"axes": None}))

register(OpDef(
    name="reduce_sum", infer=_infer("reduce_sum"), kind=FusionKind.REDUCTION, arity=1,
    impl=lambda xs, a, shape: np.asarray(np.sum(xs[0], axis=a["axes"], keepdims=a["keepdims"]),
                                         dtype=xs[0].dtype),
    kernel=reduction_kernel(lambda acc, v: f"{acc} + {v}", lambda ctx: ctx.lit(0.0)),
    cuda_kernel=cuda_reduction(_cuda.add, lambda ctx: ctx.lit(0.0)),
    vjp=_sum_vjp, attrs=dict(_ATTRS), samples=_SAMPLES, doc="Sum over axes (all by default)."))

register(OpDef(
    name="reduce_mean", infer=_infer("reduce_mean"), kind=FusionKind.REDUCTION, arity=1,
    impl=lambda xs, a, shape: np.asarray(np.mean(xs[0], axis=a["axes"], keepdims=a["keepdims"]),
                                         dtype=xs[0].dtype),
    kernel=reduction_kernel(lambda acc, v: f"{acc} + {v}", lambda ctx: ctx.lit(0.0),
                            _mean_finish),
    cuda_kernel=cuda_reduction(_cuda.add, lambda ctx: ctx.lit(0.0), _mean_finish),
    vjp=_mean_vjp, attrs=dict(_ATTRS), samples=_SAMPLES, doc="Mean over axes (all by default)."))

register(OpDef(
    name="reduce_max", infer=_infer("reduce_max"), kind=FusionKind.REDUCTION, arity=1,
    impl=lambda xs, a, shape: np.asarray(np.max(xs[0], axis=a["axes"], keepdims=a["keepdims"]),
                                         dtype=xs[0].dtype),
    kernel=reduction_kernel(_cuda.maximum, lambda ctx: "-np.inf"),   # NaN-propagating
    cuda_kernel=cuda_reduction(_cuda.maximum, lambda ctx: ctx.lit(float("-inf"))),
    vjp=_max_vjp, attrs=dict(_ATTRS), samples=_SAMPLES,
    doc="Maximum over axes; ties share the gradient (like torch.amax)."))
