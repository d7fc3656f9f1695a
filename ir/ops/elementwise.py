"""Elementwise ops: each is one scalar formula, numpy broadcasting between operands.

Gradient rules are written in IR ops and reduce broadcast operands back to their
shapes with ``unbroadcast``.
"""
from __future__ import annotations

import numpy as np

from ..registry import FusionKind, OpDef, Sample, register
from ..types import TensorType
from . import _cuda
from ._util import broadcast_shapes, same_dtype, scalar, unbroadcast


def _binary_infer(name):
    def infer(types, attrs):
        dtype = same_dtype(types, name)
        return TensorType(broadcast_shapes(*(t.shape for t in types)), dtype)
    return infer


def _unary_infer(name, float_only=True):
    def infer(types, attrs):
        (t,) = types
        if float_only and t.dtype == "int64":
            from ..errors import ShapeError
            raise ShapeError(f"{name} needs a float operand, got {t.dtype}")
        return t
    return infer


_BIN_SAMPLES = (Sample(shapes=((3, 4), (3, 4))), Sample(shapes=((3, 4), (4,))),
                Sample(shapes=((), (2, 3))), Sample(shapes=((2, 1), (1, 3))))


def binary(name, fn, expr, vjp, samples=_BIN_SAMPLES, differentiable=True, doc="",
           cuda_expr=None):
    register(OpDef(name=name, infer=_binary_infer(name), arity=2, cuda_scalar=cuda_expr,
                   kind=FusionKind.ELEMWISE,
                   impl=lambda xs, a, shape: np.asarray(fn(*xs), dtype=xs[0].dtype),
                   scalar=expr if callable(expr) else (lambda args, a, lit: expr.format(*args)),
                   vjp=vjp, samples=samples, differentiable=differentiable, doc=doc))


def unary(name, fn, expr, vjp, domain="real", attrs=None, samples=None, doc="",
          differentiable=True, cuda_expr=None):
    register(OpDef(name=name, infer=_unary_infer(name), arity=1, cuda_scalar=cuda_expr,
                   kind=FusionKind.ELEMWISE,
                   impl=lambda xs, a, shape: np.asarray(fn(xs[0], **a), dtype=xs[0].dtype),
                   scalar=(expr if callable(expr)
                           else (lambda args, a, lit: expr.format(*args, **{k: lit(v) for k, v in a.items()}))),
                   vjp=vjp, attrs=attrs or {},
                   samples=samples or (Sample(shapes=((3, 4),), domains=(domain,)),
                                       Sample(shapes=((),), domains=(domain,))),
                   differentiable=differentiable, doc=doc))


def _types(g, node):
    return [g.type_of(a) for a in node.args]


# --- binary ---------------------------------------------------------------

def _add_vjp(g, node, grad):
    a, b = _types(g, node)
    return [unbroadcast(g, grad, a), unbroadcast(g, grad, b)]


def _sub_vjp(g, node, grad):
    a, b = _types(g, node)
    return [unbroadcast(g, grad, a), unbroadcast(g, g.add("neg", [grad]), b)]


def _mul_vjp(g, node, grad):
    x, y = node.args
    a, b = _types(g, node)
    return [unbroadcast(g, g.add("mul", [grad, y]), a),
            unbroadcast(g, g.add("mul", [grad, x]), b)]


def _div_vjp(g, node, grad):
    x, y = node.args
    a, b = _types(g, node)
    gx = g.add("div", [grad, y])
    gy = g.add("neg", [g.add("div", [g.add("mul", [grad, node.id]), y])])   # -g (x/y) / y
    return [unbroadcast(g, gx, a), unbroadcast(g, gy, b)]


def _minmax_vjp(cmp):
    def vjp(g, node, grad):
        x, y = node.args
        a, b = _types(g, node)
        # 1 where x wins, 1/2 on ties (PyTorch's and JAX's choice: max(x, x) = x gets
        # gradient 1 in all, and neither operand is preferred)
        tie = g.add("mul", [g.add("eq", [x, y]), scalar(g, 0.5, node.dtype)])
        take_x = g.add("add", [g.add(cmp, [x, y]), tie])
        take_y = g.add("sub", [scalar(g, 1.0, node.dtype), take_x])
        return [unbroadcast(g, g.add("mul", [grad, take_x]), a),
                unbroadcast(g, g.add("mul", [grad, take_y]), b)]
    return vjp


binary("add", np.add, "({0} + {1})", _add_vjp, doc="x + y")
binary("sub", np.subtract, "({0} - {1})", _sub_vjp, doc="x - y")
binary("mul", np.multiply, "({0} * {1})", _mul_vjp, doc="x * y")
_DIVISOR_SAMPLES = tuple(Sample(s.shapes, domains=("real", "nonzero")) for s in _BIN_SAMPLES)
binary("div", np.divide, "({0} / {1})", _div_vjp, samples=_DIVISOR_SAMPLES, doc="x / y")


