"""Shared helpers for rewriting passes: constant look-ups and replacing a node."""
from __future__ import annotations


def const_value(graph, nid):
    """The fill value of a ``constant`` node, else None."""
    d = graph.nx.nodes[nid]
    if d["op"] != "constant":
        return None
    return dict(d["attrs"])["value"]


def replace(graph, old: int, new: int) -> bool:
    """Point every use of ``old`` at ``new`` (same type required); True if changed."""
    if old == new:
        return False
    if graph.type_of(old) != graph.type_of(new):
        raise AssertionError(f"rewrite of %{old} changes its type: {graph.type_of(old)} -> "
                             f"{graph.type_of(new)}")
    if graph.nx.nodes[old].get("name") and not graph.nx.nodes[new].get("name") \
            and graph.op_of(new) != "input":
        graph.nx.nodes[new]["name"] = graph.nx.nodes[old]["name"]
    graph.replace_all_uses(old, new)
    return True
