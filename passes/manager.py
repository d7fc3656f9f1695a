"""The pass manager: a named pipeline with timing, counts, IR snapshots and switches.

>>> from graphc.passes import PassManager, dce
>>> pm = PassManager([("dce", dce)])
>>> # graph = pm.run(graph); print(pm.report())
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from graphc.ir import format_graph, verify


@dataclass
class PassRecord:
    name: str
    ms: float
    nodes: int
    kernels: int
    enabled: bool = True


def count_kernels(graph) -> int:
    """Kernels code generation will emit: one per fusion group, else one per computing node."""
    groups = set()
    count = 0
    for nid, d in graph.nx.nodes(data=True):
        if d["op"] == "input":
            continue
        if d.get("group") is not None:
            groups.add(d["group"])
        else:
            count += 1
    return count + len(groups)


class PassManager:
    """Run ``passes`` (a list of ``(name, fn)``; ``fn(graph) -> graph``) in order.

    ``disabled`` names passes to skip; ``verify_each`` runs the verifier after each pass;
    ``snapshot`` is a pass name, ``"all"``, or None: the IR text after those passes is
    kept in ``self.snapshots``.
    """

    def __init__(self, passes, disabled=(), verify_each=False, snapshot=None):
        names = [n for n, _ in passes]
        unknown = set(disabled) - set(names)
        if unknown:
            from graphc.ir import OpError
            raise OpError(f"unknown pass(es) {sorted(unknown)}; pipeline is {names}")
        self.passes = list(passes)
        self.disabled = set(disabled)
        self.verify_each = verify_each
        self.snapshot = snapshot
        self.records: list[PassRecord] = []
        self.snapshots: dict[str, str] = {}

    def run(self, graph):
        self.records = []
        if self.snapshot == "all" or self.snapshot == "input":
            self.snapshots["input"] = format_graph(graph)
        for name, fn in self.passes:
            if name in self.disabled:
                self.records.append(PassRecord(name, 0.0, len(graph), count_kernels(graph), False))
                continue
            t0 = time.perf_counter()
            graph = fn(graph)
            ms = (time.perf_counter() - t0) * 1e3
            if self.verify_each:
                verify(graph)
            self.records.append(PassRecord(name, ms, len(graph), count_kernels(graph)))
            if self.snapshot in ("all", name):
                self.snapshots[name] = format_graph(graph)
        return graph

    def report(self) -> str:
        lines = [f"{'pass':<14}{'ms':>9}{'nodes':>8}{'kernels':>9}"]
        for r in self.records:
            ms = f"{r.ms:9.2f}" if r.enabled else f"{'off':>9}"
            lines.append(f"{r.name:<14}{ms}{r.nodes:>8}{r.kernels:>9}")
        return "\n".join(lines)
