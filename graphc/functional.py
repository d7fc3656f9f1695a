"""Functions on traced tensors, named as in ``torch`` / ``torch.nn.functional``.

>>> import graphc as gc
>>> round(float(gc.jit(lambda x: gc.log(x) + gc.relu(x))(2.0)), 4)   # ln 2 + 2
2.6931
"""
from __future__ import annotations

import numpy as np

from graphc.ir import BATCH, OpError, ShapeError
from graphc.ir.types import format_shape

from .tracing import (Tensor, _binary, _index_tensor, _to_float, as_tensor, cat,  # noqa: F401
                      matmul, reduce, reduce_axes, stack, take, where)

concat = concatenate = cat


def _unary(op, x, attrs=None) -> Tensor:
    return as_tensor(x)._unary(op, attrs)


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
def erf(x): return _unary("erf", x)
def neg(x): return -as_tensor(x)     # integers stay integers, as with the operator
def square(x): return _unary("pow", x, {"exponent": 2.0})
def pow(x, p): return as_tensor(x) ** p  # noqa: A001
def maximum(a, b): return _binary("maximum", a, b)
def minimum(a, b): return _binary("minimum", a, b)
def add(a, b): return _binary("add", a, b)
def sub(a, b): return _binary("sub", a, b)
def mul(a, b): return _binary("mul", a, b)
def div(a, b): return _binary("div", a, b)
def remainder(a, b): return _binary("remainder", a, b)
def floor_divide(a, b): return _binary("floor_divide", a, b)


def sum(x, dim=None, keepdim=False, *, axis=None, keepdims=None):  # noqa: A001
    return reduce("reduce_sum", x, dim, keepdim, axis, keepdims)


