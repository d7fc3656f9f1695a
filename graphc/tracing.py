"""Tracing: Python code on :class:`Tensor` values records IR nodes into a graph.

Tracing runs the user's function once on symbolic tensors; every operation adds a node
(hash-consed, so repeated expressions are shared). Module parameters and buffers are
looked up in the active trace so ``self.weight`` inside ``forward`` becomes the graph
input named ``fc1.weight``.

>>> from graphc.tracing import trace_function
>>> g = trace_function(lambda x: x * 2 + 1, [((3,), "float64")])
>>> [n.op for n in g.nodes()][1:]
['constant', 'mul', 'constant', 'add']
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

from graphc.ir import BATCH, DTypeError, Graph, OpError, ShapeError, TensorType
from graphc.ir.ops._util import broadcast_shapes
from graphc.ir.types import dtype_name, format_shape

_STATE = threading.local()


class TraceContext:
    def __init__(self, graph: Graph, training: bool = False):
        self.graph = graph
        self.training = training
        self.bound: dict = {}          # id(Parameter or buffer holder) -> node id
        self.buffer_updates: dict = {}  # buffer name -> node id
        self.rng_counter = 0
        self.scope: list[str] = []      # names of the modules being called, innermost last
        # arrays the traced function closed over become "const" inputs (gc.jit and
        # friends); None where they are an error (a Module holds its arrays as buffers)
        self.captures: list | None = None
        # (id(array), dtype) -> (node id, array): one input per array; holding it keeps
        # its id from being reused by a temporary array made later in the trace
        self.capture_ids: dict = {}
        self.capture_names: dict = {}   # id(array) -> the name it has in the function

    def capture(self, value: np.ndarray, dtype: str | None = None) -> int:
        """The ``const`` input holding a copy of ``value`` (made on first use), in the
        trace's float dtype or in ``dtype`` (``"int64"`` for labels and indices)."""
        dtype = dtype or _trace_float_dtype(self.graph)
        hit = self.capture_ids.get((id(value), dtype))
        if hit is not None:
            return hit[0]
        if value.dtype.kind not in "biuf":
            raise DTypeError(f"a NumPy array of shape {format_shape(value.shape)} and dtype "
                             f"{value.dtype} was used inside a traced function; only "
                             f"numeric arrays can be captured")
        taken = {self.graph.nx.nodes[i].get("name") for i in self.graph.inputs}
        name = self.capture_names.get(id(value))
        if name is None or name in taken:
            name = next(f"const{k}" for k in range(len(taken) + 1) if f"const{k}" not in taken)
        # a copy: the value is baked in when the function is traced (as in jax.jit), so
        # later changes to the caller's array do not reach compiled calls
        array = np.array(value, dtype=dtype, order="C")
        nid = self.graph.add_input(TensorType(array.shape, dtype), name, "const")
        self.capture_ids[(id(value), dtype)] = (nid, value)
        self.captures.append(array)
        return nid


def current() -> TraceContext:
    ctx = getattr(_STATE, "ctx", None)
    if ctx is None:
        raise ShapeError("graphc operations on parameters need an active trace: call the model "
                         "through gc.compile / gc.jit, not directly")
    return ctx


def active() -> TraceContext | None:
    return getattr(_STATE, "ctx", None)


@contextmanager
def tracing(graph: Graph, training: bool = False):
    prev = getattr(_STATE, "ctx", None)
    _STATE.ctx = TraceContext(graph, training)
    try:
        yield _STATE.ctx
    finally:
        _STATE.ctx = prev


def _functional():
    from graphc import functional   # imports this module: looked up at call time
    return functional


