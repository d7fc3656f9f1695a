"""2-D convolution (NCHW) and its two gradient ops.

On the CPU ``conv2d`` and ``conv2d_grad_weight`` are ONE GEMM per group over the whole
batch, on "rows" layouts (one row per output pixel (b, oh, ow)): the forward is a
batched im2col, cols @ W^T, then a pass to NCHW; the weight gradient moves the gradient
to rows, im2cols the input and computes rows^T @ cols (transposes are BLAS flags of
``codegen/blas.py``). With few output channels per group (``use_taps``) both are instead
per-sample "taps" columns and loops generated for the op's sizes (see there); with at
least ``PER_SAMPLE_MIN_PIXELS`` output pixels per image both are one small GEMM per
sample (see there), the weight gradient's on per-pixel rows from
``PIXEL_ROWS_MIN_CHANNELS`` input channels per group; ``_kernel_path`` and
``_grad_weight_path`` pick. ``conv2d_grad_input`` is one GEMM per sample: for stride 1
and "same" padding the forward's kernel applied to the gradient and the flipped weight,
else W^T @ grad then col2im (``_grad_input_path`` picks, and says why). The column
matrices are scratch planned by codegen (``OpDef.scratch``), so no kernel allocates.
Every CPU kernel splits its batch into ``ctx.parts`` parts of samples run on separate
cores (``prange``; see ``_open_parts``), each part with its own
scratch and, for a weight gradient, its own sum, added in part order afterwards. The
gradient ops are their own registered ops, not differentiable themselves (no double
backward).

On the GPU (``cuda_kernel``) all three are direct kernels: one thread per output
element for the forward and the input gradient (a gather: no atomics), one block per
weight element with a tree reduction for the weight gradient; they need no scratch.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..registry import FusionKind, OpDef, REQUIRED, Sample, register
from ..types import TensorType, format_shape
from . import _cuda
from ._util import same_dtype

CONV_ATTRS = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1}


def out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _check_attrs(a):
    for key in ("stride", "dilation"):
        if any(v < 1 for v in a[key]):
            raise ShapeError(f"{key} {tuple(a[key])} must be >= 1")
    if any(v < 0 for v in a["padding"]):
        raise ShapeError(f"padding {tuple(a['padding'])} must be >= 0")
    if a["groups"] < 1:
        raise ShapeError(f"groups {a['groups']} must be >= 1")


def conv_out_hw(in_hw, khw, a, what="conv2d", x_shape=None):
    """Output (OH, OW); a kernel larger than the padded input is a ShapeError."""
    _check_attrs(a)
    s, p, d = a["stride"], a["padding"], a["dilation"]
    eff = tuple(d[i] * (khw[i] - 1) + 1 for i in range(2))
    padded = tuple(in_hw[i] + 2 * p[i] for i in range(2))
    if eff[0] > padded[0] or eff[1] > padded[1]:
        shown = format_shape(x_shape) if x_shape is not None else format_shape(in_hw)
        dil = f" (dilated {eff[0]}x{eff[1]})" if eff != tuple(khw) else ""
        raise ShapeError(f"{what}: kernel {khw[0]}x{khw[1]}{dil} is larger than the padded "
                         f"input {padded[0]}x{padded[1]} (input {shown}, padding "
                         f"{tuple(p)})")
    return tuple(out_size(in_hw[i], khw[i], s[i], p[i], d[i]) for i in range(2))


def _infer(types, attrs):
    x, w = types
    dtype = same_dtype(types, "conv2d")
    if dtype == "int64":
        raise ShapeError("conv2d needs float operands")
    if x.rank != 4 or w.rank != 4:
        raise ShapeError(f"conv2d needs input (N, C, H, W) and weight (O, C/groups, KH, KW), "
                         f"got {format_shape(x.shape)} and {format_shape(w.shape)}")
    G = attrs["groups"]
    C, O = x.shape[1], w.shape[0]
    if C % G or O % G:
        raise ShapeError(f"conv2d: groups={G} must divide input channels {C} and output "
                         f"channels {O}")
    if w.shape[1] * G != C:
        raise ShapeError(f"conv2d: input {format_shape(x.shape)} has {C} channels but weight "
                         f"{format_shape(w.shape)} expects {w.shape[1] * G}")
    oh, ow = conv_out_hw(x.shape[2:], w.shape[2:], attrs, "conv2d", x.shape)
    return TensorType((x.shape[0], O, oh, ow), dtype)


# --------------------------------------------------------------- NumPy reference
def _window(xp, kh, kw, oh, ow, a):
    s, d = a["stride"], a["dilation"]
    return xp[:, :, kh * d[0]: kh * d[0] + s[0] * (oh - 1) + 1: s[0],
              kw * d[1]: kw * d[1] + s[1] * (ow - 1) + 1: s[1]]


def _pad(x, p):
    return np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))


def np_conv2d(x, w, a):
    N, C, H, W = x.shape
    O, Cg, KH, KW = w.shape
    G = a["groups"]
    Og = O // G
    oh, ow = (out_size(H, KH, a["stride"][0], a["padding"][0], a["dilation"][0]),
              out_size(W, KW, a["stride"][1], a["padding"][1], a["dilation"][1]))
    xp = _pad(x, a["padding"])
    out = np.zeros((N, O, oh, ow), dtype=np.result_type(x, w))
    for g in range(G):
        xs = xp[:, g * Cg:(g + 1) * Cg]
        for kh in range(KH):
            for kw in range(KW):
                patch = _window(xs, kh, kw, oh, ow, a)
                out[:, g * Og:(g + 1) * Og] += np.einsum(
                    "nchw,oc->nohw", patch, w[g * Og:(g + 1) * Og, :, kh, kw])
    return out


def np_conv2d_grad_input(gout, w, a, in_hw):
    N, O, oh, ow = gout.shape
    _, Cg, KH, KW = w.shape
    G = a["groups"]
    Og = O // G
    p = a["padding"]
    H, W = in_hw
    dxp = np.zeros((N, Cg * G, H + 2 * p[0], W + 2 * p[1]), dtype=gout.dtype)
    for g in range(G):
        view = dxp[:, g * Cg:(g + 1) * Cg]
        for kh in range(KH):
            for kw in range(KW):
                _window(view, kh, kw, oh, ow, a)[...] += np.einsum(
                    "nohw,oc->nchw", gout[:, g * Og:(g + 1) * Og],
                    w[g * Og:(g + 1) * Og, :, kh, kw])
    return dxp[:, :, p[0]:p[0] + H, p[1]:p[1] + W]


def np_conv2d_grad_weight(x, gout, a, khw):
    N, C, H, W = x.shape
    _, O, oh, ow = gout.shape
    G = a["groups"]
    Og, Cg = O // G, C // G
    xp = _pad(x, a["padding"])
    dw = np.zeros((O, Cg) + tuple(khw), dtype=x.dtype)
    for g in range(G):
        xs = xp[:, g * Cg:(g + 1) * Cg]
        for kh in range(khw[0]):
            for kw in range(khw[1]):
                dw[g * Og:(g + 1) * Og, :, kh, kw] = np.einsum(
                    "nohw,nchw->oc", gout[:, g * Og:(g + 1) * Og],
                    _window(xs, kh, kw, oh, ow, a))
    return dw


# --------------------------------------------------------------- kernel templates
class _Geo:
    """Static sizes of one convolution, read off the operand types at emit time."""

    def __init__(self, x_chw, w_shape, out_hw, a):
        self.C, self.H, self.W = x_chw
        self.O, self.Cg, self.KH, self.KW = w_shape
        self.OH, self.OW = out_hw
        self.G = a["groups"]
        self.Og = self.O // self.G
        self.K = self.Cg * self.KH * self.KW
        self.OHW = self.OH * self.OW
        (self.s0, self.s1), (self.p0, self.p1) = a["stride"], a["padding"]
        self.d0, self.d1 = a["dilation"]


# Each op's geometry from its own operand and result types, for its scratch function and
# its CPU and CUDA kernels alike (the three ops order x, w, grad and the result differently)
def _forward_geo(in_types, out_type, attrs):
    x, w = in_types
    return _Geo(x.shape[1:], w.shape, out_type.shape[2:], attrs)


def _grad_input_geo(in_types, out_type, attrs):
    gt, wt = in_types
    return _Geo(out_type.shape[1:], wt.shape, gt.shape[2:], attrs)


def _grad_weight_geo(in_types, out_type, attrs):
    xt, gt = in_types
    return _Geo(xt.shape[1:], out_type.shape, gt.shape[2:], attrs)


# The per-sample kernels split the batch into ctx.parts contiguous parts of samples, one
# per core (``prange``; codegen/parallel.py: sample_parts says how many and when), each
# with its own scratch: the scratch functions give every per-part array a leading axis of
# ``parts``. A weight gradient sums its parts' accumulators in part order afterwards, so
# its result does not depend on which thread ran which part.
def _open_parts(ctx, ind, per_part):
    """Emit the head of the loop over parts, binding each ``name: scratch`` of
    ``per_part`` to that part's own array and ``lo``, ``hi`` to its samples' range;
    returns (the body's indentation, ``range`` of the part's samples). With one part: no
    loop (part 0, all samples)."""
    if ctx.parts == 1:
        for name, scratch in per_part.items():
            ctx.emit(f"{ind}{name} = {scratch}[0]")
        ctx.emit(f"{ind}lo, hi = 0, nb")
        return ind, "range(nb)"
    ctx.parallel = True
    ctx.emit(f"{ind}for part in prange({ctx.parts}):")
    for name, scratch in per_part.items():
        ctx.emit(f"{ind}    {name} = {scratch}[part]")
    ctx.emit(f"{ind}    lo = part * nb // {ctx.parts}")
    ctx.emit(f"{ind}    hi = (part + 1) * nb // {ctx.parts}")
    return ind + "    ", "range(lo, hi)"


def _emit_sum_parts(ctx, ind, dst, scratch, index):
    """``dst = scratch[0][index] + ... + scratch[parts - 1][index]`` (in part order)."""
    if ctx.parts == 1:
        ctx.emit(f"{ind}{dst} = {scratch}[0, {index}]")
        return
    ctx.emit(f"{ind}total = {scratch}[0, {index}]")
    ctx.emit(f"{ind}for q in range(1, {ctx.parts}):")
    ctx.emit(f"{ind}    total += {scratch}[q, {index}]")
    ctx.emit(f"{ind}{dst} = total")


def _emit_sum_dw(ctx, g, sums):
    """dw3[grp, o, k] = the parts' sums ``sums[part, grp, o, k]``, added in part order."""
    ctx.emit(f"for grp in range({g.G}):")
    ctx.emit(f"    for o in range({g.Og}):")
    ctx.emit(f"        for k in range({g.K}):")
    _emit_sum_parts(ctx, "            ", "dw3[grp, o, k]", sums, "grp, o, k")


