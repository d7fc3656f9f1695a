"""The readable SSA text form of a graph, one line per node.

    graph forward {
      %0: f32[N, 64] = input[role='data']  # x
      %2: f32[N, 32] = matmul(%0, %1)[ta=False, tb=True]  # fc1  @k3
      return %9  # logits
    }

Types are shown on every line; ``# name`` carries the node's name and ``@kK`` the
fusion group (kernel) the node belongs to. :func:`graphc.ir.parse_graph` reads it back.
"""
from __future__ import annotations

import ast
import re

# a name printed bare; anything else (spaces, commas, quotes, a lone "-") is quoted so
# the parser can read it back unambiguously
_BARE_NAME = re.compile(r"[^\s'\"#@%,-][^\s#,]*|-[^\s#,]+")


def format_name(name) -> str:
    """A node or output name as printed: bare when unambiguous, else a Python literal."""
    return name if _BARE_NAME.fullmatch(name) else repr(name)


def _is_literal(value) -> bool:
    try:
        return ast.literal_eval(repr(value)) == value
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False


def format_attrs(attrs) -> str:
    attrs = dict(attrs)
    if not attrs:
        return ""
    return "[" + ", ".join(f"{k}={v!r}" for k, v in attrs.items()) + "]"


def format_node(graph, nid: int) -> str:
    d = graph.nx.nodes[nid]
    args = d["args"]
    call = d["op"] + (f"({', '.join(f'%{a}' for a in args)})" if args else "")
    line = f"%{nid}: {d['type']} = {call}{format_attrs(d['attrs'])}"
    tail = []
    if d.get("name"):
        tail.append(format_name(d["name"]))
    if d.get("group") is not None:
        tail.append(f"@k{d['group']}")
    return line + (f"  # {'  '.join(tail)}" if tail else "")


def format_graph(graph) -> str:
    """The whole graph as text: inputs first (in order), then nodes in topological order."""
    lines = [f"graph {graph.name} {{"]
    inputs = set(graph.inputs)
    for nid in graph.inputs:
        lines.append("  " + format_node(graph, nid))
    for nid in graph.topo_order():
        if nid not in inputs:
            lines.append("  " + format_node(graph, nid))
    outs = ", ".join(f"%{o}" for o in graph.outputs)
    names = ", ".join("-" if n is None else format_name(n) for n in graph.output_names)
    lines.append(f"  return {outs}" + (f"  # {names}" if graph.outputs else ""))
    for o, i in sorted(graph.aliases.items()):
        lines.append(f"  alias output {o} -> input {i}")
    for key, value in sorted(graph.meta.items(), key=lambda kv: str(kv[0])):
        if isinstance(key, str) and key.isidentifier() and _is_literal(value):
            lines.append(f"  meta {key} = {value!r}")
    lines.append("}")
    return "\n".join(lines)