def mean(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    return reduce("reduce_mean", x, dim, keepdim, axis, keepdims)


def amax(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    return reduce("reduce_max", x, dim, keepdim, axis, keepdims)


class ValuesIndices(tuple):
    """``(values, indices)`` of ``max(x, dim)``/``min(x, dim)``, as PyTorch's
    ``torch.return_types.max``: unpack it or take ``.values`` / ``.indices``."""

    __slots__ = ()

    def __new__(cls, values, indices):
        return super().__new__(cls, (values, indices))

    values = property(lambda self: self[0])
    indices = property(lambda self: self[1])


def _extreme_index(name, t, axis):
    """(float index, values), both kept along ``axis``: the first position of the
    maximum (``name`` "max") or minimum along ``axis``, a nan counting as both, as in
    PyTorch; values are read at that index, so their gradient goes to it alone."""
    n = t.shape[axis]
    if n == BATCH:
        raise ShapeError(f"{name}: dim {axis} of {format_shape(t.shape)} is the batch axis, "
                         f"whose size is not known while tracing")
    if n == 0:
        raise ShapeError(f"{name}: dim {axis} of {format_shape(t.shape)} is empty")
    position = t._new("iota", [], {"size": n, "dtype": t.dtype}).reshape(
        tuple(n if i == axis else 1 for i in range(t.ndim)))

    def first(hit):                       # n where nothing hits
        return amin(where(hit > 0.5, position, float(n)), axis, True)
    extreme = (amax if name in ("max", "argmax") else amin)(t, axis, True)
    first_nan = first(1.0 - _binary("eq", t, t))
    index = where(first_nan < float(n), first_nan, first(_binary("eq", t, extreme)))
    values = sum(where(_binary("eq", position, index), t, 0.0), axis, True)
    return index, values


def _drop(t, axes, keepdim):
    """``t``, reduced with its ``axes`` kept as size 1, without them unless ``keepdim``."""
    return t if keepdim else t.reshape(tuple(d for i, d in enumerate(t.shape) if i not in axes))


def argmax(x, dim=None, keepdim=False):
    """``torch.argmax``: int64 index of the first maximum along ``dim`` (of the flattened
    tensor when ``dim`` is None); a nan is the maximum, as in PyTorch. No gradient.

    >>> import numpy as np, graphc as gc
    >>> gc.jit(lambda x: gc.argmax(x, dim=1))(np.array([[1.0, 4.0, 4.0], [3.0, 2.0, 0.0]]))
    array([1, 0])
    """
    return _arg("argmax", x, dim, keepdim)


def argmin(x, dim=None, keepdim=False):
    """``torch.argmin``: int64 index of the first minimum along ``dim`` (as :func:`argmax`)."""
    return _arg("argmin", x, dim, keepdim)


def _arg(name, x, dim, keepdim):
    t = _to_float(as_tensor(x))
    if dim is None:
        t, dim, keepdim = t.reshape(-1), 0, False
    (axis,) = _one_axis(name, t, dim)
    index, _ = _extreme_index(name, t, axis)
    return _drop(index, (axis,), keepdim).astype("int64")


def _one_axis(name, t, dim):
    if isinstance(dim, (tuple, list)):
        raise ShapeError(f"{name}: dim must be one int, got {dim!r}")
    return reduce_axes(name, t, dim)


def _max_or_min(name, reduction, pairwise, x, dim, keepdim, axis, keepdims):
    if isinstance(dim, (Tensor, np.ndarray)) or hasattr(dim, "_t"):
        return pairwise(x, dim)             # torch.max(a, b): elementwise
    if dim is None:
        return reduction(x, None, keepdim, axis=axis, keepdims=keepdims)
    if axis is not None:
        raise ShapeError(f"{name}: give dim or its alias axis, not both (dim={dim}, axis={axis})")
    t = _to_float(as_tensor(x))
    (ax,) = _one_axis(name, t, dim)
    index, values = _extreme_index(name, t, ax)
    keep = keepdim if keepdims is None else keepdims
    return ValuesIndices(_drop(values, (ax,), keep), _drop(index, (ax,), keep).astype("int64"))


def max(x, dim=None, keepdim=False, *, axis=None, keepdims=None):  # noqa: A001
    """As ``torch.max``: the largest element; with ``dim``, ``(values, indices)`` of the
    first maximum along it (the gradient goes to that element alone; :func:`amax` shares
    it among ties); with a tensor, :func:`maximum`. NumPy's ``max(x, axis=...)`` gives the
    values only.

    >>> import numpy as np, graphc as gc
    >>> x = np.array([[1.0, 4.0], [3.0, 2.0]])
    >>> gc.jit(lambda a: a.max(1).values * 10 + a.max(1).indices)(x)
    array([41., 30.])
    >>> gc.jit(lambda a: a.max(axis=0))(x)
    array([3., 4.])
    """
    return _max_or_min("max", amax, maximum, x, dim, keepdim, axis, keepdims)


def amin(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    """``torch.amin``: the minimum over ``dim``, as ``-amax(-x)``; ties share the
    gradient equally, as PyTorch's ``amin``.

    >>> import numpy as np, graphc as gc
    >>> gc.jit(lambda x: gc.amin(x, dim=1))(np.array([[3.0, 1.0], [2.0, 5.0]]))
    array([1., 2.])
    """
    return -amax(-as_tensor(x), dim, keepdim, axis=axis, keepdims=keepdims)


def min(x, dim=None, keepdim=False, *, axis=None, keepdims=None):  # noqa: A001
    """As ``torch.min``: the smallest element, ``(values, indices)`` along ``dim``, or
    :func:`minimum` with a tensor (see :func:`max`)."""
    return _max_or_min("min", amin, minimum, x, dim, keepdim, axis, keepdims)


def var(x, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None,
        keepdims=None):
    """``torch.var``: mean squared deviation over ``dim``, divided by ``N - correction``
    instead of ``N`` (``correction=1`` by default, as PyTorch; ``unbiased=False`` is
    ``correction=0``). ``N`` is read at run time, so a batch axis may be reduced.

    >>> import numpy as np, graphc as gc
    >>> round(float(gc.jit(lambda x: gc.var(x))(np.array([1.0, 2.0, 3.0, 4.0]))), 6)
    1.666667
    """
    if unbiased is not None and correction is not None:
        raise OpError(f"var: give unbiased or correction, not both (unbiased={unbiased}, "
                      f"correction={correction})")
    c = (1 if unbiased is None else int(bool(unbiased))) if correction is None else correction
    if not isinstance(c, (int, float)) or isinstance(c, bool) or c < 0:
        raise OpError(f"var: correction must be a number >= 0, got {correction!r}")
    t = _to_float(as_tensor(x))
    axes = reduce_axes("var", t, dim, axis)
    xc = t - reduce("reduce_mean", t, axes, True)
    sq_mean = reduce("reduce_mean", xc * xc, axes, keepdim, keepdims=keepdims)
    if c == 0:
        return sq_mean
    count = t._new("shape_size", [t], {"axes": axes, "dtype": t.dtype})
    return sq_mean * (count / (count - float(c)))


def std(x, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None,
        keepdims=None):
    """``torch.std``: the square root of :func:`var` (same arguments).

    >>> import numpy as np, graphc as gc
    >>> float(gc.jit(lambda x: gc.std(x, correction=0))(np.array([1.0, 3.0])))
    1.0
    """
    v = var(x, dim, unbiased, keepdim, correction=correction, axis=axis, keepdims=keepdims)
    # where the variance is 0, sqrt's derivative is infinite and times the zero deviations
    # gives NaN; PyTorch gives such slices a zero gradient. The inner where keeps the
    # untaken branch's gradient finite (JAX's double-where).
    zero = v == 0.0                      # (NaN stays NaN: it is not 0)
    return where(zero, 0.0, sqrt(where(zero, 1.0, v)))


def logsumexp(x, dim, keepdim=False):
    """``torch.logsumexp``: ``log(sum(exp(x)))`` over ``dim``, shifted by the maximum so
    that it neither overflows nor underflows; a slice whose maximum is +-inf (or nan)
    is not shifted, so it gives +inf, -inf (all -inf) or nan as PyTorch does.

    >>> import numpy as np, graphc as gc
    >>> round(float(gc.jit(lambda x: gc.logsumexp(x, dim=0))(np.array([1000.0, 1000.0]))), 6)
    1000.693147
    """
    t = _to_float(as_tensor(x))
    axes = reduce_axes("logsumexp", t, dim)
    m = amax(t, axes, True)
    m = where(abs(m) < float("inf"), m, 0.0)
    return _drop(log(sum(exp(t - m), axes, True)) + m, axes, keepdim)


def clamp(x, min=None, max=None):  # noqa: A002
    """``torch.clamp``: ``x`` limited to ``[min, max]`` (numbers or tensors, either may be
    None). The gradient is 1 where ``min <= x <= max`` and 0 outside, as PyTorch's;
    nan stays nan.

    >>> import numpy as np, graphc as gc
    >>> gc.jit(lambda x: gc.clamp(x, -1.0, 1.0))(np.array([-2.0, 0.5, 3.0]))
    array([-1. ,  0.5,  1. ])
    """
    if min is None and max is None:
        raise OpError("clamp: give min, max or both")
    t = as_tensor(x)
    if min is not None:
        t = where(t < min, min, t)
    if max is not None:
        t = where(t > max, max, t)
    return t


clip = clamp


def reshape(x, shape): return as_tensor(x).reshape(shape)
def transpose(x, *perm): return as_tensor(x).transpose(*perm)
def flatten(x, start_dim=0, end_dim=-1): return as_tensor(x).flatten(start_dim, end_dim)


def _along_dim(op, x, dim):
    """``op`` (an op over the last axis) along ``dim``: other dims are moved last and back
    (two transposes, each a copy)."""
    t = as_tensor(x)
    dim = -1 if dim is None else dim
    rank = t.ndim or 1                 # (``max`` is gc.max in this module)
    if not -rank <= dim < rank:
        raise ShapeError(f"{op}: dim {dim} is out of range for shape {format_shape(t.shape)}")
    dim %= rank
    if t.ndim <= 1 or dim == t.ndim - 1:
        return t._new(op, [t], {"axis": -1})
    perm = tuple(d for d in range(t.ndim) if d != dim) + (dim,)
    inverse = tuple(int(i) for i in np.argsort(perm))
    moved = t.transpose(perm)
    return moved._new(op, [moved], {"axis": -1}).transpose(inverse)


def softmax(x, dim=-1): return _along_dim("softmax", x, dim)
def log_softmax(x, dim=-1): return _along_dim("log_softmax", x, dim)


def hardtanh(x, min_val=-1.0, max_val=1.0):
    """``F.hardtanh``: ``x`` limited to ``[min_val, max_val]``; unlike :func:`clamp`, the
    gradient is 0 at the two ends as well, as PyTorch's.

    >>> import numpy as np, graphc as gc
    >>> gc.grad(lambda x: gc.sum(gc.nn.functional.hardtanh(x)))(np.array([-1.0, 0.0, 2.0]))
    array([0., 1., 0.])
    """
    if min_val > max_val:
        raise OpError(f"hardtanh: min_val {min_val} is greater than max_val {max_val}")
    t = as_tensor(x)
    return where(t <= float(min_val), float(min_val),
                 where(t >= float(max_val), float(max_val), t))


def relu6(x):
    """``F.relu6``: ``min(max(x, 0), 6)`` (gradient 0 at both ends, as PyTorch's)."""
    return hardtanh(x, 0.0, 6.0)


def silu(x):
    """``F.silu`` (swish): ``x * sigmoid(x)``."""
    t = as_tensor(x)
    return t * sigmoid(t)


def mish(x):
    """``F.mish``: ``x * tanh(softplus(x))``."""
    t = as_tensor(x)
    return t * tanh(softplus(t))


def logsigmoid(x):
    """``F.logsigmoid``: ``log(sigmoid(x)) = -softplus(-x)``, finite for any x."""
    return -softplus(-as_tensor(x))


def softsign(x):
    """``F.softsign``: ``x / (1 + |x|)``."""
    t = as_tensor(x)
    return t / (abs(t) + 1.0)


SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def selu(x):
    """``F.selu``: ``scale * elu(x, alpha)`` with PyTorch's (self-normalising) constants."""
    return elu(x, SELU_ALPHA) * SELU_SCALE


def leaky_relu(x, negative_slope=0.01):
    """``F.leaky_relu``: x where x > 0, else ``negative_slope * x`` (slope 1 or s at 0)."""
    t = as_tensor(x)
    return where(t > 0, t, t * float(negative_slope))


def elu(x, alpha=1.0):
    """``F.elu``: x where x > 0, else ``alpha * (e**x - 1)``.

    The exponential is taken of x where x <= 0 and of 0 elsewhere: the branch not taken
    must stay finite, or its zero gradient times an infinite e**x would be nan (JAX's
    "double where"); at 0 the gradient is alpha, as PyTorch's."""
    t = as_tensor(x)
    neg = where(t > 0, 0.0, t)
    return where(t > 0, t, (exp(neg) - 1.0) * float(alpha))


def gelu(x, approximate="none"):
    """``F.gelu``: x * Phi(x), exactly (erf) or with PyTorch's tanh approximation."""
    t = as_tensor(x)
    if approximate == "tanh":
        inner = (t + t * t * t * 0.044715) * float(np.sqrt(2.0 / np.pi))
        return t * (tanh(inner) + 1.0) * 0.5
    if approximate != "none":
        raise OpError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return t * (erf(t * float(1.0 / np.sqrt(2.0))) + 1.0) * 0.5


def _centered(x, axes):
    """(mean, x - mean, biased variance) over ``axes``, kept for broadcasting: the
    statistics layer_norm and batch_norm (in training) normalise with."""
    mean = reduce("reduce_mean", x, axes, True)
    xc = x - mean
    return mean, xc, reduce("reduce_mean", xc * xc, axes, True)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):  # noqa: A002
    """``F.layer_norm``: normalise over the last ``len(normalized_shape)`` dims with the
    biased variance, then scale by ``weight`` and shift by ``bias`` (both of
    ``normalized_shape``)."""
    x = as_tensor(input)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or k > x.ndim or tuple(x.shape[-k:]) != shape:
        raise ShapeError(f"layer_norm: normalized_shape {shape} does not match the trailing "
                         f"dims of input {format_shape(x.shape)}")
    _, xc, var = _centered(x, tuple(range(x.ndim - k, x.ndim)))
    y = xc * ((var + eps) ** -0.5)
    if weight is not None:
        y = y * as_tensor(weight)
    if bias is not None:
        y = y + as_tensor(bias)
    return y


def linear(x, weight, bias=None):
    """``x @ weight.T + bias`` with ``weight`` laid out ``(out, in)`` as in PyTorch."""
    x, w = as_tensor(x), as_tensor(weight)
    if x.ndim < 2:
        raise ShapeError(f"linear expects input of shape (batch, ..., features), got "
                         f"{format_shape(x.shape)}")
    if x.shape[-1] != w.shape[1]:
        raise ShapeError(f"linear: input has {x.shape[-1]} features but the weight "
                         f"{format_shape(w.shape)} expects {w.shape[1]}")
    y = matmul(x, w.T)
    return y + bias if bias is not None else y


def _int_indices(indices, what):
    idx = as_tensor(indices) if not isinstance(indices, np.ndarray) else indices
    if isinstance(idx, Tensor) and idx.dtype != "int64":
        raise ShapeError(f"{what} needs int64 indices, got a {idx.dtype} tensor of shape "
                         f"{format_shape(idx.shape)} (gc.compile(..., input_dtype='int64') "
                         f"makes a model's input int64)")
    return idx


def embedding(input, weight):  # noqa: A002
    """``F.embedding``: the rows of ``weight`` (num_embeddings, dim) at the int64
    indices ``input``, shaped ``input.shape + (dim,)``; an index outside
    [0, num_embeddings) is an error, as in PyTorch. The gradient adds into each row once
    per use.

    >>> import numpy as np, graphc as gc
    >>> w = np.arange(6.0).reshape(3, 2)
    >>> gc.jit(lambda i, w: gc.nn.functional.embedding(i, w))(np.array([[2, 0]]), w)
    array([[[4., 5.],
            [0., 1.]]])
    """
    w, idx = as_tensor(weight), _int_indices(input, "embedding")
    if w.ndim != 2:
        raise ShapeError(f"embedding needs a weight (num_embeddings, dim), got "
                         f"{format_shape(w.shape)}")
    return take(w, idx, 0, negative=False)   # PyTorch refuses negative token ids too


def index_select(input, dim, index):  # noqa: A002
    """``torch.index_select``: the slices of ``input`` along ``dim`` at the 1-D int64
    ``index``."""
    x, idx = as_tensor(input), _int_indices(index, "index_select")
    if isinstance(idx, Tensor) and idx.ndim != 1:
        raise ShapeError(f"index_select needs a 1-D index, got {format_shape(idx.shape)}")
    return take(x, idx, dim)


# --- losses (mean reduction) -------------------------------------------------

def _labels(target, x):
    """Class labels as an int64 tensor: a traced one, or a fixed integer array (gc.jit)
    checked against the classes now and captured as int64 (not the float dtype)."""
    if isinstance(target, (np.ndarray, list)) and np.asarray(target).dtype.kind in "iu":
        classes = x.shape[-1]
        return _index_tensor(x, target, classes, lo=0, what=f"{classes} classes")
    return as_tensor(target)


def cross_entropy(logits, target):
    """``F.cross_entropy``: softmax cross-entropy of logits against int64 class labels."""
    x = as_tensor(logits)
    return x._new("softmax_cross_entropy", [x, _labels(target, x)])


def nll_loss(logp, target):
    x = as_tensor(logp)
    return x._new("nll_loss", [x, _labels(target, x)])


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


# --- convolutional networks ------------------------------------------------------

def _pair(v, what):
    t = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(t) != 2 or not all(isinstance(i, int) for i in t):
        raise ShapeError(f"{what} must be an int or a pair of ints, got {v!r}")
    return t


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002
    """``F.conv2d``: NCHW input, weight ``(out, in/groups, kh, kw)``, optional bias ``(out,)``.

    >>> import numpy as np, graphc as gc
    >>> y = gc.jit(lambda x, w: gc.functional.conv2d(x, w, padding=1))(
    ...     np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3)))
    >>> float(y[0, 0, 1, 1]), float(y[0, 0, 0, 0])   # centre sees 9 ones, a corner 4
    (9.0, 4.0)
    """
    x, w = as_tensor(input), as_tensor(weight)
    if padding == "valid":
        padding = 0
    if isinstance(padding, str):
        raise ShapeError(f"conv2d padding {padding!r}: graphc supports ints, pairs and 'valid'")
    attrs = {"stride": _pair(stride, "stride"), "padding": _pair(padding, "padding"),
             "dilation": _pair(dilation, "dilation"), "groups": int(groups)}
    y = x._new("conv2d", [x, w], attrs)
    if bias is not None:
        b = as_tensor(bias)
        y = y + b.reshape(b.shape[0], 1, 1)
    return y


def _pool_attrs(kernel_size, stride, padding):
    k = _pair(kernel_size, "kernel_size")
    s = k if stride is None or stride == () or stride == [] else _pair(stride, "stride")
    return {"kernel": k, "stride": s, "padding": _pair(padding, "padding")}


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,  # noqa: A002
               return_indices=False):
    """``F.max_pool2d`` (stride defaults to the kernel size; -inf padding)."""
    if dilation not in (1, (1, 1)) or ceil_mode or return_indices:
        raise ShapeError("max_pool2d: dilation, ceil_mode and return_indices are not supported")
    x = as_tensor(input)
    return x._new("max_pool2d", [x], _pool_attrs(kernel_size, stride, padding))


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,  # noqa: A002
               count_include_pad=True, divisor_override=None):
    """``F.avg_pool2d`` with its defaults (padding counted in the divisor)."""
    if ceil_mode or not count_include_pad or divisor_override is not None:
        raise ShapeError("avg_pool2d: ceil_mode, count_include_pad=False and divisor_override "
                         "are not supported")
    x = as_tensor(input)
    return x._new("avg_pool2d", [x], _pool_attrs(kernel_size, stride, padding))


