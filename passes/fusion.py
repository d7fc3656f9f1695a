"""Kernel fusion: give nodes a ``group`` attr; each group becomes one generated kernel.

Groups are formed in TVM's order of op patterns (``FusionKind``):

1. ``loop``: elementwise/broadcast nodes of one iteration shape are merged producer
   into consumer; a smaller-shaped producer (a bias, a rank-0 scale) whose every user
   is in one group joins it and is recomputed per element (cheap, saves a kernel).
   The optimizer update of each parameter becomes one such loop, updated in place.
   A node whose users all sit in one other group and whose operands are stored anyway
   moves into that group (relu's gradient mask ``gt(h, 0)``: no mask buffer).
2. ``reduce_loop``: a reduction (``reduce_sum/mean/max``) joins the loop group that
   produces its operand when that operand has the group's iteration shape, e.g. the
   bias gradient ``reduce_sum(g * relu'(z), axes=(0,))``: one pass computes the
   elementwise values and accumulates the column sums.
3. heads: a matmul joins the loop group of a same-shaped consumer (bias add,
   activation; kind ``matmul_epilogue``): ``np.dot`` writes into an output buffer, then
   one loop applies the epilogue in place. A row-wise ``softmax``/``log_softmax`` heads
   its consumers the same way (``template_epilogue``), also in front of a reduction
   (``reduce_loop`` with a head: softmax - one_hot, scaled, and its column sums).
   Groups holding in-place (aliased) updates are left as plain loops, except
0. ``softmax_ce``: softmax cross-entropy loss, its gradient and that gradient's column
   sums, one pass over the logits.
   ``matmul_update``: ``W - s * (A @ B)`` with W updated in place (plain SGD on a
   matmul gradient) is one BLAS gemm accumulating into W (alpha=-s, beta=1).
4. Constants are copied into every loop group that reads them, so they become literals.

Every merge keeps the group graph acyclic (a group is convex: no path leaves it and
comes back) and groups are capped at ``MAX_GROUP`` nodes. Fusion only changes where
values live (registers instead of buffers) and the order of float additions in
reductions, never what is computed.

>>> from graphc.ir import Graph, TensorType
>>> g = Graph(); x = g.add_input(TensorType(("N", 4), "float64"), "x")
>>> g.set_outputs([g.add("exp", [g.add("neg", [x])])])
>>> g = fusion(g)
>>> len({g.nx.nodes[n]["group"] for n in g.nx if g.op_of(n) != "input"})
1
"""
from __future__ import annotations

from graphc.ir import FusionKind, get_op

MAX_GROUP = 48
LOOP = (FusionKind.ELEMWISE, FusionKind.BROADCAST)
REDUCERS = {"reduce_sum", "reduce_mean", "reduce_max"}


def _is_loop(g, n):
    op = g.op_of(n)
    return op != "input" and get_op(op).kind in LOOP


class _Groups:
    """Union of node sets with a kind per group and a convexity check."""

    def __init__(self, g):
        self.g = g
        self.of: dict = {}         # node -> group id
        self.members: dict = {}    # group id -> set of nodes
        self.kind: dict = {}       # group id -> "loop" | "reduce_loop" | "matmul_epilogue"
        self._next = 0

    def new(self, n, kind="loop"):
        gid = self._next
        self._next += 1
        self.of[n] = gid
        self.members[gid] = {n}
        self.kind[gid] = kind
        return gid

    def unit(self, n):
        """The set a node stands in: its group's members, or itself."""
        return self.members[self.of[n]] if n in self.of else {n}

    def _succ_units(self, nodes):
        out = set()
        for n in nodes:
            for u in self.g.users(n):
                out.add(u)
        return out

    def convex_after_merge(self, a: set, b: set) -> bool:
        """True if merging node sets ``a`` and ``b`` leaves the group graph acyclic."""
        merged = a | b
        frontier = [u for u in self._succ_units(merged) if u not in merged]
        seen = set()
        while frontier:
            n = frontier.pop()
            if n in seen:
                continue
            unit = self.unit(n)
            seen |= unit
            for u in self._succ_units(unit):
                if u in merged:
                    return False
                if u not in seen:
                    frontier.append(u)
        return True

    def try_merge(self, n, gid, kind=None) -> bool:
        """Put node ``n`` (grouped or not) into group ``gid`` if that stays convex."""
        mine = self.unit(n)
        theirs = self.members[gid]
        if mine is theirs or n in theirs:
            return False
        if len(mine) + len(theirs) > MAX_GROUP or not self.convex_after_merge(mine, theirs):
            return False
        old = self.of.get(n)
        for m in mine:
            self.of[m] = gid
        theirs |= mine
        if old is not None:
            del self.members[old]
            del self.kind[old]
        if kind is not None:
            self.kind[gid] = kind
        return True


def _escapes(g, n, members):
    return n in g.outputs or any(u not in members for u in g.users(n))


def _aliased_values(g):
    return {g.outputs[o] for o in g.aliases}


