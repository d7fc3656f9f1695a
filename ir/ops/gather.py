"""Gathers by integer index: take (x[idx] along one axis, embeddings) and its gradient.

``take(x, idx, axis)`` is ``np.take(x, idx, axis)``: the output has x's axes before
``axis``, then idx's axes, then x's axes after it. Its gradient ``take_grad`` adds each
gradient slice into the row it was read from (``np.add.at``); rows read twice get both.
Negative indices count from the end when ``negative`` is set (NumPy, ``x[idx]``) and
are errors otherwise (``nn.Embedding``). Graph inputs used as indices are range-checked
by the runtime before a call (``index_bounds``); an index computed inside the graph
that is out of range stops the CPU kernel with an IndexError, and reads NaN on CUDA.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError, ShapeError
from ..registry import REQUIRED, FusionKind, OpDef, Sample, register
from ..types import BATCH, TensorType, format_shape
from . import _cuda


def _check_axis(x, axis, what):
    if not isinstance(axis, int) or not 0 <= axis < x.rank:
        raise ShapeError(f"{what}: axis {axis!r} is out of range for shape "
                         f"{format_shape(x.shape)}")


def _check_indices(idx, what):
    if idx.dtype != "int64":
        raise ShapeError(f"{what} needs int64 indices, got {idx}")


def _take_infer(types, attrs):
    x, idx = types
    axis = attrs["axis"]
    _check_axis(x, axis, "take")
    _check_indices(idx, "take")
    if x.shape[axis] == BATCH:
        raise ShapeError(f"take: axis {axis} of {format_shape(x.shape)} is the batch axis; "
                         f"its extent is not known when compiling, so it cannot be indexed")
    return TensorType(x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype)


def _bounds(extent, attrs, what):
    lo = -extent if attrs["negative"] else 0
    return {1: (lo, extent, "index", f"axis {attrs['axis']} of extent {extent} ({what})")}


def _check_values(idx, extent, negative, what):
    lo = -extent if negative else 0
    bad = idx[(idx < lo) | (idx >= extent)]
    if bad.size:
        raise InputError(f"{what}: index {int(bad.flat[0])} is out of range for extent "
                         f"{extent} (valid {lo}..{extent - 1})")


def _take_impl(xs, a, shape):
    x, idx = xs
    _check_values(idx, x.shape[a["axis"]], a["negative"], "take")
    return np.ascontiguousarray(np.take(x, idx, axis=a["axis"]))


def _take_vjp(g, node, grad):
    x, idx = node.args
    extent = g.type_of(x).shape[node.attrs["axis"]]
    return [g.add("take_grad", [grad, idx], {**node.attrs, "size": extent}), None]


def _loop_names(ctx, x_rank, idx_rank, axis):
    """Index names of the output: x's leading axes, idx's axes, x's trailing axes."""
    lead = [f"i{k}" for k in range(axis)]
    inner = [f"j{k}" for k in range(idx_rank)]
    trail = [f"t{k}" for k in range(x_rank - axis - 1)]
    return lead, inner, trail


def _subscript(names) -> str:
    """Index text; a 0-d array (a gather of one element) is indexed ``[()]``."""
    return ", ".join(names) if names else "()"


def _read_index(ctx, idx, inner, extent, negative, ind, on_bad):
    ctx.emit(f"{ind}r = {idx}[{_subscript(inner)}]")
    if negative:
        ctx.emit(f"{ind}if r < 0:")
        ctx.emit(f"{ind}    r += {extent}")
    if on_bad:
        ctx.emit(f"{ind}if r < 0 or r >= {extent}:")
        ctx.emit(f"{ind}    {on_bad}")


def _nest(ctx, names, extents, ind):
    for name, extent in zip(names, extents):
        ctx.emit(f"{ind}for {name} in range({extent}):")
        ind += "    "
    return ind


