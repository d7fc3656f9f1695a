"""Graphviz DOT for a graph: one box per node, fusion groups (node attr ``group``) as
clusters, so a dump shows which nodes became one kernel.

>>> from graphc.ir import Graph, TensorType, to_dot
>>> g = Graph("demo"); x = g.add_input(TensorType((2,), "float32"), "x")
>>> g.set_outputs([g.add("exp", [x])], ["y"])
>>> to_dot(g).splitlines()[0]
'digraph "demo" {'
"""
from __future__ import annotations

from .printer import format_attrs


def _q(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label(graph, nid) -> str:
    d = graph.nx.nodes[nid]
    head = f"%{nid} {d['op']}" + (f" {d['name']}" if d.get("name") else "")
    attrs = "" if d["op"] == "input" else format_attrs(d["attrs"])
    if len(attrs) > 60:
        attrs = attrs[:57] + "...]"
    return "\\n".join(p for p in (head, str(d["type"]), attrs) if p)


def to_dot(graph) -> str:
    """DOT text: inputs as ellipses, outputs as double octagons, groups as clusters."""
    lines = [f"digraph {_q(graph.name)} {{", "  rankdir=TB;",
             '  node [shape=box, fontname="monospace", fontsize=10];']
    inputs, outputs = set(graph.inputs), set(graph.outputs)
    clusters: dict = {}
    loose = []
    for nid in graph.topo_order():
        group = graph.nx.nodes[nid].get("group")
        (clusters.setdefault(group, []) if group is not None else loose).append(nid)

    def node_line(nid, indent="  "):
        label = _label(graph, nid).replace('"', '\\"')
        style = ""
        if nid in inputs:
            style = ", shape=ellipse"
        elif nid in outputs:
            style = ", shape=doubleoctagon"
        return f'{indent}n{nid} [label="{label}"{style}];'

    for nid in loose:
        lines.append(node_line(nid))
    for group, members in clusters.items():
        lines.append(f"  subgraph {_q(f'cluster_k{group}')} {{")
        lines.append(f'    label="kernel k{group}"; style="rounded,filled"; '
                     f'fillcolor="#eef4ff";')
        lines += [node_line(n, "    ") for n in members]
        lines.append("  }")
    for u, v, k in sorted(graph.nx.edges(keys=True)):
        lines.append(f'  n{u} -> n{v} [label="{k}", fontsize=8];')
    for i, nid in enumerate(graph.outputs):
        name = graph.output_names[i] if i < len(graph.output_names) else None
        lines.append(f'  out{i} [label={_q(f"output {i}" + (f" {name}" if name else ""))}, '
                     f'shape=plaintext];')
        lines.append(f"  n{nid} -> out{i} [style=dashed];")
    lines.append("}")
    return "\n".join(lines) + "\n"
