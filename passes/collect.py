"""Collect like terms: rewrite sums of products into a factored form with fewer ops.

Reverse-mode autodiff writes a gradient as a sum of chain-rule products, one per path,
and leaves the algebra undone: for y = sigmoid(x)*tanh(x) - softplus(x) (s = sigmoid,
t = tanh) it builds ``t*(s*(1-s)) + s*(1-t*t) - s``, eight elementwise ops, where
``s*t*(1-s-t)`` needs four. In a fused loop each op is floating-point work, and such
loops are bound by it (see ``codegen/fastmath.py``), so this pass does what a person
would: expand, cancel, factor.

A *tree* is a maximal expression of ``add``, ``sub``, ``neg`` and ``mul`` nodes of one
type whose inner nodes have no other (live) use; its leaves are *atoms* (any other node,
or a node used elsewhere, which is computed once either way) and fill constants
(coefficients). The tree is expanded into a polynomial over its atoms, like terms are
summed (terms that cancel vanish), and the polynomial is emitted again by greedy
multivariate Horner: take out the atom that occurs in most terms together with the
greatest common divisor of those terms, recurse on the quotient and on the rest
(PyTensor's canonicalizer collects terms the same way, without the factoring). The
rewrite is kept only if it needs strictly fewer ops than the tree it replaces, so
graphs without such redundancy come out unchanged.

When it is exact: as with ``simplify``'s ``x - x -> 0``, cancelling and factoring
assume finite values (``inf - inf`` is nan); rounding may differ in the last bits, as
any reassociation does. Trees whose atoms broadcast (a bias of shape ``(n,)`` inside a
``(b, n)`` sum) and non-float dtypes are left alone; so are trees that would expand to
more than ``MAX_TERMS`` terms (``(a+b)*(c+d)*...``).

>>> from graphc.ir import Graph, TensorType
>>> g = Graph(); x = g.add_input(TensorType((3,), "float32"), "x")
>>> s, t = g.add("sigmoid", [x]), g.add("tanh", [x])
>>> one = g.constant(1.0, "float32")
>>> a = g.add("mul", [t, g.add("mul", [s, g.add("sub", [one, s])])])   # t*s*(1-s)
>>> b = g.add("mul", [s, g.add("sub", [one, g.add("mul", [t, t])])])   # s*(1-t*t)
>>> g.set_outputs([g.add("sub", [g.add("add", [a, b]), s])])
>>> from graphc.ir import format_graph
>>> from graphc.passes import dce
>>> print(format_graph(dce(collect_terms(g))))   # s*t*(1-s-t)
graph graph {
  %0: f32[3] = input[role='data']  # x
  %1: f32[3] = sigmoid(%0)
  %2: f32[3] = tanh(%0)
  %3: f32[] = constant[dtype='float32', shape=(), value=1.0]
  %4: f32[3] = sub(%3, %1)
  %12: f32[3] = mul(%1, %2)
  %13: f32[3] = sub(%4, %2)
  %14: f32[3] = mul(%12, %13)
  return %14  # -
}
"""
from __future__ import annotations

from collections import Counter

import networkx as nx

from ._rewrite import const_value, replace

TREE_OPS = ("add", "sub", "neg", "mul")
MAX_TERMS = 32          # a bigger expansion is left as it is (and costs no time)
MAX_TREE = 64           # inner nodes of one tree


class _TooBig(Exception):
    pass


# ----------------------------------------------------------------- polynomials
# A polynomial is {monomial: coefficient}; a monomial is a sorted tuple of
# (atom node id, power) pairs; () is the constant term.

def _mono_mul(m1, m2):
    powers = Counter(dict(m1))
    powers.update(dict(m2))
    return tuple(sorted(powers.items()))


def _poly_add(p, q, sign=1.0):
    out = dict(p)
    for m, c in q.items():
        out[m] = out.get(m, 0.0) + sign * c
    out = {m: c for m, c in out.items() if c != 0.0}
    if len(out) > MAX_TERMS:
        raise _TooBig
    return out


def _poly_mul(p, q):
    out: dict = {}
    for m1, c1 in p.items():
        for m2, c2 in q.items():
            m = _mono_mul(m1, m2)
            out[m] = out.get(m, 0.0) + c1 * c2
            if len(out) > MAX_TERMS:
                raise _TooBig
    return {m: c for m, c in out.items() if c != 0.0}


def _mono_gcd(monos):
    common = dict(monos[0])
    for m in monos[1:]:
        d = dict(m)
        common = {a: min(k, d[a]) for a, k in common.items() if a in d}
    return tuple(sorted(common.items()))


def _mono_div(m, g):
    d = dict(g)
    return tuple((a, k - d.get(a, 0)) for a, k in m if k - d.get(a, 0) > 0)


# ----------------------------------------------------------------- expressions
# An expression is a nested tuple: ("atom", nid), ("const", value), ("neg", e),
# (op, e1, e2) for op in add/sub/mul. Equal tuples become one node (hash-consing).

def _mul(a, b):
    if a == ("const", 1.0):
        return b
    if b == ("const", 1.0):
        return a
    return ("mul", a, b)


def _product(mono):
    expr = ("const", 1.0)
    for atom, power in mono:
        for _ in range(power):
            expr = _mul(expr, ("atom", atom))
    return expr


