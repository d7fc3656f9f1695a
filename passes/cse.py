"""Common-subexpression elimination: merge nodes with equal (op, attrs, operands).

``Graph.add`` hash-conses while a graph is built, but rewrites (simplify, fold) point
users at new operands and can leave two nodes that now compute the same thing, e.g.
``sigmoid(neg(neg(z)))`` next to ``sigmoid(z)`` once double negation is removed. This
pass walks the graph in topological order, so merging operands first makes their users
equal too, and rebuilds the hash-cons table.

>>> from graphc.ir import Graph, TensorType
>>> g = Graph(); x = g.add_input(TensorType((2,), "float64"), "x")
>>> a = g.add("exp", [x]); b = g.add("exp", [g.add("neg", [g.add("neg", [x])])])
>>> g.replace_all_uses(g.args_of(b)[0], x)   # what simplify does
>>> g.set_outputs([g.add("add", [a, b])])
>>> from graphc.passes.dce import dce
>>> sum(1 for n in dce(cse(g)).nx if g.op_of(n) == "exp")
1
"""
from __future__ import annotations


def cse(graph):
    seen: dict = {}
    for nid in graph.topo_order():
        d = graph.nx.nodes[nid]
        if d["op"] == "input":
            continue
        key = graph.structural_key(nid)
        keep = seen.get(key)
        if keep is None:
            seen[key] = nid
            continue
        if d.get("name") and not graph.nx.nodes[keep].get("name"):
            graph.nx.nodes[keep]["name"] = d["name"]
        graph.replace_all_uses(nid, keep)
        graph.remove_node(nid)
    graph._hashcons = dict(seen)
    return graph
