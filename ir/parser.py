"""Read the text IR (:func:`graphc.ir.format_graph`) back into an identical Graph.

Node ids, ops, attributes, types, names, fusion groups, inputs, outputs, output names,
aliases and literal ``meta`` entries all survive ``parse_graph(format_graph(g))``, so
users can save, diff and hand-edit IR. Each node's declared type is checked against the
type its op infers, so a hand edit that breaks shapes fails here, with its line number.

>>> from graphc.ir import Graph, TensorType, format_graph, parse_graph
>>> g = Graph("demo")
>>> x = g.add_input(TensorType(("N", 3), "float32"), "x")
>>> g.set_outputs([g.add("exp", [x], name="e")], ["out"])
>>> format_graph(parse_graph(format_graph(g))) == format_graph(g)
True
"""
from __future__ import annotations

import ast
import itertools
import math
import re

import numpy as np

from .errors import GraphcError, GraphError
from .graph import INPUT_ROLES, Graph
from .registry import get_op
from .types import TensorType

_HEADER = re.compile(r"graph\s+(.*?)\s*\{")
_NODE = re.compile(r"%(\d+)\s*:\s*(\w+\[[^\]]*\])\s*=\s*(\w+)")
_ALIAS = re.compile(r"alias\s+output\s+(\d+)\s*->\s*input\s+(\d+)")
_META = re.compile(r"meta\s+([A-Za-z_]\w*)\s*=\s*(.+)")
_GROUP = re.compile(r"(?:^|\s)@k([^\s'\"]+)$")   # not inside a quoted name
_TOKEN = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^,\s]+""")
_NAMES = {"inf": math.inf, "nan": math.nan, "True": True, "False": False, "None": None}
_NP_SCALARS = ("float32", "float64", "int64", "int32", "bool_")


def _value(node):
    """A safe evaluator for attribute literals: Python literals plus inf, nan and
    ``np.float32(...)``-style scalars (what ``repr`` prints for them)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, ast.Tuple):
        return tuple(_value(e) for e in node.elts)
    if isinstance(node, ast.List):
        return [_value(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_value(k): _value(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _value(node.operand)
        return -v if isinstance(node.op, ast.USub) else +v
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id in ("np", "numpy")
            and node.func.attr in _NP_SCALARS and len(node.args) == 1 and not node.keywords):
        return getattr(np, node.func.attr)(_value(node.args[0]))
    raise ValueError(f"not a literal: {ast.unparse(node)}")


def _literal(text: str):
    return _value(ast.parse(text.strip(), mode="eval").body)


def _parse_attrs(text: str):
    """``[a=1, b=(2, 3)]...`` -> (dict, rest of the line). Tries each ``]`` in turn so a
    ``]`` inside a string value does not end the list early."""
    for j in (m.start() for m in re.finditer(r"\]", text)):
        try:
            call = ast.parse(f"f({text[1:j]})", mode="eval").body
        except SyntaxError:
            continue
        if call.args:
            raise ValueError("attributes are written key=value")
        return {kw.arg: _value(kw.value) for kw in call.keywords}, text[j + 1:]
    raise ValueError(f"unterminated attribute list {text!r}")


def _parse_name(token: str):
    token = token.strip()
    if token[:1] in "'\"":
        value = _literal(token)
        if not isinstance(value, str):
            raise ValueError(f"name {token} is not a string")
        return value
    return token


def _parse_tail(tail: str):
    """``# name  @k3`` -> (name or None, group or None)."""
    tail = tail.strip()
    group = None
    m = _GROUP.search(tail)
    if m:
        g = m.group(1)
        group = int(g) if re.fullmatch(r"-?\d+", g) else g
        tail = tail[:m.start()].strip()
    return (_parse_name(tail) if tail else None), group


class _Parser:
    def __init__(self, text: str, source: str):
        self.lines = text.splitlines()
        self.source = source
        self.lineno = 0

    def fail(self, msg, cls=GraphError):
        return cls(f"{self.source}:{self.lineno}: {msg}")

    def parse(self) -> Graph:
        body = [(i + 1, ln.strip()) for i, ln in enumerate(self.lines)]
        body = [(n, ln) for n, ln in body if ln and not ln.startswith("//")]
        if not body:
            raise GraphError(f"{self.source}: empty IR text; expected 'graph NAME {{'")
        self.lineno, head = body[0]
        m = _HEADER.fullmatch(head)
        if not m:
            raise self.fail(f"expected 'graph NAME {{', got {head!r}")
        g = Graph(m.group(1))
        self.g = g
        closed = returned = False
        for self.lineno, line in body[1:]:
            if closed:
                raise self.fail(f"text after the closing '}}': {line!r}")
            try:
                if line == "}":
                    closed = True
                elif line.startswith("%"):
                    if returned:
                        raise self.fail("node after 'return'")
                    self.node(line)
                elif line == "return" or line.startswith(("return ", "return#")):
                    if returned:
                        raise self.fail("a second 'return'")
                    self.ret(line[len("return"):])
                    returned = True
                elif line.startswith("alias"):
                    self.alias(line)
                elif line.startswith("meta"):
                    self.meta(line)
                else:
                    raise self.fail(f"cannot parse {line!r}; expected a node '%ID: TYPE = "
                                    f"op(...)', 'return', 'alias' or 'meta'")
            except GraphcError as exc:
                if str(exc).startswith(f"{self.source}:"):
                    raise
                raise self.fail(str(exc), type(exc)) from None
            except (ValueError, SyntaxError, TypeError) as exc:
                # TypeError: an attribute of the wrong kind reaching an op's shape rule
                # (axes=1 where a tuple is meant)
                raise self.fail(f"{exc}: {line!r}") from None
        if not closed:
            raise GraphError(f"{self.source}: missing closing '}}'")
        if not returned:
            raise GraphError(f"{self.source}: missing 'return' line")
        ids = list(g.nx.nodes)
        g._ids = itertools.count(max(ids, default=-1) + 1)
        return g

    def node(self, line):
        g = self.g
        m = _NODE.match(line)
        if not m:
            raise self.fail(f"cannot parse node {line!r}; expected '%ID: TYPE = op(%a, ...)[k=v]'")
        nid, type_text, op = int(m.group(1)), m.group(2), m.group(3)
        if nid in g.nx:
            raise self.fail(f"%{nid} is defined twice")
        declared = TensorType.parse(type_text)
        rest = line[m.end():]
        args = ()
        if rest.startswith("("):
            close = rest.find(")")
            if close < 0:
                raise self.fail(f"unclosed operand list in {line!r}")
            inner = rest[1:close].strip()
            parts = [p.strip() for p in inner.split(",")] if inner else []
            for p in parts:
                if not re.fullmatch(r"%\d+", p):
                    raise self.fail(f"operand {p!r} of %{nid} is not a node reference like %3")
            args = tuple(int(p[1:]) for p in parts)
            rest = rest[close + 1:]
        attrs = {}
        if rest.startswith("["):
            attrs, rest = _parse_attrs(rest)
        rest = rest.strip()
        if rest and not rest.startswith("#"):
            raise self.fail(f"unexpected {rest!r} after %{nid}")
        name, group = _parse_tail(rest[1:]) if rest else (None, None)
        for a in args:
            if a not in g.nx:
                raise self.fail(f"%{nid} uses %{a} before it is defined")
        if op == "input":
            role = attrs.get("role")
            if set(attrs) != {"role"} or role not in INPUT_ROLES:
                raise self.fail(f"input %{nid} needs [role=...] with a role in {INPUT_ROLES}")
            if args:
                raise self.fail(f"input %{nid} takes no operands")
            if name is None:
                raise self.fail(f"input %{nid} needs a name ('# name')")
            g.nx.add_node(nid, op="input", attrs=(("role", role),), type=declared, args=(),
                          name=name, group=group)
            g.inputs.append(nid)
            return
        opdef = get_op(op)
        if opdef.arity is not None and len(args) != opdef.arity:
            raise self.fail(f"{op} takes {opdef.arity} operand(s), %{nid} has {len(args)}")
        attr_tuple = opdef.normalize_attrs(attrs)
        inferred = opdef.infer([g.nx.nodes[a]["type"] for a in args], dict(attr_tuple))
        if inferred != declared:
            raise self.fail(f"%{nid} = {op}(...) is declared {declared} but its operands "
                            f"give {inferred}")
        g.nx.add_node(nid, op=op, attrs=attr_tuple, type=declared, args=args, name=name,
                      group=group)
        for pos, a in enumerate(args):
            g.nx.add_edge(a, nid, key=pos, pos=pos)
        g._hashcons.setdefault((op, attr_tuple, args), nid)

    def ret(self, rest):
        rest, _, tail = rest.partition("#")
        refs = [p.strip() for p in rest.split(",") if p.strip()]
        for p in refs:
            if not re.fullmatch(r"%\d+", p) or int(p[1:]) not in self.g.nx:
                raise self.fail(f"return value {p!r} is not a defined node")
        outputs = [int(p[1:]) for p in refs]
        tail = tail.strip()
        if tail:
            names = [None if t == "-" else _parse_name(t) for t in _TOKEN.findall(tail)]
        else:
            names = [None] * len(outputs)
        if len(names) != len(outputs):
            raise self.fail(f"{len(outputs)} return value(s) but {len(names)} name(s)")
        self.g.set_outputs(outputs, names)

    def alias(self, line):
        m = _ALIAS.fullmatch(line)
        if not m:
            raise self.fail(f"expected 'alias output I -> input J', got {line!r}")
        o, i = int(m.group(1)), int(m.group(2))
        if o >= len(self.g.outputs) or i >= len(self.g.inputs):
            raise self.fail(f"alias output {o} -> input {i}: the graph has "
                            f"{len(self.g.outputs)} outputs and {len(self.g.inputs)} inputs")
        self.g.aliases[o] = i

    def meta(self, line):
        m = _META.fullmatch(line)
        if not m:
            raise self.fail(f"expected 'meta KEY = VALUE', got {line!r}")
        self.g.meta[m.group(1)] = _literal(m.group(2))


def parse_graph(text: str, source: str = "<ir>") -> Graph:
    """Parse the text form printed by :func:`format_graph`; errors name ``source:line``."""
    if not isinstance(text, str):
        raise GraphError(f"{source}: parse_graph needs the IR text as a str, got "
                         f"{type(text).__name__}")
    return _Parser(text, source).parse()