def _term(mono, coef):
    """(sign, expression of |coef| * mono)."""
    return (1 if coef > 0 else -1), _mul(("const", abs(coef)), _product(mono))


def _parts(poly):
    """Signed expressions summing to ``poly``, factored by greedy multivariate Horner."""
    terms = sorted(poly.items(), key=lambda mc: (-len(mc[0]), mc[0]))
    counts = Counter(a for m, _ in terms for a, _ in m)
    shared = [a for a, n in counts.items() if n >= 2]
    if len(terms) < 2 or not shared:
        return [_term(m, c) for m, c in terms]
    best = min(shared, key=lambda a: (-counts[a], a))
    with_best = [(m, c) for m, c in terms if best in dict(m)]
    rest = {m: c for m, c in terms if best not in dict(m)}
    g = _mono_gcd([m for m, _ in with_best])
    quotient = {_mono_div(m, g): c for m, c in with_best}
    sign = -1 if all(c < 0 for c in quotient.values()) else 1
    if sign < 0:
        quotient = {m: -c for m, c in quotient.items()}
    return [(sign, _mul(_product(g), _sum(_parts(quotient))))] + _parts(rest)


def _sum(parts):
    plus = [e for s, e in parts if s > 0]
    minus = [e for s, e in parts if s < 0]
    if plus:
        expr, plus = plus[0], plus[1:]
    else:
        expr, minus = ("neg", minus[0]), minus[1:]
    for e in plus:
        expr = ("add", expr, e)
    for e in minus:
        expr = ("sub", expr, e)
    return expr


def _op_count(expr, seen=None):
    seen = set() if seen is None else seen
    if expr[0] in ("atom", "const") or expr in seen:
        return 0
    seen.add(expr)
    return 1 + sum(_op_count(e, seen) for e in expr[1:])


# ----------------------------------------------------------------- the pass
def _live_nodes(graph):
    live = set(graph.inputs) | set(graph.outputs)
    for out in graph.outputs:
        live |= nx.ancestors(graph.nx, out)
    return live


class _Tree:
    """The tree rooted at ``root``: its polynomial and inner nodes, or ``poly`` None."""

    def __init__(self, graph, root, live):
        self.g, self.root, self.live = graph, root, live
        self.type = graph.type_of(root)
        self.inner: set = set()
        self.memo: dict = {}
        try:
            self.poly = self._expand(root)
        except _TooBig:
            self.poly = None

    def _is_inner(self, nid):
        g = self.g
        if nid == self.root:
            return True
        if g.op_of(nid) not in TREE_OPS or g.type_of(nid) != self.type \
                or nid in g.outputs:
            return False
        return len([u for u in g.users(nid) if u in self.live]) == 1

    def _expand(self, nid):
        if nid in self.memo:
            return self.memo[nid]
        g = self.g
        value = const_value(g, nid)
        if value is not None:
            poly = {(): value} if value != 0.0 else {}
        elif self._is_inner(nid):
            self.inner.add(nid)
            if len(self.inner) > MAX_TREE:
                raise _TooBig
            args = [self._expand(a) for a in g.args_of(nid)]
            op = g.op_of(nid)
            if op == "add":
                poly = _poly_add(args[0], args[1])
            elif op == "sub":
                poly = _poly_add(args[0], args[1], -1.0)
            elif op == "neg":
                poly = {m: -c for m, c in args[0].items()}
            else:
                poly = _poly_mul(args[0], args[1])
        elif g.type_of(nid) == self.type:
            poly = {((nid, 1),): 1.0}
        else:
            raise _TooBig          # a broadcast atom: emitting products could change shapes
        self.memo[nid] = poly
        return poly


def _materialize(graph, expr, ttype, memo):
    if expr in memo:
        return memo[expr]
    kind = expr[0]
    if kind == "atom":
        nid = expr[1]
    elif kind == "const":
        nid = graph.constant(expr[1], ttype.dtype)
    else:
        args = [_materialize(graph, e, ttype, memo) for e in expr[1:]]
        nid = graph.add(kind, args)
    memo[expr] = nid
    return nid


def collect_terms(graph):
    """Replace each add/sub/neg/mul tree by its factored polynomial where that saves ops."""
    live = _live_nodes(graph)
    done: set = set()
    for root in reversed(graph.topo_order()):
        if root in done or root not in live or graph.op_of(root) not in TREE_OPS:
            continue
        ttype = graph.type_of(root)
        if not ttype.dtype.startswith("float"):
            continue
        tree = _Tree(graph, root, live)
        done |= tree.inner
        if tree.poly is None:
            continue
        if not tree.poly:
            expr = ("const", 0.0)
        else:
            expr = _sum(_parts(tree.poly))
        if _op_count(expr) >= len(tree.inner):
            continue
        memo: dict = {}
        if expr[0] == "const":
            new = graph.constant(expr[1], ttype.dtype, ttype.shape)
        else:
            new = _materialize(graph, expr, ttype, memo)
        if graph.type_of(new) != ttype:
            continue               # cannot happen with same-type atoms; never change a type
        built = set(memo.values()) | {new}   # may reuse (hash-consed) nodes of the old tree
        live |= built
        live -= tree.inner - built
        replace(graph, root, new)
    return graph