def _remainder_vjp(g, node, grad):
    # x % y = x - y * floor(x / y): d/dx = 1, d/dy = -floor(x / y) (torch.remainder's
    # rule; the jumps where x / y crosses an integer have no gradient, as there)
    x, y = node.args
    a, b = _types(g, node)
    quotient = g.add("floor_divide", [x, y])
    return [unbroadcast(g, grad, a),
            unbroadcast(g, g.add("neg", [g.add("mul", [grad, quotient])]), b)]


# Floor division and its remainder, rounded as Python, NumPy and PyTorch round them: the
# remainder takes the divisor's sign (-5 % 3 == 1, 5 % -3 == -1). Numba compiles // and %
# on floats and integers with exactly NumPy's results, zero divisors included (float:
# inf or nan; int64: 0) under the generated kernels' error_model='numpy'.
binary("remainder", np.remainder, "({0} % {1})", _remainder_vjp, samples=_DIVISOR_SAMPLES,
       doc="x % y, with the sign of y (torch.remainder, np.remainder)")
binary("floor_divide", np.floor_divide, "({0} // {1})", None, differentiable=False,
       samples=_DIVISOR_SAMPLES,
       doc="x // y, rounded down (torch.floor_divide, np.floor_divide); no gradient")


# conditional expressions, not the builtin max/min: those drop a NaN second operand
# (max(1.0, nan) is 1.0) where np.maximum and torch.maximum give NaN; the same text
# compiles for CUDA (graphc.ir.ops._cuda.maximum)
binary("maximum", np.maximum, lambda args, a, lit: _cuda.maximum(*args), _minmax_vjp("gt"),
       doc="max(x, y); NaN if either is NaN")
binary("minimum", np.minimum, lambda args, a, lit: _cuda.minimum(*args), _minmax_vjp("lt"),
       doc="min(x, y); NaN if either is NaN")
for _name, _fn, _op in (("gt", np.greater, ">"), ("ge", np.greater_equal, ">="),
                        ("lt", np.less, "<"), ("le", np.less_equal, "<="),
                        ("eq", np.equal, "=="), ("ne", np.not_equal, "!=")):
    binary(_name, _fn,
           (lambda op: lambda args, a, lit: f"({lit(1.0)} if {args[0]} {op} {args[1]} else {lit(0.0)})")(_op),
           None, differentiable=False,
           doc=f"1 where x {_op} y else 0, in the operands' dtype")



# --- select ---------------------------------------------------------------

def _where_infer(types, attrs):
    cond, a, b = types
    dtype = same_dtype([a, b], "where")
    return TensorType(broadcast_shapes(cond.shape, a.shape, b.shape), dtype)


def _where_vjp(g, node, grad):
    cond = node.args[0]
    _, a, b = _types(g, node)
    zero = scalar(g, 0.0, node.dtype)
    return [None,
            unbroadcast(g, g.add("where", [cond, grad, zero]), a),
            unbroadcast(g, g.add("where", [cond, zero, grad]), b)]


register(OpDef(
    name="where", infer=_where_infer, arity=3, kind=FusionKind.ELEMWISE,
    impl=lambda xs, a, shape: np.where(xs[0] != 0, xs[1], xs[2]).astype(xs[1].dtype),
    scalar=lambda args, a, lit: f"({args[1]} if {args[0]} != 0 else {args[2]})",
    vjp=_where_vjp,
    # int 0/1 conditions: finite differences through a float mask would flip branches
    samples=(Sample(shapes=((3, 4), (3, 4), (3, 4)), domains=("labels:2",)),
             Sample(shapes=((3, 4), (4,), ()), domains=("labels:2",)),
             Sample(shapes=((3, 1), (1, 4), (3, 4)), domains=("labels:2",))),
    doc="a where cond is nonzero, else b (torch.where); cond is a 0/1 mask such as "
        "a comparison's output, or int64"))

# --- unary ----------------------------------------------------------------

def _neg_vjp(g, node, grad):
    return [g.add("neg", [grad])]


def _exp_vjp(g, node, grad):
    return [g.add("mul", [grad, node.id])]


def _log_vjp(g, node, grad):
    return [g.add("div", [grad, node.args[0]])]


def _sin_vjp(g, node, grad):
    return [g.add("mul", [grad, g.add("cos", [node.args[0]])])]


def _cos_vjp(g, node, grad):
    return [g.add("neg", [g.add("mul", [grad, g.add("sin", [node.args[0]])])])]


def _tanh_vjp(g, node, grad):
    one = scalar(g, 1.0, node.dtype)
    return [g.add("mul", [grad, g.add("sub", [one, g.add("mul", [node.id, node.id])])])]


def _sigmoid_vjp(g, node, grad):
    one = scalar(g, 1.0, node.dtype)
    s = node.id
    return [g.add("mul", [grad, g.add("mul", [s, g.add("sub", [one, s])])])]


def _relu_vjp(g, node, grad):
    zero = scalar(g, 0.0, node.dtype)
    return [g.add("mul", [grad, g.add("gt", [node.id, zero])])]


