"""Softmax family and losses (mean reduction, as PyTorch's defaults)."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..registry import FusionKind, OpDef, Sample, register
from ..types import TensorType, format_shape
from . import _cuda
from ._util import batch_size_of, float_dtype, loop_nest, scalar

LOG_CLAMP = -100.0     # torch's binary_cross_entropy clamps log() at -100
BCE_EPS = 1e-12        # and its gradient's denominator at 1e-12


def _last_axis_infer(name):
    def infer(types, attrs):
        (x,) = types
        float_dtype(x, name)
        if x.rank < 1:
            raise ShapeError(f"{name} needs rank >= 1")
        if attrs["axis"] not in (-1, x.rank - 1):
            raise ShapeError(f"{name} runs over the last axis only (got axis {attrs['axis']} "
                             f"of rank {x.rank}); transpose first")
        return x
    return infer


def _np_log_softmax(x):
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def _row_loops(ctx, x):
    """Loops over all axes but the last; returns (row index prefix, depth)."""
    rank = ctx.in_types[0].rank
    idx, depth = loop_nest(ctx, x, rank - 1)
    prefix = (idx + ", ") if rank > 1 else ""
    return prefix, depth, rank - 1


def _softmax_kernel(log):
    def kernel(ctx):
        x, out = ctx.args[0], ctx.out
        pre, d, last = _row_loops(ctx, x)
        ind = "    " * d
        ctx.emit(f"{ind}m = -np.inf")
        ctx.emit(f"{ind}for j in range({x}.shape[{last}]):")
        ctx.emit(f"{ind}    m = max(m, {x}[{pre}j])")
        ctx.emit(f"{ind}s = {ctx.lit(0.0)}")
        ctx.emit(f"{ind}for j in range({x}.shape[{last}]):")
        if log:
            ctx.emit(f"{ind}    s += math.exp({x}[{pre}j] - m)")
            ctx.emit(f"{ind}shift = m + math.log(s)")
            ctx.emit(f"{ind}for j in range({x}.shape[{last}]):")
            ctx.emit(f"{ind}    {out}[{pre}j] = {x}[{pre}j] - shift")
        else:
            ctx.emit(f"{ind}    e = math.exp({x}[{pre}j] - m)")
            ctx.emit(f"{ind}    {out}[{pre}j] = e")
            ctx.emit(f"{ind}    s += e")
            ctx.emit(f"{ind}inv = {ctx.lit(1.0)} / s")
            ctx.emit(f"{ind}for j in range({x}.shape[{last}]):")
            ctx.emit(f"{ind}    {out}[{pre}j] *= inv")
    return kernel


def _softmax_cuda(log):
    """One block per row: max, then sum of exps, by shared-memory tree reductions."""
    def kernel(ctx):
        x, out = ctx.args[0], ctx.out
        rank = ctx.in_types[0].rank
        last = rank - 1
        lead = [f"i{k}" for k in range(last)]
        pre = ", ".join(lead + ["j"])
        _cuda.shared_scratch(ctx)
        ctx.emit(f"c = {x}.shape[{last}]")
        _cuda.block_rows(ctx, _cuda.product([f"{x}.shape[{k}]" for k in range(last)]))
        _cuda.unravel(ctx, "row", [(lead[k], f"{x}.shape[{k}]") for k in range(last)], "    ")
        ctx.emit(f"    m = {ctx.lit(float('-inf'))}")
        ctx.emit(f"    for j in range(tid, c, {ctx.threads}):")
        ctx.emit(f"        m = {_cuda.maximum('m', f'{x}[{pre}]')}")
        _cuda.tree_reduce(ctx, "m", _cuda.maximum, "m", "    ")
        ctx.emit(f"    s = {ctx.lit(0.0)}")
        ctx.emit(f"    for j in range(tid, c, {ctx.threads}):")
        ctx.emit(f"        s += math.exp({x}[{pre}] - m)")
        _cuda.tree_reduce(ctx, "s", _cuda.add, "s", "    ")
        if log:
            ctx.emit("    shift = m + math.log(s)")
            ctx.emit(f"    for j in range(tid, c, {ctx.threads}):")
            ctx.emit(f"        {out}[{pre}] = {x}[{pre}] - shift")
        else:
            ctx.emit(f"    inv = {ctx.lit(1.0)} / s")
            ctx.emit(f"    for j in range(tid, c, {ctx.threads}):")
            ctx.emit(f"        {out}[{pre}] = math.exp({x}[{pre}] - m) * inv")
    return kernel


def _single_block_loss(row_lines, count):
    """CUDA template of a mean loss: one block, each thread sums some rows, then a tree
    reduction; ``row_lines(ctx, x, y)`` emits lines adding row ``i``'s loss to ``total``."""
    def kernel(ctx):
        x, y, out = ctx.args[0], ctx.args[1], ctx.out
        _cuda.shared_scratch(ctx)
        ctx.emit(f"total = {ctx.lit(0.0)}")
        row_lines(ctx, x, y)
        _cuda.tree_reduce(ctx, "total", _cuda.add, "total")
        ctx.emit("if tid == 0:")
        ctx.emit(f"    {out}[0] = total / {count(x)}")
        ctx.launch = ("1", str(ctx.threads))
    return kernel


