"""Functions on traced tensors, named as in ``torch`` / ``torch.nn.functional``.

>>> import graphc as gc
>>> round(float(gc.jit(lambda x: gc.log(x) + gc.relu(x))(2.0)), 4)   # ln 2 + 2
2.6931
"""
from __future__ import annotations

from graphc.ir import OpError, ShapeError
from graphc.ir.types import format_shape

from .tracing import Tensor, as_tensor, matmul, reduce, _binary


def _unary(op, x, attrs=None) -> Tensor:
    t = as_tensor(x)
    return t._new(op, [t], attrs)


def exp(x): return _unary("exp", x)
def log(x): return _unary("log", x)
def sin(x): return _unary("sin", x)
def cos(x): return _unary("cos", x)
def tanh(x): return _unary("tanh", x)
def sigmoid(x): return _unary("sigmoid", x)
def relu(x): return _unary("relu", x)
def softplus(x): return _unary("softplus", x)
def sqrt(x): return _unary("sqrt", x)
def abs(x): return _unary("abs", x)  # noqa: A001
def neg(x): return _unary("neg", x)
def square(x): return _unary("pow", x, {"exponent": 2.0})
def pow(x, p): return as_tensor(x) ** p  # noqa: A001
def maximum(a, b): return _binary("maximum", a, b)
def minimum(a, b): return _binary("minimum", a, b)
def add(a, b): return _binary("add", a, b)
def sub(a, b): return _binary("sub", a, b)
def mul(a, b): return _binary("mul", a, b)
def div(a, b): return _binary("div", a, b)


def sum(x, dim=None, keepdim=False): return reduce("reduce_sum", x, dim, keepdim)  # noqa: A001
def mean(x, dim=None, keepdim=False): return reduce("reduce_mean", x, dim, keepdim)
def amax(x, dim=None, keepdim=False): return reduce("reduce_max", x, dim, keepdim)


max = amax  # noqa: A001


def reshape(x, shape): return as_tensor(x).reshape(shape)
def transpose(x, *perm): return as_tensor(x).transpose(*perm)
def flatten(x, start_dim=0, end_dim=-1): return as_tensor(x).flatten(start_dim, end_dim)


def _last_dim(op, x, dim):
    t = as_tensor(x)
    if dim is not None and dim % t.ndim != t.ndim - 1:
        raise ShapeError(f"{op} over dim {dim} of {format_shape(t.shape)}: graphc supports "
                         f"the last dim only")
    return t._new(op, [t], {"axis": -1})


def softmax(x, dim=-1): return _last_dim("softmax", x, dim)
def log_softmax(x, dim=-1): return _last_dim("log_softmax", x, dim)


def linear(x, weight, bias=None):
    """``x @ weight.T + bias`` with ``weight`` laid out ``(out, in)`` as in PyTorch."""
    x, w = as_tensor(x), as_tensor(weight)
    if x.ndim != 2:
        raise ShapeError(f"linear expects input of shape (batch, features), got {format_shape(x.shape)}")
    if x.shape[1] != w.shape[1]:
        raise ShapeError(f"linear: input has {x.shape[1]} features but the weight "
                         f"{format_shape(w.shape)} expects {w.shape[1]}")
    y = matmul(x, w.T)
    return y + bias if bias is not None else y


# --- losses (mean reduction) -------------------------------------------------

def cross_entropy(logits, target):
    """``F.cross_entropy``: softmax cross-entropy of logits against int64 class labels."""
    x, y = as_tensor(logits), as_tensor(target)
    return x._new("softmax_cross_entropy", [x, y])


def nll_loss(logp, target):
    x, y = as_tensor(logp), as_tensor(target)
    return x._new("nll_loss", [x, y])


def mse_loss(pred, target):
    """``F.mse_loss``: mean of squared differences (shapes must match)."""
    p, t = as_tensor(pred), as_tensor(target)
    if p.shape != t.shape:
        raise ShapeError(f"mse_loss: prediction {format_shape(p.shape)} and target "
                         f"{format_shape(t.shape)} differ")
    return mean(square(p - t))


def binary_cross_entropy(prob, target):
    """``F.binary_cross_entropy`` on probabilities (logs clamped at -100 as in PyTorch)."""
    p, t = as_tensor(prob), as_tensor(target)
    return p._new("binary_cross_entropy", [p, t])


def binary_cross_entropy_with_logits(logits, target):
    """``F.binary_cross_entropy_with_logits``: mean(softplus(x) - x*y), stable for any x."""
    x, t = as_tensor(logits), as_tensor(target)
    if x.shape != t.shape:
        raise ShapeError(f"binary_cross_entropy_with_logits: logits {format_shape(x.shape)} "
                         f"and target {format_shape(t.shape)} differ")
    return mean(softplus(x) - x * t)


LOSSES = {
    "cross_entropy": cross_entropy,
    "nll": nll_loss,
    "mse": mse_loss,
    "bce": binary_cross_entropy,
    "bce_with_logits": binary_cross_entropy_with_logits,
}
CLASS_LABEL_LOSSES = {"cross_entropy", "nll"}


def get_loss(name):
    """The loss function for a name in :data:`LOSSES` (or a callable, returned as is)."""
    if callable(name):
        return name
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise OpError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}") from None