def _emit_rows_taps(ctx, g, ind, valid, pad=None, samples="range(nb)"):
    """Loops over every (output pixel row, tap) of group ``grp`` for all samples:
    ``row`` = (b, oh, ow), ``r + kw`` = (c, kh, kw), input pixel (``ch``, ``ih``, ``iw``).
    ``valid`` runs where the tap reads the input, ``pad`` (if any) where it reads
    padding. Without padding every tap is inside the input (the output size guarantees
    it), so no bounds test is emitted at all."""
    e = lambda s: ctx.emit(ind + s)  # noqa: E731
    e(f"for b in {samples}:")
    e(f"    for oh in range({g.OH}):")
    e(f"        for ow in range({g.OW}):")
    e(f"            row = (b * {g.OH} + oh) * {g.OW} + ow")
    e(f"            for c in range({g.Cg}):")
    e(f"                ch = grp * {g.Cg} + c")
    e(f"                for kh in range({g.KH}):")
    e(f"                    ih = oh * {g.s0} - {g.p0} + kh * {g.d0}")
    e(f"                    r = (c * {g.KH} + kh) * {g.KW}")
    inner = [f"for kw in range({g.KW}):",
             f"    iw = ow * {g.s1} - {g.p1} + kw * {g.d1}"]
    if g.p1:
        inner.append(f"    if iw >= 0 and iw < {g.W}:")
        inner.append(f"        {valid}")
        if pad:
            inner += ["    else:", f"        {pad}"]
    else:
        inner.append(f"    {valid}")
    if g.p0:
        e(f"                    if ih < 0 or ih >= {g.H}:")
        if pad:
            e(f"                        for kw in range({g.KW}):")
            e(f"                            {pad}")
        e("                        continue")
        for line in inner:
            e("                    " + line)
    else:
        for line in inner:
            e("                    " + line)


def _emit_im2col_rows(ctx, x, g, ind, cols="c2", samples="range(nb)"):
    """Batched im2col of group ``grp``: cols[(b, oh, ow), (c, kh, kw)] = x_padded[b,
    group channel c, ...] for every sample (zeros where the window reads padding)."""
    _emit_rows_taps(ctx, g, ind, f"{cols}[row, r + kw] = {x}[b, ch, ih, iw]",
                    f"{cols}[row, r + kw] = {ctx.lit(0.0)}", samples)


def _emit_to_rows(ctx, g, nchw, rows, ind="", samples="range(nb)"):
    """rows[grp, b, p, o] = nchw[b, grp * O/G + o, p]: channels along each pixel's row."""
    ctx.emit(ind + f"for b in {samples}:")
    ctx.emit(ind + f"    for grp in range({g.G}):")
    ctx.emit(ind + f"        for p in range({g.OHW}):")
    ctx.emit(ind + f"            for o in range({g.Og}):")
    ctx.emit(ind + f"                {rows}[grp, b, p, o] = {nchw}[b, grp * {g.Og} + o, p]")


# The forward and the input gradient are ONE GEMM per group over the whole batch, on
# "rows" layouts (one row per output pixel (b, oh, ow), the K = C/G*KH*KW taps or the
# O/G output channels along it): BLAS gets M = N*OH*OW, which it handles far better than
# one small GEMM per sample (LeNet, batch 64, float32: conv1 forward 1.05 -> 0.76 ms,
# conv2 0.80 -> 0.51 ms). A pass then moves the (N*OH*OW, O/G) result to NCHW. The
# column matrices are scratch from the planner (OpDef.scratch): nothing is allocated.
def _rows_scratch(in_types, attrs, out_type, parts=1):
    """(G, N, OH*OW, K) columns and (G, N, OH*OW, O/G) per-pixel channel rows, or each
    part's one sample's (K, OH*OW) columns for the per-sample and taps kernels."""
    g = _forward_geo(in_types, out_type, attrs)
    if _kernel_path(g) != "batched":
        return [TensorType((parts, g.K, g.OHW), out_type.dtype)]
    N = out_type.shape[0]
    return [TensorType((g.G, N, g.OHW, g.K), out_type.dtype),
            TensorType((g.G, N, g.OHW, g.Og), out_type.dtype)]


