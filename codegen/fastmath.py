"""Vectorisable float32 transcendental functions for generated CPU loops.

This llvmlite has no SVML, so a loop that calls libm's ``expf``/``logf`` stays scalar.
These versions are branch-free polynomials plus exponent bit manipulation (after Cephes'
single-precision algorithms), so LLVM inlines them and emits packed (ymm/zmm) code.

Accuracy against NumPy (float64 reference rounded to float32), over the whole float32
range, checked by tests/test_fastmath.py:

=================  =====================================================================
``fexp32``         rel. error <= 5e-7 for normal results; exact 0 below -103.97, inf above
                   88.72; denormal results within 2 units of the smallest denormal
``flog32``         rel. error <= 5e-7 (denormal inputs included); log(0) = -inf,
                   log(x<0) = nan, log(inf) = inf
``flog1p32``       rel. error <= 1e-6; log1p(-1) = -inf, log1p(x<-1) = nan
``ftanh32``        rel. error <= 1e-6; +-1 for large |x|, sign of zero kept
``fsigmoid32``     rel. error <= 1e-6 (one exp, stable for any x); denormal results within
                   3 units of the smallest denormal plus 1e-6 relative
``fsoftplus32``    rel. error <= 1e-6 (``max(x, 0) + log1p(exp(-|x|))``); denormals as sigmoid
=================  =====================================================================

(Measured maxima: 8e-8, 1.1e-7, 2e-7, 6.8e-7, 4.5e-7, 4.4e-7.) The last three share
``t = exp(-|x|)`` and its ``expm1``, so a fused loop using several of them on one input
computes those once (LLVM value-numbers the inlined copies; every select is branch-free
for that), then each divides once. Loops of this kind are bound by floating-point
instructions, so the exp uses a polynomial fitted here one degree lower than Cephes' (and,
for ``exp(-|x|)``, two degrees lower and a one-FMA range reduction: each FMA left out of
the elementwise chain's loop took 1-1.5% off its time), and softplus's log1p is
``2 atanh(t / (2 + t))`` (a degree-3 polynomial, no range reduction). Each element's
work is one long dependent chain, so generated loops that call these functions keep four
vectors of elements in flight (``interleave.py``).

MAX_REL_ERROR (5e-6) is the bound the code generator promises; nan in gives nan out.
The bounds hold with or without the LLVM fast-math flags that generated float32 loops
are compiled with (LOOP_FLAGS, plus reassoc in reductions): the functions are inlined.
float64 kernels keep libm (``math.exp`` ...): :func:`rewrite` only touches float32.

>>> import numpy as np
>>> abs(float(fexp32(np.float32(1.0))) - np.e) < 1e-6
True
>>> rewrite("math.exp(x) + math.log1p(y)", "float32")
'fexp32(x) + flog1p32(y)'
"""
from __future__ import annotations

import re

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .cache import module_version

MAX_REL_ERROR = 5e-6
# Generated float32 loops add 'contract' (a*b+c -> FMA) to their fast-math flags, and
# reduction loops 'reassoc'; tests/test_fastmath.py checks the bounds under both. Never
# 'nsz'/'nnan'/'ninf': with them LLVM may fold (x + MAGIC) - MAGIC to x, and inf/nan/-0.0
# are handled explicitly here.
LOOP_FLAGS = ("contract",)

_FLAGS = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False, inline="always")
_f32 = np.float32


# --------------------------------------------------------------- bit intrinsics
# Done in LLVM IR on i32 so they vectorise on any AVX2/AVX-512 target (Numba's own
# integer arithmetic would widen to int64).

