"""``gc.compile(..., check_finite=True)``: stop at the first NaN/Inf and name its node.

The compiled step runs as usual; only when an output is non-finite does the check
re-evaluate the graph with the NumPy reference interpreter on the same inputs and walk
the nodes in topological order to the first one whose value is not finite. Arrays the
step updates in place (parameters, optimizer state, running statistics) are restored
first, so a step that blows up leaves the model as it was before the call.

>>> import numpy as np, graphc as gc
>>> m = gc.compile(gc.nn.Linear(2, 1), input_shape=(None, 2), check_finite=True)
>>> m(np.array([[np.nan, 0.0]]))     # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
NumericError: graph 'forward': first non-finite value in input 'x' (nan: 1 of 2 elements); ...
"""
from __future__ import annotations

import numpy as np

from graphc.ir import NumericError, interpret
from graphc.ir.printer import format_node


def _nonfinite(arr) -> bool:
    arr = np.asarray(arr)
    return arr.dtype.kind == "f" and not np.all(np.isfinite(arr))


def _describe(arr) -> str:
    arr = np.asarray(arr)
    bad = ~np.isfinite(arr)
    kinds = [k for k, mask in (("nan", np.isnan(arr)), ("+inf", arr == np.inf),
                               ("-inf", arr == -np.inf)) if np.any(mask)]
    return f"{'/'.join(kinds)}: {int(bad.sum())} of {arr.size} elements"


def first_nonfinite(graph, inputs) -> str | None:
    """Evaluate ``graph`` with the reference interpreter; describe the first node (in
    topological order) whose value holds a NaN or Inf, or None if all are finite."""
    with np.errstate(all="ignore"):
        _, values = interpret(graph, inputs, return_all=True)
    for nid in graph.topo_order():
        value = values.get(nid)
        if value is None or not _nonfinite(value):
            continue
        d = graph.nx.nodes[nid]
        if d["op"] == "input":
            return f"input {d['name']!r} ({_describe(value)})"
        return f"node {format_node(graph, nid)} ({_describe(value)})"
    return None


def run_checked(exe, inputs, copy=True):
    """``exe.run(inputs)``, raising :class:`NumericError` that names the first node
    producing NaN/Inf if any output is non-finite (in-place updates are undone)."""
    graph = exe.graph
    arrays, _ = exe.prepare(inputs)        # raises InputError for malformed inputs
    saved = {i: arrays[i].copy() for i in set(graph.aliases.values())}
    outs = exe.run(arrays, copy=copy)
    bad = [graph.output_names[k] if k < len(graph.output_names) else str(k)
           for k, o in enumerate(outs) if _nonfinite(o)]
    if not bad:
        return outs
    for i, before in saved.items():     # undo the step: the model stays usable
        arrays[i][...] = before
    pristine = [saved.get(i, a) for i, a in enumerate(arrays)]
    where = first_nonfinite(graph, pristine)
    if where is None:
        raise NumericError(f"graph {graph.name!r}: output(s) {bad} are non-finite in the "
                           f"compiled code but finite in the reference interpreter "
                           f"(a code generation bug)")
    raise NumericError(f"graph {graph.name!r}: first non-finite value in {where}; "
                       f"non-finite output(s) {bad[:5]}")
