"""Reverse-mode automatic differentiation in the IR.

Gradients are new nodes in the same graph, built from each op's VJP rule, so the
backward pass is simplified, fused and generated exactly like the forward pass.

>>> from graphc.ir import Graph, TensorType
>>> g = Graph(); x = g.add_input(TensorType((), "float64"), "x")
>>> y = g.add("mul", [x, x])
>>> [dx] = add_gradients(g, y, [x])
>>> g.op_of(dx)
'add'
"""
from __future__ import annotations

import networkx as nx

from graphc.ir import GraphError, get_op


def add_gradients(graph, output: int, wrt: list[int], seed: int | None = None,
                  unreached=0.0) -> list[int]:
    """Add d(output)/d(w) for each ``w`` in ``wrt`` to ``graph`` and return their ids.

    ``output`` is usually a rank-0 loss; ``seed`` (default: ones) is the cotangent of
    ``output``. An input no gradient reaches (``output`` does not depend on it, or only
    through comparisons, argmax, detach, a where's condition) gets a zero gradient, or
    None with ``unreached=None`` (PyTorch's ``grad is None``).
    """
    out_type = graph.type_of(output)
    if seed is None:
        seed = graph.constant(1.0, out_type.dtype, out_type.shape)
    ancestors = nx.ancestors(graph.nx, output) | {output}
    needed = set()
    for w in wrt:
        if w in ancestors:
            needed |= (nx.descendants(graph.nx, w) | {w}) & ancestors
    adjoint = {output: seed}
    for nid in reversed(graph.topo_order()):
        if nid not in adjoint or nid not in needed:
            continue
        node = graph.node(nid)
        if node.op == "input":
            continue
        opdef = get_op(node.op)
        if not opdef.differentiable or opdef.vjp is None:
            continue
        grads = opdef.vjp(graph, node, adjoint[nid])
        if len(grads) != len(node.args):
            raise GraphError(f"vjp of {node.op} returned {len(grads)} gradients for "
                             f"{len(node.args)} operands")
        for arg, grad in zip(node.args, grads):
            if grad is None or arg not in needed:
                continue
            if graph.type_of(grad) != graph.type_of(arg):
                raise GraphError(f"vjp of {node.op} at {node.label()} gave a "
                                 f"{graph.type_of(grad)} gradient for a "
                                 f"{graph.type_of(arg)} operand %{arg}")
            adjoint[arg] = grad if arg not in adjoint else graph.add("add", [adjoint[arg], grad])
    result = []
    for w in wrt:
        if w in adjoint:
            result.append(adjoint[w])
        elif unreached is None:
            result.append(None)
        else:
            t = graph.type_of(w)
            result.append(graph.constant(unreached, t.dtype, t.shape))
    return result