def _softplus_vjp(g, node, grad):
    return [g.add("mul", [grad, g.add("sigmoid", [node.args[0]])])]


def _erf_vjp(g, node, grad):
    x = node.args[0]
    c = scalar(g, 2.0 / np.sqrt(np.pi), node.dtype)                  # 2/sqrt(pi) e**-x^2
    return [g.add("mul", [grad, g.add("mul", [c, g.add("exp", [g.add("neg", [
        g.add("mul", [x, x])])])])])]


def _erf_np(x):
    from scipy.special import erf      # NumPy has no erf; SciPy is a dependency (Numba's)
    return erf(x)


def _sqrt_vjp(g, node, grad):
    half = scalar(g, 0.5, node.dtype)
    return [g.add("div", [g.add("mul", [grad, half]), node.id])]


def _abs_vjp(g, node, grad):
    return [g.add("mul", [grad, g.add("sign", [node.args[0]])])]


def _pow_vjp(g, node, grad):
    p = node.attrs["exponent"]
    x = node.args[0]
    if p == 0:
        return [g.add("mul", [grad, scalar(g, 0.0, node.dtype)])]
    dx = g.add("mul", [scalar(g, p, node.dtype),
                       x if p == 2 else g.add("pow", [x], {"exponent": p - 1})])
    return [g.add("mul", [grad, dx])]


def _pow_impl(x, exponent):
    return np.power(x, exponent)


def _pow_scalar(args, a, lit):
    p = a["exponent"]
    if p == 2:
        return f"({args[0]} * {args[0]})"
    if p == 1:
        return args[0]
    if float(p).is_integer() and 0 <= p <= 4:
        return "(" + " * ".join([args[0]] * int(p)) + ")" if p else lit(1.0)
    return f"({args[0]} ** {lit(p)})"


def _sigmoid_np(x):
    # two branches so neither exp overflows
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _softplus_np(x):
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


unary("neg", np.negative, "(-{0})", _neg_vjp, doc="-x")
unary("exp", np.exp, "math.exp({0})", _exp_vjp, doc="e**x")
unary("log", np.log, "math.log({0})", _log_vjp, domain="positive", doc="natural log")
unary("sin", np.sin, "math.sin({0})", _sin_vjp, doc="sine")
unary("cos", np.cos, "math.cos({0})", _cos_vjp, doc="cosine")
unary("tanh", np.tanh, "math.tanh({0})", _tanh_vjp, doc="hyperbolic tangent")
unary("sigmoid", lambda x: _sigmoid_np(np.asarray(x)),
      lambda args, a, lit: (f"({lit(1.0)} / ({lit(1.0)} + math.exp(-{args[0]})) if {args[0]} >= 0 "
                            f"else math.exp({args[0]}) / ({lit(1.0)} + math.exp({args[0]})))"),
      _sigmoid_vjp, doc="1 / (1 + e**-x), stable for large |x|")
unary("relu", lambda x: np.maximum(x, 0), lambda args, a, lit: f"max({args[0]}, {lit(0.0)})",
      _relu_vjp, doc="max(x, 0)",
      cuda_expr=lambda args, a, lit: _cuda.maximum(args[0], lit(0.0)))
unary("softplus", _softplus_np,
      lambda args, a, lit: (f"(max({args[0]}, {lit(0.0)}) + "
                            f"math.log1p(math.exp(-abs({args[0]}))))"),
      _softplus_vjp, doc="log(1 + e**x), stable for large |x|",
      cuda_expr=lambda args, a, lit: (f"({_cuda.maximum(args[0], lit(0.0))} + "
                                      f"math.log1p(math.exp(-abs({args[0]}))))"))
unary("erf", _erf_np, "math.erf({0})", _erf_vjp, doc="the error function (for GELU)")
unary("sqrt", np.sqrt, "math.sqrt({0})", _sqrt_vjp, domain="positive", doc="square root")
unary("abs", np.abs, "abs({0})", _abs_vjp, domain="nonzero", doc="|x|")
unary("sign", np.sign, lambda args, a, lit: (f"({lit(1.0)} if {args[0]} > 0 else "
                                             f"({lit(-1.0)} if {args[0]} < 0 else {lit(0.0)}))"),
      None, differentiable=False, doc="-1, 0 or 1")
unary("stop_gradient", lambda x: x, "{0}", None, differentiable=False,
      doc="x, with no gradient flowing back through it (x.detach(), jax.lax.stop_gradient)")
unary("pow", _pow_impl, _pow_scalar, _pow_vjp, attrs={"exponent": 2.0},
      samples=(Sample(shapes=((3, 4),), attrs={"exponent": 2.0}),
               Sample(shapes=((3, 4),), attrs={"exponent": 3.0}),
               Sample(shapes=((3, 4),), attrs={"exponent": -1.5}, domains=("positive",)),
               Sample(shapes=((4,),), attrs={"exponent": 0.5}, domains=("positive",))),
      doc="x ** p for a constant p")
