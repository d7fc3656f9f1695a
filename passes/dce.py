"""Dead-code elimination: drop every node that no graph output depends on.

>>> from graphc.ir import Graph, TensorType
>>> g = Graph(); x = g.add_input(TensorType((2,), "float32"), "x")
>>> _ = g.add("exp", [x]); g.set_outputs([g.add("neg", [x])])
>>> dce(g).op_of(g.outputs[0]), len(g)
('neg', 2)
"""
from __future__ import annotations

import networkx as nx


def dce(graph):
    live = set(graph.inputs)
    for out in graph.outputs:
        live |= nx.ancestors(graph.nx, out) | {out}
    for nid in [n for n in graph.nx.nodes if n not in live]:
        graph.remove_node(nid)
    return graph