def _softmax_ce_rows(ctx, x, y):
    ctx.emit(f"for i in range(tid, {x}.shape[0], {ctx.threads}):")
    ctx.emit(f"    m = {ctx.lit(float('-inf'))}")
    ctx.emit(f"    for j in range({x}.shape[1]):")
    ctx.emit(f"        m = {_cuda.maximum('m', f'{x}[i, j]')}")
    ctx.emit(f"    s = {ctx.lit(0.0)}")
    ctx.emit(f"    for j in range({x}.shape[1]):")
    ctx.emit(f"        s += math.exp({x}[i, j] - m)")
    ctx.emit(f"    total += m + math.log(s) - {x}[i, {y}[i]]")


def _nll_rows(ctx, x, y):
    ctx.emit(f"for i in range(tid, {x}.shape[0], {ctx.threads}):")
    ctx.emit(f"    total -= {x}[i, {y}[i]]")


def _bce_rows(ctx, p, y):
    rank = ctx.in_types[0].rank
    idx = [f"i{k}" for k in range(rank)]
    ref = _cuda.index(idx)
    ctx.emit(f"for e in range(tid, {p}.size, {ctx.threads}):")
    _cuda.unravel(ctx, "e", [(idx[k], f"{p}.shape[{k}]") for k in range(rank)], "    ")
    ctx.emit(f"    lp = math.log({p}[{ref}])")
    ctx.emit(f"    lp = {_cuda.maximum('lp', ctx.lit(LOG_CLAMP))}")
    ctx.emit(f"    lq = math.log1p(-{p}[{ref}])")
    ctx.emit(f"    lq = {_cuda.maximum('lq', ctx.lit(LOG_CLAMP))}")
    ctx.emit(f"    total -= {y}[{ref}] * lp + ({ctx.lit(1.0)} - {y}[{ref}]) * lq")


def _softmax_vjp(g, node, grad):
    s = node.id
    dot = g.add("reduce_sum", [g.add("mul", [grad, s])], {"axes": (len(node.shape) - 1,),
                                                         "keepdims": True})
    return [g.add("mul", [s, g.add("sub", [grad, dot])])]


def _log_softmax_vjp(g, node, grad):
    total = g.add("reduce_sum", [grad], {"axes": (len(node.shape) - 1,), "keepdims": True})
    return [g.add("sub", [grad, g.add("mul", [g.add("exp", [node.id]), total])])]


_ROW_SAMPLES = (Sample(shapes=((3, 5),)), Sample(shapes=((2, 3, 4),)), Sample(shapes=((6,),)))