def _cpu_loops(ctx, op, idx, idx_rank, axis, extent, lead_of, trail_of, trail_n):
    """The loop nest of a CPU gather or scatter: ``lead_of``'s axes before ``axis``, the
    index's axes (reading the index ``r`` once, checked against ``extent``), then
    ``trail_of``'s axes after ``axis``. Returns (indent, lead, inner, trail) names."""
    lead = [f"i{k}" for k in range(axis)]
    inner = [f"j{k}" for k in range(idx_rank)]
    trail = [f"t{k}" for k in range(trail_n)]
    ind = _nest(ctx, lead, [f"{lead_of}.shape[{k}]" for k in range(axis)], "")
    ind = _nest(ctx, inner, [f"{idx}.shape[{k}]" for k in range(idx_rank)], ind)
    _read_index(ctx, idx, inner, extent, ctx.attrs["negative"], ind,
                f"raise IndexError('{op}: an index computed in the graph is out of range "
                f"for axis {axis} of extent {extent}')")
    ind = _nest(ctx, trail, [f"{trail_of}.shape[{axis + 1 + k}]" for k in range(trail_n)], ind)
    return ind, lead, inner, trail


def _take_kernel(ctx):
    x, idx, out = ctx.args[0], ctx.args[1], ctx.out
    xt, it = ctx.in_types
    axis = ctx.attrs["axis"]
    ind, lead, inner, trail = _cpu_loops(ctx, "take", idx, it.rank, axis, xt.shape[axis],
                                         out, x, xt.rank - axis - 1)
    ctx.emit(f"{ind}{out}[{_subscript(lead + inner + trail)}] = "
             f"{x}[{', '.join(lead + ['r'] + trail)}]")


def _take_cuda(ctx):
    """One thread per output element."""
    x, idx, out = ctx.args[0], ctx.args[1], ctx.out
    xt, it = ctx.in_types
    axis = ctx.attrs["axis"]
    extent = xt.shape[axis]
    lead, inner, trail = _loop_names(ctx, xt.rank, it.rank, axis)
    names = lead + inner + trail
    _cuda.grid_stride(ctx, f"{out}.size")
    _cuda.unravel(ctx, "idx", [(n, f"{out}.shape[{k}]") for k, n in enumerate(names)], "    ")
    ctx.emit(f"    r = {idx}[{_cuda.index(inner)}]")
    if ctx.attrs["negative"]:
        ctx.emit(f"    if r < 0:")
        ctx.emit(f"        r += {extent}")
    ctx.emit(f"    if r < 0 or r >= {extent}:")
    ctx.emit(f"        {out}[{_cuda.index(names)}] = math.nan")
    ctx.emit(f"    else:")
    ctx.emit(f"        {out}[{_cuda.index(names)}] = {x}[{_cuda.index(lead + ['r'] + trail)}]")


register(OpDef(
    name="take", infer=_take_infer, impl=_take_impl, kind=FusionKind.OPAQUE, arity=2,
    kernel=_take_kernel, cuda_kernel=_take_cuda, vjp=_take_vjp,
    attrs={"axis": 0, "negative": True},
    index_bounds=lambda types, a: _bounds(types[0].shape[a["axis"]], a, "take"),
    samples=(Sample(shapes=((5, 3), (4,)), domains=("real", "labels:-5:5")),
             Sample(shapes=((4, 6), (2, 3)), attrs={"axis": 1, "negative": False},
                    domains=("real", "labels:6"), batch_dims=(0, None)),
             Sample(shapes=((7, 2, 3), (4, 2)), domains=("real", "labels:7"),
                    batch_dims=(None, 0)),
             Sample(shapes=((3, 5), ()), attrs={"axis": 1}, domains=("real", "labels:5")),
             Sample(shapes=((5,), ()), domains=("real", "labels:-5:5"))),   # one element
    doc="np.take(x, idx, axis): x's axis replaced by idx's axes (x[idx], embeddings)"))


def _take_grad_infer(types, attrs):
    g, idx = types
    axis, size = attrs["axis"], attrs["size"]
    _check_indices(idx, "take_grad")
    if not 0 <= axis <= g.rank - idx.rank or g.shape[axis:axis + idx.rank] != idx.shape:
        raise ShapeError(f"take_grad: gradient {format_shape(g.shape)} does not hold indices "
                         f"{format_shape(idx.shape)} at axis {axis}")
    return TensorType(g.shape[:axis] + (size,) + g.shape[axis + idx.rank:], g.dtype)