def _state(t):
    """A Buffer or Tensor as a Tensor (buffers are not TensorOps)."""
    return t._t() if hasattr(t, "_t") else as_tensor(t)


def _need_two_values(x, axes):
    """Training batch norm needs two values per channel, as PyTorch insists: with one the
    variance is 0 and the running variance's count / (count - 1) is 0/0, a NaN that
    stays in the buffer and makes every later forward NaN. A static count is checked
    here; one that depends on the batch size (no other axis to count) is checked by the
    runtime before each call (``min_batch`` in the graph's meta)."""
    sizes = [x.shape[a] for a in axes]
    static = int(np.prod([d for d in sizes if d != BATCH]))
    if static > 1:
        return
    if BATCH not in sizes:
        raise ShapeError(f"batch_norm in training needs more than 1 value per channel, got "
                         f"input {format_shape(x.shape)}")
    x.graph.meta["min_batch"] = 2


def batch_norm(input, running_mean, running_var, weight=None, bias=None,  # noqa: A002
               training=False, momentum=0.1, eps=1e-5):
    """``F.batch_norm`` over dim 1 of (N, C), (N, C, L) or (N, C, H, W).

    Training: normalise with the batch mean and biased variance; running buffers (gc.nn
    Buffers) get ``(1 - momentum) * old + momentum * new`` with the unbiased variance,
    as PyTorch. Eval: normalise with the running statistics. Built from IR ops, so its
    gradient comes from autodiff.
    """
    x = as_tensor(input)
    if x.ndim < 2:
        raise ShapeError(f"batch_norm needs input (N, C, ...), got {format_shape(x.shape)}")
    C = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    bshape = (1, C) + (1,) * (x.ndim - 2)
    if training:
        _need_two_values(x, axes)
        mean, xc, var = _centered(x, axes)
        if running_mean is not None and running_var is not None:
            count = x._new("shape_size", [x], {"axes": axes, "dtype": x.dtype})
            unbiased = var.reshape(C) * (count / (count - 1.0))
            rm, rv = _state(running_mean), _state(running_var)
            running_mean.update(rm * (1.0 - momentum) + mean.reshape(C) * momentum)
            running_var.update(rv * (1.0 - momentum) + unbiased * momentum)
    else:
        if running_mean is None or running_var is None:
            raise ShapeError("batch_norm in eval mode needs running_mean and running_var")
        mean = _state(running_mean).reshape(bshape)
        var = _state(running_var).reshape(bshape)
        xc = x - mean
    y = xc * ((var + eps) ** -0.5)
    if weight is not None:
        y = y * as_tensor(weight).reshape(bshape)
    if bias is not None:
        y = y + as_tensor(bias).reshape(bshape)
    return y


def dropout(input, p=0.5, training=True, inplace=False, seed=None):  # noqa: A002
    """``F.dropout``: zero elements with probability ``p``, scale the rest by 1/(1-p).

    In training mode the mask comes from ``seed`` (a rank-0 Tensor or gc.nn Buffer holding
    an integer; gc.nn.Dropout keeps one and advances it every training step). At eval, or
    with p == 0, it is the identity.
    """
    x = as_tensor(input)
    if not 0.0 <= p <= 1.0:
        raise ShapeError(f"dropout probability has to be between 0 and 1, got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    if seed is None:
        raise ShapeError("F.dropout in training mode needs seed= (a rank-0 tensor); "
                         "gc.nn.Dropout keeps and advances its own seed")
    mask = x._new("dropout_mask", [x, _state(seed)], {"p": float(p)})
    return x * mask