register(OpDef(
    name="softmax", infer=_last_axis_infer("softmax"), kind=FusionKind.REDUCTION, arity=1,
    impl=lambda xs, a, shape: np.exp(_np_log_softmax(xs[0])).astype(xs[0].dtype),
    kernel=_softmax_kernel(log=False), cuda_kernel=_softmax_cuda(log=False), vjp=_softmax_vjp, attrs={"axis": -1},
    samples=_ROW_SAMPLES, doc="exp(x) / sum(exp(x)) over the last axis, max-shifted."))

register(OpDef(
    name="log_softmax", infer=_last_axis_infer("log_softmax"), kind=FusionKind.REDUCTION,
    arity=1, impl=lambda xs, a, shape: _np_log_softmax(xs[0]).astype(xs[0].dtype),
    kernel=_softmax_kernel(log=True), cuda_kernel=_softmax_cuda(log=True),
    vjp=_log_softmax_vjp, attrs={"axis": -1},
    samples=_ROW_SAMPLES, doc="x - logsumexp(x) over the last axis."))


def _class_loss_infer(name):
    def infer(types, attrs):
        x, y = types
        float_dtype(x, name)
        if x.rank != 2:
            raise ShapeError(f"{name} needs logits of shape (batch, classes), got "
                             f"{format_shape(x.shape)}")
        if y.dtype != "int64" or y.rank != 1:
            raise ShapeError(f"{name} needs int64 class labels of shape (batch,), got {y}")
        if y.shape[0] != x.shape[0]:
            raise ShapeError(f"{name}: {format_shape(x.shape)} logits but "
                             f"{format_shape(y.shape)} labels")
        return TensorType((), x.dtype)
    return infer


def _np_softmax_ce(xs, a, shape):
    x, y = xs
    lp = _np_log_softmax(x)
    return np.asarray(-np.mean(lp[np.arange(len(y)), y]), dtype=x.dtype)


def _softmax_ce_kernel(ctx):
    x, y, out = ctx.args[0], ctx.args[1], ctx.out
    ctx.emit(f"total = {ctx.lit(0.0)}")
    ctx.emit(f"for i in range({x}.shape[0]):")
    ctx.emit(f"    m = -np.inf")
    ctx.emit(f"    for j in range({x}.shape[1]):")
    ctx.emit(f"        m = max(m, {x}[i, j])")
    ctx.emit(f"    s = {ctx.lit(0.0)}")
    ctx.emit(f"    for j in range({x}.shape[1]):")
    ctx.emit(f"        s += math.exp({x}[i, j] - m)")
    ctx.emit(f"    total += m + math.log(s) - {x}[i, {y}[i]]")
    ctx.emit(f"{out}[()] = total / {x}.shape[0]")


def _class_grad_scale(g, node, grad):
    return g.add("div", [grad, batch_size_of(g, node.args[0])])


def _softmax_ce_vjp(g, node, grad):
    # one op (one pass over the logits, no one-hot or softmax buffers), see below
    x, y = node.args
    return [g.add("softmax_cross_entropy_grad", [x, y, grad]), None]


def _softmax_ce_grad_infer(types, attrs):
    x, y, gr = types
    _class_loss_infer("softmax_cross_entropy_grad")([x, y], attrs)
    if gr.rank != 0 or gr.dtype != x.dtype:
        raise ShapeError(f"softmax_cross_entropy_grad needs a rank-0 {x.dtype} incoming "
                         f"gradient, got {gr}")
    return x


def _np_softmax_ce_grad(xs, a, shape):
    x, y, gr = xs
    p = np.exp(_np_log_softmax(x))
    p[np.arange(len(y)), y] -= 1
    return (p * (gr / len(y))).astype(x.dtype)


