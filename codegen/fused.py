"""Emitters for fused group kinds beyond plain loops (set by the fusion pass).

- ``matmul_epilogue``: ``np.dot`` (BLAS) writes the product into an output buffer of
  the group, then one loop applies the elementwise epilogue (bias add, activation, ...)
  reading each element before overwriting it, so no extra buffer is needed.
- ``reduce_loop``: one loop nest over the reduction operand's shape computes the
  elementwise producers per element, stores the ones read elsewhere, and accumulates
  the reductions (sum, mean, max) into their outputs.

Loops are serial: a prange next to BLAS starves OpenBLAS on small machines.
"""
from __future__ import annotations

from graphc.ir import get_op

from .cpu import JIT_FLAGS, _index, literal, var
from .schedule import Kernel

REDUCERS = {"reduce_sum": ("{acc} + {v}", 0.0), "reduce_mean": ("{acc} + {v}", 0.0),
            "reduce_max": ("max({acc}, {v})", float("-inf"))}


def emit_matmul_epilogue(em, k) -> list[str]:
    g = em.g
    (m,) = [n for n in k.nodes if g.op_of(n) == "matmul"]
    rest = [n for n in k.nodes if n != m]
    outs = [o for o in k.outputs if o != m]
    if not outs:
        raise ValueError(f"{k.name}: a matmul epilogue with no stored value")
    used = {a for n in rest for a in g.args_of(n)}
    sub_inputs = [v for v in k.inputs if v in used] + [m]
    loop = em.emit_loop(Kernel(k.index, rest, sub_inputs, outs, "loop", k.name))
    a, b = g.args_of(m)
    attrs = dict(g.nx.nodes[m]["attrs"])
    tmp = m if m in k.outputs else outs[0]
    lines = [loop[0], em.signature(k), em.comment(m)]
    lines.append(f"    np.dot({var(a)}{'.T' if attrs['ta'] else ''}, "
                 f"{var(b)}{'.T' if attrs['tb'] else ''}, {var(tmp)})")
    if tmp != m:
        lines.append(f"    {var(m)} = {var(tmp)}  # the epilogue overwrites the product in place")
    return lines + loop[2:]


def emit_reduce_loop(em, k) -> list[str]:
    g = em.g
    reds = [n for n in k.nodes if g.op_of(n) in REDUCERS]
    elems = [n for n in k.nodes if n not in reds]
    iter_shape = g.type_of(g.args_of(reds[0])[0]).shape
    rank = len(iter_shape)
    names = [f"i{d}" for d in range(rank)]
    stored = [n for n in elems if n in k.outputs]
    src = next((v for v in list(k.inputs) + stored if g.type_of(v).shape == iter_shape), None)
    if src is None:
        raise ValueError(f"{k.name}: no array of the loop shape to take extents from")
    for n in stored:
        if g.type_of(n).shape != iter_shape:
            raise ValueError(f"{k.name}: stored value %{n} is not of the loop shape")

    def ref(v):
        shape = g.type_of(v).shape
        return f"{var(v)}[{_index(shape, iter_shape, names)}]" if shape else f"{var(v)}[()]"

    lines = [f"@njit({JIT_FLAGS})", em.signature(k)] + [em.comment(n) for n in k.nodes]
    for r in reds:
        init = literal(REDUCERS[g.op_of(r)][1], g.type_of(r).dtype)
        lines.append(f"    {var(r)}[{'()' if g.type_of(r).rank == 0 else ':'}] = {init}")
    local = {}
    for v in k.inputs:
        if not g.type_of(v).shape:
            lines.append(f"    s{v} = {var(v)}[()]")
            local[v] = f"s{v}"
    for d in range(rank):
        lines.append("    " * (d + 1) + f"for i{d} in range({var(src)}.shape[{d}]):")
    ind = "    " * (rank + 1)
    for v in k.inputs:
        if v not in local:
            lines.append(f"{ind}x{v} = {ref(v)}")
            local[v] = f"x{v}"
    for n in elems:
        d = g.nx.nodes[n]
        lit = lambda value, dt=d["type"].dtype: literal(value, dt)  # noqa: E731
        expr = get_op(d["op"]).scalar([local[a] for a in d["args"]], dict(d["attrs"]), lit)
        lines.append(f"{ind}t{n} = {expr}")
        local[n] = f"t{n}"
    for n in stored:
        lines.append(f"{ind}{ref(n)} = t{n}")
    for r in reds:
        attrs = dict(g.nx.nodes[r]["attrs"])
        axes = attrs["axes"] if attrs["axes"] is not None else tuple(range(rank))
        if attrs["keepdims"]:
            idx = ["0" if a in axes else names[a] for a in range(rank)]
        else:
            idx = [names[a] for a in range(rank) if a not in axes]
        out = f"{var(r)}[{', '.join(idx) if idx else '()'}]"
        (x,) = g.args_of(r)
        lines.append(f"{ind}{out} = " + REDUCERS[g.op_of(r)][0].format(acc=out, v=local[x]))
    for r in reds:
        if g.op_of(r) == "reduce_mean":
            attrs = dict(g.nx.nodes[r]["attrs"])
            axes = attrs["axes"] if attrs["axes"] is not None else tuple(range(rank))
            count = " * ".join(f"{var(src)}.shape[{a}]" for a in axes) or "1"
            one = literal(1.0, g.type_of(r).dtype)
            lines.append(f"    scale{r} = {one} / ({count})")
            lines.append(f"    {var(r)}[{'()' if g.type_of(r).rank == 0 else ':'}] *= scale{r}")
    return lines


FUSED_EMITTERS = {"matmul_epilogue": emit_matmul_epilogue, "reduce_loop": emit_reduce_loop}
