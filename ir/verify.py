"""The graph verifier: every pass's output must satisfy these invariants.

>>> from graphc.ir import Graph, TensorType, verify
>>> g = Graph(); x = g.add_input(TensorType((2,), "float32"), "x")
>>> g.set_outputs([g.add("neg", [x])]); verify(g)
"""
from __future__ import annotations

import networkx as nx

from .errors import GraphError, GraphcError
from .registry import get_op


def verify(graph) -> None:
    """Raise :class:`GraphError` naming the first broken invariant."""
    G = graph.nx
    if not nx.is_directed_acyclic_graph(G):
        cycle = nx.find_cycle(G)
        raise GraphError(f"graph {graph.name!r} has a cycle through %{cycle[0][0]}")
    for nid in graph.inputs:
        if nid not in G or G.nodes[nid]["op"] != "input":
            raise GraphError(f"graph input %{nid} is not an input node")
    if len(set(graph.inputs)) != len(graph.inputs):
        raise GraphError("a graph input is listed twice")
    for nid in graph.outputs:
        if nid not in G:
            raise GraphError(f"graph output %{nid} is not a node")
    if len(graph.output_names) != len(graph.outputs):
        raise GraphError("output names and outputs differ in length")
    for out_idx, in_idx in graph.aliases.items():
        if not (0 <= out_idx < len(graph.outputs) and 0 <= in_idx < len(graph.inputs)):
            raise GraphError(f"alias output {out_idx} -> input {in_idx} is out of range")
        if graph.type_of(graph.outputs[out_idx]) != graph.type_of(graph.inputs[in_idx]):
            raise GraphError(f"alias output {out_idx} -> input {in_idx}: types differ")
    for nid, d in G.nodes(data=True):
        op = d["op"]
        where = f"%{nid} = {op}" + (f" ({d['name']})" if d.get("name") else "")
        try:
            opdef = get_op(op)
        except GraphcError as exc:
            raise GraphError(f"{where}: {exc}") from None
        if op == "input":
            if nid not in graph.inputs:
                raise GraphError(f"{where}: input node is not listed in graph.inputs")
            continue
        edges = sorted((k, u) for u, _, k in G.in_edges(nid, keys=True))
        if [u for _, u in edges] != list(d["args"]) or [k for k, _ in edges] != list(range(len(d["args"]))):
            raise GraphError(f"{where}: operand edges {edges} do not match args {d['args']}")
        if opdef.normalize_attrs(dict(d["attrs"])) != d["attrs"]:
            raise GraphError(f"{where}: attrs {d['attrs']} are not normalised")
        try:
            inferred = opdef.infer([G.nodes[a]["type"] for a in d["args"]], dict(d["attrs"]))
        except GraphcError as exc:
            raise GraphError(f"{where}: {exc}") from None
        if inferred != d["type"]:
            raise GraphError(f"{where}: stored type {d['type']} but operands give {inferred}")