def _softmax_ce_grad_kernel(ctx):
    """d/dx of the mean softmax cross-entropy times g: (softmax(x) - one_hot(y)) * g / n,
    row by row (max, exps into the output, scale): the logits are read once."""
    x, y, gr, out = ctx.args[0], ctx.args[1], ctx.args[2], ctx.out
    ctx.emit(f"scale = {gr}[()] / {x}.shape[0]")
    ctx.emit(f"for i in range({x}.shape[0]):")
    ctx.emit(f"    m = {x}[i, 0]")
    ctx.emit(f"    for j in range(1, {x}.shape[1]):")
    ctx.emit(f"        m = max(m, {x}[i, j])")
    ctx.emit(f"    s = {ctx.lit(0.0)}")
    ctx.emit(f"    for j in range({x}.shape[1]):")
    ctx.emit(f"        e = math.exp({x}[i, j] - m)")
    ctx.emit(f"        {out}[i, j] = e")
    ctx.emit(f"        s += e")
    ctx.emit(f"    inv = scale / s")
    ctx.emit(f"    for j in range({x}.shape[1]):")
    ctx.emit(f"        {out}[i, j] *= inv")
    ctx.emit(f"    {out}[i, {y}[i]] -= scale")


def _softmax_ce_grad_cuda(ctx):
    """One thread per row (rows are short: the classes)."""
    x, y, gr, out = ctx.args[0], ctx.args[1], ctx.args[2], ctx.out
    _cuda.grid_stride(ctx, f"{x}.shape[0]", "i")
    ctx.emit(f"    scale = {gr}[0] / {x}.shape[0]")
    ctx.emit(f"    m = {x}[i, 0]")
    ctx.emit(f"    for j in range(1, {x}.shape[1]):")
    ctx.emit(f"        m = {_cuda.maximum('m', f'{x}[i, j]')}")
    ctx.emit(f"    s = {ctx.lit(0.0)}")
    ctx.emit(f"    for j in range({x}.shape[1]):")
    ctx.emit(f"        s += math.exp({x}[i, j] - m)")
    ctx.emit(f"    inv = scale / s")
    ctx.emit(f"    for j in range({x}.shape[1]):")
    ctx.emit(f"        {out}[i, j] = math.exp({x}[i, j] - m) * inv - "
             f"(scale if {y}[i] == j else {ctx.lit(0.0)})")


def _nll_kernel(ctx):
    x, y, out = ctx.args[0], ctx.args[1], ctx.out
    ctx.emit(f"total = {ctx.lit(0.0)}")
    ctx.emit(f"for i in range({x}.shape[0]):")
    ctx.emit(f"    total -= {x}[i, {y}[i]]")
    ctx.emit(f"{out}[()] = total / {x}.shape[0]")


def _nll_vjp(g, node, grad):
    x, y = node.args
    classes = g.type_of(x).shape[1]
    onehot = g.add("one_hot", [y], {"num_classes": classes, "dtype": node.dtype})
    return [g.add("mul", [onehot, g.add("neg", [_class_grad_scale(g, node, grad)])]), None]


def _label_bounds(name):
    """Operand 1 holds class labels: 0 <= y[i] < classes (the logits' last axis)."""
    def bounds(types, attrs):
        classes = types[0].shape[-1]
        return {1: (0, classes, "label", f"{classes} classes ({name})")}
    return bounds


_CE_SAMPLES = (Sample(shapes=((5, 4), (5,)), domains=("real", "labels:4"), batch_dims=(0, 0)),
               Sample(shapes=((1, 3), (1,)), domains=("real", "labels:3")))

register(OpDef(
    name="softmax_cross_entropy", infer=_class_loss_infer("softmax_cross_entropy"),
    kind=FusionKind.REDUCTION, arity=2, impl=_np_softmax_ce, kernel=_softmax_ce_kernel,
    cuda_kernel=_single_block_loss(_softmax_ce_rows, lambda x: f"{x}.shape[0]"),
    vjp=_softmax_ce_vjp, samples=_CE_SAMPLES,
    index_bounds=_label_bounds("softmax_cross_entropy"),
    doc="mean over the batch of -log softmax(x)[i, y[i]] (torch.nn.functional.cross_entropy)."))

