"""The op registry: one declaration per op carries everything about it.

An :class:`OpDef` holds the op's shape/dtype inference, its NumPy reference
implementation (the interpreter and test oracle), its vector-Jacobian product written
in IR ops, its fusion kind, its code templates and the sample inputs that the
registry-driven tests use. Nothing elsewhere switches on op names.

>>> from graphc.ir import get_op
>>> get_op("exp").kind
<FusionKind.ELEMWISE: 0>
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Optional

from .errors import OpError


class FusionKind(enum.IntEnum):
    """TVM-style op patterns, ordered from most to least fusable."""

    ELEMWISE = 0      # out[i] = f(in[i]) with numpy broadcasting
    BROADCAST = 1     # out[i] = in[broadcast(i)]
    INJECTIVE = 2     # reshape, transpose: a fixed index map
    REDUCTION = 3     # sums, max, softmax, losses
    OUT_FUSABLE = 4   # matmul/conv: elementwise epilogues may fuse into them
    OPAQUE = 5        # inputs, constants, anything code must call as a whole


@dataclass(frozen=True)
class Sample:
    """Example operands for registry-driven tests.

    ``shapes`` are concrete input shapes (the batch dim uses a small int), ``domains``
    name the range to draw each input from: ``real``, ``positive``, ``unit`` (0, 1),
    ``nonzero`` (|x| >= 0.5), or ``labels:C`` for int64 class labels below C
    (``labels:L:H`` for integers in [L, H), such as negative indices).
    """

    shapes: tuple
    attrs: dict = field(default_factory=dict)
    domains: tuple = ()
    batch_dims: tuple = ()    # per input: axis that is the symbolic batch dim, or None

    def domain(self, i):
        return self.domains[i] if i < len(self.domains) else "real"


def label_range(domain: str) -> tuple:
    """[lo, hi) of an integer sample domain: ``labels:C`` or ``labels:L:H``.

    >>> label_range("labels:4"), label_range("labels:-5:5")
    ((0, 4), (-5, 5))
    """
    bounds = [int(b) for b in domain.split(":")[1:]]
    return (0, bounds[0]) if len(bounds) == 1 else tuple(bounds)


@dataclass
class OpDef:
    """Everything graphc knows about one op.

    infer(in_types, attrs) -> TensorType        shape and dtype inference; raises ShapeError
    impl(arrays, attrs, out_type) -> ndarray    NumPy reference (out_type has N resolved)
    vjp(graph, node, g) -> [grad id | None]     gradient per operand, built from IR ops;
                                                None for non-differentiable ops
    scalar(args, attrs, lit) -> str             elementwise ops: the scalar expression,
                                                ``lit(v)`` spells a typed literal
    kernel(ctx) -> None                         other ops: writes kernel lines through ctx
    cuda_kernel(ctx) -> None                    CUDA target, non-elementwise ops: writes the
                                                body of one ``@cuda.jit`` kernel and sets
                                                ``ctx.launch`` (see codegen/cuda.py)
    cuda_scalar(args, attrs, lit) -> str        CUDA target: overrides ``scalar`` where the
                                                CPU spelling does not compile for the GPU
    scratch(in_types, attrs, out_type, parts) -> [TensorType]
                                                CPU ``kernel`` only: temporary arrays the
                                                kernel needs (may use the batch dim ``N``);
                                                the planner provides them as ``ctx.scratch``
                                                (views of one arena per dtype owned by the
                                                runtime), so the kernel allocates nothing.
                                                A kernel that splits its samples into
                                                ``ctx.parts`` parts run on separate cores
                                                asks for each part's own
    index_bounds(in_types, attrs) -> {operand: (lo, hi, noun, what)}
                                                int64 operands whose values index
                                                something (class labels, token ids) and
                                                the range [lo, hi) they must lie in;
                                                ``noun`` and ``what`` word the error
                                                ("label 7 is out of range for 4
                                                classes (nll_loss)"). The runtime checks every graph
                                                input that reaches such an operand, so a
                                                bad label is an error, not a read past
                                                the end of an array.
    """

    name: str
    infer: Callable
    impl: Callable
    kind: FusionKind
    vjp: Optional[Callable] = None
    scalar: Optional[Callable] = None
    kernel: Optional[Callable] = None
    attrs: dict = field(default_factory=dict)   # attribute name -> default
    arity: Optional[int] = None                 # None = variadic
    samples: tuple = ()
    doc: str = ""
    differentiable: bool = True
    view: bool = False                          # output may alias the input's memory
    cuda_kernel: Optional[Callable] = None
    cuda_scalar: Optional[Callable] = None
    scratch: Optional[Callable] = None
    index_bounds: Optional[Callable] = None

    def normalize_attrs(self, given: dict | None) -> tuple:
        given = dict(given or {})
        unknown = set(given) - set(self.attrs)
        if unknown:
            raise OpError(f"op {self.name!r} has no attribute(s) {sorted(unknown)}; "
                          f"known: {sorted(self.attrs)}")
        merged = {k: given.get(k, v) for k, v in self.attrs.items()}
        for k, v in merged.items():
            if v is REQUIRED:
                raise OpError(f"op {self.name!r} needs attribute {k!r}")
        return tuple(sorted(merged.items()))


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()

_REGISTRY: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    """Add an op declaration; a name can be declared once."""
    if op.name in _REGISTRY:
        raise OpError(f"op {op.name!r} is already registered")
    if op.kind == FusionKind.ELEMWISE and op.scalar is None:
        raise OpError(f"elementwise op {op.name!r} needs a scalar template")
    _REGISTRY[op.name] = op
    return op


def get_op(name: str) -> OpDef:
    """Look an op up by name; an unknown name raises :class:`OpError` listing similar ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise OpError(f"unknown op {name!r}{hint}") from None


def all_ops() -> dict[str, OpDef]:
    return dict(_REGISTRY)
