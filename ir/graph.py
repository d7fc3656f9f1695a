"""The computation graph: SSA nodes in a networkx MultiDiGraph.

One node per value. A node stores ``op``, ``attrs`` (a sorted tuple of pairs, so it is
hashable), ``type`` (:class:`TensorType`), ``args`` (operand ids in order) and optional
``name``/``group``. Every operand is also an edge ``arg -> node`` keyed by its position,
so ``x * x`` is two parallel edges. Nodes are hash-consed: adding an op that already
exists with the same attrs and operands returns the existing node, so common
subexpressions are shared as they are built.

>>> from graphc.ir import Graph, TensorType
>>> g = Graph("demo")
>>> x = g.add_input(TensorType(("N", 3), "float64"), "x")
>>> y = g.add("exp", [x])
>>> g.add("exp", [x]) == y
True
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterable

import networkx as nx

from .errors import GraphError, ShapeError
from .registry import get_op
from .types import TensorType, format_shape

# const: an array a traced function closed over, captured when it was traced and passed by
# the runner on every call (gc.jit bakes it in, like JAX, without putting data in the IR)
INPUT_ROLES = ("data", "label", "param", "state", "hyper", "const")


def _signed_zeros(attrs: tuple) -> tuple:
    """``attrs`` for hash-consing: -0.0 == 0.0 in Python, but a constant -0.0 is not
    0.0 (1 / -0.0 is -inf), so it is keyed apart."""
    if not any(isinstance(v, float) and v == 0.0 and math.copysign(1.0, v) < 0
               for _, v in attrs):
        return attrs
    return tuple((k, ("-0.0",) if isinstance(v, float) and v == 0.0
                  and math.copysign(1.0, v) < 0 else v) for k, v in attrs)


@dataclass(frozen=True)
class Node:
    """A read-only view of one node."""

    id: int
    op: str
    attrs: dict
    type: TensorType
    args: tuple
    name: str | None = None
    group: int | None = None

    @property
    def shape(self):
        return self.type.shape

    @property
    def dtype(self):
        return self.type.dtype

    def label(self) -> str:
        return f"%{self.id}" + (f" ({self.name})" if self.name else "")


class Graph:
    """A computation graph with ordered inputs and outputs."""

    def __init__(self, name: str = "graph"):
        self.name = name
        self.nx = nx.MultiDiGraph()
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.output_names: list[str | None] = []
        # output index -> input index: the output's value replaces that input in place
        self.aliases: dict[int, int] = {}
        self._ids = itertools.count()
        self._hashcons: dict = {}
        self.meta: dict = {}

    # ----------------------------------------------------------------- building
    def add_input(self, type: TensorType, name: str, role: str = "data") -> int:
        if role not in INPUT_ROLES:
            raise GraphError(f"input {name!r}: role {role!r} is not one of {INPUT_ROLES}")
        if any(self.nx.nodes[i].get("name") == name for i in self.inputs):
            raise GraphError(f"graph {self.name!r} already has an input named {name!r}")
        nid = next(self._ids)
        self.nx.add_node(nid, op="input", attrs=(("role", role),), type=type, args=(),
                         name=name, group=None)
        self.inputs.append(nid)
        return nid

    def add(self, op: str, args: Iterable[int] = (), attrs: dict | None = None,
            name: str | None = None) -> int:
        """Add ``op(args) {attrs}`` and return its node id (an existing equal node if any)."""
        opdef = get_op(op)
        args = tuple(args)
        for a in args:
            if a not in self.nx:
                raise GraphError(f"{op}: operand %{a} is not a node of graph {self.name!r}")
        if opdef.arity is not None and len(args) != opdef.arity:
            raise GraphError(f"{op} takes {opdef.arity} operand(s), got {len(args)}")
        attr_tuple = opdef.normalize_attrs(attrs)
        key = (op, _signed_zeros(attr_tuple), args)
        existing = self._hashcons.get(key)
        if existing is not None and existing in self.nx:
            if name and not self.nx.nodes[existing].get("name"):
                self.nx.nodes[existing]["name"] = name
            return existing
        in_types = [self.nx.nodes[a]["type"] for a in args]
        try:
            out_type = opdef.infer(in_types, dict(attr_tuple))
        except ShapeError as exc:
            where = f" ({name})" if name else ""
            operands = ", ".join(f"{self._describe(a)}: {format_shape(t.shape)}"
                                 for a, t in zip(args, in_types))
            raise type(exc)(f"{op}{where}: {exc} [operands {operands}]") from None
        nid = next(self._ids)
        self.nx.add_node(nid, op=op, attrs=attr_tuple, type=out_type, args=args,
                         name=name, group=None)
        for pos, a in enumerate(args):
            self.nx.add_edge(a, nid, key=pos, pos=pos)
        self._hashcons[key] = nid
        return nid

    def constant(self, value: float, dtype: str, shape: tuple = ()) -> int:
        """A tensor of ``shape`` filled with ``value`` (rank 0 by default); an int64 one
        keeps an exact Python int (a float holds integers exactly only below 2**53)."""
        if dtype == "int64":
            value = int(value)
            if not -2 ** 63 <= value < 2 ** 63:
                raise ShapeError(f"the integer constant {value} does not fit in int64 "
                                 f"(range -2**63 .. 2**63 - 1)")
        else:
            value = float(value)
        return self.add("constant", [], {"value": value, "shape": tuple(shape),
                                         "dtype": dtype})

    def set_outputs(self, outputs, names=None):
        self.outputs = list(outputs)
        self.output_names = list(names) if names is not None else [None] * len(self.outputs)

    def _describe(self, nid):
        name = self.nx.nodes[nid].get("name")
        return f"%{nid}" + (f" {name}" if name else "")

    # ----------------------------------------------------------------- reading
    def node(self, nid: int) -> Node:
        d = self.nx.nodes[nid]
        return Node(nid, d["op"], dict(d["attrs"]), d["type"], d["args"], d.get("name"),
                    d.get("group"))

    def __contains__(self, nid):
        return nid in self.nx

    def __len__(self):
        return self.nx.number_of_nodes()

    def type_of(self, nid: int) -> TensorType:
        return self.nx.nodes[nid]["type"]

    def op_of(self, nid: int) -> str:
        return self.nx.nodes[nid]["op"]

    def args_of(self, nid: int) -> tuple:
        return self.nx.nodes[nid]["args"]

    def users(self, nid: int) -> list[int]:
        """Distinct nodes that use ``nid`` as an operand."""
        return list(dict.fromkeys(v for _, v in self.nx.out_edges(nid)))

    def input_named(self, name: str) -> int:
        for i in self.inputs:
            if self.nx.nodes[i].get("name") == name:
                return i
        raise GraphError(f"graph {self.name!r} has no input named {name!r}")

    def input_names(self) -> list[str]:
        return [self.nx.nodes[i]["name"] for i in self.inputs]

    def input_role(self, nid: int) -> str:
        return dict(self.nx.nodes[nid]["attrs"])["role"]

    def topo_order(self) -> list[int]:
        """Nodes in a deterministic topological order (ties broken by id)."""
        return list(nx.lexicographical_topological_sort(self.nx))

    def nodes(self) -> list[Node]:
        return [self.node(n) for n in self.topo_order()]

    # ----------------------------------------------------------------- editing
    def replace_all_uses(self, old: int, new: int):
        """Point every use of ``old`` (operands and outputs) at ``new``."""
        if old == new:
            return
        for user in self.users(old):
            d = self.nx.nodes[user]
            self._unindex(user)
            d["args"] = tuple(new if a == old else a for a in d["args"])
            self.nx.remove_edges_from([(old, user, k) for k in list(self.nx[old][user])])
            for pos, a in enumerate(d["args"]):
                if a == new:
                    self.nx.add_edge(new, user, key=pos, pos=pos)
            self._index(user)
        self.outputs = [new if o == old else o for o in self.outputs]

    def remove_node(self, nid: int):
        if nid in self.inputs:
            raise GraphError(f"cannot remove graph input {self._describe(nid)}")
        self._unindex(nid)
        self.nx.remove_node(nid)

    def set_group(self, nid: int, group):
        self.nx.nodes[nid]["group"] = group

    def structural_key(self, nid):
        """``(op, attrs, operands)``: equal for nodes that compute the same value."""
        d = self.nx.nodes[nid]
        return (d["op"], _signed_zeros(d["attrs"]), d["args"])

    def _unindex(self, nid):
        key = self.structural_key(nid)
        if self._hashcons.get(key) == nid:
            del self._hashcons[key]

    def _index(self, nid):
        if self.nx.nodes[nid]["op"] != "input":
            self._hashcons.setdefault(self.structural_key(nid), nid)

    def copy(self, name: str | None = None) -> "Graph":
        g = Graph(name or self.name)
        g.nx = self.nx.copy()
        g.inputs = list(self.inputs)
        g.outputs = list(self.outputs)
        g.output_names = list(self.output_names)
        g.aliases = dict(self.aliases)
        start = max(self.nx.nodes, default=-1) + 1
        g._ids = itertools.count(start)
        g._hashcons = dict(self._hashcons)
        g.meta = dict(self.meta)
        return g

    def __repr__(self):
        return (f"<Graph {self.name!r}: {len(self)} nodes, {len(self.inputs)} inputs, "
                f"{len(self.outputs)} outputs>")