@intrinsic
def _pow2(typingctx, n):
    """2**n as float32, for an integer-valued float32 n in [-126, 127]."""
    if n != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        k = builder.fptosi(args[0], i32)
        k = builder.shl(builder.add(k, ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(k, ir.FloatType())
    return types.float32(types.float32), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (LLVM's fma: one vfmadd, with or without fast-math flags)."""
    if a != types.float32 or b != types.float32 or c != types.float32:
        return None

    def codegen(context, builder, sig, args):
        f32 = ir.FloatType()
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(f32, [f32, f32, f32]), "llvm.fma.f32")
        return builder.call(fn, args)
    return types.float32(types.float32, types.float32, types.float32), codegen


@intrinsic
def _pow2_from_magic(typingctx, nm):
    """2**(n + 64) as float32 from nm = n + 1.5 * 2**23, the magic-number rounding's sum
    before the magic is subtracted (n in [-150, 0]): n sits in nm's low mantissa bits, so
    an integer add and a shift make the power, with no float-to-int conversion. A nan nm
    gives some power of two (bits, not LLVM's undefined fptosi of nan)."""
    if nm != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        bits = builder.bitcast(args[0], i32)
        k = builder.add(bits, ir.Constant(i32, 127 + 64 - _MAGIC_BITS))
        return builder.bitcast(builder.shl(k, ir.Constant(i32, 23)), ir.FloatType())
    return types.float32(types.float32), codegen


@intrinsic
def _mantissa(typingctx, x):
    """m in [0.5, 1) with x = m * 2**e (positive normal x)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        b = builder.bitcast(args[0], i32)
        b = builder.or_(builder.and_(b, ir.Constant(i32, 0x807FFFFF)),
                        ir.Constant(i32, 126 << 23))
        return builder.bitcast(b, ir.FloatType())
    return types.float32(types.float32), codegen


@intrinsic
def _exponent(typingctx, x):
    """e (as float32) with x = m * 2**e, m in [0.5, 1) (positive normal x)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        b = builder.bitcast(args[0], i32)
        e = builder.and_(builder.lshr(b, ir.Constant(i32, 23)), ir.Constant(i32, 0xFF))
        e = builder.sub(e, ir.Constant(i32, 126))
        return builder.sitofp(e, ir.FloatType())
    return types.float32(types.float32), codegen


@intrinsic
def _where(typingctx, cond, a, b):
    """``a if cond else b`` as one LLVM select on float32, never a branch: a ternary
    becomes control flow in Numba's IR, which the loop vectoriser if-converts in an order
    of its own per call site, so two inlined copies of the same function stopped being
    recognised as equal and were computed twice."""
    if cond != types.boolean or a != types.float32 or b != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.select(args[0], args[1], args[2])
    return types.float32(types.boolean, types.float32, types.float32), codegen


@intrinsic
def _copysign(typingctx, mag, sign):
    """|mag| with the sign of ``sign`` (float32; LLVM's copysign, vectorises)."""
    if mag != types.float32 or sign != types.float32:
        return None

    def codegen(context, builder, sig, args):
        f32 = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, f32]),
                                            "llvm.copysign.f32")
        return builder.call(fn, args)
    return types.float32(types.float32, types.float32), codegen


