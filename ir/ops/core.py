"""Graph leaves and small utility ops: input, constant, shape_size, iota, one_hot, cast."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..registry import REQUIRED, FusionKind, OpDef, Sample, register
from ..types import BATCH, TensorType
from . import _cuda


def _no_infer(types, attrs):
    raise ShapeError("graph inputs are created with Graph.add_input, not Graph.add")


register(OpDef(
    name="input", infer=_no_infer, impl=None, kind=FusionKind.OPAQUE,
    attrs={"role": "data"}, arity=0, differentiable=False,
    doc="A graph input: data, labels, parameters, optimizer state or hyper-parameters."))


def _const_infer(types, attrs):
    return TensorType(attrs["shape"], attrs["dtype"])


register(OpDef(
    name="constant", infer=_const_infer, kind=FusionKind.ELEMWISE, arity=0,
    impl=lambda xs, a, shape: np.full(shape, a["value"], dtype=a["dtype"]),
    scalar=lambda args, a, lit: lit(a["value"]),
    attrs={"value": REQUIRED, "shape": (), "dtype": "float32"}, differentiable=False,
    samples=(Sample(shapes=(), attrs={"value": 1.5, "shape": (2, 3), "dtype": "float64"}),),
    doc="A tensor of a static shape (may contain N) filled with one value."))


def _size_infer(types, attrs):
    (x,) = types
    for a in attrs["axes"]:
        if not 0 <= a < x.rank:
            raise ShapeError(f"axis {a} out of range for rank {x.rank}")
    return TensorType((), attrs["dtype"])


def _size_impl(xs, a, shape):
    return np.array(np.prod([xs[0].shape[i] for i in a["axes"]]), dtype=a["dtype"])


def _size_kernel(ctx):
    size = " * ".join(f"{ctx.args[0]}.shape[{i}]" for i in ctx.attrs["axes"]) or "1"
    ctx.emit(f"{ctx.out}[()] = {size}")


def _size_cuda(ctx):
    size = _cuda.product([f"{ctx.args[0]}.shape[{i}]" for i in ctx.attrs["axes"]])
    ctx.emit(f"if cuda.grid(1) == 0:")
    ctx.emit(f"    {ctx.out}[0] = {size}")
    ctx.launch = ("1", "1")


register(OpDef(
    name="shape_size", infer=_size_infer, impl=_size_impl, kind=FusionKind.OPAQUE,
    kernel=_size_kernel, cuda_kernel=_size_cuda, arity=1, attrs={"axes": (0,), "dtype": "float32"},
    differentiable=False,
    samples=(Sample(shapes=((3, 4),), attrs={"axes": (0, 1), "dtype": "float64"}),),
    doc="The run-time product of the operand's sizes along ``axes`` (e.g. the batch size)."))


def _iota_infer(types, attrs):
    n = attrs["size"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ShapeError(f"iota needs a static size >= 0, got {n!r}")
    return TensorType((n,), attrs["dtype"])


def _iota_kernel(ctx):
    ctx.emit(f"for i in range({ctx.out}.shape[0]):")
    ctx.emit(f"    {ctx.out}[i] = i")


def _iota_cuda(ctx):
    _cuda.grid_stride(ctx, f"{ctx.out}.shape[0]")
    ctx.emit(f"    {ctx.out}[idx] = idx")


register(OpDef(
    name="iota", infer=_iota_infer, impl=lambda xs, a, shape: np.arange(shape[0], dtype=a["dtype"]),
    kind=FusionKind.OPAQUE, kernel=_iota_kernel, cuda_kernel=_iota_cuda, arity=0,
    attrs={"size": REQUIRED, "dtype": "float32"}, differentiable=False,
    samples=(Sample(shapes=(), attrs={"size": 5, "dtype": "float64"}),),
    doc="0, 1, ..., size - 1: the positions along an axis (argmax's candidates)."))


def _one_hot_infer(types, attrs):
    (y,) = types
    if y.dtype != "int64" or y.rank != 1:
        raise ShapeError(f"one_hot needs int64 labels of rank 1, got {y}")
    return TensorType((y.shape[0], attrs["num_classes"]), attrs["dtype"])


def _one_hot_impl(xs, a, shape):
    out = np.zeros(shape, dtype=a["dtype"])
    out[np.arange(shape[0]), xs[0]] = 1
    return out


def _one_hot_kernel(ctx):
    y, out = ctx.args[0], ctx.out
    ctx.emit(f"for i in range({out}.shape[0]):")
    ctx.emit(f"    for j in range({out}.shape[1]):")
    ctx.emit(f"        {out}[i, j] = {ctx.lit(0.0)}")
    ctx.emit(f"    {out}[i, {y}[i]] = {ctx.lit(1.0)}")


def _one_hot_cuda(ctx):
    y, out = ctx.args[0], ctx.out
    _cuda.grid_stride(ctx, f"{out}.size")
    ctx.emit(f"    i = idx // {out}.shape[1]")
    ctx.emit(f"    j = idx % {out}.shape[1]")
    ctx.emit(f"    {out}[i, j] = {ctx.lit(1.0)} if {y}[i] == j else {ctx.lit(0.0)}")


register(OpDef(
    name="one_hot", infer=_one_hot_infer, impl=_one_hot_impl, kind=FusionKind.OPAQUE,
    kernel=_one_hot_kernel, cuda_kernel=_one_hot_cuda, arity=1,
    attrs={"num_classes": REQUIRED, "dtype": "float32"}, differentiable=False,
    index_bounds=lambda types, a: {0: (0, a["num_classes"], "label",
                                       f"{a['num_classes']} classes (one_hot)")},
    samples=(Sample(shapes=((5,),), attrs={"num_classes": 4, "dtype": "float64"},
                    domains=("labels:4",)),),
    doc="Rows of the identity: one_hot(y)[i, y[i]] = 1."))


def _cast_infer(types, attrs):
    return types[0].with_dtype(attrs["dtype"])


def _cast_vjp(g, node, grad):
    (x,) = node.args
    if g.type_of(x).dtype == "int64":
        return [None]
    return [g.add("cast", [grad], {"dtype": g.type_of(x).dtype})]


register(OpDef(
    name="cast", infer=_cast_infer, kind=FusionKind.ELEMWISE, arity=1,
    impl=lambda xs, a, shape: xs[0].astype(a["dtype"]),
    scalar=lambda args, a, lit: f"np.{a['dtype']}({args[0]})",
    cuda_scalar=lambda args, a, lit: f"{a['dtype']}({args[0]})",   # numba scalar types
    vjp=_cast_vjp, attrs={"dtype": REQUIRED},
    samples=(Sample(shapes=((3, 2),), attrs={"dtype": "float64"}),),
    doc="Convert to another dtype."))

__all__ = ["BATCH"]