# A forward with at least this many output pixels per image is one small GEMM per sample
# instead: W (O/G, K) @ columns (K, OH*OW), written straight into the NCHW output. Small
# products take OpenBLAS's unpacked small-matrix kernels (one thread): for a 16-channel
# 3x3 layer on 8x8 images, 256 of them, (16 x 144) @ (144 x 64), took 0.68 ms against
# 1.0-1.5 ms for the batched (16384 x 144) @ (144 x 16)^T, and the columns, built per
# sample with copies of literal length (kw unrolled), 0.16 ms against the batched rows'
# 0.61 ms: that forward 1.55-1.66 -> 0.87-0.97 ms, its weight gradient (the same way:
# :func:`_grad_weight_per_sample_kernel`) 1.68-1.75 -> 1.30-1.40 ms. Training steps in
# paired A/B (one process): examples/resnet_digits.py's net -12% at batch 256, -14% at
# 32; bench_lenet's LeNet (28x28, batch 64) -17%. On 4x4 images (16 pixels) per-sample
# forwards took the same time or 11% longer, so fewer pixels keep the batched GEMM.
PER_SAMPLE_MIN_PIXELS = 32


def _kernel_path(g) -> str:
    """Which kernels a convolution's forward and weight gradient use (their scratch
    functions ask too, so scratch and kernel cannot disagree): "taps", "per_sample" or
    "batched"."""
    if use_taps(g.Og, g.K):
        return "taps"
    return "per_sample" if g.OHW >= PER_SAMPLE_MIN_PIXELS else "batched"


def _conv_kernel(ctx):
    x, w, out = ctx.args[0], ctx.args[1], ctx.out
    g = _forward_geo(ctx.in_types, ctx.out_type, ctx.attrs)
    path = _kernel_path(g)
    if path == "taps":
        return _conv_taps_kernel(ctx, g)
    if path == "per_sample":
        return _conv_per_sample_kernel(ctx, g)
    cols, res = ctx.scratch
    ctx.emit(f"nb = {x}.shape[0]")
    ctx.emit(f"w3 = {w}.reshape({g.G}, {g.Og}, {g.K})")
    ctx.emit(f"cols3 = {cols}.reshape({g.G}, nb * {g.OHW}, {g.K})")
    ctx.emit(f"res3 = {res}.reshape({g.G}, nb * {g.OHW}, {g.Og})")
    ctx.emit(f"out3 = {out}.reshape(nb, {g.O}, {g.OHW})")
    # each part runs its samples' rows: im2col, its slice of the GEMM, the move
    ind, samples = _open_parts(ctx, "", {})
    rows = f"lo * {g.OHW}:hi * {g.OHW}"
    ctx.emit(f"{ind}for grp in range({g.G}):")
    ctx.emit(f"{ind}    c2 = cols3[grp]")
    _emit_im2col_rows(ctx, x, g, ind + "    ", samples=samples)
    ctx.emit(f"{ind}    gemm(c2[{rows}], w3[grp], res3[grp, {rows}], False, True, 1.0, 0.0)")
    ctx.emit(f"{ind}for b in {samples}:")
    ctx.emit(f"{ind}    for grp in range({g.G}):")
    ctx.emit(f"{ind}        for o in range({g.Og}):")
    ctx.emit(f"{ind}            oc = grp * {g.Og} + o")
    ctx.emit(f"{ind}            for p in range({g.OHW}):")
    ctx.emit(f"{ind}                out3[b, oc, p] = {res}[grp, b, p, o]")


def _emit_forward_per_sample(ctx, g, out_view):
    """The per-sample forwards' common part: names, ``out_view`` (the output reshaped),
    then (in each part) ``for grp / for b`` with sample b's columns built in ``cols``
    (flat: ``cbf``). Returns the indentation of that loop body."""
    x, w = ctx.args[0], ctx.args[1]
    ctx.emit(f"nb = {x}.shape[0]")
    ctx.emit(f"w3 = {w}.reshape({g.G}, {g.Og}, {g.K})")
    ctx.emit(out_view)
    ind, samples = _open_parts(ctx, "", {"cols": ctx.scratch[0]})
    ctx.emit(f"{ind}cbf = cols.reshape({g.K * g.OHW})")
    ctx.emit(f"{ind}for grp in range({g.G}):")
    ctx.emit(f"{ind}    for b in {samples}:")
    _emit_sample_columns(ctx, x, g, ind + "        ")
    return ind + "        "


def _conv_per_sample_kernel(ctx, g):
    ind = _emit_forward_per_sample(ctx, g,
                                   f"out4 = {ctx.out}.reshape(nb, {g.G}, {g.Og}, {g.OHW})")
    ctx.emit(f"{ind}gemm(w3[grp], cols, out4[b, grp], False, False, 1.0, 0.0)")


def _emit_sample_columns(ctx, x, g, ind, cbf="cbf"):
    """cbf[t * OH*OW + oh * OW + ow] = x_padded[b, group channel, ...] for tap t = (c,
    kh, kw) of group ``grp``, sample ``b``: one run of OW input pixels per (t, oh). kw is
    unrolled here, so every run's start and length are literals and its copy is inlined
    (a run length computed at run time, as padding makes it, became a memcpy call)."""
    e = lambda s: ctx.emit(ind + s)  # noqa: E731
    zero = ctx.lit(0.0)
    e(f"for c in range({g.Cg}):")
    e(f"    ch = grp * {g.Cg} + c")
    e(f"    for kh in range({g.KH}):")
    e(f"        for oh in range({g.OH}):")
    e(f"            ih = oh * {g.s0} - {g.p0} + kh * {g.d0}")
    e(f"            dst = (c * {g.KH} + kh) * {g.KW * g.OHW} + oh * {g.OW}")
    if g.p0:
        e(f"            if ih < 0 or ih >= {g.H}:")
        e(f"                for kw in range({g.KW}):")
        e(f"                    for ow in range({g.OW}):")
        e(f"                        {cbf}[dst + kw * {g.OHW} + ow] = {zero}")
        e("                continue")
    e(f"            row = {x}[b, ch, ih]")
    for kw in range(g.KW):
        d = f"dst + {kw * g.OHW}" if kw else "dst"
        off = kw * g.d1 - g.p1      # output column ow reads input column ow * s1 + off
        if g.s1 != 1:
            e(f"            for ow in range({g.OW}):")
            e(f"                iw = ow * {g.s1} + {off}")
            if g.p1:
                e(f"                {cbf}[{d} + ow] = row[iw] if iw >= 0 and iw < {g.W} "
                  f"else {zero}")
            else:
                e(f"                {cbf}[{d} + ow] = row[iw]")
            continue
        lo = max(0, -off)
        hi = max(lo, min(g.OW, g.W - off))
        for ow in list(range(lo)) + list(range(hi, g.OW)):
            e(f"            {cbf}[{d} + {ow}] = {zero}")
        if hi > lo:
            e(f"            copy_run({cbf}, {d} + {lo}, row, {lo + off}, {hi - lo})")


