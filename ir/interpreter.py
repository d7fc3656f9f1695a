"""The NumPy reference interpreter: runs a graph with each op's ``impl``.

It is the oracle that compiled code is tested against, never the way graphc runs a
model.

>>> import numpy as np
>>> from graphc.ir import Graph, TensorType, interpret
>>> g = Graph(); x = g.add_input(TensorType((2,), "float64"), "x")
>>> g.set_outputs([g.add("exp", [x])])
>>> interpret(g, {"x": np.zeros(2)})[0]
array([1., 1.])
"""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .registry import get_op
from .types import BATCH, format_shape


def batch_size(graph, arrays: dict) -> int | None:
    """The run-time batch size implied by the inputs, checked for consistency."""
    batch = None
    for nid in graph.inputs:
        t = graph.type_of(nid)
        name = graph.nx.nodes[nid]["name"]
        arr = arrays[name]
        for axis, d in enumerate(t.shape):
            if d == BATCH:
                if batch is None:
                    batch = arr.shape[axis]
                elif arr.shape[axis] != batch:
                    raise InputError(f"input {name!r} has batch size {arr.shape[axis]} but an "
                                     f"earlier input has {batch}")
    return batch


def interpret(graph, inputs, return_all: bool = False):
    """Evaluate ``graph`` on ``inputs`` (dict by input name, or list in input order)."""
    names = [graph.nx.nodes[i]["name"] for i in graph.inputs]
    if not isinstance(inputs, dict):
        inputs = dict(zip(names, inputs))
    arrays = {}
    for nid, name in zip(graph.inputs, names):
        if name not in inputs:
            raise InputError(f"missing input {name!r}")
        t = graph.type_of(nid)
        arr = np.asarray(inputs[name], dtype=t.dtype)
        if arr.ndim != t.rank or any(d != BATCH and d != s for d, s in zip(t.shape, arr.shape)):
            raise InputError(f"input {name!r}: expected shape {format_shape(t.shape)}, "
                             f"got {format_shape(arr.shape)}")
        arrays[name] = arr
    batch = batch_size(graph, arrays)
    values = {}
    for nid, name in zip(graph.inputs, names):
        values[nid] = arrays[name]
    for nid in graph.topo_order():
        if nid in values:
            continue
        d = graph.nx.nodes[nid]
        t = d["type"]
        shape = t.concrete(batch) if t.has_batch else t.shape
        out = get_op(d["op"]).impl([values[a] for a in d["args"]], dict(d["attrs"]), shape)
        values[nid] = np.asarray(out, dtype=t.dtype).reshape(shape)
    outs = [values[o] for o in graph.outputs]
    return (outs, values) if return_all else outs
