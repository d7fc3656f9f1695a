"""graphc.ir: the computation graph, its types, the op registry, verifier and printers.

``ir`` depends on nothing else in graphc; passes and code generators build on it.
"""
from .errors import (GraphcError, ShapeError, DTypeError, OpError, GraphError,
                     SpecError, InputError, CompileError, NumericError)
from .types import TensorType, BATCH, DTYPES, dtype_name, numpy_dtype
from .registry import OpDef, register, get_op, all_ops, FusionKind
from . import ops as _ops  # noqa: F401  (registers the built-in ops)
from .graph import Graph, Node
from .verify import verify
from .printer import format_graph
from .parser import parse_graph
from .dot import to_dot
from .nodelink import to_json
from .interpreter import interpret
from .indices import input_index_bounds

__all__ = [
    "GraphcError", "ShapeError", "DTypeError", "OpError", "GraphError", "SpecError",
    "InputError", "CompileError", "NumericError", "TensorType", "BATCH", "DTYPES",
    "dtype_name", "numpy_dtype", "OpDef", "register", "get_op", "all_ops", "FusionKind",
    "Graph", "Node", "verify", "format_graph", "parse_graph", "to_dot", "to_json", "interpret",
    "input_index_bounds",
]
