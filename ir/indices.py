"""Which graph inputs hold indices (class labels, token ids), and their valid range.

An op that reads ``x[..., y[i]]`` declares the operand ``y`` and its range in
``OpDef.index_bounds``. Compiled kernels do not check every read, so a label of 7 for
4 classes would read past the end of a row and return a number; instead the runtime
checks the graph inputs that reach such an operand, once per call, against the range
found here.

>>> from graphc.ir import Graph, TensorType
>>> g = Graph()
>>> x = g.add_input(TensorType(("N", 4), "float64"), "x")
>>> y = g.add_input(TensorType(("N",), "int64"), "y", "label")
>>> g.set_outputs([g.add("softmax_cross_entropy", [x, y])])
>>> input_index_bounds(g)
{'y': (0, 4, 'label', '4 classes (softmax_cross_entropy)')}
"""
from __future__ import annotations

from .registry import FusionKind, get_op

# ops that move values without changing them: an index reaching an index operand
# through them came from their operands
_PASSES_VALUES = (FusionKind.BROADCAST, FusionKind.INJECTIVE)


def _sources(graph, nid, inputs):
    """Graph inputs whose values reach ``nid`` unchanged (through reshapes, slices, ...)."""
    found, stack, seen = [], [nid], set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if v in inputs:
            found.append(v)
        elif get_op(graph.op_of(v)).kind in _PASSES_VALUES:
            stack.extend(graph.args_of(v))
    return found


def input_index_bounds(graph) -> dict:
    """``{input name: (lo, hi, noun, what)}``: inputs whose values must lie in [lo, hi).

    An input used as indices by several ops gets the narrowest range.
    """
    inputs = set(graph.inputs)
    bounds: dict = {}
    for nid in graph.topo_order():
        op = get_op(graph.op_of(nid))
        if op.index_bounds is None:
            continue
        args = graph.args_of(nid)
        declared = op.index_bounds([graph.type_of(a) for a in args], graph.node(nid).attrs)
        for pos, new in declared.items():
            for src in _sources(graph, args[pos], inputs):
                name = graph.nx.nodes[src]["name"]
                old = bounds.get(name, new)
                narrower = new if new[1] - new[0] < old[1] - old[0] else old
                bounds[name] = (max(new[0], old[0]), min(new[1], old[1])) + narrower[2:]
    return bounds