# The input gradient is one GEMM per sample and group, in one of two ways.
#
# "as_conv": with stride 1 it is itself a convolution: of the output gradient, padded by
# d*(k-1) - p, with the weight flipped in kh and kw and its two channel axes swapped:
# dx[b, c] = sum over o, taps of grad_padded[b, o, ...] * W[o, c, KH-1-kh, KW-1-kw]. So
# it runs as the per-sample forward does (the gradient's columns built with literal
# runs, then W' (C/G, O/G*KH*KW) @ columns straight into dx's NCHW block): no col2im.
# Taken when the input has no more pixels than the output (a "same" convolution), so its
# GEMM does no more work than the scatter way's (for a valid 5x5 one it would mostly
# multiply padding zeros), and not where padding exceeds the dilated kernel (the
# flipped one would need less than none).
# For a 16-channel 3x3 layer on 8x8 images at batch 256 the scatter way took 1.35-1.38
# ms (0.76 ms of GEMMs, 0.54 ms of scalar col2im adds: a loop of runs did not vectorise,
# and packed masked runs stalled on their overlapping stores) and this one 0.8 ms.
#
# "col2im": W^T @ grad_b reads the NCHW gradient as it is (no transpose pass), and its
# (K, OH*OW) result is scattered back while still in cache; measured on LeNet conv2
# (batch 64, float32) this beat the batched rows GEMM + col2im over a 2.4 MB column
# matrix (0.59 vs 0.68 ms).
def _grad_input_path(g) -> str:
    """"as_conv" or "col2im" for the input gradient of the convolution ``g``; its kernel
    and scratch function both ask, so they cannot disagree."""
    over_padded = g.p0 > g.d0 * (g.KH - 1) or g.p1 > g.d1 * (g.KW - 1)
    if (g.s0, g.s1) == (1, 1) and not over_padded and g.H * g.W <= g.OHW:
        return "as_conv"
    return "col2im"


def _transposed_geo(g):
    """The convolution that computes ``g``'s input gradient (stride 1): over the output
    gradient (O channels, OH x OW), weight (C, O/G, KH, KW), output H x W."""
    pad = (g.d0 * (g.KH - 1) - g.p0, g.d1 * (g.KW - 1) - g.p1)
    attrs = {"stride": (1, 1), "padding": pad, "dilation": (g.d0, g.d1), "groups": g.G}
    return _Geo((g.O, g.OH, g.OW), (g.C, g.Og, g.KH, g.KW), (g.H, g.W), attrs)


def _grad_input_scratch(in_types, attrs, out_type, parts=1):
    """Each part's one sample's (K, OH*OW) column gradient, or for "as_conv" each part's
    one sample's columns of the output gradient, and the flipped weight (G, C/G,
    O/G*KH*KW)."""
    g = _grad_input_geo(in_types, out_type, attrs)
    if _grad_input_path(g) == "as_conv":
        t = _transposed_geo(g)
        return [TensorType((parts, t.K, t.OHW), out_type.dtype),
                TensorType((g.G, g.Cg, t.K), out_type.dtype)]
    return [TensorType((parts, g.K, g.OHW), out_type.dtype)]


def _grad_input_kernel(ctx):
    gout, w, dx = ctx.args[0], ctx.args[1], ctx.out
    g = _grad_input_geo(ctx.in_types, ctx.out_type, ctx.attrs)
    if _grad_input_path(g) == "as_conv":
        return _grad_input_as_conv_kernel(ctx, g)
    dcols = "dcols"
    ctx.emit(f"nb = {gout}.shape[0]")
    ctx.emit(f"gout4 = {gout}.reshape(nb, {g.G}, {g.Og}, {g.OHW})")
    ctx.emit(f"w3 = {w}.reshape({g.G}, {g.Og}, {g.K})")
    ind, samples = _open_parts(ctx, "", {dcols: ctx.scratch[0]})
    ctx.emit(f"{ind}for b in {samples}:")
    ctx.emit(f"{ind}    {dx}[b] = {ctx.lit(0.0)}")
    ctx.emit(f"{ind}    for grp in range({g.G}):")
    ctx.emit(f"{ind}        gemm(w3[grp], gout4[b, grp], {dcols}, True, False, 1.0, 0.0)")
    # col2im: scatter-add every column entry back to the input pixel it came from
    ind += "        "
    e = lambda s: ctx.emit(ind + s)  # noqa: E731
    e(f"for c in range({g.Cg}):")
    e(f"    ch = grp * {g.Cg} + c")
    e(f"    for kh in range({g.KH}):")
    e(f"        for kw in range({g.KW}):")
    e(f"            r = (c * {g.KH} + kh) * {g.KW} + kw")
    e(f"            for oh in range({g.OH}):")
    e(f"                ih = oh * {g.s0} - {g.p0} + kh * {g.d0}")
    inner = "                "
    if g.p0:
        e(f"                if ih < 0 or ih >= {g.H}:")
        e("                    continue")
    e(f"{inner}base = oh * {g.OW}")
    e(f"{inner}for ow in range({g.OW}):")
    e(f"{inner}    iw = ow * {g.s1} - {g.p1} + kw * {g.d1}")
    if g.p1:
        e(f"{inner}    if iw >= 0 and iw < {g.W}:")
        e(f"{inner}        {dx}[b, ch, ih, iw] += {dcols}[r, base + ow]")
    else:
        e(f"{inner}    {dx}[b, ch, ih, iw] += {dcols}[r, base + ow]")


def _grad_input_as_conv_kernel(ctx, g):
    """dx as the per-sample convolution of the output gradient with the flipped weight
    (see :func:`_grad_input_path`)."""
    gout, w, dx = ctx.args[0], ctx.args[1], ctx.out
    wf = ctx.scratch[1]
    t = _transposed_geo(g)
    taps = g.KH * g.KW
    ctx.emit(f"nb = {gout}.shape[0]")
    ctx.emit(f"w4 = {w}.reshape({g.G}, {g.Og}, {g.Cg}, {taps})")
    ctx.emit(f"for grp in range({g.G}):")
    ctx.emit(f"    for o in range({g.Og}):")
    ctx.emit(f"        for c in range({g.Cg}):")
    ctx.emit(f"            for k in range({taps}):")
    ctx.emit(f"                {wf}[grp, c, o * {taps} + {taps - 1} - k] = w4[grp, o, c, k]")
    ctx.emit(f"dx4 = {dx}.reshape(nb, {g.G}, {g.Cg}, {g.H * g.W})")
    ind, samples = _open_parts(ctx, "", {"cols": ctx.scratch[0]})
    ctx.emit(f"{ind}cbf = cols.reshape({t.K * t.OHW})")
    ctx.emit(f"{ind}for grp in range({g.G}):")
    ctx.emit(f"{ind}    for b in {samples}:")
    _emit_sample_columns(ctx, gout, t, ind + "        ")
    ctx.emit(f"{ind}        gemm({wf}[grp], cols, dx4[b, grp], False, False, 1.0, 0.0)")


# The per-sample weight gradient with at least this many input channels per group builds
# one row per output pixel instead of columns, taps outside and channels inside ((KH,
# KW, C/G) order): each row is KH*KW copies of a pixel's C/G channels, taken from a
# channels-last copy of the sample, so dW (O/G, K) += grad_b (O/G, OH*OW) @ rows_b is a
# plain NN product. On a 16-channel 3x3 layer (8x8 images, 256 samples) those products
# took 0.70 ms against 1.04-1.05 ms for the columns' columns_b @ grad_b^T, and the whole
# weight gradient 0.88-0.90 against 1.32-1.33 ms; bench_lenet's conv2 (6 channels, 5x5,
# batch 64) 0.295 -> 0.254 ms. With one channel (the ResNet's stem) the runs are single
# floats and it took 0.150 ms against the columns' 0.099, so few channels keep those.
PIXEL_ROWS_MIN_CHANNELS = 4


