"""2-D max and average pooling (NCHW) and their gradient ops, as direct loop nests.

``max_pool2d`` pads with -inf (as PyTorch); its gradient op recomputes each window's
argmax (the first maximum in row-major window order) and routes the gradient there.
``avg_pool2d`` divides by the full window size (PyTorch's ``count_include_pad=True``).
The CUDA templates compute one element per thread; their gradients gather over the
windows covering each input pixel (the max one re-finds each window's first argmax).
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..registry import FusionKind, OpDef, REQUIRED, Sample, register
from ..types import TensorType, format_shape
from . import _cuda
from ._util import float_dtype, same_dtype
from .conv import out_size

POOL_ATTRS = {"kernel": REQUIRED, "stride": REQUIRED, "padding": (0, 0)}


def pool_out_hw(x_shape, a, what):
    k, s, p = a["kernel"], a["stride"], a["padding"]
    if any(v < 1 for v in tuple(k) + tuple(s)):
        raise ShapeError(f"{what}: kernel {tuple(k)} and stride {tuple(s)} must be >= 1")
    if any(p[i] < 0 or 2 * p[i] > k[i] for i in range(2)):
        raise ShapeError(f"{what}: padding {tuple(p)} must be at most half the kernel "
                         f"{tuple(k)}")
    hw = x_shape[2:]
    padded = tuple(hw[i] + 2 * p[i] for i in range(2))
    if k[0] > padded[0] or k[1] > padded[1]:
        raise ShapeError(f"{what}: kernel {k[0]}x{k[1]} is larger than the padded input "
                         f"{padded[0]}x{padded[1]} (input {format_shape(x_shape)}, padding "
                         f"{tuple(p)})")
    return tuple(out_size(hw[i], k[i], s[i], p[i], 1) for i in range(2))


def _pool_infer(what):
    def infer(types, attrs):
        x = types[0]
        float_dtype(x, what)
        if x.rank != 4:
            raise ShapeError(f"{what} needs input (N, C, H, W), got {format_shape(x.shape)}")
        oh, ow = pool_out_hw(x.shape, attrs, what)
        return TensorType(x.shape[:2] + (oh, ow), x.dtype)
    return infer


def _windows(x, a, fill):
    """(N, C, OH, OW, KH*KW) view of every pooling window of the padded input."""
    k, s, p = a["kernel"], a["stride"], a["padding"]
    N, C, H, W = x.shape
    oh, ow = (out_size(H, k[0], s[0], p[0], 1), out_size(W, k[1], s[1], p[1], 1))
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])), constant_values=fill)
    wins = [xp[:, :, i: i + s[0] * (oh - 1) + 1: s[0], j: j + s[1] * (ow - 1) + 1: s[1]]
            for i in range(k[0]) for j in range(k[1])]
    return np.stack(wins, axis=-1), xp.shape


def np_max_pool2d(x, a):
    return _windows(x, a, -np.inf)[0].max(axis=-1)


def np_max_pool2d_grad(x, gout, a):
    k, s, p = a["kernel"], a["stride"], a["padding"]
    wins, pshape = _windows(x, a, -np.inf)
    arg = wins.argmax(axis=-1)                       # first maximum, as the kernel
    N, C, oh, ow = arg.shape
    n, c, i, j = np.indices(arg.shape)
    rows = i * s[0] + arg // k[1]
    cols = j * s[1] + arg % k[1]
    dxp = np.zeros(pshape, dtype=gout.dtype)
    np.add.at(dxp, (n, c, rows, cols), gout)
    return dxp[:, :, p[0]:p[0] + x.shape[2], p[1]:p[1] + x.shape[3]]


def np_avg_pool2d(x, a):
    return _windows(x, a, 0.0)[0].mean(axis=-1)


def np_avg_pool2d_grad(gout, a):
    k, s, p = a["kernel"], a["stride"], a["padding"]
    H, W = a["in_hw"]
    N, C, oh, ow = gout.shape
    dxp = np.zeros((N, C, H + 2 * p[0], W + 2 * p[1]), dtype=gout.dtype)
    share = gout / (k[0] * k[1])
    for i in range(k[0]):
        for j in range(k[1]):
            dxp[:, :, i: i + s[0] * (oh - 1) + 1: s[0], j: j + s[1] * (ow - 1) + 1: s[1]] += share
    return dxp[:, :, p[0]:p[0] + H, p[1]:p[1] + W]


# --------------------------------------------------------------- kernel templates
def _geo(ctx, in_hw, out_hw):
    k, s, p = ctx.attrs["kernel"], ctx.attrs["stride"], ctx.attrs["padding"]
    return dict(KH=k[0], KW=k[1], S0=s[0], S1=s[1], P0=p[0], P1=p[1], H=in_hw[0],
                W=in_hw[1], OH=out_hw[0], OW=out_hw[1])


def _samples(ctx, x4) -> str:
    """The loop over the batch: ``prange`` when the kernel may use ``ctx.parts`` cores
    (samples write disjoint outputs, so Numba's static split needs nothing else)."""
    if ctx.parts > 1:
        ctx.parallel = True
        return f"prange({x4}.shape[0])"
    return f"range({x4}.shape[0])"


def _emit_windows(ctx, g, x4, body_open):
    """Loops over every output pixel; ``body_open`` lines run per window."""
    e = ctx.emit
    e(f"for b in {_samples(ctx, x4)}:")
    e(f"    for c in range({x4}.shape[1]):")
    e(f"        for oh in range({g['OH']}):")
    e(f"            h0 = oh * {g['S0']} - {g['P0']}")
    e(f"            for ow in range({g['OW']}):")
    e(f"                w0 = ow * {g['S1']} - {g['P1']}")
    for line in body_open:
        e("                " + line)


def _window_loop(g):
    return [f"for i in range(max(h0, 0), min(h0 + {g['KH']}, {g['H']})):",
            f"    for j in range(max(w0, 0), min(w0 + {g['KW']}, {g['W']})):"]


def _tiled(g):
    """Windows that tile the input without overlap or padding (the usual 2x2/2 pool):
    such kernels unroll the window and need no clipping, and the gradient writes every
    input pixel exactly once (no zero fill, no scatter-add)."""
    return (g["P0"] == 0 and g["P1"] == 0 and g["S0"] == g["KH"] and g["S1"] == g["KW"]
            and g["KH"] * g["KW"] <= 16)


def _tiled_loads(ctx, g, x, ind, first_max=False):
    """Lines loading window (oh, ow) of ``x`` into ``p0, p1, ...`` and its maximum into
    ``m``; a NaN in the window is the maximum, as in PyTorch's max pooling.

    With ``first_max`` (the gradient), ``w<t>`` is true where ``p<t>`` beats every value
    before it, so the window's first maximum is the last ``t`` with ``w<t>`` (none: all
    NaN or -inf), and ``nan`` says the window holds a NaN, whose first one is the
    maximum instead. Selects, not branches: on real activations the comparisons are
    unpredictable. Each form is the faster one for its kernel: the NaN test inside the
    comparisons slowed the gradient 2x, a separate NaN test the forward 1.3x, and
    ``m == m`` in them (a first-NaN rule on the chain of maxima) the forward 4x."""
    e = lambda s: ctx.emit(ind + s)  # noqa: E731
    e(f"m = {ctx.lit(-np.inf)}")
    taps = range(g["KH"] * g["KW"])
    for t in taps:
        i, j = divmod(t, g["KW"])
        e(f"p{t} = {x}[b, c, i0 + {i}, j0 + {j}]")
        e(f"w{t} = p{t} > m" if first_max else f"w{t} = (p{t} > m) | (p{t} != p{t})")
        e(f"m = p{t} if w{t} else m")
    if first_max:
        e("nan = " + " | ".join(f"(p{t} != p{t})" for t in taps))


def _tiled_windows(ctx, g, x4):
    e = ctx.emit
    e(f"for b in {_samples(ctx, x4)}:")
    e(f"    for c in range({x4}.shape[1]):")
    e(f"        for oh in range({g['OH']}):")
    e(f"            i0 = oh * {g['KH']}")
    e(f"            for ow in range({g['OW']}):")
    e(f"                j0 = ow * {g['KW']}")


# Whether window value v becomes the running maximum m of an untiled window scan: it is
# larger, or the window's first NaN (a NaN is the maximum, as in PyTorch's max pooling)
_BEATS = "(v > m) | ((v != v) & (m == m))"


def _max_kernel(ctx):
    x, out = ctx.args[0], ctx.out
    g = _geo(ctx, ctx.in_types[0].shape[2:], ctx.out_type.shape[2:])
    if _tiled(g):
        _tiled_windows(ctx, g, x)
        _tiled_loads(ctx, g, x, " " * 16)
        ctx.emit(f"                {out}[b, c, oh, ow] = m")
        return
    _emit_windows(ctx, g, x, ["m = -np.inf"] + _window_loop(g) + [
        f"        v = {x}[b, c, i, j]",
        f"        if {_BEATS}:",
        "            m = v",
        f"{out}[b, c, oh, ow] = m"])


def _max_grad_tiled(ctx, g, x, gout, dx):
    zero = ctx.lit(0.0)
    rows, cols = g["OH"] * g["KH"], g["OW"] * g["KW"]
    # the ragged edge no window covers (bottom rows, right columns) gets zeros
    for lo_i, hi_i, lo_j in ((rows, g["H"], 0), (0, rows, cols)):
        if lo_i < hi_i and lo_j < g["W"]:
            ctx.emit(f"for b in range({x}.shape[0]):")
            ctx.emit(f"    for c in range({x}.shape[1]):")
            ctx.emit(f"        for i in range({lo_i}, {hi_i}):")
            ctx.emit(f"            for j in range({lo_j}, {g['W']}):")
            ctx.emit(f"                {dx}[b, c, i, j] = {zero}")
    _tiled_windows(ctx, g, x)
    ind = " " * 16
    _tiled_loads(ctx, g, x, ind, first_max=True)
    # Every pixel of the window written once: the gradient at the first maximum (the last
    # t with w<t>), zero elsewhere, each as a select on booleans. A store at a computed
    # index, or ``gv if k == t else 0`` on an argmax index k, compiled to data-dependent
    # branches: (64, 6, 24, 24) ReLU activations took 0.83 ms, this 0.25 ms.
    last = g["KH"] * g["KW"] - 1
    for t in range(last + 1):
        later = " or ".join(f"w{u}" for u in range(t + 1, last + 1))
        # with a NaN in the window, the gradient goes to the first NaN instead
        earlier = " or ".join(f"p{u} != p{u}" for u in range(t))
        ctx.emit(f"{ind}s{t} = (p{t} != p{t}" + (f" and not ({earlier})" if earlier else "")
                 + f") if nan else (w{t}" + (f" and not ({later})" if later else "") + ")")
    ctx.emit(f"{ind}gv = {gout}[b, c, oh, ow]")
    for t in range(last + 1):
        i, j = divmod(t, g["KW"])
        ctx.emit(f"{ind}{dx}[b, c, i0 + {i}, j0 + {j}] = gv if s{t} else {zero}")


def _max_grad_kernel(ctx):
    x, gout, dx = ctx.args[0], ctx.args[1], ctx.out
    g = _geo(ctx, ctx.in_types[0].shape[2:], ctx.in_types[1].shape[2:])
    if _tiled(g):
        _max_grad_tiled(ctx, g, x, gout, dx)
        return
    ctx.emit(f"{dx}[:] = {ctx.lit(0.0)}")
    _emit_windows(ctx, g, x, ["m = -np.inf", "bi = -1", "bj = -1"] + _window_loop(g) + [
        f"        v = {x}[b, c, i, j]",
        f"        if {_BEATS}:",
        "            m = v",
        "            bi = i",
        "            bj = j",
        "if bi >= 0:",
        f"    {dx}[b, c, bi, bj] += {gout}[b, c, oh, ow]"])


def _avg_kernel(ctx):
    x, out = ctx.args[0], ctx.out
    g = _geo(ctx, ctx.in_types[0].shape[2:], ctx.out_type.shape[2:])
    inv = ctx.lit(1.0 / (g["KH"] * g["KW"]))
    _emit_windows(ctx, g, x, [f"acc = {ctx.lit(0.0)}"] + _window_loop(g) + [
        f"        acc += {x}[b, c, i, j]",
        f"{out}[b, c, oh, ow] = acc * {inv}"])


def _avg_grad_kernel(ctx):
    gout, dx = ctx.args[0], ctx.out
    g = _geo(ctx, ctx.out_type.shape[2:], ctx.in_types[0].shape[2:])
    inv = ctx.lit(1.0 / (g["KH"] * g["KW"]))
    ctx.emit(f"{dx}[:] = {ctx.lit(0.0)}")
    _emit_windows(ctx, g, gout, [f"share = {gout}[b, c, oh, ow] * {inv}"] + _window_loop(g) + [
        f"        {dx}[b, c, i, j] += share"])


# --------------------------------------------------------------- CUDA templates
# One thread per output element (grid-stride); the gradients are gathers over the windows
# that contain an input pixel, visited in the CPU kernel's order (oh, then ow), so the
# sums equal the CPU's. Clipping uses conditionals: the builtin min/max do not compile
# ahead of time for the CUDA target.
def _cuda_pixels(ctx, arr, rows, cols):
    """Grid-stride loop over ``arr`` (N, C, rows[1], cols[1]) with indices b, c, rows[0],
    cols[0]."""
    _cuda.grid_stride(ctx, f"{arr}.size")
    _cuda.unravel(ctx, "idx", [("b", f"{arr}.shape[0]"), ("c", f"{arr}.shape[1]"),
                               (rows[0], str(rows[1])), (cols[0], str(cols[1]))], "    ")


def _cuda_window(ctx, g, oh, ow, ind):
    """Lines setting i0..i1 / j0..j1: the window of output pixel (oh, ow), clipped."""
    e = lambda s: ctx.emit(ind + s)  # noqa: E731
    e(f"h0 = {oh} * {g['S0']} - {g['P0']}")
    e(f"w0 = {ow} * {g['S1']} - {g['P1']}")
    e("i0 = h0 if h0 > 0 else 0")
    e(f"i1 = h0 + {g['KH']} if h0 + {g['KH']} < {g['H']} else {g['H']}")
    e("j0 = w0 if w0 > 0 else 0")
    e(f"j1 = w0 + {g['KW']} if w0 + {g['KW']} < {g['W']} else {g['W']}")


def _cuda_max_kernel(ctx):
    x, out = ctx.args[0], ctx.out
    g = _geo(ctx, ctx.in_types[0].shape[2:], ctx.out_type.shape[2:])
    _cuda_pixels(ctx, out, ("oh", g["OH"]), ("ow", g["OW"]))
    _cuda_window(ctx, g, "oh", "ow", "    ")
    e = lambda s: ctx.emit("    " + s)  # noqa: E731
    e(f"m = {ctx.lit(-np.inf)}")
    e("for i in range(i0, i1):")
    e("    for j in range(j0, j1):")
    e(f"        v = {x}[b, c, i, j]")
    e(f"        if {_BEATS}:")
    e("            m = v")
    e(f"{out}[b, c, oh, ow] = m")


def _cuda_out_range(ctx, g, pix, K, S, P, OUT, lo, hi, ind):
    """Lines setting the range lo..hi (exclusive) of outputs whose window covers ``pix``."""
    e = lambda s: ctx.emit(ind + s)  # noqa: E731
    e(f"t = {pix} + {g[P]} - {g[K]} + 1")
    e(f"{lo} = (t + {g[S]} - 1) // {g[S]} if t > 0 else 0")
    e(f"t = ({pix} + {g[P]}) // {g[S]} + 1")
    e(f"{hi} = t if t < {g[OUT]} else {g[OUT]}")


def _cuda_max_grad_kernel(ctx):
    """dx[b, c, i, j] sums the gradients of the windows whose first argmax is (i, j)."""
    x, gout, dx = ctx.args[0], ctx.args[1], ctx.out
    g = _geo(ctx, ctx.in_types[0].shape[2:], ctx.in_types[1].shape[2:])
    _cuda_pixels(ctx, dx, ("pi", g["H"]), ("pj", g["W"]))
    _cuda_out_range(ctx, g, "pi", "KH", "S0", "P0", "OH", "oh0", "oh1", "    ")
    _cuda_out_range(ctx, g, "pj", "KW", "S1", "P1", "OW", "ow0", "ow1", "    ")
    e = lambda s: ctx.emit("    " + s)  # noqa: E731
    e(f"acc = {ctx.lit(0.0)}")
    e("for oh in range(oh0, oh1):")
    e("    for ow in range(ow0, ow1):")
    _cuda_window(ctx, g, "oh", "ow", "            ")
    e(f"        m = {ctx.lit(-np.inf)}")
    e("        bi = -1")
    e("        bj = -1")
    e("        for i in range(i0, i1):")
    e("            for j in range(j0, j1):")
    e(f"                v = {x}[b, c, i, j]")
    e(f"                if {_BEATS}:")
    e("                    m = v")
    e("                    bi = i")
    e("                    bj = j")
    e("        if bi == pi and bj == pj:")
    e(f"            acc += {gout}[b, c, oh, ow]")
    e(f"{dx}[b, c, pi, pj] = acc")


def _cuda_avg_kernel(ctx):
    x, out = ctx.args[0], ctx.out
    g = _geo(ctx, ctx.in_types[0].shape[2:], ctx.out_type.shape[2:])
    _cuda_pixels(ctx, out, ("oh", g["OH"]), ("ow", g["OW"]))
    _cuda_window(ctx, g, "oh", "ow", "    ")
    e = lambda s: ctx.emit("    " + s)  # noqa: E731
    e(f"acc = {ctx.lit(0.0)}")
    e("for i in range(i0, i1):")
    e("    for j in range(j0, j1):")
    e(f"        acc += {x}[b, c, i, j]")
    e(f"{out}[b, c, oh, ow] = acc * {ctx.lit(1.0 / (g['KH'] * g['KW']))}")


def _cuda_avg_grad_kernel(ctx):
    gout, dx = ctx.args[0], ctx.out
    g = _geo(ctx, ctx.out_type.shape[2:], ctx.in_types[0].shape[2:])
    _cuda_pixels(ctx, dx, ("pi", g["H"]), ("pj", g["W"]))
    _cuda_out_range(ctx, g, "pi", "KH", "S0", "P0", "OH", "oh0", "oh1", "    ")
    _cuda_out_range(ctx, g, "pj", "KW", "S1", "P1", "OW", "ow0", "ow1", "    ")
    e = lambda s: ctx.emit("    " + s)  # noqa: E731
    e(f"acc = {ctx.lit(0.0)}")
    e("for oh in range(oh0, oh1):")
    e("    for ow in range(ow0, ow1):")
    e(f"        acc += {gout}[b, c, oh, ow] * {ctx.lit(1.0 / (g['KH'] * g['KW']))}")
    e(f"{dx}[b, c, pi, pj] = acc")


# --------------------------------------------------------------- declarations
def _pool_attrs(node):
    return {k: node.attrs[k] for k in ("kernel", "stride", "padding")}


def _max_grad_infer(types, attrs):
    x, gt = types
    same_dtype(types, "max_pool2d_grad")
    if x.rank != 4 or gt.shape != _pool_infer("max_pool2d_grad")([x], attrs).shape:
        raise ShapeError(f"max_pool2d_grad: gradient {format_shape(gt.shape)} does not fit "
                         f"input {format_shape(x.shape)}")
    return x


def _avg_grad_infer(types, attrs):
    (gt,) = types
    float_dtype(gt, "avg_pool2d_grad")
    full = TensorType(gt.shape[:2] + tuple(attrs["in_hw"]), gt.dtype)
    if gt.rank != 4 or _pool_infer("avg_pool2d_grad")([full], attrs).shape != gt.shape:
        raise ShapeError(f"avg_pool2d_grad: gradient {format_shape(gt.shape)} does not fit "
                         f"input size {attrs['in_hw']}")
    return full


_POOL_SAMPLES = (
    Sample(shapes=((2, 3, 4, 4),), attrs={"kernel": (2, 2), "stride": (2, 2)}, batch_dims=(0,)),
    Sample(shapes=((1, 2, 5, 7),), attrs={"kernel": (3, 2), "stride": (2, 1),
                                          "padding": (1, 1)}),
    Sample(shapes=((2, 1, 5, 5),), attrs={"kernel": (3, 3), "stride": (1, 1)}),
    # non-overlapping windows with a ragged edge (the unrolled fast path)
    Sample(shapes=((2, 2, 7, 5),), attrs={"kernel": (3, 2), "stride": (3, 2)}),
)

register(OpDef(
    name="max_pool2d", infer=_pool_infer("max_pool2d"), kind=FusionKind.OPAQUE, arity=1,
    impl=lambda xs, a, shape: np_max_pool2d(xs[0], a), kernel=_max_kernel,
    cuda_kernel=_cuda_max_kernel,
    vjp=lambda g, node, grad: [g.add("max_pool2d_grad", [node.args[0], grad],
                                     _pool_attrs(node))],
    attrs=dict(POOL_ATTRS), samples=_POOL_SAMPLES,
    doc="Maximum over each kernel window (F.max_pool2d, -inf padding)."))

register(OpDef(
    name="max_pool2d_grad", infer=_max_grad_infer, kind=FusionKind.OPAQUE, arity=2,
    impl=lambda xs, a, shape: np_max_pool2d_grad(xs[0], xs[1], a), kernel=_max_grad_kernel,
    cuda_kernel=_cuda_max_grad_kernel,
    attrs=dict(POOL_ATTRS), differentiable=False,
    samples=(Sample(shapes=((2, 3, 4, 4), (2, 3, 2, 2)), attrs={"kernel": (2, 2),
                                                                 "stride": (2, 2)}),
             Sample(shapes=((1, 2, 5, 7), (1, 2, 3, 8)),
                    attrs={"kernel": (3, 2), "stride": (2, 1), "padding": (1, 1)}),
             Sample(shapes=((2, 1, 5, 5), (2, 1, 3, 3)), attrs={"kernel": (3, 3),
                                                                 "stride": (1, 1)}),
             Sample(shapes=((2, 2, 7, 5), (2, 2, 2, 2)), attrs={"kernel": (3, 2),
                                                                 "stride": (3, 2)}),
             Sample(shapes=((1, 3, 5, 6), (1, 3, 2, 3)), attrs={"kernel": (2, 2),
                                                                 "stride": (2, 2)})),
    doc="Gradient of max_pool2d: each window's output gradient goes to its argmax."))

register(OpDef(
    name="avg_pool2d", infer=_pool_infer("avg_pool2d"), kind=FusionKind.OPAQUE, arity=1,
    impl=lambda xs, a, shape: np_avg_pool2d(xs[0], a), kernel=_avg_kernel,
    cuda_kernel=_cuda_avg_kernel,
    vjp=lambda g, node, grad: [g.add("avg_pool2d_grad", [grad],
                                     dict(_pool_attrs(node),
                                          in_hw=tuple(g.type_of(node.args[0]).shape[2:])))],
    attrs=dict(POOL_ATTRS), samples=_POOL_SAMPLES,
    doc="Mean over each kernel window, padding counted (F.avg_pool2d defaults)."))

register(OpDef(
    name="avg_pool2d_grad", infer=_avg_grad_infer, kind=FusionKind.OPAQUE, arity=1,
    impl=lambda xs, a, shape: np_avg_pool2d_grad(xs[0], a), kernel=_avg_grad_kernel,
    cuda_kernel=_cuda_avg_grad_kernel,
    attrs=dict(POOL_ATTRS, in_hw=REQUIRED), differentiable=False,
    samples=(Sample(shapes=((2, 3, 2, 2),), attrs={"kernel": (2, 2), "stride": (2, 2),
                                                   "in_hw": (4, 4)}),
             Sample(shapes=((1, 2, 3, 8),), attrs={"kernel": (3, 2), "stride": (2, 1),
                                                   "padding": (1, 1), "in_hw": (5, 7)})),
    doc="Gradient of avg_pool2d: each output gradient spread evenly over its window."))
