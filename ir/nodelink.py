"""JSON export in networkx's node-link form, with types and attributes as plain data.

>>> import json
>>> from graphc.ir import Graph, TensorType, to_json
>>> g = Graph("demo"); x = g.add_input(TensorType(("N", 2), "float32"), "x")
>>> g.set_outputs([g.add("exp", [x])], ["y"])
>>> json.loads(to_json(g))["graph"]["outputs"]
[1]
"""
from __future__ import annotations

import json
import math

import networkx as nx
import numpy as np


def _plain(value):
    """JSON-safe form: tuples -> lists, numpy scalars -> Python, inf/nan -> strings."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def to_json(graph, indent: int | None = 1) -> str:
    """The graph as node-link JSON: nodes carry op, attrs, shape, dtype, args, name and
    group; ``graph`` carries the ordered inputs, outputs, output names and aliases."""
    h = nx.MultiDiGraph()
    h.graph.update(name=graph.name, inputs=list(graph.inputs), outputs=list(graph.outputs),
                   output_names=list(graph.output_names),
                   aliases={str(k): v for k, v in graph.aliases.items()})
    for nid in graph.topo_order():
        d = graph.nx.nodes[nid]
        h.add_node(nid, op=d["op"], attrs=_plain(dict(d["attrs"])),
                   shape=_plain(d["type"].shape), dtype=d["type"].dtype,
                   args=list(d["args"]), name=d.get("name"), group=_plain(d.get("group")))
    for u, v, k in graph.nx.edges(keys=True):
        h.add_edge(u, v, key=k, pos=k)
    data = nx.node_link_data(h, edges="edges")
    return json.dumps(_plain(data), indent=indent)