def _grad_weight_path(g) -> str:
    """The weight gradient's kernels: :func:`_kernel_path`'s, with "pixel_rows" for a
    per-sample one with enough input channels (kernel and scratch both ask)."""
    path = _kernel_path(g)
    if path == "per_sample" and g.Cg >= PIXEL_ROWS_MIN_CHANNELS:
        return "pixel_rows"
    return path


def _grad_weight_scratch(in_types, attrs, out_type, parts=1):
    """(G, N, OH*OW, K) columns of the input and (G, N, OH*OW, O/G) gradient rows, or
    what the per-sample kernels need for one sample, per part (see each kernel)."""
    g = _grad_weight_geo(in_types, out_type, attrs)
    path = _grad_weight_path(g)
    dtype = out_type.dtype
    if path == "taps":         # columns and the part's dW
        return [TensorType((parts, g.K, g.OHW), dtype),
                TensorType((parts, g.G, g.Og, g.K), dtype)]
    if path == "per_sample":   # columns and the part's (K, O/G) sum dW^T
        return [TensorType((parts, g.K, g.OHW), dtype), TensorType((parts, g.K, g.Og), dtype)]
    if path == "pixel_rows":   # rows, the sample's group channels-last, the (O/G, K) sum
        return [TensorType((parts, g.OHW, g.K), dtype),
                TensorType((parts, g.H, g.W, g.Cg), dtype),
                TensorType((parts, g.Og, g.K), dtype)]
    N = in_types[0].shape[0]   # and each part's sum of dW
    return [TensorType((g.G, N, g.OHW, g.K), dtype), TensorType((g.G, N, g.OHW, g.Og), dtype),
            TensorType((parts, g.G, g.Og, g.K), dtype)]


def _grad_weight_kernel(ctx):
    """dW[grp] = grad_rows[grp]^T @ cols[grp]: one GEMM per group whose inner dimension is
    every output pixel of the batch (N*OH*OW); the transpose is a BLAS flag. (Few output
    channels: :func:`_grad_weight_taps_kernel`.)"""
    x, gout, dw = ctx.args[0], ctx.args[1], ctx.out
    g = _grad_weight_geo(ctx.in_types, ctx.out_type, ctx.attrs)
    path = _grad_weight_path(g)
    if path == "taps":
        return _grad_weight_taps_kernel(ctx, g)
    if path == "per_sample":
        return _grad_weight_per_sample_kernel(ctx, g)
    if path == "pixel_rows":
        return _grad_weight_pixel_rows_kernel(ctx, g)
    cols, grows, sums = ctx.scratch
    ctx.emit(f"nb = {x}.shape[0]")
    ctx.emit(f"gout3 = {gout}.reshape(nb, {g.O}, {g.OHW})")
    ctx.emit(f"dw3 = {dw}.reshape({g.G}, {g.Og}, {g.K})")
    ctx.emit(f"cols3 = {cols}.reshape({g.G}, nb * {g.OHW}, {g.K})")
    ctx.emit(f"grows3 = {grows}.reshape({g.G}, nb * {g.OHW}, {g.Og})")
    # each part sums its samples' rows into its own dW (an empty part's is zero: k = 0)
    ind, samples = _open_parts(ctx, "", {"acc": sums})
    rows = f"lo * {g.OHW}:hi * {g.OHW}"
    _emit_to_rows(ctx, g, "gout3", grows, ind, samples)
    ctx.emit(f"{ind}for grp in range({g.G}):")
    ctx.emit(f"{ind}    c2 = cols3[grp]")
    _emit_im2col_rows(ctx, x, g, ind + "    ", samples=samples)
    ctx.emit(f"{ind}    gemm(grows3[grp, {rows}], c2[{rows}], acc[grp], True, False, 1.0, 0.0)")
    _emit_sum_dw(ctx, g, sums)


def _grad_weight_per_sample_kernel(ctx, g):
    """dW[grp]^T = sum over samples of columns_b (K, OH*OW) @ grad_b^T, grad_b the NCHW
    gradient's (O/G, OH*OW) block as it is: small products, as the per-sample forward
    (:data:`PER_SAMPLE_MIN_PIXELS`), accumulated (beta = 1) into a (K, O/G) scratch that
    is transposed into dW at the end. Computed as dW (O/G, K) += grad_b @ columns_b^T
    instead, the same products took twice as long (2.2 against 1.1 ms for 256 samples of
    a 16-channel 3x3 layer on 8x8 images)."""
    x, gout, dw = ctx.args[0], ctx.args[1], ctx.out
    zero = ctx.lit(0.0)
    ctx.emit(f"nb = {x}.shape[0]")
    ctx.emit(f"gout4 = {gout}.reshape(nb, {g.G}, {g.Og}, {g.OHW})")
    ctx.emit(f"dw3 = {dw}.reshape({g.G}, {g.Og}, {g.K})")
    ctx.emit(f"for grp in range({g.G}):")
    ind, samples = _open_parts(ctx, "    ", {"cols": ctx.scratch[0], "dwt": ctx.scratch[1]})
    ctx.emit(f"{ind}cbf = cols.reshape({g.K * g.OHW})")
    ctx.emit(f"{ind}for k in range({g.K}):")   # an empty part's sum is zero
    ctx.emit(f"{ind}    for o in range({g.Og}):")
    ctx.emit(f"{ind}        dwt[k, o] = {zero}")
    ctx.emit(f"{ind}for b in {samples}:")
    _emit_sample_columns(ctx, x, g, ind + "    ")
    ctx.emit(f"{ind}    gemm(cols, gout4[b, grp], dwt, False, True, 1.0, 1.0)")
    ctx.emit(f"    for o in range({g.Og}):")
    ctx.emit(f"        for k in range({g.K}):")
    _emit_sum_parts(ctx, "            ", "dw3[grp, o, k]", ctx.scratch[1], "k, o")


