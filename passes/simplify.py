"""Algebraic simplification: a list of local rewrite rules applied to a fixed point.

Each rule looks at one node and returns the id of an equivalent node (built with
``graph.add``, so it is hash-consed) or None. Rules never change a node's type: an
identity that would change the shape through broadcasting (``x * ones(3, 4)`` with
``x`` of shape ``(4,)``) is not applied.

Rules and when they are exact:

- ``x * 1``, ``1 * x``, ``x / 1``, ``x + 0``, ``0 + x``, ``x - 0``, ``x ** 1`` -> ``x``: exact.
- ``x - x`` -> zeros of x's shape: exact for finite x (inf - inf is nan); graphc
  assumes finite values here, as tinygrad and most compilers do.
- ``neg(neg(x))``, ``log(exp(x))`` -> ``x``: the rewrite is at least as accurate
  (``log(exp(x))`` overflows for x > 709 in float64 where ``x`` does not).
- ``exp(log(x))`` -> ``x`` only where x is known non-negative (the output of exp,
  sigmoid, softmax, relu, abs, sqrt or softplus): for x < 0 the original is nan,
  and for x == 0 both give 0.
- ``transpose(transpose(x))`` -> one transpose with the composed permutation, or ``x``;
  ``reshape(reshape(x))`` -> one reshape; a reshape or broadcast to x's own shape -> x.
- ``log(softmax(x))`` -> ``log_softmax(x)`` and ``nll_loss(log_softmax(x), y)`` ->
  ``softmax_cross_entropy(x, y)``: the stable forms (no log of an underflowed 0).

>>> from graphc.ir import Graph, TensorType
>>> g = Graph(); x = g.add_input(TensorType((3,), "float64"), "x")
>>> g.set_outputs([g.add("neg", [g.add("neg", [x])])])
>>> simplify(g).outputs[0] == x
True
"""
from __future__ import annotations

from ._rewrite import const_value, replace

NON_NEGATIVE = {"exp", "sigmoid", "softmax", "relu", "abs", "sqrt", "softplus"}


def _same_type(g, a, b):
    return g.type_of(a) == g.type_of(b)


def _identity_operand(g, nid, unit, positions):
    """``x`` if ``nid`` is ``op(x, unit)`` (unit at one of ``positions``), same type."""
    args = g.args_of(nid)
    for pos in positions:
        other = args[1 - pos]
        if const_value(g, args[pos]) == unit and _same_type(g, nid, other):
            return other
    return None


def r_mul_one(g, nid):
    return _identity_operand(g, nid, 1.0, (0, 1)) if g.op_of(nid) == "mul" else None


def r_div_one(g, nid):
    return _identity_operand(g, nid, 1.0, (1,)) if g.op_of(nid) == "div" else None


def r_add_zero(g, nid):
    return _identity_operand(g, nid, 0.0, (0, 1)) if g.op_of(nid) == "add" else None


def r_sub_zero(g, nid):
    return _identity_operand(g, nid, 0.0, (1,)) if g.op_of(nid) == "sub" else None


def r_sub_self(g, nid):
    if g.op_of(nid) == "sub":
        a, b = g.args_of(nid)
        if a == b:
            t = g.type_of(nid)
            return g.constant(0.0, t.dtype, t.shape)
    return None


def r_pow_one(g, nid):
    if g.op_of(nid) == "pow" and dict(g.nx.nodes[nid]["attrs"])["exponent"] == 1.0:
        return g.args_of(nid)[0]
    return None


def _inverse(outer, inner, guard=None):
    def rule(g, nid):
        if g.op_of(nid) != outer:
            return None
        (a,) = g.args_of(nid)
        if g.op_of(a) != inner:
            return None
        (x,) = g.args_of(a)
        if guard is not None and not guard(g, x):
            return None
        return x
    rule.__name__ = f"r_{outer}_{inner}"
    return rule


r_neg_neg = _inverse("neg", "neg")
r_log_exp = _inverse("log", "exp")
r_exp_log = _inverse("exp", "log", guard=lambda g, x: g.op_of(x) in NON_NEGATIVE)


def _attr(g, nid, key):
    return dict(g.nx.nodes[nid]["attrs"])[key]


def r_transpose_transpose(g, nid):
    if g.op_of(nid) != "transpose" or g.op_of(g.args_of(nid)[0]) != "transpose":
        return None
    inner = g.args_of(nid)[0]
    (x,) = g.args_of(inner)
    rank = g.type_of(x).rank
    p1 = _attr(g, inner, "perm") or tuple(reversed(range(rank)))
    p2 = _attr(g, nid, "perm") or tuple(reversed(range(rank)))
    perm = tuple(p1[p] for p in p2)       # out[k] = inner[p2[k]] = x[p1[p2[k]]]
    if perm == tuple(range(rank)):
        return x
    return g.add("transpose", [x], {"perm": perm})


def r_reshape_reshape(g, nid):
    if g.op_of(nid) != "reshape":
        return None
    (a,) = g.args_of(nid)
    if _same_type(g, nid, a):
        return a
    if g.op_of(a) == "reshape":
        return g.add("reshape", g.args_of(a), {"shape": g.type_of(nid).shape})
    return None


def r_broadcast_same(g, nid):
    if g.op_of(nid) == "broadcast_to" and _same_type(g, nid, g.args_of(nid)[0]):
        return g.args_of(nid)[0]
    return None


def r_log_softmax(g, nid):
    if g.op_of(nid) != "log" or g.op_of(g.args_of(nid)[0]) != "softmax":
        return None
    sm = g.args_of(nid)[0]
    return g.add("log_softmax", g.args_of(sm), {"axis": _attr(g, sm, "axis")})


def r_nll_log_softmax(g, nid):
    if g.op_of(nid) != "nll_loss":
        return None
    lp, y = g.args_of(nid)
    if g.op_of(lp) != "log_softmax":
        return None
    return g.add("softmax_cross_entropy", [g.args_of(lp)[0], y])


RULES = [r_mul_one, r_div_one, r_add_zero, r_sub_zero, r_sub_self, r_pow_one, r_neg_neg,
         r_log_exp, r_exp_log, r_transpose_transpose, r_reshape_reshape, r_broadcast_same,
         r_log_softmax, r_nll_log_softmax]


def simplify(graph, rules=None, max_rounds: int = 10):
    """Apply ``rules`` (default :data:`RULES`) until nothing changes; dead nodes stay for dce."""
    rules = RULES if rules is None else rules
    for _ in range(max_rounds):
        changed = False
        for nid in graph.topo_order():
            if nid not in graph.nx or graph.op_of(nid) in ("input", "constant"):
                continue
            for rule in rules:
                new = rule(graph, nid)
                if new is not None and replace(graph, nid, new):
                    changed = True
                    break
        if not changed:
            break
    return graph
