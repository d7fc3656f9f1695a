"""Constant folding: an op whose operands are all ``constant`` nodes becomes a constant.

Constants are uniform (one value fills the tensor), so folding is exact: elementwise ops
are evaluated once on rank-0 values with the op's own NumPy reference (same dtype, same
rounding as the element-by-element result), broadcasts and reshapes keep the value, and
reductions over static axes scale it (sum: value * count; mean, max: value). A
reduction over the batch axis ``N`` is left alone because its count is only known at
run time; so is ``shape_size`` unless all its axes are static.

>>> from graphc.ir import Graph, TensorType
>>> g = Graph(); x = g.add_input(TensorType((3,), "float64"), "x")
>>> two = g.add("add", [g.constant(1.0, "float64"), g.constant(1.0, "float64")])
>>> g.set_outputs([g.add("mul", [x, two])])
>>> fold(g).op_of(g.args_of(g.outputs[0])[1])
'constant'
"""
from __future__ import annotations

import math

import numpy as np

from graphc.ir import BATCH, FusionKind, get_op

from ._rewrite import const_value, replace

_REDUCTIONS = {"reduce_sum", "reduce_mean", "reduce_max"}


def _folded_value(graph, nid):
    d = graph.nx.nodes[nid]
    op, args, attrs = d["op"], d["args"], dict(d["attrs"])
    out = d["type"]
    if op == "constant" or op == "input":
        return None
    if op == "shape_size":
        shape = graph.type_of(args[0]).shape
        dims = [shape[a] for a in attrs["axes"]]
        if BATCH in dims:
            return None
        return float(math.prod(dims))
    if not args:
        return None
    values = [const_value(graph, a) for a in args]
    if any(v is None for v in values):
        return None
    opdef = get_op(op)
    if opdef.kind in (FusionKind.ELEMWISE, FusionKind.BROADCAST) or op == "reshape":
        arrays = [np.array(v, dtype=graph.type_of(a).dtype) for v, a in zip(values, args)]
        if opdef.kind == FusionKind.BROADCAST or op == "reshape":
            return values[0]
        result = opdef.impl(arrays, attrs, ())
        return float(np.asarray(result, dtype=out.dtype).reshape(()))
    if op in _REDUCTIONS:
        xshape = graph.type_of(args[0]).shape
        axes = attrs["axes"] if attrs["axes"] is not None else tuple(range(len(xshape)))
        dims = [xshape[a] for a in axes]
        if BATCH in dims or (0 in dims):
            return None
        if op == "reduce_sum":
            count = math.prod(dims)
            # the sum of `count` equal values, rounded in the output dtype like a loop would
            arr = np.full(count, values[0], dtype=out.dtype)
            return float(np.sum(arr))
        return values[0]
    return None


def fold(graph):
    for nid in graph.topo_order():
        if nid not in graph.nx:
            continue
        value = _folded_value(graph, nid)
        if value is None:
            continue
        t = graph.type_of(nid)
        new = graph.constant(value, t.dtype, t.shape)
        replace(graph, nid, new)
    return graph