def _grad_weight_pixel_rows_kernel(ctx, g):
    """dW[grp] (O/G, K in (kh, kw, c) order) = sum over samples of grad_b @ rows_b, one
    row of KH*KW runs of C/G channels per output pixel (:data:`PIXEL_ROWS_MIN_CHANNELS`),
    reordered into dW's (c, kh, kw) at the end."""
    x, gout, dw = ctx.args[0], ctx.args[1], ctx.out
    taps = g.KH * g.KW
    zero = ctx.lit(0.0)
    ctx.emit(f"nb = {x}.shape[0]")
    ctx.emit(f"gout4 = {gout}.reshape(nb, {g.G}, {g.Og}, {g.OHW})")
    ctx.emit(f"dw4 = {dw}.reshape({g.G}, {g.Og}, {g.Cg}, {taps})")
    ctx.emit(f"for grp in range({g.G}):")
    rows, image, acc = ctx.scratch
    p, samples = _open_parts(ctx, "    ", {"rows": rows, "image": image, "acc": acc})
    e = lambda s: ctx.emit(p + s)  # noqa: E731
    e(f"rf = rows.reshape({g.OHW * g.K})")
    e(f"imf = image.reshape({g.H * g.W * g.Cg})")
    e(f"for o in range({g.Og}):")      # an empty part's sum is zero
    e(f"    for k in range({g.K}):")
    e(f"        acc[o, k] = {zero}")
    e(f"for b in {samples}:")
    e(f"    for c in range({g.Cg}):")
    e(f"        ch = grp * {g.Cg} + c")
    e(f"        for ih in range({g.H}):")
    e(f"            for iw in range({g.W}):")
    e(f"                image[ih, iw, c] = {x}[b, ch, ih, iw]")
    e(f"    for oh in range({g.OH}):")
    e(f"        for ow in range({g.OW}):")
    e(f"            base = (oh * {g.OW} + ow) * {g.K}")
    e(f"            for kh in range({g.KH}):")
    e(f"                ih = oh * {g.s0} - {g.p0} + kh * {g.d0}")
    e(f"                for kw in range({g.KW}):")
    e(f"                    iw = ow * {g.s1} - {g.p1} + kw * {g.d1}")
    e(f"                    d = base + (kh * {g.KW} + kw) * {g.Cg}")
    ind = "                    "
    if g.p0 or g.p1:   # without padding every tap reads the image
        e(f"{ind}if ih < 0 or ih >= {g.H} or iw < 0 or iw >= {g.W}:")
        e(f"{ind}    for c in range({g.Cg}):")
        e(f"{ind}        rf[d + c] = {zero}")
        e(f"{ind}    continue")
    e(f"{ind}copy_run(rf, d, imf, (ih * {g.W} + iw) * {g.Cg}, {g.Cg})")
    e("    gemm(gout4[b, grp], rows, acc, False, False, 1.0, 1.0)")
    ctx.emit(f"    for o in range({g.Og}):")
    ctx.emit(f"        for c in range({g.Cg}):")
    ctx.emit(f"            for t in range({taps}):")
    _emit_sum_parts(ctx, "                ", "dw4[grp, o, c, t]", acc, f"o, t * {g.Cg} + c")


# --------------------------------------------------------------- taps kernels
# Few output channels per group make poor GEMMs: LeNet conv1's forward is (36864 x 25) @
# (25 x 6) and its weight gradient (6 x 36864) @ (36864 x 25), which OpenBLAS ran at 22-46
# GFLOP/s, after building a 3.7 MB column matrix (0.27 ms: a write through to memory).
# With O/G <= TAPS_MAX_CHANNELS these ops instead build ONE sample's columns at a time,
# taps along rows and output pixels along columns ((K, OH*OW): 57 KB for conv1, in L2;
# each row a run of input pixels, copied by memcpy), and use loops generated for the op's
# sizes: the forward maps each pixel's column to its O/G outputs (weights hoisted into
# scalars, written straight into NCHW: no transpose pass); the weight gradient keeps
# O/G x TB dot products over the pixels in registers. LeNet conv1, batch 64, float32
# (benchmarks/mlp_profile.py --model lenet, against TAPS_MAX_CHANNELS = 0): forward 0.55
# -> 0.29 ms, weight gradient 0.74 -> 0.19 ms, the whole step 3.3 -> 2.6 ms. Loops over channels and tap blocks stay
# loops: unrolled, the same kernels took LeNet's cold compile from 13 to 22 s (now 14 s).
# conv2 (16 channels, 150 taps) stays a GEMM: generated dot products were 2.3x slower.
TAPS_MAX_CHANNELS = 8
TAPS_MAX_TERMS = 256    # O/G * K products per output pixel in the forward's loop body
_TAPS_REGISTERS = 30    # accumulators + operands of the gradient's dot products


def use_taps(og: int, k: int) -> bool:
    """True if a convolution with ``og`` output channels per group and ``k`` taps
    (C/G * KH * KW) uses the taps kernels rather than the batched GEMM."""
    return og <= TAPS_MAX_CHANNELS and og * k <= TAPS_MAX_TERMS


def _joined(parts, per_line=8):
    """Statements joined by '; ', ``per_line`` at a time (generated code stays readable)."""
    return ["; ".join(parts[i:i + per_line]) for i in range(0, len(parts), per_line)]


def _conv_taps_kernel(ctx, g):
    ind = _emit_forward_per_sample(ctx, g, f"out3 = {ctx.out}.reshape(nb, {g.O}, {g.OHW})")
    # one output channel per pass, its weights hoisted into scalars: the pixel loop is a
    # pure map LLVM vectorises, and one loop body (not O/G) keeps the compile short
    ctx.emit(f"{ind}for o in range({g.Og}):")
    for line in _joined([f"wt{t} = w3[grp, o, {t}]" for t in range(g.K)]):
        ctx.emit(f"{ind}    " + line)
    ctx.emit(f"{ind}    orow = out3[b, grp * {g.Og} + o]")
    ctx.emit(f"{ind}    for q in range({g.OHW}):")
    terms = " + ".join(f"wt{t} * cbf[{t * g.OHW} + q]" for t in range(g.K))
    ctx.emit(f"{ind}        orow[q] = {terms}")


