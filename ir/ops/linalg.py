"""Matrix products."""
from __future__ import annotations

import numpy as np

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
    a = ctx.args[0] + (".T" if ctx.attrs["ta"] else "")
    b = ctx.args[1] + (".T" if ctx.attrs["tb"] else "")
    ctx.emit(f"np.dot({a}, {b}, {ctx.out})")


register(OpDef(
    name="matmul", infer=_infer, impl=_impl, kind=FusionKind.OUT_FUSABLE, arity=2,
    kernel=_kernel, vjp=_vjp, attrs={"ta": False, "tb": False},
    samples=(Sample(shapes=((3, 4), (4, 5))),
             Sample(shapes=((3, 4), (5, 4)), attrs={"tb": True}),
             Sample(shapes=((4, 3), (4, 5)), attrs={"ta": True}),
             Sample(shapes=((4, 3), (5, 4)), attrs={"ta": True, "tb": True})),
    doc="2-D matrix product op(A) @ op(B); ta/tb transpose an operand without a copy."))