# --------------------------------------------------------------- constants (float32)
_ZERO, _HALF, _ONE, _TWO = _f32(0.0), _f32(0.5), _f32(1.0), _f32(2.0)
_INF = _f32(np.inf)
_NAN = _f32(np.nan)
_EXP_HI = _f32(89.0)          # exp(89) overflows: result inf
_EXP_LO = _f32(-104.0)        # exp(-104) < half the smallest denormal: result 0
_LOG2E = _f32(1.44269504088896341)
_MAGIC = _f32(12582912.0)     # 1.5 * 2**23: adding it rounds to an integer
_MAGIC_BITS = int(_MAGIC.view(np.int32))   # its bit pattern
_LN2_HI = _f32(0.693359375)   # ln 2 split so n * _LN2_HI is exact
_LN2_LO = _f32(-2.12194440e-4)
_LN2 = _f32(0.6931471805599453)   # rounded: off by 1.9e-9, i.e. n * 1.9e-9 in r
# least-squares (Lawson) fit in float64 of e**r on |r| <= ln2/2
_X0, _X1, _X2 = _f32(0.4999999345258092), _f32(0.16666520682245634), _f32(0.0416683871178541)
_X3, _X4 = _f32(0.00836871053033148), _f32(0.001381462822054336)
# one degree lower, for e**-|x| (sigmoid, tanh, softplus): minimax fit (linear program,
# float64) of expm1(r) in relative terms on |r| <= ln2/2; 4.4e-7 before rounding, 5.5e-7
# for expm1 and 2e-7 for exp evaluated in float32
_Y0, _Y1 = _f32(0.49999407), _f32(0.16666769)
_Y2, _Y3 = _f32(0.04187263), _f32(0.00834346)
_SQRTHF = _f32(0.707106781186547524)
_L0, _L1, _L2 = _f32(7.0376836292e-2), _f32(-1.1514610310e-1), _f32(1.1676998740e-1)
_L3, _L4, _L5 = _f32(-1.2420140846e-1), _f32(1.4249322787e-1), _f32(-1.6668057665e-1)
_L6, _L7, _L8 = _f32(2.0000714765e-1), _f32(-2.4999993993e-1), _f32(3.3333331174e-1)
_TINY = _f32(1.17549435e-38)  # smallest normal
_TWO25 = _f32(33554432.0)     # 2**25 lifts a denormal into the normal range
_TWO24 = _f32(16777216.0)
_E25 = _f32(25.0)
# log1p(t) = s P(s*s), s = t / (2 + t): P (2 atanh(s) / s, degree 3) fitted on s*s in
# [0, 1/9] (Lawson, float64; relative error 1.7e-7 before rounding)
_A0, _A1 = _f32(2 * 0.99999983), _f32(2 * 0.33338054)
_A2, _A3 = _f32(2 * 0.1979346), _f32(2 * 0.1712065)
_TWO_M64 = _f32(2.0 ** -64)


# --------------------------------------------------------------- the functions
@njit(**_FLAGS)
def _log_poly(f, z):
    """Cephes logf's degree-8 polynomial in f (z = f*f), by Estrin's scheme: 4 dependent
    FMAs instead of Horner's 9."""
    z4 = z * z
    lo = (_L0 * f + _L1) * z + (_L2 * f + _L3)
    hi = (_L4 * f + _L5) * z + (_L6 * f + _L7)
    return (lo * z4 + hi) * f + _L8


@njit(**_FLAGS)
def _exp_p1(n, x):
    """p1 = e**r - 1 for r = x - n * ln 2 (n = x / ln 2 rounded), |p1| < 0.42; ln 2 in
    two parts (Cody and Waite), so r is exact to float32 rounding for any n."""
    r = x - n * _LN2_HI
    return _expm1_poly(r - n * _LN2_LO)


@njit(**_FLAGS)
def _expm1_poly(r):
    """e**r - 1 for |r| <= ln2 / 2 (relative error 2e-8 near 0)."""
    z = r * r
    # e**r = 1 + r + r*r * q(r), q of degree 4 (Cephes uses 5; this fit is good to 3e-9
    # for exp, 2e-8 for expm1 near 0), by Estrin's scheme: fewer dependent FMAs
    q = (_X4 * z + (_X3 * r + _X2)) * z + (_X1 * r + _X0)
    return q * z + r


@njit(**_FLAGS)
def _expm1_poly5(r):
    """e**r - 1 for |r| <= ln2 / 2, degree 5 (relative error 5.5e-7 in float32): one
    FMA fewer than :func:`_expm1_poly`, for the loops of sigmoid, tanh and softplus, whose
    FMA pipes are their bottleneck."""
    z = r * r
    q = (_Y3 * r + _Y2) * z + (_Y1 * r + _Y0)
    return q * z + r