register(OpDef(
    name="softmax_cross_entropy_grad", infer=_softmax_ce_grad_infer,
    kind=FusionKind.REDUCTION, arity=3, impl=_np_softmax_ce_grad,
    kernel=_softmax_ce_grad_kernel, cuda_kernel=_softmax_ce_grad_cuda, differentiable=False,
    index_bounds=_label_bounds("softmax_cross_entropy_grad"),
    samples=(Sample(shapes=((5, 4), (5,), ()), domains=("real", "labels:4", "real"),
                    batch_dims=(0, 0, None)),
             Sample(shapes=((1, 3), (1,), ()), domains=("real", "labels:3", "real"))),
    doc="gradient of softmax_cross_entropy(x, y) w.r.t. x, times the rank-0 g: "
        "(softmax(x) - one_hot(y)) * g / batch, in one pass over each row."))

register(OpDef(
    name="nll_loss", infer=_class_loss_infer("nll_loss"), kind=FusionKind.REDUCTION, arity=2,
    impl=lambda xs, a, shape: np.asarray(-np.mean(xs[0][np.arange(len(xs[1])), xs[1]]),
                                         dtype=xs[0].dtype),
    kernel=_nll_kernel, cuda_kernel=_single_block_loss(_nll_rows, lambda x: f"{x}.shape[0]"),
    vjp=_nll_vjp, samples=_CE_SAMPLES, index_bounds=_label_bounds("nll_loss"),
    doc="mean over the batch of -x[i, y[i]] for log-probabilities x (F.nll_loss)."))


def _bce_infer(types, attrs):
    p, y = types
    float_dtype(p, "binary_cross_entropy")
    if p.shape != y.shape or p.dtype != y.dtype:
        raise ShapeError(f"binary_cross_entropy needs targets shaped like the input: "
                         f"{p} vs {y}")
    return TensorType((), p.dtype)


def _bce_np(xs, a, shape):
    p, y = xs
    lp = np.maximum(np.log(p), LOG_CLAMP)
    lq = np.maximum(np.log1p(-p), LOG_CLAMP)
    return np.asarray(-np.mean(y * lp + (1 - y) * lq), dtype=p.dtype)


def _bce_kernel(ctx):
    p, y, out = ctx.args[0], ctx.args[1], ctx.out
    ctx.emit(f"total = {ctx.lit(0.0)}")
    idx, d = loop_nest(ctx, p, ctx.in_types[0].rank)
    ind = "    " * d
    ctx.emit(f"{ind}lp = max(math.log({p}[{idx}]), {ctx.lit(LOG_CLAMP)})")
    ctx.emit(f"{ind}lq = max(math.log1p(-{p}[{idx}]), {ctx.lit(LOG_CLAMP)})")
    ctx.emit(f"{ind}total -= {y}[{idx}] * lp + ({ctx.lit(1.0)} - {y}[{idx}]) * lq")
    ctx.emit(f"{out}[()] = total / {p}.size")


def _bce_vjp(g, node, grad):
    p, y = node.args
    dt = node.dtype
    all_axes = tuple(range(len(g.type_of(p).shape)))
    scale = g.add("div", [grad, batch_size_of(g, p, all_axes)])
    one = scalar(g, 1.0, dt)
    q = g.add("sub", [one, p])
    denom = g.add("maximum", [g.add("mul", [p, q]), scalar(g, BCE_EPS, dt)])
    dp = g.add("mul", [g.add("div", [g.add("sub", [p, y]), denom]), scale])
    clamp = scalar(g, LOG_CLAMP, dt)
    lp = g.add("maximum", [g.add("log", [p]), clamp])
    lq = g.add("maximum", [g.add("log", [q]), clamp])
    dy = g.add("mul", [g.add("sub", [lq, lp]), scale])
    return [dp, dy]


register(OpDef(
    name="binary_cross_entropy", infer=_bce_infer, kind=FusionKind.REDUCTION, arity=2,
    impl=_bce_np, kernel=_bce_kernel, vjp=_bce_vjp,
    cuda_kernel=_single_block_loss(_bce_rows, lambda p: f"{p}.size"),
    samples=(Sample(shapes=((4, 3), (4, 3)), domains=("unit", "unit")),
             Sample(shapes=((5,), (5,)), domains=("unit", "unit"))),
    doc="mean of -(y log p + (1-y) log(1-p)), logs clamped at -100 "
        "(torch.nn.functional.binary_cross_entropy)."))
