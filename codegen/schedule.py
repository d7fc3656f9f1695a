"""Kernels and their order: fusion groups (or single nodes) become kernels.

A kernel is a ``loop`` (elementwise/broadcast nodes over one iteration space, all
intermediates in registers), a ``template`` (one op with its own kernel template:
matmul, reductions, losses), or a ``view`` (reshape: no kernel, a view in the driver).
Groups the fusion pass marks with another kind in ``graph.meta["group_kinds"]``
(``matmul_epilogue``, ``template_epilogue``, ``reduce_loop``) are emitted by
``codegen/fused.py``.
In-place updates (graph aliases) are decided here: an updated parameter is written
into its own array when nothing reads the old value afterwards.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import networkx as nx

from graphc.ir import BATCH, CompileError, FusionKind, get_op

LOOP_KINDS = (FusionKind.ELEMWISE, FusionKind.BROADCAST)


@dataclass
class Kernel:
    index: int
    nodes: list            # node ids in evaluation order
    inputs: list           # values read from outside the kernel
    outputs: list          # values the kernel stores to memory
    kind: str              # "loop" | "template" | "view"
    name: str = ""
    # CPU template kernels: TensorTypes of the scratch arrays the op asks for
    # (OpDef.scratch); they live only during the kernel, so all kernels share one arena
    # per dtype (see scratch_arenas); the CUDA emitter ignores them
    scratch: list = field(default_factory=list)


@dataclass
class Schedule:
    kernels: list
    # graph-output value -> input id whose array receives it (in place or by a final copy)
    inplace: dict = field(default_factory=dict)
    copy_back: dict = field(default_factory=dict)   # value -> input id copied at the end
    views: set = field(default_factory=set)         # values that are views, not buffers
    buffers: list = field(default_factory=list)     # values stored in a buffer (driver args)
    # value -> the buffer value whose array it reuses (lifetimes apart: share_buffers)
    shares: dict = field(default_factory=dict)
    out_copies: dict = field(default_factory=dict)  # output index -> value copied into a buffer
    # how many parts template kernels may split their samples into, one per core (see
    # codegen/parallel.py: sample_parts); each part has its own scratch
    parts: int = 1


def _kernel_kind(graph, nodes) -> str:
    ops = [get_op(graph.op_of(n)) for n in nodes]
    if all(o.kind in LOOP_KINDS for o in ops):
        return "loop"
    if len(nodes) == 1:
        return "view" if ops[0].view else "template"
    custom = graph.meta.get("group_kinds", {})
    group = graph.nx.nodes[nodes[0]].get("group")
    if group in custom:
        return custom[group]
    names = ", ".join(f"%{n} {graph.op_of(n)}" for n in nodes)
    raise CompileError(f"no code generator for a fused group of [{names}]")


def _kernel_name(graph, index, nodes, kind):
    ops = []
    for n in nodes:
        op = graph.op_of(n)
        if op != "constant" and op not in ops:
            ops.append(op)
    label = "_".join(ops[:4]) + ("_etc" if len(ops) > 4 else "")
    return f"k{index}_{label or 'fill'}"


def batch_source(graph):
    """(input id, axis) of the first graph input with the batch dimension, or None: the
    drivers read the run-time batch size ``n`` from it."""
    for nid in graph.inputs:
        shape = graph.type_of(nid).shape
        if BATCH in shape:
            return nid, shape.index(BATCH)
    return None


def build_schedule(graph, parts: int = 1) -> Schedule:
    """Group nodes into kernels, order them, and plan in-place updates; template kernels
    that can may split their samples into ``parts`` (scratch is planned for that)."""
    members: dict = {}
    for nid in graph.topo_order():
        d = graph.nx.nodes[nid]
        if d["op"] == "input":
            continue
        key = ("g", d["group"]) if d.get("group") is not None else ("n", nid)
        members.setdefault(key, []).append(nid)
    owner = {n: key for key, ns in members.items() for n in ns}
    outputs = set(graph.outputs)

    # targets of in-place updates: schedule their writers as late as possible
    alias_value = {graph.outputs[o]: graph.inputs[i] for o, i in graph.aliases.items()}
    kdag = nx.DiGraph()
    kdag.add_nodes_from(members)
    for key, ns in members.items():
        for n in ns:
            for a in graph.args_of(n):
                if a in owner and owner[a] != key:
                    kdag.add_edge(owner[a], key)
    if not nx.is_directed_acyclic_graph(kdag):
        raise CompileError("fusion groups form a cycle (a group is not convex)")
    writes_inplace = {owner[v] for v in alias_value if v in owner}
    order = list(nx.lexicographical_topological_sort(
        kdag, key=lambda k: (k in writes_inplace, min(members[k]))))

    kernels = []
    for key in order:
        ns = members[key]
        nset = set(ns)
        ins = []
        for n in ns:
            for a in graph.args_of(n):
                if a not in nset and a not in ins:
                    ins.append(a)
        outs = [n for n in ns if n in outputs or any(u not in nset for u in graph.users(n))]
        if not outs:   # dead code (e.g. dce turned off): nothing observable to compute
            continue
        kind = _kernel_kind(graph, ns)
        kernels.append(Kernel(len(kernels), ns, ins, outs, kind,
                              _kernel_name(graph, len(kernels), ns, kind),
                              _scratch_types(graph, ns, parts) if kind == "template" else []))

    sched = Schedule(kernels, parts=parts)
    sched.views = {k.nodes[0] for k in kernels if k.kind == "view"}
    position = {}
    for k in kernels:
        for n in k.nodes:
            position[n] = k.index
    readers = _readers_through_views(graph, sched.views, position)

    for value, target in alias_value.items():
        if value == target:
            continue
        k = kernels[position[value]] if value in position else None
        # a loop reads each element before writing it; an accumulating gemm reads only
        # its (other) operands: both may write into the target's own array
        ok = (k is not None and k.kind in ("loop", "matmul_update") and value not in sched.views
              and graph.type_of(value) == graph.type_of(target)
              and all(r <= k.index for r in readers.get(target, ()))
              and sum(1 for v in alias_value if v == value) == 1)
        if ok:
            sched.inplace[value] = target
        else:
            sched.copy_back[value] = target

    # every graph output needs memory the runtime can read after the call
    for idx, value in enumerate(graph.outputs):
        if value in graph.inputs or value in sched.views:
            if idx not in graph.aliases:
                sched.out_copies[idx] = value
    sched.buffers = [n for k in kernels if k.kind != "view" for n in k.outputs
                     if n not in sched.inplace]
    sched.shares = share_buffers(graph, sched, position, readers)
    return sched


def share_buffers(graph, sched, position, readers) -> dict:
    """{value: earlier value whose array it reuses}: memory planned by liveness.

    A value's buffer is free once the last kernel that reads it (directly or through a
    view) has run; a later kernel's output of the same type (shape, batch axis included,
    and dtype: equal at every batch size) then takes it, the most recently freed first
    (its lines are likeliest still in cache). Graph outputs and values copied back at the
    end are never freed, nor are the arrays of those that are views; rank-0 values keep
    their own (per-chunk private in row-split runs, codegen/parallel.py). A kernel never
    gets an array one of its inputs is in: an input's last reader is at least that
    kernel. The ResNet of examples/resnet_digits.py at batch 256 needs 24 MB for its
    values this way instead of 47 MB (30 MB instead of 52 with its scratch), and its
    step ran 1.5-3.5% faster than with an array per value (the two alternated in one
    process). Checked by tests/test_memory_plan.py.

    >>> from graphc.ir import Graph, TensorType
    >>> g = Graph("f"); x = g.add_input(TensorType(("N", 4), "float32"), "x")
    >>> a = g.add("exp", [x]); b = g.add("neg", [a]); c = g.add("exp", [b])
    >>> g.set_outputs([g.add("reduce_sum", [c], {"axes": (0,), "keepdims": False})])
    >>> build_schedule(g).shares == {c: a}      # unfused: one kernel per node
    True
    """
    # an output that is a view (copied out after the run) keeps the array it views
    keep = view_bases(graph, set(graph.outputs) | set(sched.copy_back), sched.views)
    last = {}
    for v in sched.buffers:
        last[v] = (len(sched.kernels) if v in keep
                   else max(readers.get(v, ()), default=position[v]))
    free: list = []          # (type, representative), most recently freed last
    shares, placed = {}, set()
    dying: dict = {}
    for v, at in last.items():
        dying.setdefault(at, []).append(v)
    for k in sched.kernels:
        for v in k.outputs:
            t = graph.type_of(v)
            if v not in last or t.rank == 0:
                continue
            placed.add(v)
            hit = next((i for i in range(len(free) - 1, -1, -1) if free[i][0] == t), None)
            if hit is not None:
                shares[v] = free.pop(hit)[1]
        for v in dying.get(k.index, ()):
            if v in placed:
                free.append((graph.type_of(v), shares.get(v, v)))
    return shares


def view_bases(graph, values, views) -> set:
    """The arrays ``values`` live in: a view's (of a view's ...) source, else the value."""
    bases = set()
    for v in values:
        while v in views:
            v = graph.args_of(v)[0]
        bases.add(v)
    return bases


def _scratch_types(graph, nodes, parts) -> list:
    (n,) = nodes
    op = get_op(graph.op_of(n))
    if op.scratch is None:
        return []
    return list(op.scratch([graph.type_of(a) for a in graph.args_of(n)],
                           dict(graph.nx.nodes[n]["attrs"]), graph.type_of(n), parts))


def scratch_arenas(schedule) -> list:
    """Dtypes of the scratch arenas (sorted): the CPU driver takes one flat array per
    dtype after its buffers, and each kernel gets views of its start."""
    return sorted({t.dtype for k in schedule.kernels for t in k.scratch})


def arena_sizes(schedule, batch) -> dict:
    """dtype -> elements of its arena at this batch size: the largest total scratch of
    any one kernel (kernels run one after another, so they share it)."""
    sizes: dict = {}
    for k in schedule.kernels:
        need: dict = {}
        for t in k.scratch:
            need[t.dtype] = need.get(t.dtype, 0) + math.prod(t.concrete(batch))
        for dt, size in need.items():
            sizes[dt] = max(sizes.get(dt, 0), size)
    return sizes


def _readers_through_views(graph, views, position) -> dict:
    """value -> kernel indices that read it directly or through a chain of views."""
    readers: dict = {}
    for nid in graph.nx.nodes:
        seen = set()
        stack = [nid]
        while stack:
            v = stack.pop()
            for u in graph.users(v):
                if u in seen:
                    continue
                seen.add(u)
                if u in views:
                    stack.append(u)
                elif u in position:
                    readers.setdefault(nid, set()).add(position[u])
    return readers