@njit(**_FLAGS)
def _exp_core(x):
    """(n, p1) with e**x = 2**n * (1 + p1), |p1| < 0.42 (x clamped to [-104, 89])."""
    xc = _where(x < _EXP_HI, x, _EXP_HI)      # nan goes down this path too: fixed later
    xc = _where(xc > _EXP_LO, xc, _EXP_LO)
    n = (xc * _LOG2E + _MAGIC) - _MAGIC
    return n, _exp_p1(n, xc)


@njit(**_FLAGS)
def fexp32(x):
    """e**x in float32 (Cephes expf; 2**n applied in two halves so denormals round once)."""
    n, p1 = _exp_core(x)
    n1 = (n * _HALF + _MAGIC) - _MAGIC
    res = (p1 + _ONE) * _pow2(n1) * _pow2(n - n1)
    return _where(x == x, res, x)


@njit(**_FLAGS)
def flog32(x):
    """Natural log in float32 (Cephes logf); denormals scaled up first."""
    sub = x < _TINY
    xs = _where(sub, x * _TWO25, x)
    m = _mantissa(xs)
    e = _exponent(xs) - _where(sub, _E25, _ZERO)
    low = m < _SQRTHF
    e = e - _where(low, _ONE, _ZERO)
    f = _where(low, (m + m - _ONE), (m - _ONE))
    z = f * f
    y = _log_poly(f, z) * f * z
    y = y + e * _LN2_LO - _HALF * z
    res = f + y + e * _LN2_HI
    res = _where(x < _INF, res, x)              # inf -> inf, nan -> nan
    res = _where(x > _ZERO, res, _where(x == _ZERO, -_INF, _NAN))   # a constant: no divide
    return res


@njit(**_FLAGS)
def flog1p32(u):
    """log(1 + u) in float32, accurate for tiny u (log(w) * u / (w - 1), w = 1 + u)."""
    w = u + _ONE
    d = w - _ONE
    # u / d is 1 (to rounding) once u >= 2**24; taking 1 there keeps a reduction loop's
    # 'reassoc' from turning log(w) * (u / d) into (log(w) * u) / d, which overflowed
    ratio = _where(u < _TWO24, u / d, _ONE)
    res = _where(d != _ZERO, flog32(w) * ratio, u)
    return _where(u < _INF, res, u)


# sigmoid, tanh and softplus are all written around the same t = e**-|x|, so that,
# inlined into one fused loop, LLVM's value numbering computes it once: the elementwise
# chain sigmoid(x)*tanh(x) + relu(x) - softplus(x) with its gradient costs one exp and
# three divisions per element instead of three exps and a log. Such loops are bound by
# floating-point instructions (multiplies and FMAs above all), so each function divides
# once by its own denominator: three divisions cost less than one shared division and the
# eight multiplications that split it (with the one-FMA reduction and the degree-3 log1p
# below: the chain's loop went from 172 to 134 instructions per 32 elements and 17% less
# time on Zen 4), and nan needs no select of its own: it flows through every formula.
@njit(**_FLAGS)
def _scale_neg_abs(x):
    """(p1, s) with e**-|x| = s * (1 + p1), s = 2**n, |p1| < 0.42; nan gives p1 = nan.

    n lies in [-150, 0] here, so s is made as 2**(n + 64) * 2**-64: exact, denormal or
    zero where it must be, with one multiply instead of fexp32's two halves, and read
    from the rounding sum's bits (no float-to-int conversion). r = y - n ln 2 is one
    fused multiply-add with ln 2 rounded to float32: its error n * 1.9e-9 <= 2.9e-7 is
    well inside the bound and saves the second Cody-Waite step."""
    y = -abs(x)
    y = _where(y < _EXP_LO, _EXP_LO, y)     # nan stays nan, and so does p1
    nm = y * _LOG2E + _MAGIC
    n = nm - _MAGIC
    return _expm1_poly5(_fma(n, -_LN2, y)), _pow2_from_magic(nm) * _TWO_M64


@njit(**_FLAGS)
def _exp_neg_abs(x):
    """e**-|x| in [0, 1]; nan stays nan. A denormal result is rounded once (one FMA
    with s exact)."""
    p1, s = _scale_neg_abs(x)
    return p1 * s + s


