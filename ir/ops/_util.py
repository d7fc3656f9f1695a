"""Helpers shared by op declarations: broadcasting rules and gradient plumbing."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..types import BATCH, TensorType, format_shape


def broadcast_shapes(*shapes) -> tuple:
    """NumPy broadcasting where ``N`` matches ``N`` or 1."""
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        dims = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        non_one = {d for d in dims if d != 1}
        if len(non_one) > 1:
            raise ShapeError("cannot broadcast shapes " +
                             " and ".join(format_shape(s) for s in shapes))
        out.append(non_one.pop() if non_one else 1)
    return tuple(out)


def same_dtype(types, what) -> str:
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise ShapeError(f"{what} needs operands of one dtype, got {sorted(dtypes)}")
    return dtypes.pop()


def float_dtype(t: TensorType, what: str) -> str:
    if t.dtype not in ("float32", "float64"):
        raise ShapeError(f"{what} needs a float operand, got {t.dtype}")
    return t.dtype


def norm_axes(axes, rank) -> tuple:
    if axes is None:
        return tuple(range(rank))
    if isinstance(axes, int):
        axes = (axes,)
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise ShapeError(f"axis {a} is out of range for rank {rank}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {tuple(axes)}")
    return tuple(sorted(out))


def reduced_shape(shape, axes, keepdims) -> tuple:
    return tuple((1 if keepdims else None) if i in axes else d
                 for i, d in enumerate(shape) if keepdims or i not in axes)


def unbroadcast(g, grad: int, target: TensorType) -> int:
    """Sum ``grad`` down to ``target``'s shape (the VJP of numpy broadcasting)."""
    gshape = g.type_of(grad).shape
    if gshape == target.shape:
        return grad
    lead = len(gshape) - len(target.shape)
    axes = list(range(lead))
    for i, d in enumerate(target.shape):
        if d == 1 and gshape[lead + i] != 1:
            axes.append(lead + i)
    if axes:
        grad = g.add("reduce_sum", [grad], {"axes": tuple(axes), "keepdims": False})
    if g.type_of(grad).shape != target.shape:
        grad = g.add("reshape", [grad], {"shape": target.shape})
    return grad


def expand_to(g, value: int, keep_shape: tuple, full_shape: tuple) -> int:
    """Reshape a reduced value to its keepdims shape, then broadcast to ``full_shape``."""
    if g.type_of(value).shape != keep_shape:
        value = g.add("reshape", [value], {"shape": keep_shape})
    if keep_shape != full_shape:
        value = g.add("broadcast_to", [value], {"shape": full_shape})
    return value


def scalar(g, value: float, dtype: str) -> int:
    return g.constant(value, dtype)


def batch_size_of(g, x: int, axes=(0,)) -> int:
    """A rank-0 value holding the product of ``x``'s sizes along ``axes`` at run time."""
    return g.add("shape_size", [x], {"axes": tuple(axes), "dtype": g.type_of(x).dtype})


def resolve(shape, batch):
    return tuple(batch if d == BATCH else d for d in shape)


def np_dtype(t: TensorType):
    return np.dtype(t.dtype)


def loop_nest(ctx, array: str, rank: int, depth: int = 0, prefix: str = "i"):
    """Emit ``for`` loops over every axis of ``array``; returns (index text, new depth)."""
    names = [f"{prefix}{k}" for k in range(rank)]
    for k in range(rank):
        ctx.emit("    " * (depth + k) + f"for {names[k]} in range({array}.shape[{k}]):")
    return (", ".join(names) if rank else "()"), depth + rank