def _take_grad_impl(xs, a, shape):
    g, idx = xs
    axis = a["axis"]
    _check_values(idx, a["size"], a["negative"], "take_grad")
    out = np.zeros(shape, dtype=g.dtype)
    # put idx's axes first in g, the gathered axis first in out: np.add.at then adds
    # g[j, ...] into out[idx[j], ...], repeats included
    g_first = np.moveaxis(g, list(range(axis, axis + idx.ndim)), list(range(idx.ndim)))
    np.add.at(np.moveaxis(out, axis, 0), idx, g_first)
    return out


def _take_grad_kernel(ctx):
    """Zero, then add each gradient slice into its row; the index is read once per slice."""
    g, idx, out = ctx.args[0], ctx.args[1], ctx.out
    axis, size, rank = ctx.attrs["axis"], ctx.attrs["size"], ctx.out_type.rank
    ctx.emit(f"{out}[:] = 0")
    ind, lead, inner, trail = _cpu_loops(ctx, "take_grad", idx, ctx.in_types[1].rank, axis,
                                         size, out, out, rank - axis - 1)
    ctx.emit(f"{ind}{out}[{', '.join(lead + ['r'] + trail)}] += "
             f"{g}[{_subscript(lead + inner + trail)}]")


def _take_grad_cuda(ctx):
    """One thread per (leading, trailing) position: it owns that column of the output
    across every row, so it adds the slices in order with no atomics (deterministic)."""
    g, idx, out = ctx.args[0], ctx.args[1], ctx.out
    it = ctx.in_types[1]
    axis, size = ctx.attrs["axis"], ctx.attrs["size"]
    rank = ctx.out_type.rank
    lead, inner, _ = _loop_names(ctx, rank, it.rank, axis)
    trail = [f"t{k}" for k in range(rank - axis - 1)]
    outer = lead + trail
    extents = [f"{out}.shape[{k}]" for k in range(rank) if k != axis]
    _cuda.grid_stride(ctx, _cuda.product(extents) if extents else "1")
    _cuda.unravel(ctx, "idx", list(zip(outer, extents)), "    ")
    ctx.emit(f"    for r in range({size}):")
    ctx.emit(f"        {out}[{_cuda.index(lead + ['r'] + trail)}] = 0")
    ind = _nest(ctx, inner, [f"{idx}.shape[{k}]" for k in range(it.rank)], "    ")
    ctx.emit(f"{ind}r = {idx}[{_cuda.index(inner)}]")
    if ctx.attrs["negative"]:
        ctx.emit(f"{ind}if r < 0:")
        ctx.emit(f"{ind}    r += {size}")
    ctx.emit(f"{ind}if 0 <= r < {size}:")
    ctx.emit(f"{ind}    {out}[{_cuda.index(lead + ['r'] + trail)}] += "
             f"{g}[{_cuda.index(lead + inner + trail)}]")


register(OpDef(
    name="take_grad", infer=_take_grad_infer, impl=_take_grad_impl, kind=FusionKind.OPAQUE,
    arity=2, kernel=_take_grad_kernel, cuda_kernel=_take_grad_cuda,
    vjp=lambda g, node, grad: [g.add("take", [grad, node.args[1]],
                                     {"axis": node.attrs["axis"],
                                      "negative": node.attrs["negative"]}), None],
    attrs={"axis": 0, "size": REQUIRED, "negative": True},
    index_bounds=lambda types, a: _bounds(a["size"], a, "take_grad"),
    samples=(Sample(shapes=((6, 3), (6,)), attrs={"size": 4}, domains=("real", "labels:-4:4")),
             Sample(shapes=((4, 2, 3), (2, 3)), attrs={"axis": 1, "size": 5, "negative": False},
                    domains=("real", "labels:5"), batch_dims=(0, None)),
             Sample(shapes=((3, 5), ()), attrs={"axis": 1, "size": 2},
                    domains=("real", "labels:2")),
             Sample(shapes=((), ()), attrs={"size": 3}, domains=("real", "labels:3"))),
    doc="the gradient of take: zeros of the operand's shape, each gradient slice added into "
        "the row its index names (np.add.at)"))