@njit(**_FLAGS)
def _expm1_neg_abs(x):
    """e**-|x| - 1 from the same reduction as :func:`_exp_neg_abs` (shared when both are
    inlined): 2**n * p1 + (2**n - 1) has no cancellation, so it is accurate near 0."""
    p1, s = _scale_neg_abs(x)
    return s * p1 + (s - _ONE)


@njit(**_FLAGS)
def ftanh32(x):
    """tanh in float32: (1 - t*t) / (1 + t*t) with t = e**-|x|, 1 - t*t taken as
    -expm1(-|x|) * (1 + t) (accurate near 0, where 1 - t*t would cancel); sign of x."""
    t = _exp_neg_abs(x)
    return _copysign(-_expm1_neg_abs(x) * (_ONE + t) / (_ONE + t * t), x)


@njit(**_FLAGS)
def fsigmoid32(x):
    """1 / (1 + e**-x) in float32 with one exp of -|x| (no overflow either side).

    The numerator is chosen by x > 0, not x >= 0 (at 0, t = 1 and both give 1/2): the
    same comparison as relu's gradient mask, which the same fused loop then shares."""
    t = _exp_neg_abs(x)
    return _where(x > _ZERO, _ONE, t) / (_ONE + t)


@njit(**_FLAGS)
def fsoftplus32(x):
    """log(1 + e**x) in float32 as max(x, 0) + log1p(t), t = e**-|x| in [0, 1].

    log1p(t) = 2 atanh(s) = s P(s*s) with s = t / (2 + t) in [0, 1/3]: no cancellation
    for small t (s is t / 2 to rounding), and P is a degree-3 polynomial fitted here
    (Horner, 2 folded into its coefficients) instead of a log's range reduction and
    degree-8 polynomial.
    """
    t = _exp_neg_abs(x)
    s = t / (_TWO + t)
    y = s * s
    p = _A0 + y * (_A1 + y * (_A2 + y * _A3))
    # max(x, 0) exactly as relu's scalar template writes it: a loop with both computes
    # it once (a select on x > 0 was a second vmaxps with the operands swapped for NaN)
    return max(x, _ZERO) + s * p


# --------------------------------------------------------------- code generator hook
FUNCTIONS = {"fexp32": fexp32, "flog32": flog32, "flog1p32": flog1p32, "ftanh32": ftanh32,
             "fsigmoid32": fsigmoid32, "fsoftplus32": fsoftplus32}
_CALLS = {"math.exp(": "fexp32(", "math.log(": "flog32(", "math.log1p(": "flog1p32(",
          "math.tanh(": "ftanh32("}
_CALL_RE = re.compile(r"math\.(exp|log1p|log|tanh)\(")
# whole ops with a cheaper fused form than their scalar template (one exp, no branches)
OPS = {"sigmoid": "fsigmoid32", "softplus": "fsoftplus32"}

VERSION = module_version(__name__)
IMPORT_LINE = ("from graphc.codegen.fastmath import "
               + ", ".join(FUNCTIONS) + f"  # fastmath {VERSION}")


def rewrite(expr: str, dtype: str, op: str | None = None, args=None) -> str:
    """Scalar expression ``expr`` with libm calls replaced by the fast float32 versions.

    ``op``/``args`` (the op name and operand expressions) let whole ops such as sigmoid
    use their dedicated fast form. float64 (and int) expressions are returned unchanged.

    >>> rewrite("math.tanh(a)", "float64")
    'math.tanh(a)'
    >>> rewrite("whatever", "float32", op="sigmoid", args=["t3"])
    'fsigmoid32(t3)'
    """
    if dtype != "float32":
        return expr
    if op in OPS and args is not None and len(args) == 1:
        return f"{OPS[op]}({args[0]})"
    return _CALL_RE.sub(lambda m: _CALLS[m.group(0)], expr)