def fusion(graph):
    g = graph
    G = _Groups(g)
    order = g.topo_order()
    aliased = _aliased_values(g)

    # 0. an SGD-style update of a parameter by a matmul gradient, W - s * (A @ B), is one
    #    BLAS call accumulating into W (alpha=-s, beta=1): no gradient buffer, no pass
    for u in order:
        parts = _matmul_update(g, u, aliased)
        if parts is not None:
            gid = G.new(u, "matmul_update")
            G.members[gid] |= set(parts)
            for m in parts:
                G.of[m] = gid

    # 0b. softmax cross-entropy: the loss, its gradient and the gradient's column sums (the
    #     last layer's bias gradient) in one pass over the logits
    for n in order:
        if g.op_of(n) == "softmax_cross_entropy_grad" and n not in G.of:
            gid = G.new(n, "softmax_ce")
            z, y, _ = g.args_of(n)
            for u in g.users(z):
                if g.op_of(u) == "softmax_cross_entropy" and g.args_of(u) == (z, y):
                    G.try_merge(u, gid)
                    break
            for u in g.users(n):
                if (g.op_of(u) == "reduce_sum" and u not in G.of
                        and dict(g.nx.nodes[u]["attrs"]) == {"axes": (0,), "keepdims": False}):
                    G.try_merge(u, gid)
                    break

    # 1. elementwise chains of one iteration shape, producer into consumer
    for n in order:
        if not _is_loop(g, n) or g.op_of(n) == "constant":
            continue
        if n in G.of and G.kind[G.of[n]] != "loop":
            continue
        shape = g.type_of(n).shape
        for a in g.args_of(n):
            if a in G.of and G.kind[G.of[a]] == "loop" and g.type_of(a).shape == shape:
                if n not in G.of:
                    G.try_merge(n, G.of[a])
                elif G.of[a] != G.of[n]:
                    G.try_merge(a, G.of[n])
        if n not in G.of:
            G.new(n)
    # a smaller producer whose users all sit in one group is recomputed inside it
    for n in reversed(order):
        if n not in G.of or len(G.members[G.of[n]]) != 1 or n in g.outputs:
            continue
        users = g.users(n)
        groups = {G.of.get(u) for u in users}
        if len(groups) == 1 and None not in groups:
            (gid,) = groups
            if G.kind[gid] == "loop":
                G.try_merge(n, gid)

    _sink_into_users(g, G, order, aliased)

    # 2. reductions join the group producing their operand
    for n in order:
        if g.op_of(n) not in REDUCERS or n in G.of:
            continue
        (x,) = g.args_of(n)
        gid = G.of.get(x)
        if gid is None or G.kind[gid] not in ("loop", "reduce_loop"):
            continue
        if not g.users(n) and n not in g.outputs:
            continue      # dead (dce not run): its result would have no buffer to go to
        if g.op_of(x) in REDUCERS:
            # a reduction over axes of extent 1 (keepdims) has its operand's shape, but
            # its value is only ready after the loop: it cannot feed one in the same loop
            continue
        if g.type_of(x).shape != _iter_shape(g, G.members[gid]):
            continue
        if G.members[gid] & aliased:
            continue
        if not _outside_arg_of_shape(g, G.members[gid], g.type_of(x).shape):
            continue      # the kernel takes its loop extents from such an array
        G.try_merge(n, gid, "reduce_loop")

    # 3. heads: a matmul (or a row-wise softmax) whose same-shaped consumer group can
    #    apply its epilogue; the head writes into one of the group's stored buffers
    heads = set()
    for n in order:
        if n in G.of or not _can_head(g, n):
            continue
        shape, dtype = g.type_of(n).shape, g.type_of(n).dtype
        for u in g.users(n):
            gid = G.of.get(u)
            if gid is None or G.kind[gid] not in ("loop", "reduce_loop"):
                continue
            members = G.members[gid]
            if members & aliased or members & heads:
                continue
            if _iter_shape(g, members) != shape:
                continue
            if any(g.type_of(m).dtype != dtype for m in members):
                continue      # the head is written into one of the group's buffers
            if any(a in members for a in g.args_of(n)):
                continue      # the head runs before the loop: its operands come from outside
            if not _stored_of_shape(g, members | {n}, shape):
                continue
            kind = G.kind[gid] if G.kind[gid] == "reduce_loop" else (
                "matmul_epilogue" if g.op_of(n) == "matmul" else "template_epilogue")
            if G.try_merge(n, gid, kind):
                heads.add(n)
                break

    # 4. constants: one copy per loop-like group that reads them
    for n in order:
        if g.op_of(n) != "constant":
            continue
        by_group: dict = {}
        for u in g.users(n):
            if u in G.of and _is_loop(g, u):
                by_group.setdefault(G.of[u], []).append(u)
        keep_original = n in g.outputs or any(
            not (u in G.of and _is_loop(g, u)) for u in g.users(n))
        for i, (gid, users) in enumerate(sorted(by_group.items())):
            c = n if (i == 0 and not keep_original) else _clone(g, n)
            for u in users:
                _rewire(g, u, n, c)
            G.of[c] = gid
            G.members[gid].add(c)

    # write the attrs: one group id per kernel; singleton loop groups stay plain nodes
    kinds = {}
    for gid, nodes in G.members.items():
        if len(nodes) == 1:
            continue
        for m in nodes:
            g.set_group(m, gid)
        if G.kind[gid] != "loop":
            kinds[gid] = G.kind[gid]
    g.meta = dict(g.meta)
    g.meta["group_kinds"] = kinds
    return g