def _grad_weight_taps_kernel(ctx, g):
    x, gout, dw = ctx.args[0], ctx.args[1], ctx.out
    zero = ctx.lit(0.0)
    ctx.fastmath.add("reassoc")   # the dot products over pixels vectorise (as BLAS reorders)
    tb = max(1, min(g.K, (_TAPS_REGISTERS - g.Og) // (g.Og + 1)))
    ctx.emit(f"nb = {x}.shape[0]")
    ctx.emit(f"gout3 = {gout}.reshape(nb, {g.O}, {g.OHW})")
    ctx.emit(f"dw3 = {dw}.reshape({g.G}, {g.Og}, {g.K})")
    p, samples = _open_parts(ctx, "", {"cols": ctx.scratch[0], "dwp": ctx.scratch[1]})
    ctx.emit(f"{p}cbf = cols.reshape({g.K * g.OHW})")
    ctx.emit(f"{p}for grp in range({g.G}):")
    ctx.emit(f"{p}    for o in range({g.Og}):")
    ctx.emit(f"{p}        for tap in range({g.K}):")
    ctx.emit(f"{p}            dwp[grp, o, tap] = {zero}")
    ctx.emit(f"{p}    for b in {samples}:")
    _emit_sample_columns(ctx, x, g, p + "        ")
    ctx.emit(f"{p}        gb = gout3[b]")
    # blocks of tb taps in one loop body (a runtime loop: the compile stays short), then
    # the remaining taps
    full = g.K - g.K % tb
    if full:
        ctx.emit(f"{p}        for t0 in range(0, {full}, {tb}):")
        _emit_tap_block(ctx, g, p + "            ",
                        [f"t0 + {j}" if j else "t0" for j in range(tb)], zero)
    if full < g.K:
        _emit_tap_block(ctx, g, p + "        ", [str(t) for t in range(full, g.K)], zero)
    _emit_sum_dw(ctx, g, ctx.scratch[1])


def _emit_tap_block(ctx, g, ind, taps, zero):
    """acc[o][j] = sum over this sample's pixels of gout[o] * column ``taps[j]``, added
    into the part's dW ``dwp``: O/G x len(taps) dot products whose partial sums stay in
    registers."""
    e = lambda s: ctx.emit(ind + s)  # noqa: E731
    n = len(taps)
    for line in _joined([f"acc{o}_{j} = {zero}" for o in range(g.Og) for j in range(n)]):
        e(line)
    for line in _joined([f"base{j} = ({t}) * {g.OHW}" for j, t in enumerate(taps)]):
        e(line)
    e(f"for q in range({g.OHW}):")
    for line in _joined([f"gv{o} = gb[grp * {g.Og} + {o}, q]" for o in range(g.Og)]
                        + [f"cv{j} = cbf[base{j} + q]" for j in range(n)]):
        e("    " + line)
    for line in _joined([f"acc{o}_{j} += gv{o} * cv{j}" for o in range(g.Og)
                         for j in range(n)]):
        e("    " + line)
    for line in _joined([f"dwp[grp, {o}, {t}] += acc{o}_{j}" for o in range(g.Og)
                         for j, t in enumerate(taps)], 4):
        e(line)


# --------------------------------------------------------------- CUDA templates
# Direct kernels, one thread (or, for the weight gradient, one block) per output element;
# both gradients are gathers, so no thread writes another's element and no atomics are
# needed. The summation order differs from the CPU's BLAS, within rounding.
def _cuda_conv_kernel(ctx):
    x, w, out = ctx.args[0], ctx.args[1], ctx.out
    g = _forward_geo(ctx.in_types, ctx.out_type, ctx.attrs)
    _cuda.grid_stride(ctx, f"{out}.size")
    _cuda.unravel(ctx, "idx", [("b", f"{out}.shape[0]"), ("o", str(g.O)), ("oh", str(g.OH)),
                               ("ow", str(g.OW))], "    ")
    e = lambda s: ctx.emit("    " + s)  # noqa: E731
    e(f"grp = o // {g.Og}")
    e(f"acc = {ctx.lit(0.0)}")
    e(f"for c in range({g.Cg}):")
    e(f"    ch = grp * {g.Cg} + c")
    e(f"    for kh in range({g.KH}):")
    e(f"        ih = oh * {g.s0} - {g.p0} + kh * {g.d0}")
    e(f"        if ih >= 0 and ih < {g.H}:")
    e(f"            for kw in range({g.KW}):")
    e(f"                iw = ow * {g.s1} - {g.p1} + kw * {g.d1}")
    e(f"                if iw >= 0 and iw < {g.W}:")
    e(f"                    acc += {x}[b, ch, ih, iw] * {w}[o, c, kh, kw]")
    e(f"{out}[b, o, oh, ow] = acc")


def _cuda_grad_input_kernel(ctx):
    """dx[b, ch, ih, iw] gathers every (output pixel, kernel tap) that read it."""
    gout, w, dx = ctx.args[0], ctx.args[1], ctx.out
    g = _grad_input_geo(ctx.in_types, ctx.out_type, ctx.attrs)
    _cuda.grid_stride(ctx, f"{dx}.size")
    _cuda.unravel(ctx, "idx", [("b", f"{dx}.shape[0]"), ("ch", str(g.C)), ("ih", str(g.H)),
                               ("iw", str(g.W))], "    ")
    e = lambda s: ctx.emit("    " + s)  # noqa: E731
    e(f"grp = ch // {g.Cg}")
    e(f"c = ch - grp * {g.Cg}")
    e(f"acc = {ctx.lit(0.0)}")
    e(f"for kh in range({g.KH}):")
    e(f"    th = ih + {g.p0} - kh * {g.d0}")       # = oh * stride when tap kh of oh reads ih
    e(f"    if th >= 0 and th % {g.s0} == 0 and th // {g.s0} < {g.OH}:")
    e(f"        oh = th // {g.s0}")
    e(f"        for kw in range({g.KW}):")
    e(f"            tw = iw + {g.p1} - kw * {g.d1}")
    e(f"            if tw >= 0 and tw % {g.s1} == 0 and tw // {g.s1} < {g.OW}:")
    e(f"                ow = tw // {g.s1}")
    e(f"                for oo in range({g.Og}):")
    e(f"                    o = grp * {g.Og} + oo")
    e(f"                    acc += {gout}[b, o, oh, ow] * {w}[o, c, kh, kw]")
    e(f"{dx}[b, ch, ih, iw] = acc")


def _cuda_grad_weight_kernel(ctx):
    """One block per weight element: its threads stride over (sample, output pixel), then
    a shared-memory tree reduction (the sum runs over the whole batch)."""
    x, gout, dw = ctx.args[0], ctx.args[1], ctx.out
    g = _grad_weight_geo(ctx.in_types, ctx.out_type, ctx.attrs)
    _cuda.shared_scratch(ctx)
    ctx.emit(f"count = {x}.shape[0] * {g.OHW}")
    _cuda.block_rows(ctx, str(g.O * g.K), "r")
    _cuda.unravel(ctx, "r", [("o", str(g.O)), ("c", str(g.Cg)), ("kh", str(g.KH)),
                             ("kw", str(g.KW))], "    ")
    e = lambda s: ctx.emit("    " + s)  # noqa: E731
    e(f"ch = (o // {g.Og}) * {g.Cg} + c")
    e(f"acc = {ctx.lit(0.0)}")
    e(f"for q in range(tid, count, {ctx.threads}):")
    _cuda.unravel(ctx, "q", [("b", f"{x}.shape[0]"), ("oh", str(g.OH)), ("ow", str(g.OW))],
                  "        ")
    e(f"    ih = oh * {g.s0} - {g.p0} + kh * {g.d0}")
    e(f"    iw = ow * {g.s1} - {g.p1} + kw * {g.d1}")
    e(f"    if ih >= 0 and ih < {g.H} and iw >= 0 and iw < {g.W}:")
    e(f"        acc += {gout}[b, o, oh, ow] * {x}[b, ch, ih, iw]")
    _cuda.tree_reduce(ctx, "acc", _cuda.add, "total", "    ")
    e("if tid == 0:")
    e(f"    {dw}[o, c, kh, kw] = total")


# --------------------------------------------------------------- declarations
def _conv_attrs(node):
    return {k: node.attrs[k] for k in CONV_ATTRS}


def _conv_vjp(g, node, grad):
    x, w = node.args
    xt, wt = g.type_of(x), g.type_of(w)
    a = _conv_attrs(node)
    dx = g.add("conv2d_grad_input", [grad, w], dict(a, in_hw=tuple(xt.shape[2:])))
    dw = g.add("conv2d_grad_weight", [x, grad], dict(a, kernel=tuple(wt.shape[2:])))
    return [dx, dw]


def _grad_input_infer(types, attrs):
    gt, wt = types
    dtype = same_dtype(types, "conv2d_grad_input")
    if gt.rank != 4 or wt.rank != 4 or gt.shape[1] != wt.shape[0]:
        raise ShapeError(f"conv2d_grad_input: output gradient {format_shape(gt.shape)} does "
                         f"not match weight {format_shape(wt.shape)}")
    C = wt.shape[1] * attrs["groups"]
    ohw = conv_out_hw(attrs["in_hw"], wt.shape[2:], attrs, "conv2d_grad_input")
    if tuple(gt.shape[2:]) != ohw:
        raise ShapeError(f"conv2d_grad_input: output gradient {format_shape(gt.shape)} is not "
                         f"the conv output size {ohw} of input {attrs['in_hw']}")
    return TensorType((gt.shape[0], C) + tuple(attrs["in_hw"]), dtype)


def _grad_weight_infer(types, attrs):
    xt, gt = types
    dtype = same_dtype(types, "conv2d_grad_weight")
    G = attrs["groups"]
    if xt.rank != 4 or gt.rank != 4 or xt.shape[1] % G or gt.shape[1] % G:
        raise ShapeError(f"conv2d_grad_weight: bad operands {format_shape(xt.shape)}, "
                         f"{format_shape(gt.shape)} for groups={G}")
    ohw = conv_out_hw(xt.shape[2:], attrs["kernel"], attrs, "conv2d_grad_weight", xt.shape)
    if tuple(gt.shape[2:]) != ohw:
        raise ShapeError(f"conv2d_grad_weight: output gradient {format_shape(gt.shape)} is not "
                         f"the conv output size {ohw}")
    return TensorType((gt.shape[1], xt.shape[1] // G) + tuple(attrs["kernel"]), dtype)


_S = {"stride": (2, 1), "padding": (1, 0)}
_CONV_SAMPLES = (
    Sample(shapes=((2, 3, 5, 5), (4, 3, 3, 3))),
    Sample(shapes=((2, 2, 7, 6), (3, 2, 3, 2)), attrs=dict(_S), batch_dims=(0, None)),
    Sample(shapes=((1, 4, 6, 5), (4, 2, 2, 3)),
           attrs={"padding": (1, 2), "dilation": (2, 1), "groups": 2}),
    Sample(shapes=((3, 1, 4, 4), (2, 1, 1, 1)), attrs={"stride": (3, 3)}),
    # more than TAPS_MAX_CHANNELS output channels: the GEMM kernels, per sample (at least
    # PER_SAMPLE_MIN_PIXELS output pixels: 36 and 45 here) or batched (6)
    Sample(shapes=((2, 2, 6, 5), (10, 2, 3, 2)), attrs={"padding": (1, 1)}),
    Sample(shapes=((2, 4, 9, 9), (18, 2, 3, 2)),
           attrs={"stride": (1, 2), "padding": (1, 1), "dilation": (1, 2), "groups": 2}),
    Sample(shapes=((2, 2, 5, 4), (10, 2, 3, 2)), attrs={"stride": (2, 1)}),
    # and at least PIXEL_ROWS_MIN_CHANNELS input channels per group: the weight gradient
    # from pixel rows (42 and 40 output pixels)
    Sample(shapes=((2, 4, 6, 6), (10, 4, 3, 2)), attrs={"padding": (1, 1)}),
    Sample(shapes=((1, 8, 9, 9), (18, 4, 2, 3)),
           attrs={"stride": (1, 2), "padding": (1, 1), "dilation": (1, 2), "groups": 2}),
)

register(OpDef(
    name="conv2d", infer=_infer, kind=FusionKind.OUT_FUSABLE, arity=2,
    impl=lambda xs, a, shape: np_conv2d(xs[0], xs[1], a),
    kernel=_conv_kernel, scratch=_rows_scratch, cuda_kernel=_cuda_conv_kernel,
    vjp=_conv_vjp, attrs=dict(CONV_ATTRS),
    samples=_CONV_SAMPLES,
    doc="2-D cross-correlation, NCHW input, (O, C/groups, KH, KW) weight, as F.conv2d "
        "without bias; im2col + BLAS matmul, with 32+ output pixels one small GEMM per "
        "sample, or per-sample columns and a generated loop for few output channels."))

register(OpDef(
    name="conv2d_grad_input", infer=_grad_input_infer, kind=FusionKind.OPAQUE, arity=2,
    impl=lambda xs, a, shape: np_conv2d_grad_input(xs[0], xs[1], a, a["in_hw"]),
    kernel=_grad_input_kernel, scratch=_grad_input_scratch,
    cuda_kernel=_cuda_grad_input_kernel,
    attrs=dict(CONV_ATTRS, in_hw=REQUIRED), differentiable=False,
    samples=(Sample(shapes=((2, 4, 3, 3), (4, 3, 3, 3)), attrs={"in_hw": (5, 5)}),
             Sample(shapes=((2, 3, 4, 5), (3, 2, 3, 2)), attrs=dict(_S, in_hw=(7, 6))),
             Sample(shapes=((1, 4, 6, 7), (4, 2, 2, 3)),
                    attrs={"padding": (1, 2), "dilation": (2, 1), "groups": 2,
                           "in_hw": (6, 5)}),
             # stride 1, "same" padding: as a convolution of the gradient (the one above
             # too: 30 input pixels, 42 output); then with more padding than the kernel
             # spans in one dimension, which keeps col2im
             Sample(shapes=((2, 10, 6, 5), (10, 3, 3, 3)),
                    attrs={"padding": (1, 1), "in_hw": (6, 5)}),
             Sample(shapes=((2, 3, 4, 9), (3, 2, 3, 3)),
                    attrs={"padding": (1, 3), "in_hw": (4, 5)})),
    doc="d conv2d / d input: for stride 1 and 'same' padding the convolution of the "
        "gradient with the flipped weight (BLAS per sample), else W^T @ grad (BLAS) "
        "then col2im."))

register(OpDef(
    name="conv2d_grad_weight", infer=_grad_weight_infer, kind=FusionKind.OPAQUE, arity=2,
    impl=lambda xs, a, shape: np_conv2d_grad_weight(xs[0], xs[1], a, a["kernel"]),
    kernel=_grad_weight_kernel, scratch=_grad_weight_scratch,
    cuda_kernel=_cuda_grad_weight_kernel,
    attrs=dict(CONV_ATTRS, kernel=REQUIRED), differentiable=False,
    samples=(Sample(shapes=((2, 3, 5, 5), (2, 4, 3, 3)), attrs={"kernel": (3, 3)}),
             Sample(shapes=((2, 2, 7, 6), (2, 3, 4, 5)), attrs=dict(_S, kernel=(3, 2))),
             Sample(shapes=((1, 4, 6, 5), (1, 4, 6, 7)),
                    attrs={"padding": (1, 2), "dilation": (2, 1), "groups": 2,
                           "kernel": (2, 3)}),
             # more than TAPS_MAX_CHANNELS: per sample (36 and 45 output pixels) or batched
             Sample(shapes=((2, 2, 6, 5), (2, 10, 6, 6)),
                    attrs={"padding": (1, 1), "kernel": (3, 2)}),
             Sample(shapes=((2, 4, 9, 9), (2, 18, 9, 5)),
                    attrs={"stride": (1, 2), "padding": (1, 1), "dilation": (1, 2),
                           "groups": 2, "kernel": (3, 2)}),
             Sample(shapes=((2, 2, 5, 4), (2, 10, 2, 3)),
                    attrs={"stride": (2, 1), "kernel": (3, 2)}),
             # pixel rows (at least PIXEL_ROWS_MIN_CHANNELS input channels per group),
             # with and without padding
             Sample(shapes=((2, 8, 6, 6), (2, 10, 6, 7)),
                    attrs={"padding": (1, 1), "kernel": (3, 2)}),
             Sample(shapes=((1, 16, 9, 12), (1, 18, 8, 4)),
                    attrs={"stride": (1, 2), "dilation": (1, 2), "groups": 2,
                           "kernel": (2, 3)})),
    doc="d conv2d / d weight: im2col then grad @ cols^T (BLAS); with 32+ output pixels "
        "one small GEMM per sample (on pixel rows from 4 input channels per group); or "
        "per-sample columns and generated dot products for few output channels."))