class TensorOps:
    """Operators shared by :class:`Tensor` and ``nn.Parameter``; ``_t()`` gives the Tensor."""

    __array_priority__ = 1000   # so ndarray (op) Tensor defers to us

    def _t(self) -> "Tensor":
        raise NotImplementedError

    def __add__(self, o): return _binary("add", self, o)
    def __radd__(self, o): return _binary("add", o, self)
    def __sub__(self, o): return _binary("sub", self, o)
    def __rsub__(self, o): return _binary("sub", o, self)
    def __mul__(self, o): return _binary("mul", self, o)
    def __rmul__(self, o): return _binary("mul", o, self)
    def __truediv__(self, o): return _binary("div", self, o)
    def __rtruediv__(self, o): return _binary("div", o, self)
    def __floordiv__(self, o): return _binary("floor_divide", self, o)
    def __rfloordiv__(self, o): return _binary("floor_divide", o, self)
    def __mod__(self, o): return _binary("remainder", self, o)
    def __rmod__(self, o): return _binary("remainder", o, self)
    def __neg__(self):   # integers stay integers: -x is 0 - x
        t = self._t()
        return _binary("sub", 0, t) if t.type.dtype == "int64" else t._unary("neg")
    def __pos__(self): return self._t()

    def __pow__(self, p):
        if isinstance(p, np.ndarray) and p.ndim == 0:
            p = p.item()
        if isinstance(p, (int, float, np.integer, np.floating)) and not isinstance(p, bool):
            return self._t()._unary("pow", {"exponent": float(p)})
        raise ShapeError("only constant exponents are supported: x ** 2.0, not x ** tensor")

    def __rpow__(self, base):
        """``base ** x`` for a positive constant ``base`` (a number or an array), as
        ``exp(x * ln base)`` (floats)."""
        t = self._t()
        if isinstance(base, (int, float, np.integer, np.floating)) and not isinstance(base, bool):
            if base > 0:
                return (_to_float(t) * float(np.log(base)))._unary("exp")
            raise OpError(f"{_where(t)}{base!r} ** tensor: the base must be a positive constant")
        if (isinstance(base, np.ndarray) and base.dtype.kind in "iuf" and base.size
                and np.all(base > 0)):
            return (_to_float(t) * np.log(base.astype(np.float64)))._unary("exp")
        what = (f"an array {format_shape(base.shape)} of dtype {base.dtype}"
                if isinstance(base, np.ndarray) else f"a {type(base).__name__}")
        raise OpError(f"{_where(t)}base ** tensor with {what} as the base: the base must be "
                      f"positive numbers")

    def __abs__(self): return self._t()._unary("abs")

    def where(self, condition, other): return where(condition, self, other)
    def __getitem__(self, key): return getitem(self._t(), key)
    def __matmul__(self, o): return matmul(self, o)
    def __rmatmul__(self, o): return matmul(o, self)
    def __gt__(self, o): return _binary("gt", self, o)
    def __ge__(self, o): return _binary("ge", self, o)
    def __lt__(self, o): return _binary("lt", self, o)
    def __le__(self, o): return _binary("le", self, o)

    # elementwise, as in PyTorch and NumPy (a 0/1 mask), not object identity: without
    # them `x == 1.0` was Python's False, baked into the graph as a constant
    def __eq__(self, o):
        return NotImplemented if o is None else _binary("eq", self, o)

    def __ne__(self, o):
        return NotImplemented if o is None else _binary("ne", self, o)

    __hash__ = object.__hash__   # still usable as dict keys and in sets, by identity

    @property
    def shape(self): return self._t().type.shape

    @property
    def dtype(self): return self._t().type.dtype

    @property
    def ndim(self): return self._t().type.rank

    @property
    def T(self): return self._t().transpose()

    def size(self, dim=None):
        shape = self.shape
        return shape if dim is None else shape[dim]

    def dim(self): return self.ndim

    def exp(self): return self._t()._unary("exp")
    def log(self): return self._t()._unary("log")
    def sin(self): return self._t()._unary("sin")
    def cos(self): return self._t()._unary("cos")
    def tanh(self): return self._t()._unary("tanh")
    def sigmoid(self): return self._t()._unary("sigmoid")
    def relu(self): return self._t()._unary("relu")
    def sqrt(self): return self._t()._unary("sqrt")
    def abs(self): return self._t()._unary("abs")
    def erf(self): return self._t()._unary("erf")
    def neg(self): return -self
    def square(self): return self._t()._unary("pow", {"exponent": 2.0})
    def pow(self, p): return self ** p

    # methods that are compositions live in graphc.functional, which builds on this module
    def softmax(self, dim=-1): return _functional().softmax(self, dim)
    def log_softmax(self, dim=-1): return _functional().log_softmax(self, dim)
    def clamp(self, min=None, max=None): return _functional().clamp(self, min, max)  # noqa: A002
    clip = clamp
    def logsumexp(self, dim, keepdim=False): return _functional().logsumexp(self, dim, keepdim)

    def var(self, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None,
            keepdims=None):
        return _functional().var(self, dim, unbiased, keepdim, correction=correction,
                                 axis=axis, keepdims=keepdims)

    def std(self, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None,
            keepdims=None):
        return _functional().std(self, dim, unbiased, keepdim, correction=correction,
                                 axis=axis, keepdims=keepdims)

    def astype(self, dtype):
        """This tensor converted to ``dtype`` (``"float32"``, ``np.float64``, ``"int64"``;
        floats to integers truncate toward zero, as NumPy does).

        >>> import numpy as np, graphc as gc
        >>> gc.jit(lambda x: x.astype("int64") * 2)(np.array([1.7, -2.5]))
        array([ 2, -4])
        """
        t = self._t()
        try:
            name = dtype_name(dtype)
        except DTypeError as exc:
            raise DTypeError(f"{_where(t)}astype: {exc}") from None
        return _cast(t, name)

    # --- PyTorch's small methods -------------------------------------------------
    def detach(self):
        """This value with no gradient flowing back through it (torch's detach)."""
        t = self._t()
        return t._new("stop_gradient", [t])

    def clone(self): return self._t()           # values are immutable in a trace
    def contiguous(self): return self._t()

    def t(self):
        """``torch.t``: the transpose of a tensor of at most 2 dims."""
        t = self._t()
        if t.ndim > 2:
            raise ShapeError(f"{_where(t)}t() expects at most 2 dims, got "
                             f"{format_shape(t.shape)} (use transpose(dim0, dim1) or .mT)")
        return t.transpose() if t.ndim == 2 else t

    @property
    def mT(self):  # noqa: N802 (torch's name)
        """The last two dims swapped (batches of matrices transposed)."""
        return self._t().transpose(-2, -1)

    def numel(self):
        t = self._t()
        if BATCH in t.shape:
            raise ShapeError(f"{_where(t)}numel() of {format_shape(t.shape)}: the batch "
                             f"dimension has no size while tracing")
        return int(np.prod(t.shape, dtype=np.int64))

    def item(self):
        raise ShapeError(f"{_where(self._t())}item(): a traced value has no number yet (it "
                         f"is computed when the compiled function runs); return it instead")

    def sign(self): return self._t()._unary("sign")
    def reciprocal(self): return 1.0 / self._t()
    def rsqrt(self): return self._t() ** -0.5
    def softplus(self): return self._t()._unary("softplus")
    def add(self, other, alpha=1): return self + (other if alpha == 1 else other * alpha)
    def sub(self, other, alpha=1): return self - (other if alpha == 1 else other * alpha)
    def mul(self, other): return self * other
    def div(self, other): return self / other
    def remainder(self, other): return self % other
    def floor_divide(self, other): return self // other
    def maximum(self, other): return _functional().maximum(self, other)
    def minimum(self, other): return _functional().minimum(self, other)
    def clamp_min(self, min): return _functional().clamp(self, min, None)  # noqa: A002
    def clamp_max(self, max): return _functional().clamp(self, None, max)  # noqa: A002

    def index_select(self, dim, index):
        return _functional().index_select(self, dim, index)

    def masked_fill(self, mask, value):
        """``value`` where ``mask`` is nonzero (a 0/1 mask or comparison), else self."""
        return where(mask, value, self)

    def float(self): return self.astype("float32")     # PyTorch's spellings
    def double(self): return self.astype("float64")
    def long(self): return self.astype("int64")

    def sum(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        return reduce("reduce_sum", self, dim, keepdim, axis, keepdims)
    def mean(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        return reduce("reduce_mean", self, dim, keepdim, axis, keepdims)
    def amax(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        return reduce("reduce_max", self, dim, keepdim, axis, keepdims)
    def amin(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        return _functional().amin(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def argmax(self, dim=None, keepdim=False):
        return _functional().argmax(self, dim, keepdim)

    def argmin(self, dim=None, keepdim=False):
        return _functional().argmin(self, dim, keepdim)

    def max(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """See ``graphc.functional.max``: PyTorch's ``max``, and NumPy's with ``axis``."""
        return _functional().max(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def min(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """See ``graphc.functional.min``: PyTorch's ``min``, and NumPy's with ``axis``."""
        return _functional().min(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def transpose(self, *perm):
        """``x.transpose(dim0, dim1)`` swaps two dims, as in PyTorch; ``x.transpose()``
        reverses the dims and ``x.transpose((2, 0, 1))`` permutes them, as in NumPy."""
        t = self._t()
        if len(perm) == 1 and isinstance(perm[0], (tuple, list)):
            perm = tuple(perm[0])
        elif len(perm) == 2:
            a, b = _dims(t, perm, "transpose")
            axes = list(range(t.ndim))
            axes[a], axes[b] = axes[b], axes[a]
            perm = tuple(axes)
        if perm:
            perm = _dims(t, perm, "permute")
            if sorted(perm) != list(range(t.ndim)):
                raise ShapeError(f"{_where(t)}permute{tuple(perm)} is not a permutation of the "
                                 f"{t.ndim} dims of {format_shape(t.shape)}")
        return t._new("transpose", [t], {"perm": tuple(perm) if perm else None})

    def permute(self, *perm): return self.transpose(tuple(perm[0]) if len(perm) == 1 else perm)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        t = self._t()
        try:
            target = resolve_reshape(t.type.shape, shape)
        except ShapeError as exc:
            raise ShapeError(_where(t) + str(exc)) from None
        if target == t.type.shape:
            return t
        return t._new("reshape", [t], {"shape": target})

    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        t = self._t()
        shape = t.shape
        if not shape:                      # a 0-d tensor flattens to one element
            return t.reshape((1,))
        s, e = _dims(t, (start_dim, end_dim), "flatten")
        if s > e:
            raise ShapeError(f"{_where(t)}flatten: start_dim {start_dim} comes after end_dim "
                             f"{end_dim} for shape {format_shape(shape)}")
        merged = shape[s:e + 1]
        if BATCH in merged and len(merged) > 1:
            raise ShapeError(f"cannot flatten the batch dimension of {format_shape(shape)} "
                             f"into other dimensions")
        size = BATCH if BATCH in merged else int(np.prod(merged))
        return self.reshape(shape[:s] + (size,) + shape[e + 1:])

    def unsqueeze(self, dim):
        t = self._t()
        shape = list(t.shape)
        (dim,) = _dims(t, (dim,), "unsqueeze", rank=len(shape) + 1)
        return self.reshape(tuple(shape[:dim] + [1] + shape[dim:]))

    def squeeze(self, dim=None):
        """Drop dims of size 1: all of them, or those of ``dim`` (an int or a tuple) that
        have size 1, as PyTorch."""
        t = self._t()
        shape = t.shape
        if dim is None:
            return self.reshape(tuple(d for d in shape if d != 1))
        if not shape:
            _dims(t, dim if isinstance(dim, (tuple, list)) else (dim,), "squeeze", rank=1)
            return t
        drop = {d for d in _dims(t, dim if isinstance(dim, (tuple, list)) else (dim,),
                                 "squeeze") if shape[d] == 1}
        return self.reshape(tuple(d for i, d in enumerate(shape) if i not in drop)) if drop \
            else t

    def expand(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        t = self._t()
        lead = len(shape) - t.ndim
        if lead < 0 or any(d == -1 for d in shape[:lead]):
            raise ShapeError(f"{_where(t)}expand{tuple(shape)}: {format_shape(t.shape)} needs "
                             f"at least {t.ndim} sizes, and -1 (keep) only for its own dims")
        full = tuple(t.shape[i - lead] if d == -1 else d for i, d in enumerate(shape))
        return t._new("broadcast_to", [t], {"shape": full})

    broadcast_to = expand


class Tensor(TensorOps):
    """A symbolic value in the graph being traced."""

    __slots__ = ("graph", "id")

    def __init__(self, graph: Graph, nid: int):
        self.graph = graph
        self.id = nid

    def _t(self):
        return self

    @property
    def type(self) -> TensorType:
        return self.graph.type_of(self.id)

    def _new(self, op, args, attrs=None, name=None) -> "Tensor":
        if name is None:
            ctx = active()
            name = ctx.scope[-1] if ctx is not None and ctx.scope else None
        return Tensor(self.graph, self.graph.add(op, [a.id for a in args], attrs, name))

    def _unary(self, op, attrs=None):
        """An elementwise math op: int64 is promoted to the trace's float dtype first
        (``exp`` of integers is a float, as in PyTorch and JAX)."""
        t = _to_float(self)
        return t._new(op, [t], attrs)

    def __repr__(self):
        return f"Tensor(%{self.id}: {self.type})"

    def __bool__(self):
        raise ShapeError("a traced Tensor has no truth value: graphc traces straight-line "
                         "code (use gc.maximum / comparisons as values instead of `if`)")

    def __array__(self, *a, **k):
        raise ShapeError("a traced Tensor cannot become a NumPy array during tracing")

    # NumPy's functions cannot work on a Tensor: np.sum(t) would call t.sum with NumPy's
    # own keywords (out=...), np.exp(t) would try to make an array of it. The ufuncs that
    # Python's operators call between an ndarray and a Tensor (arr + t, arr @ t, arr < t)
    # are traced as the operators are.
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if "out" in kwargs:
            raise OpError(f"np.{ufunc.__name__}(..., out=): a NumPy array cannot hold a traced "
                          f"Tensor (write arr = arr + t, not arr += t)")
        name = ufunc.__name__
        if method != "__call__" or kwargs or name not in _OPERATOR_UFUNCS:
            raise OpError(_numpy_hint(name))
        if name == "matmul":
            return matmul(*inputs)
        if name == "power":
            base, exponent = inputs
            return base ** exponent if isinstance(base, Tensor) else exponent.__rpow__(base)
        return _binary(_OPERATOR_UFUNCS[name], *inputs)

    def __array_function__(self, func, types, args, kwargs):
        raise OpError(_numpy_hint(func.__name__))

    def __len__(self):
        shape = self.type.shape
        if not shape:
            raise ShapeError(f"{_where(self)}len() of a 0-d tensor")
        if shape[0] == BATCH:
            raise ShapeError(f"{_where(self)}len() of {format_shape(shape)}: the batch "
                             f"dimension has no size while tracing")
        return shape[0]

    def __iter__(self):
        """The slices along dim 0, as PyTorch iterates (its size must be static)."""
        return (self[i] for i in range(len(self)))


def _numpy_hint(name: str) -> str:
    use = ([f"gc.{name}(...)"] if hasattr(_functional(), name) else []) + \
        ([f"x.{name}(...)"] if hasattr(TensorOps, name) else [])
    return (f"np.{name} cannot take a traced Tensor: use "
            f"{' or '.join(use) or 'the graphc function or Tensor method'}")


# NumPy ufunc -> graph op, for ndarray (op) Tensor
_OPERATOR_UFUNCS = {"add": "add", "subtract": "sub", "multiply": "mul", "true_divide": "div",
                    "divide": "div", "greater": "gt", "greater_equal": "ge", "less": "lt",
                    "less_equal": "le", "equal": "eq", "not_equal": "ne", "matmul": None,
                    "power": None}


def _where(t: "Tensor") -> str:
    """``"in 'Net', the output of 'conv2': "``: where a traced shape error happened."""
    ctx = active()
    parts = []
    if ctx is not None and ctx.scope:
        parts.append(f"in {ctx.scope[-1]!r}")
    src = t.graph.nx.nodes[t.id].get("name")
    if src and (not parts or src != ctx.scope[-1]):
        kind = "input" if t.graph.op_of(t.id) == "input" else "the output of"
        parts.append(f"{kind} {src!r}")
    return (", ".join(parts) + ": ") if parts else ""


def as_tensor(value, like: Tensor | None = None) -> Tensor:
    """Lift a Tensor, Parameter, or Python number (as a rank-0 constant) into the trace."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, TensorOps):
        return value._t()
    if isinstance(value, (bool, int, float, np.floating, np.integer)) or \
            (isinstance(value, np.ndarray) and value.ndim == 0):
        graph = like.graph if like is not None else current().graph
        # a number beside integers, or on its own, is a float (integer constants are
        # made by _promoted)
        dtype = (like.type.dtype if like is not None and like.type.dtype != "int64"
                 else _trace_float_dtype(graph))
        return Tensor(graph, graph.constant(float(value), dtype))
    if isinstance(value, np.ndarray):
        ctx = active()
        if ctx is not None and ctx.captures is not None:
            return Tensor(ctx.graph, ctx.capture(value))
        raise ShapeError(f"a NumPy array of shape {format_shape(value.shape)} was used where "
                         f"arrays are not captured (in a model's forward: hold it as a buffer "
                         f"with self.register_buffer, or pass it as an input)")
    if isinstance(value, tuple) and hasattr(value, "indices"):
        raise ShapeError("x.max(dim) and x.min(dim) give (values, indices), as in PyTorch: "
                         "take .values, or use x.amax(dim)")
    if isinstance(value, str) and value == BATCH:
        raise ShapeError("the batch size (a shape entry 'N') is not known while tracing, so it "
                         "cannot be used as a number: use gc.mean / x.mean instead of dividing "
                         "a sum by x.shape[0]")
    kind = type(value).__name__
    if type(value).__module__.startswith("torch"):
        kind = f"torch.{kind} (graphc traces NumPy arrays: use .detach().cpu().numpy())"
    raise ShapeError(f"cannot use a {kind} in a graphc expression")


def _trace_float_dtype(graph: Graph) -> str:
    """The float dtype of a trace (what integer values are promoted to)."""
    dtype = graph.meta.get("dtype", "float32")
    return "float32" if dtype == "int64" else dtype


def _cast(t: Tensor, dtype: str) -> Tensor:
    return t if t.type.dtype == dtype else t._new("cast", [t], {"dtype": dtype})


def _to_float(t: Tensor) -> Tensor:
    """``t`` itself, or for an int64 tensor a cast to the trace's float dtype."""
    return _cast(t, _trace_float_dtype(t.graph)) if t.type.dtype == "int64" else t


def _is_integer(value) -> bool:
    return (isinstance(value, (bool, int, np.integer))
            or (isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "biu"))


def _promoted(values, like: Tensor, integer_ok: bool = True) -> list:
    """``values`` (tensors and Python numbers) as tensors of one dtype, PyTorch's way:
    int64 when every one is an int64 tensor or a Python integer (and ``integer_ok``);
    else float64 if a float64 tensor is among them, else float32 if a float32 one is,
    else the trace's float dtype; tensors of other dtypes are cast."""
    tensors = [v._t() for v in values if isinstance(v, TensorOps)]
    dtypes = {t.type.dtype for t in tensors}
    if dtypes == {"int64"} and integer_ok and \
            all(_is_integer(v) for v in values if not isinstance(v, TensorOps)):
        return [v._t() if isinstance(v, TensorOps)
                else Tensor(like.graph, like.graph.constant(int(v), "int64"))
                for v in values]
    if len(dtypes) > 1 or "int64" in dtypes:
        target = ("float64" if "float64" in dtypes else "float32" if "float32" in dtypes
                  else _trace_float_dtype(like.graph))
        values = [_cast(v._t(), target) if isinstance(v, TensorOps) else v for v in values]
        like = _cast(like, target)
    return [as_tensor(v, like) for v in values]


def _binary(op, a, b) -> Tensor:
    """``op(a, b)``; dtypes promoted as :func:`_promoted` says (``/`` always gives floats)."""
    like = a._t() if isinstance(a, TensorOps) else b._t()
    ta, tb = _promoted([a, b], like, integer_ok=op != "div")
    return ta._new(op, [ta, tb])


def where(condition, a, b) -> Tensor:
    """``a`` where ``condition`` is nonzero, else ``b`` (``torch.where``); any of the three
    may be a Python number, and they broadcast together.

    >>> import numpy as np, graphc as gc
    >>> gc.jit(lambda x: gc.where(x > 0, x, 0.1 * x))(np.array([-2.0, 3.0]))
    array([-0.2,  3. ])
    """
    tensors = [v._t() for v in (a, b, condition) if isinstance(v, TensorOps)]
    if not tensors:
        raise ShapeError("where: one of condition, a, b must be a traced tensor")
    like = tensors[0]
    tc = as_tensor(condition, like)
    value_tensors = [v._t() for v in (a, b) if isinstance(v, TensorOps)]
    ta, tb = _promoted([a, b], value_tensors[0] if value_tensors else like)
    return like._new("where", [tc, ta, tb])


def getitem(t: Tensor, key) -> Tensor:
    """``t[key]``: ints, slices, ``...`` and ``None`` by NumPy's rules, and one integer
    array (an int64 Tensor, or a NumPy array or list of ints) along one axis, whose
    axes take that axis' place (``x[idx]``, ``x[:, idx]``). The batch axis can only be
    taken whole (``:``). The result is a copy.

    >>> import numpy as np, graphc as gc
    >>> gc.jit(lambda x: x[1:, ::-1])(np.arange(6.0).reshape(2, 3))
    array([[5., 4., 3.]])
    """
    key = key if isinstance(key, tuple) else (key,)
    if any(_is_index_array(k) for k in key):
        return _gather(t, key)
    shape = t.shape
    if sum(1 for k in key if k is Ellipsis) > 1:
        raise ShapeError(f"{_where(t)}an index can only have one ellipsis ('...')")
    taking = sum(1 for k in key if k is not None and k is not Ellipsis)
    if taking > len(shape):
        raise ShapeError(f"{_where(t)}too many indices ({taking}) for shape "
                         f"{format_shape(shape)}")
    if Ellipsis in key:
        at = key.index(Ellipsis)
        key = key[:at] + (slice(None),) * (len(shape) - taking) + key[at + 1:]
    else:
        key = key + (slice(None),) * (len(shape) - taking)
    index, out_shape, axis = [], [], 0
    for k in key:
        if k is None:
            out_shape.append(1)
            continue
        extent = shape[axis]
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer, slice)):
            raise ShapeError(f"{_where(t)}graphc supports basic indexing (ints, slices, ..., "
                             f"None), not {type(k).__name__} indices")
        if extent == BATCH:
            if k != slice(None):
                raise ShapeError(f"{_where(t)}axis {axis} of {format_shape(shape)} is the "
                                 f"batch axis: it can only be taken whole (':'), got {k!r}")
            index.append((0, None, 1))
            out_shape.append(BATCH)
        elif isinstance(k, slice):
            start, stop, step = k.indices(extent)
            n = len(range(start, stop, step))
            if n == 0:
                raise ShapeError(f"{_where(t)}slice {k.start}:{k.stop}:{k.step} of axis "
                                 f"{axis} (extent {extent}) selects nothing")
            index.append((start, stop, step))
            out_shape.append(n)
        else:
            if not -extent <= k < extent:
                raise ShapeError(f"{_where(t)}index {int(k)} is out of range for axis {axis} "
                                 f"of {format_shape(shape)}")
            k = int(k) % extent
            index.append((k, k + 1, 1))
        axis += 1
    full = all(r == (0, None, 1) or r == (0, d, 1) for r, d in zip(index, shape))
    out = t if full else t._new("slice", [t], {"index": tuple(index)})
    return out if tuple(out_shape) == out.shape else out.reshape(tuple(out_shape))


def _dims(t: Tensor, dims, what: str, rank: int | None = None) -> tuple:
    """``dims`` as non-negative ints below ``rank`` (default t's), negatives counted from
    the end; out of range is a ShapeError, as PyTorch's IndexError (never wrapped)."""
    rank = t.ndim if rank is None else rank
    out = []
    for d in dims:
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or not -rank <= d < rank:
            lo, hi = (-rank, rank - 1) if rank else (0, -1)
            raise ShapeError(f"{_where(t)}{what}: dim {d!r} is out of range for shape "
                             f"{format_shape(t.shape)} (expected in [{lo}, {hi}])")
        out.append(int(d) % rank)
    return tuple(out)


def _is_index_array(k) -> bool:
    return isinstance(k, (TensorOps, list)) or (isinstance(k, np.ndarray) and k.ndim > 0)


def _index_tensor(t: Tensor, k, axis_extent, lo=None, what=None) -> Tensor:
    """An int64 tensor of the indices ``k``: a traced one as it is, a static array or
    list captured (gc.jit) after checking its values against [lo, axis_extent) (``lo``
    defaults to -axis_extent: negative indices count from the end). ``what`` words the
    range in errors ("3 classes")."""
    if isinstance(k, TensorOps):
        k = k._t()
        if k.type.dtype != "int64":
            raise ShapeError(f"{_where(t)}indices must be int64, got a {k.type.dtype} tensor "
                             f"(boolean masks select a data-dependent number of elements, "
                             f"which graphc cannot shape: use gc.where; for indices, .long())")
        return k
    arr = np.asarray(k)
    if arr.size == 0:
        raise ShapeError(f"{_where(t)}an empty index selects nothing: graphc tensors have no "
                         f"empty axes")
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        raise ShapeError(f"{_where(t)}indices must be integers, got an array of dtype "
                         f"{arr.dtype} (boolean masks select a data-dependent number of "
                         f"elements, which graphc cannot shape: use gc.where)")
    if axis_extent != BATCH:
        lo = -axis_extent if lo is None else lo
        bad = arr[(arr < lo) | (arr >= axis_extent)]
        if bad.size:
            noun, range_ = ("index", f"an axis of extent {axis_extent}") if what is None \
                else ("label", f"{what} (valid {lo}..{axis_extent - 1})")
            raise ShapeError(f"{_where(t)}{noun} {int(bad.flat[0])} is out of range for "
                             f"{range_}")
    ctx = active()
    if ctx is None or ctx.captures is None:
        raise ShapeError(f"{_where(t)}a fixed array of indices {format_shape(arr.shape)} "
                         f"can be used in gc.jit and gc.grad; in a model's forward, pass "
                         f"the indices as an int64 input")
    return Tensor(ctx.graph, ctx.capture(arr, "int64"))


def _gather(t: Tensor, key: tuple) -> Tensor:
    """``t[key]`` where one entry of ``key`` is an integer array: the other entries
    (slices, ``...``, ``None``) first, then a ``take`` along the array's axis."""
    arrays = [i for i, k in enumerate(key) if _is_index_array(k)]
    ints = [k for k in key if isinstance(k, (int, np.integer)) and not isinstance(k, bool)]
    if len(arrays) > 1 or ints:
        raise ShapeError(f"{_where(t)}graphc indexes with one integer array beside slices, "
                         f"'...' and None; NumPy's rules for several arrays, or an array "
                         f"and an int, are not supported: index in two steps")
    p = arrays[0]
    base = getitem(t, key[:p] + (slice(None),) + key[p + 1:])
    # the axis the array indexes, in ``base``: one per slice or None before it, and the
    # axes an ellipsis before it stands for
    before = key[:p]
    axis = sum(1 for k in before if k is not Ellipsis)
    if Ellipsis in before:
        axis += t.ndim - sum(1 for k in key if k is not None and k is not Ellipsis)
    extent = base.shape[axis]
    if extent == BATCH:
        raise ShapeError(f"{_where(t)}axis {axis} of {format_shape(base.shape)} is the "
                         f"batch axis: it can only be taken whole (':'), not indexed by "
                         f"an array")
    return take(base, _index_tensor(t, key[p], extent), axis)


def take(x, indices, axis: int, *, negative: bool = True) -> Tensor:
    """``np.take(x, indices, axis)``: the slices of ``x`` along ``axis`` at int64
    ``indices``, idx's axes in that axis' place. Negative indices count from the end
    (``negative=False`` makes them errors, as ``nn.Embedding`` does). Its gradient adds
    each slice's gradient into the row it came from.

    >>> import numpy as np, graphc as gc
    >>> gc.jit(lambda x, i: gc.take(x, i, 1))(np.arange(6.0).reshape(2, 3), np.array([2, 0]))
    array([[2., 0.],
           [5., 3.]])
    """
    x = as_tensor(x)
    if not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"{_where(x)}take: axis {axis} is out of range for shape "
                         f"{format_shape(x.shape)}")
    axis %= x.ndim
    idx = indices._t() if isinstance(indices, TensorOps) else \
        _index_tensor(x, indices, x.shape[axis])
    if idx.type.dtype != "int64":
        raise ShapeError(f"{_where(x)}take needs int64 indices, got {idx.type}")
    return x._new("take", [x, idx], {"axis": axis, "negative": negative})


def _fold_last_transpose(t: Tensor):
    """(operand, flipped): a transpose of the last two axes is read through a flag."""
    node = t.graph.node(t.id)
    swap = tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2)
    if node.op == "transpose" and node.attrs["perm"] == swap:
        return Tensor(t.graph, node.args[0]), True
    return t, False


def _batched_matmul(ta: Tensor, tb: Tensor) -> Tensor:
    """``torch.matmul`` for an operand of rank >= 3: vectors gain and lose an axis, the
    leading dims broadcast, and each leading index is one product (batch_matmul)."""
    if ta.ndim == 1:
        return _batched_matmul(ta.reshape(1, -1), tb).squeeze(-2)
    if tb.ndim == 1:
        return _batched_matmul(ta, tb.reshape(-1, 1)).squeeze(-1)
    if ta.shape[-1] != tb.shape[-2]:
        raise ShapeError(f"{_where(ta)}matmul: cannot multiply {format_shape(ta.shape)} by "
                         f"{format_shape(tb.shape)}: inner sizes {ta.shape[-1]} and "
                         f"{tb.shape[-2]} differ")
    try:
        lead = broadcast_shapes(ta.shape[:-2], tb.shape[:-2])
    except ShapeError:
        raise ShapeError(f"{_where(ta)}matmul: the leading dims of {format_shape(ta.shape)} "
                         f"and {format_shape(tb.shape)} do not broadcast") from None
    ops, flags = [], []
    for t in (ta, tb):
        if t.shape[:-2] == lead:
            t, flipped = _fold_last_transpose(t)
        else:
            t, flipped = t.expand(*(lead + t.shape[-2:])), False
        ops.append(t)
        flags.append(flipped)
    return ops[0]._new("batch_matmul", ops, {"ta": flags[0], "tb": flags[1]})


def _tensor_list(op, tensors) -> list:
    """``tensors`` (a list or tuple) as Tensors; a lone tensor would iterate along dim 0
    and be joined as its rows, silently, so it is an error (as in PyTorch)."""
    if isinstance(tensors, (TensorOps, np.ndarray)):
        raise ShapeError(f"{op} takes a list or tuple of tensors, got a single "
                         f"{type(tensors).__name__}: write {op}([a, b], dim)")
    return [as_tensor(t) for t in tensors]


def cat(tensors, dim=0) -> Tensor:
    """``torch.cat``: tensors of equal shape outside ``dim`` joined along it (a copy);
    ``dim`` cannot be a compiled model's batch axis.

    >>> import numpy as np, graphc as gc
    >>> gc.jit(lambda a, b: gc.cat([a, b], dim=1))(np.ones((2, 1)), np.zeros((2, 2)))
    array([[1., 0., 0.],
           [1., 0., 0.]])
    """
    ts = _tensor_list("cat", tensors)
    if not ts:
        raise ShapeError("cat needs at least one tensor")
    rank = ts[0].ndim
    if rank == 0 or not -rank <= dim < rank:
        raise ShapeError(f"cat: dim {dim} is out of range for shape {format_shape(ts[0].shape)}")
    dim %= rank
    for t in ts:
        if t.ndim != rank or any(d != e for k, (d, e) in enumerate(zip(t.shape, ts[0].shape))
                                 if k != dim):
            raise ShapeError("cat: shapes " + ", ".join(format_shape(u.shape) for u in ts)
                             + f" differ outside dim {dim}")
    if ts[0].shape[dim] == BATCH:
        raise ShapeError(f"cat: dim {dim} is the batch axis, whose size is only known at run "
                         f"time")
    return ts[0] if len(ts) == 1 else ts[0]._new("concat", ts, {"axis": dim})


def stack(tensors, dim=0) -> Tensor:
    """``torch.stack``: tensors of one shape joined along a new axis ``dim``.

    >>> import numpy as np, graphc as gc
    >>> gc.jit(lambda a, b: gc.stack([a, b], dim=1))(np.ones(2), np.zeros(2)).shape
    (2, 2)
    """
    ts = _tensor_list("stack", tensors)
    if not ts:
        raise ShapeError("stack needs at least one tensor")
    rank = ts[0].ndim + 1
    if not -rank <= dim < rank:
        raise ShapeError(f"stack: dim {dim} is out of range for {rank - 1}-D tensors")
    if any(t.shape != ts[0].shape for t in ts):
        raise ShapeError("stack: shapes " + ", ".join(format_shape(t.shape) for t in ts)
                         + " differ")
    return cat([t.unsqueeze(dim % rank) for t in ts], dim % rank)


def matmul(a, b) -> Tensor:
    ta, tb = as_tensor(a), as_tensor(b)
    if ta.ndim == 0 or tb.ndim == 0:
        raise ShapeError(f"matmul needs operands of rank >= 1, got {format_shape(ta.shape)} "
                         f"and {format_shape(tb.shape)}")
    if ta.ndim >= 3 or tb.ndim >= 3:
        return _batched_matmul(ta, tb)
    if ta.ndim == 1 and tb.ndim == 1:
        return matmul(ta.reshape(1, -1), tb.reshape(-1, 1)).reshape(())
    if ta.ndim == 1 and tb.ndim == 2:
        return matmul(ta.reshape(1, -1), tb).reshape(-1)
    if ta.ndim == 2 and tb.ndim == 1:
        return matmul(ta, tb.reshape(-1, 1)).reshape(-1)
    # fold explicit transposes into the matmul's flags: no copy. Each one flips its
    # flag, so a transpose of a transposed weight (one stored input-major, see
    # ``gc.compile``) is read as it is stored.
    flags = {"ta": False, "tb": False}
    ops = []
    for key, t in (("ta", ta), ("tb", tb)):
        node = t.graph.node(t.id)
        while node.op == "transpose" and t.ndim == 2 and node.attrs["perm"] in (None, (1, 0)):
            flags[key] = not flags[key]
            t = Tensor(t.graph, node.args[0])
            node = t.graph.node(t.id)
        ops.append(t)
    return ops[0]._new("matmul", ops, flags)


def reduce(op, x, dim, keepdim, axis=None, keepdims=None) -> Tensor:
    """``op`` over ``dim`` (int, tuple or None = all); ``axis``/``keepdims`` are the
    NumPy spellings PyTorch also accepts. int64 is reduced in the trace's float dtype."""
    t = _to_float(as_tensor(x))
    if keepdims is not None:
        keepdim = keepdims
    return t._new(op, [t], {"axes": reduce_axes(op, t, dim, axis), "keepdims": bool(keepdim)})


def reduce_axes(op, t: Tensor, dim, axis=None) -> tuple:
    """The sorted non-negative axes of ``t`` that ``dim`` (int, tuple or None = all) or
    its NumPy alias ``axis`` names, for reductions; ``op`` names the caller in errors."""
    if axis is not None:
        if dim is not None:
            raise ShapeError(f"{op}: give dim or its alias axis, not both (dim={dim}, "
                             f"axis={axis})")
        dim = axis
    if dim is None:
        return tuple(range(t.ndim))
    dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
    for d in dims:
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool):
            raise ShapeError(f"{op}: dim must be an int or a tuple of ints, got {dim!r}")
        if not -t.ndim <= d < t.ndim:
            raise ShapeError(f"{op}: dim {d} is out of range for shape {format_shape(t.shape)}")
    return tuple(sorted(int(d) % t.ndim for d in dims))


def resolve_reshape(src: tuple, shape) -> tuple:
    """Resolve ``-1`` and the batch symbol in a reshape target, PyTorch style."""
    shape = tuple(BATCH if d == BATCH or d is None else int(d) for d in shape)
    src_t = TensorType(src)
    factor, power = src_t.numel_static()
    known = [d for d in shape if d not in (-1, BATCH)]
    known_factor = int(np.prod(known)) if known else 1
    n_batch = sum(1 for d in shape if d == BATCH)
    if shape.count(-1) > 1:
        raise ShapeError(f"view {shape}: only one dimension can be -1")
    if -1 in shape:
        fill_batch = power - n_batch
        if fill_batch not in (0, 1) or known_factor == 0 or factor % known_factor:
            raise ShapeError(f"cannot view {format_shape(src)} as {shape}: the sizes do not divide")
        rest = factor // known_factor
        if fill_batch == 1:
            if rest != 1:
                raise ShapeError(f"cannot view {format_shape(src)} as {shape}: -1 would mix the "
                                 f"batch dimension with {rest} features")
            shape = tuple(BATCH if d == -1 else d for d in shape)
        else:
            shape = tuple(rest if d == -1 else d for d in shape)
    if TensorType(shape).numel_static() != (factor, power):
        raise ShapeError(f"cannot view {format_shape(src)} as {format_shape(shape)}: "
                         f"the sizes differ")
    return shape


def trace_function(fn, arg_types, names=None, dtype="float64", captures=None):
    """Trace ``fn`` on inputs of ``[(shape, dtype), ...]``; returns the graph.

    With a list as ``captures``, NumPy arrays ``fn`` uses but does not take as arguments
    (closed over, or globals) become inputs of role ``const`` after the arguments, named
    as in ``fn``, and copies of them, in the dtype of the graph, are appended to the list
    in input order: the caller passes them after the arguments on every call.

    >>> import numpy as np
    >>> w, consts = np.array([1.0, 2.0, 3.0]), []
    >>> g = trace_function(lambda x: x * w, [((3,), "float64")], captures=consts)
    >>> g.input_names(), g.input_role(g.inputs[1]), consts[0]
    (['x', 'w'], 'const', array([1., 2., 3.]))
    """
    graph = Graph(getattr(fn, "__name__", "fn").strip("<>") or "fn")
    graph.meta["dtype"] = dtype
    if names is None:
        import inspect
        try:
            params = [p.name for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            params = []
        names = params[:len(arg_types)] if len(params) >= len(arg_types) else \
            [f"x{i}" for i in range(len(arg_types))]
    with tracing(graph) as ctx:
        args = [Tensor(graph, graph.add_input(TensorType(s, d), n))
                for (s, d), n in zip(arg_types, names)]
        if captures is not None:
            ctx.captures = captures
            ctx.capture_names = _array_names(fn)
        out = fn(*args)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    ids = [as_tensor(o, args[0] if args else None).id for o in outs]
    graph.set_outputs(ids)
    graph.meta["multi_output"] = isinstance(out, (tuple, list))
    return graph


def _array_names(fn) -> dict:
    """id(array) -> name, for the NumPy arrays ``fn`` closes over or reads as globals."""
    names = {}
    code = getattr(fn, "__code__", None)
    for name in getattr(code, "co_names", ()):
        value = getattr(fn, "__globals__", {}).get(name)
        if isinstance(value, np.ndarray):
            names.setdefault(id(value), name)
    for name, cell in zip(getattr(code, "co_freevars", ()), getattr(fn, "__closure__", None) or ()):
        try:
            value = cell.cell_contents
        except ValueError:   # a cell not yet filled
            continue
        if isinstance(value, np.ndarray):
            names[id(value)] = name
    return names