def _sink_into_users(g, G, order, aliased):
    """Move an elementwise node whose users all sit in one other loop group, and whose
    operands are stored anyway, into that group: it is computed there from those
    operands instead of being stored by its producer's loop. Relu's gradient mask
    ``gt(h, 0)`` is the case: ``h`` is stored for the next layer, so the forward kernel
    writes one array per layer instead of two and the backward kernel reads ``h``
    instead of a mask of the same size (``tests/test_fusion.py``)."""
    for n in order:
        gid = G.of.get(n)
        if (gid is None or G.kind[gid] != "loop" or not _is_loop(g, n)
                or g.op_of(n) == "constant" or n in g.outputs or n in aliased):
            continue
        users = g.users(n)
        targets = {G.of.get(u) for u in users}
        if len(targets) != 1 or None in targets or gid in targets:
            continue
        (target,) = targets
        if G.kind[target] != "loop" or G.members[target] & aliased:
            continue
        if g.type_of(n).shape != _iter_shape(g, G.members[target]):
            continue
        if not all(_stored_without(g, G, a, n) for a in g.args_of(n)):
            continue
        G.members[gid].discard(n)       # n has no user in its group: the rest stays convex
        del G.of[n]
        if not G.members[gid]:
            del G.members[gid], G.kind[gid]
        G.new(n)
        if not G.try_merge(n, target) and gid in G.members:
            G.try_merge(n, gid)         # back where it was


def _stored_without(g, G, a, n):
    """True if value ``a`` is in a buffer even when ``n`` no longer reads it inside
    ``a``'s group: a graph input or constant, an output, or read outside that group."""
    if g.op_of(a) in ("input", "constant") or a in g.outputs:
        return True
    members = G.members[G.of[a]] if a in G.of else {a}
    return any(u not in members and u != n for u in g.users(a))


def _matmul_update(g, u, aliased):
    """``(mul, matmul)`` if ``u`` is an aliased ``sub(W, mul(s, A @ B))`` (s rank-0, the
    product and the scaled product used only there, W not an operand of the product),
    else None. Such a node updates W in place by one accumulating gemm."""
    if u not in aliased or g.op_of(u) != "sub":
        return None
    w, m = g.args_of(u)
    if g.op_of(m) != "mul" or g.users(m) != [u] or m in g.outputs:
        return None
    x, y = g.args_of(m)
    s, mm = (x, y) if g.op_of(y) == "matmul" else (y, x)
    if g.op_of(mm) != "matmul" or g.users(mm) != [m] or mm in g.outputs:
        return None
    if g.type_of(s).rank != 0 or g.op_of(s) not in ("input", "constant"):
        return None
    if w in g.args_of(mm) or not (g.type_of(w) == g.type_of(mm) == g.type_of(u)):
        return None
    return m, mm


def _iter_shape(g, nodes):
    """The iteration shape of a loop group: the largest shape among its loop nodes."""
    shapes = [g.type_of(n).shape for n in nodes if _is_loop(g, n)]
    return max(shapes, key=len) if shapes else None


ROW_HEADS = {"softmax", "log_softmax", "softmax_cross_entropy_grad"}


def _can_head(g, n):
    op = g.op_of(n)
    return op == "matmul" or op in ROW_HEADS


def _stored_of_shape(g, members, shape):
    """Some member of ``shape`` is read outside the group (its buffer takes the head)."""
    return any(g.type_of(m).shape == shape and _escapes(g, m, members) for m in members)


def _outside_arg_of_shape(g, members, shape):
    # constants do not count: step 4 copies them into the group
    return any(a not in members and g.type_of(a).shape == shape and g.op_of(a) != "constant"
               for n in members for a in g.args_of(n))


def _clone(g, n):
    """A copy of an operand-less node that is not hash-consed (fusion runs last)."""
    nid = next(g._ids)
    data = dict(g.nx.nodes[n])
    data["name"] = None
    g.nx.add_node(nid, **data)
    return nid


def _rewire(g, user, old, new):
    """Make ``user`` read ``new`` wherever it read ``old``."""
    if old == new:
        return
    d = g.nx.nodes[user]
    g._unindex(user)
    d["args"] = tuple(new if a == old else a for a in d["args"])
    g.nx.remove_edges_from([(old, user, k) for k in list(g.nx[old][user])])
    for pos, a in enumerate(d["args"]):
        if a == new:
            g.nx.add_edge(new, user, key=pos, pos=pos)
    g._index(user)
