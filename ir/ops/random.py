"""Counter-based random masks: ``dropout_mask``.

The mask is a pure function of (seed, flat element index) through the splitmix64
finaliser, so the NumPy reference and the compiled kernel agree bit for bit, and a run
is reproducible: the seed is a run-time input (dropout keeps it as a state buffer that
the training step advances by one).
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..registry import FusionKind, OpDef, REQUIRED, Sample, register
from . import _cuda
from ._util import float_dtype

GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB


def np_uniform(seed, size):
    """The kernel's uniforms in [0, 1) for elements 0..size-1, in NumPy."""
    with np.errstate(over="ignore"):
        h = np.full(size, np.uint64(int(seed) & (2 ** 64 - 1)), dtype=np.uint64)
        h = h * np.uint64(GOLDEN) + np.arange(size, dtype=np.uint64)
        h ^= h >> np.uint64(30)
        h *= np.uint64(MIX1)
        h ^= h >> np.uint64(27)
        h *= np.uint64(MIX2)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _infer(types, attrs):
    x, seed = types
    float_dtype(x, "dropout_mask")
    if seed.rank != 0:
        raise ShapeError(f"dropout_mask needs a rank-0 seed, got {seed}")
    if not 0.0 <= attrs["p"] < 1.0:
        raise ShapeError(f"dropout probability {attrs['p']} must be in [0, 1)")
    return x


def _impl(xs, a, shape):
    x, seed = xs
    u = np_uniform(int(seed), x.size).reshape(x.shape)
    return np.where(u >= a["p"], 1.0 / (1.0 - a["p"]), 0.0).astype(x.dtype)


def _kernel(ctx):
    seed, out = ctx.args[1], ctx.out
    u64 = "np.uint64"
    ctx.emit(f"h0 = {u64}(np.int64({seed}[()])) * {u64}({GOLDEN})")
    ctx.emit(f"flat = {out}.reshape({out}.size)")
    ctx.emit(f"for i in range(flat.size):")
    ctx.emit(f"    h = h0 + {u64}(i)")
    ctx.emit(f"    h ^= h >> {u64}(30)")
    ctx.emit(f"    h *= {u64}({MIX1})")
    ctx.emit(f"    h ^= h >> {u64}(27)")
    ctx.emit(f"    h *= {u64}({MIX2})")
    ctx.emit(f"    h ^= h >> {u64}(31)")
    ctx.emit(f"    u = np.float64(h >> {u64}(11)) * {2.0 ** -53!r}")
    ctx.emit(f"    flat[i] = {ctx.lit(1.0 / (1.0 - ctx.attrs['p']))} if u >= {ctx.attrs['p']!r} "
             f"else {ctx.lit(0.0)}")


def _cuda_kernel(ctx):
    """The same hash per flat (C-order) element index as the CPU kernel: equal masks."""
    seed, out = ctx.args[1], ctx.out
    rank = ctx.out_type.rank
    names = [f"i{k}" for k in range(rank)]
    ctx.emit(f"h0 = uint64(int64({seed}[0])) * uint64({GOLDEN})")
    _cuda.grid_stride(ctx, f"{out}.size")
    _cuda.unravel(ctx, "idx", [(n, f"{out}.shape[{k}]") for k, n in enumerate(names)], "    ")
    e = lambda s: ctx.emit("    " + s)  # noqa: E731
    e("h = h0 + uint64(idx)")
    e("h ^= h >> uint64(30)")
    e(f"h *= uint64({MIX1})")
    e("h ^= h >> uint64(27)")
    e(f"h *= uint64({MIX2})")
    e("h ^= h >> uint64(31)")
    e(f"u = float64(h >> uint64(11)) * {2.0 ** -53!r}")
    e(f"{out}[{_cuda.index(names)}] = {ctx.lit(1.0 / (1.0 - ctx.attrs['p']))} "
      f"if u >= {ctx.attrs['p']!r} else {ctx.lit(0.0)}")


register(OpDef(
    name="dropout_mask", infer=_infer, impl=_impl, kind=FusionKind.OPAQUE, arity=2,
    kernel=_kernel, cuda_kernel=_cuda_kernel, attrs={"p": REQUIRED}, differentiable=False,
    samples=(Sample(shapes=((4, 5), ()), attrs={"p": 0.5}, domains=("real", "positive")),
             Sample(shapes=((2, 3, 4, 4), ()), attrs={"p": 0.25},
                    domains=("real", "positive"))),
    doc="A mask shaped like x: 1/(1-p) with probability 1-p, else 0, from a seed (rank 0, "
        "integral value) by a counter-based hash."))
