"""Emitters for fused group kinds beyond plain loops (set by the fusion pass).

- ``matmul_epilogue``: ``gemm`` (codegen/blas.py) writes the product into an output buffer of
  the group, then one loop applies the elementwise epilogue (bias add, activation, ...)
  reading each element before overwriting it, so no extra buffer is needed.
- ``template_epilogue``: the same with a row-wise softmax/log_softmax template as head.
- ``reduce_loop``: (optionally after such a head) one loop nest over the reduction operand's shape computes the
  elementwise producers per element, stores the ones read elsewhere, and accumulates
  the reductions (sum, mean, max) into their outputs.

Loops are serial: a prange next to BLAS starves OpenBLAS on small machines.
"""
from __future__ import annotations

import math
from collections import defaultdict

from graphc.ir import get_op

from . import blas, fastmath, interleave
from .cpu import (BASE_FLAGS, KERNEL_FLAGS, TemplateContext, _index, _run_kind, jit_flags,
                  literal, run_ref, run_views, scalar_expr, var)
from .schedule import LOOP_KINDS, Kernel

SUM_BLOCK = 1024   # elements per register partial sum of a whole-tensor reduction
# longest trailing run a bare sum gets as a literal length (measured per run length on
# a sum over (0, 2, 3): literal faster at 4 and 16 pixels, slower at 32 and beyond)
LITERAL_RUN = 16
# reduce_max keeps a NaN, as torch.amax and np.max (the builtin max(acc, v) drops one)
REDUCERS = {"reduce_sum": ("{acc} + {v}", 0.0), "reduce_mean": ("{acc} + {v}", 0.0),
            "reduce_max": ("({acc} if ({acc} >= {v}) | ({acc} != {acc}) else {v})",
                           float("-inf"))}


def _head(em, k):
    """The group's head (a matmul or row-wise template op run before the loop).

    Returns ``(head, lines)``; the head is computed into the buffer of a stored value
    of its shape and dtype (its own if it is stored), which the loop then overwrites
    element by element after reading it. ``(None, [])`` for a group without a head.
    """
    g = em.g
    heads = [n for n in k.nodes
             if get_op(g.op_of(n)).kind not in LOOP_KINDS and g.op_of(n) not in REDUCERS]
    if not heads:
        return None, []
    (h,) = heads
    t = g.type_of(h)
    tmp = h if h in k.outputs else next(
        (o for o in k.outputs if g.type_of(o) == t), None)
    if tmp is None:
        raise ValueError(f"{k.name}: no stored {t} buffer to compute %{h} into")
    args = g.args_of(h)
    attrs = dict(g.nx.nodes[h]["attrs"])
    lines = [em.comment(h)]
    if g.op_of(h) == "matmul":
        lines.append("    " + blas.call(var(args[0]), var(args[1]), var(tmp), attrs["ta"],
                                          attrs["tb"]))
    else:
        ctx = TemplateContext([var(a) for a in args], var(tmp), [g.type_of(a) for a in args],
                              t, attrs, em.shape_expr)
        get_op(g.op_of(h)).kernel(ctx)
        lines += ["    " + line for line in ctx.lines]
    if tmp != h:
        lines.append(f"    {var(h)} = {var(tmp)}  # the loop overwrites it element by element")
    return h, lines


def emit_epilogue(em, k) -> list[str]:
    """A head (matmul: ``gemm``; softmax: its template) and one elementwise loop."""
    g = em.g
    h, head_lines = _head(em, k)
    rest = [n for n in k.nodes if n != h]
    outs = [o for o in k.outputs if o != h]
    if not outs:
        raise ValueError(f"{k.name}: an epilogue with no stored value")
    used = {a for n in rest for a in g.args_of(n)}
    sub_inputs = [v for v in k.inputs if v in used] + [h]
    loop = em.emit_loop(Kernel(k.index, rest, sub_inputs, outs, "loop", k.name))
    return [loop[0], em.signature(k)] + head_lines + loop[2:]


def lone_reduction(g, k) -> bool:
    """True for a kernel that is one float reduce_sum/mean/max on its own (its operand made
    by a kernel it could not join, such as a convolution's output for batch norm's mean):
    the CPU emitter gives it the fused reduction loop's code (accumulators in registers,
    a run of literal length) instead of the op's template, whose loop added into the
    output element in memory: batch norm's per-channel means over (256, 16, 8, 8) took
    0.127 ms that way, 0.089 ms this way (over (256, 32, 4, 4): 0.089 -> 0.029 ms), 0.023
    since its 64-pixel run's length is read from the shape (see _emit_suffix)."""
    if len(k.nodes) != 1 or g.op_of(k.nodes[0]) not in REDUCERS:
        return False
    (x,) = g.args_of(k.nodes[0])
    return g.type_of(x).dtype in ("float32", "float64") and g.type_of(x).rank > 0


def emit_reduce_loop(em, k) -> list[str]:
    g = em.g
    h, head_lines = _head(em, k)
    reds = [n for n in k.nodes if g.op_of(n) in REDUCERS]
    elems = [n for n in k.nodes if n not in reds and n != h]
    used = {a for n in elems + reds for a in g.args_of(n)}
    reads = [v for v in k.inputs if v in used] + ([h] if h is not None else [])
    iter_shape = g.type_of(g.args_of(reds[0])[0]).shape
    rank = len(iter_shape)
    names = [f"i{d}" for d in range(rank)]
    stored = [n for n in elems if n in k.outputs]
    src = next((v for v in reads + stored if g.type_of(v).shape == iter_shape), None)
    if src is None:
        raise ValueError(f"{k.name}: no array of the loop shape to take extents from")
    for n in stored:
        if g.type_of(n).shape != iter_shape:
            raise ValueError(f"{k.name}: stored value %{n} is not of the loop shape")

    def ref(v):
        shape = g.type_of(v).shape
        return f"{var(v)}[{_index(shape, iter_shape, names)}]" if shape else f"{var(v)}[()]"

    # Reductions to a single value accumulate blockwise: a register partial per block of
    # SUM_BLOCK elements, added into a float64 local (accurate for millions of float32
    # terms), stored once after the loop. Sums may then be
    # re-associated ('reassoc' only: NaN/Inf semantics stay IEEE), which lets LLVM
    # vectorise the whole loop; the result differs from a sequential sum by rounding.
    scalar_sums = [r for r in reds if g.type_of(r).rank == 0 and g.op_of(r) != "reduce_max"]
    # float32 loops may also contract a*b+c into one FMA (the fast-math polynomials are
    # mostly that: ~20% fewer instructions); fastmath.LOOP_FLAGS keeps their error bounds.
    # float64 loops keep separate roundings, as the interpreter computes them.
    dtypes = {g.type_of(n).dtype for n in elems + reds}
    float32 = "float32" in dtypes and "float64" not in dtypes
    # Reductions over a trailing run of axes (a conv bias gradient: (N, C, H, W) summed
    # over (0, 2, 3)) accumulate in registers over that run instead (see _emit_suffix).
    suffix = [] if scalar_sums else [r for r in reds if rank - 1 in _axes(g, r, rank)]
    # ... unless the loop calls libm: with 'reassoc' LLVM folds exp(log(x)) to x, which
    # is x for x < 0 where log gives NaN (and such loops do not vectorise anyway: no SVML)
    reorder = not _calls_libm(g, elems)
    fm = {"reassoc"} if scalar_sums and reorder else set()
    if float32:
        fm |= set(fastmath.LOOP_FLAGS)
        # as for whole-tensor sums; float64 suffix sums stay sequential (no reassoc)
        if reorder and any(g.op_of(r) != "reduce_max" for r in suffix):
            fm.add("reassoc")
    lines = [f"@njit({em.kernel_flags(fm)})", em.signature(k)] + head_lines
    if suffix:
        return lines + _emit_suffix(em, k, reds, suffix, elems, reads, stored, iter_shape, src)
    lines += [em.comment(n) for n in k.nodes if n != h]
    local = {}
    lines += _reduce_prologue(g, reds, reads, scalar_sums, local)
    blocked = bool(scalar_sums) and rank >= 1
    for d in range(rank - 1 if blocked else rank):
        lines.append("    " * (d + 1) + f"for i{d} in range({var(src)}.shape[{d}]):")
    ind = "    " * (rank + 1)
    block_fn = []
    if blocked:
        # The innermost loop runs in blocks, each summed in a register of the tensor's
        # dtype (vectorisable), then added to the float64 total: accurate and fast. A
        # block is a function of its own: nested in the block loop, LLVM re-loaded every
        # constant of the fast-math polynomials in every iteration (for lack of
        # registers); in a loop of its own it keeps them on the stack, read as operands
        # (the elementwise chain's loop: 109 -> 81 instructions per 8 elements).
        last, outer = rank - 1, "    " * rank
        name = f"{k.name}_block"
        params = em.params(k)
        # the kernel's arrays, a head's result, scalars read once, the outer indices
        params += [var(v) for v in reads if v not in local and var(v) not in params]
        params += [local[v] for v in reads if v in local] + names[:last] + ["lo", "hi"]
        block_fn = [f"def {name}({', '.join(params)}):"]
        for r in scalar_sums:
            block_fn.append(f"    part{r} = {literal(0.0, g.type_of(r).dtype)}")
        # Unsigned index: Numba wraps negative int64 indices (i < 0 -> i + n), and LLVM
        # cannot prove a block's indices non-negative, so it kept every load and store
        # scalar around the vector math; those scalar stores also made the next loads
        # wait when output - input was 0-16 bytes past a multiple of 4 KiB (4K aliasing: the
        # chain bench ran 10-20x slower). uint64 indices carry no wraparound.
        block_fn.append(f"    for i{last} in range(np.uint64(lo), np.uint64(hi)):")
        body = _loop_body(g, reads, elems, stored, ref, local, "        ")
        for r in reds:
            out = f"part{r}" if r in scalar_sums else _out_ref(g, r, rank, names)
            (x,) = g.args_of(r)
            body.append(f"        {out} = " + REDUCERS[g.op_of(r)][0].format(acc=out, v=local[x]))
        block_fn += body + ["    return (" + "".join(f"part{r}, " for r in scalar_sums) + ")", ""]
        # compiled (and cached) as part of the kernel that calls it
        block_flags = jit_flags(BASE_FLAGS, fm, interleaved=interleave.wants_interleave(body))
        block_fn.insert(0, f"@njit({block_flags})")
        lines.append(f"{outer}for b{last} in range(0, {var(src)}.shape[{last}], {SUM_BLOCK}):")
        call_args = params[:-2] + [f"b{last}", f"min(b{last} + {SUM_BLOCK}, "
                                               f"{var(src)}.shape[{last}])"]
        lines.append(f"{outer}    parts = {name}({', '.join(call_args)})")
        for j, r in enumerate(scalar_sums):
            lines.append(f"{outer}    acc{r} += parts[{j}]")
    else:
        lines += _loop_body(g, reads, elems, stored, ref, local, ind)
        for r in reds:
            out = f"acc{r}" if r in scalar_sums else _out_ref(g, r, rank, names)
            (x,) = g.args_of(r)
            lines.append(f"{ind}{out} = " + REDUCERS[g.op_of(r)][0].format(acc=out, v=local[x]))
    for r in scalar_sums:
        lines.append(f"    {var(r)}[()] = acc{r}")
    return block_fn + lines + _scale_means(g, reds, src, rank)


def emit_matmul_update(em, k) -> list[str]:
    """``W - s * (A @ B)`` as one gemm accumulating into W's array (alpha=-s, beta=1);
    when the schedule gives the result its own buffer, W is copied into it first."""
    g = em.g
    (u,) = k.outputs
    w, m = g.args_of(u)
    x, y = g.args_of(m)
    s, mm = (x, y) if g.op_of(y) == "matmul" else (y, x)
    a, b = g.args_of(mm)
    attrs = dict(g.nx.nodes[mm]["attrs"])
    if g.op_of(s) == "constant":
        scale = repr(-float(dict(g.nx.nodes[s]["attrs"])["value"]))
    else:
        scale = f"-{var(s)}[()]"
    lines = [f"@njit({KERNEL_FLAGS})", em.signature(k)] + [em.comment(n) for n in k.nodes]
    if em.s.inplace.get(u) != w:
        lines.append(f"    {var(u)}[:] = {var(w)}")
    lines.append("    " + blas.call(var(a), var(b), var(u), attrs["ta"], attrs["tb"],
                                    scale, "1.0"))
    return lines


def emit_softmax_ce(em, k) -> list[str]:
    """Softmax cross-entropy forward and backward in one pass over each row of logits: the
    mean loss (if in the group), the gradient (softmax - one_hot) * g / n, and its column
    sums (if in the group), with the same arithmetic as the ops' own kernels."""
    g = em.g
    by_op = {g.op_of(n): n for n in k.nodes}
    grad = by_op["softmax_cross_entropy_grad"]
    loss, col = by_op.get("softmax_cross_entropy"), by_op.get("reduce_sum")
    x, y, gr = (var(a) for a in g.args_of(grad))
    out = var(grad)
    zero = literal(0.0, g.type_of(grad).dtype)
    lines = [f"@njit({KERNEL_FLAGS})", em.signature(k)] + [em.comment(n) for n in k.nodes]
    lines.append(f"    scale = {gr}[()] / {x}.shape[0]")
    if loss is not None:
        lines.append(f"    total = {zero}")
    if col is not None:
        lines.append(f"    {var(col)}[:] = {zero}")
    lines += [f"    for i in range({x}.shape[0]):",
              f"        m = {x}[i, 0]",
              f"        for j in range(1, {x}.shape[1]):",
              f"            m = max(m, {x}[i, j])",
              f"        s = {zero}",
              f"        for j in range({x}.shape[1]):",
              f"            e = math.exp({x}[i, j] - m)",
              f"            {out}[i, j] = e",
              "            s += e"]
    if loss is not None:
        lines.append(f"        total += m + math.log(s) - {x}[i, {y}[i]]")
    lines += ["        inv = scale / s",
              f"        for j in range({x}.shape[1]):",
              f"            {out}[i, j] *= inv",
              f"        {out}[i, {y}[i]] -= scale"]
    if col is not None:
        lines += [f"        for j in range({x}.shape[1]):",
                  f"            {var(col)}[j] = {var(col)}[j] + {out}[i, j]"]
    if loss is not None:
        lines.append(f"    {var(loss)}[()] = total / {x}.shape[0]")
    return lines


def _axes(g, r, rank):
    axes = dict(g.nx.nodes[r]["attrs"])["axes"]
    return tuple(range(rank)) if axes is None else tuple(axes)


def _out_ref(g, r, rank, names):
    """Reduction ``r``'s output element for loop indices ``names`` (keepdims: 0 on the
    reduced axes)."""
    axes = _axes(g, r, rank)
    keep = dict(g.nx.nodes[r]["attrs"])["keepdims"]
    idx = [("0" if a in axes else names[a]) for a in range(rank) if keep or a not in axes]
    return f"{var(r)}[{', '.join(idx) if idx else '()'}]"


def _reduce_prologue(g, reds, reads, scalar_sums, local) -> list[str]:
    """Before a reduce loop: each reduction's initial value (a float64 local ``acc`` for
    whole-tensor sums in ``scalar_sums``, else its output array), and each rank-0 operand
    read once into a local (recorded in ``local``)."""
    lines = []
    for r in reds:
        if r in scalar_sums:
            lines.append(f"    acc{r} = 0.0")
        else:
            init = literal(REDUCERS[g.op_of(r)][1], g.type_of(r).dtype)
            lines.append(f"    {var(r)}[{'()' if g.type_of(r).rank == 0 else ':'}] = {init}")
    for v in reads:
        if not g.type_of(v).shape:
            lines.append(f"    s{v} = {var(v)}[()]")
            local[v] = f"s{v}"
    return lines


def _calls_libm(g, elems) -> bool:
    """Whether the elementwise nodes of a loop call ``math`` functions (float64 exp, log,
    ...; float32 uses graphc's own, which LLVM has no identities for)."""
    names = defaultdict(lambda: "v")
    return any("math." in scalar_expr(g, n, names) for n in elems)


def _loop_body(g, reads, elems, stored, ref, local, ind) -> list[str]:
    """Innermost-loop lines of a reduce loop: load the operands not yet in ``local``,
    compute the elementwise nodes, store those read outside the kernel."""
    lines = []
    for v in reads:
        if v not in local:
            lines.append(f"{ind}x{v} = {ref(v)}")
            local[v] = f"x{v}"
    for n in elems:
        lines.append(f"{ind}t{n} = {scalar_expr(g, n, local)}")
        local[n] = f"t{n}"
    for n in stored:
        lines.append(f"{ind}{ref(n)} = t{n}")
    return lines


def _scale_means(g, reds, src, rank) -> list[str]:
    """After the loop: each mean is its sum times 1 / (the reduced sizes)."""
    lines = []
    for r in reds:
        if g.op_of(r) == "reduce_mean":
            count = " * ".join(f"{var(src)}.shape[{a}]" for a in _axes(g, r, rank)) or "1"
            one = literal(1.0, g.type_of(r).dtype)
            lines.append(f"    scale{r} = {one} / ({count})")
            # in place on the array itself: Numba gives ``a[:] *= s`` a temporary (an
            # allocation per step), ``a *= s`` none
            lines.append(f"    {var(r)}{'[()]' if g.type_of(r).rank == 0 else ''} *= scale{r}")
    return lines


def _emit_suffix(em, k, reds, suffix, elems, reads, stored, iter_shape, src) -> list[str]:
    """The reduce loop when some reductions cover the trailing axes ``s..rank-1``.

    Accumulating into the output element in the innermost loop (``v[i1] = v[i1] + t``)
    is a dependency through memory: store, reload, add, ~5 cycles an element, never
    vectorised (a LeNet bias gradient, (64, 6, 24, 24) over (0, 2, 3), took 0.84 ms).
    Here each such reduction keeps a local accumulator over the trailing run and adds it
    into the output once per outer index (0.07 ms). When every array is either whole or
    broadcast (size 1) over the run, the run is one flat loop (``reshape``: the buffers
    are C-contiguous, as the flat elementwise loops assume), so a 24 or 8-element inner
    row does not leave the vector loop mostly in its scalar remainder. The inner loop
    runs in blocks of SUM_BLOCK with a uint64 index (no wraparound checks, see the
    blocked whole-tensor sums): each block sums in a register of the dtype (vectorised in
    float32 loops, which get 'reassoc'), added into a float64 accumulator. float64 loops
    keep sequential sums without 'reassoc'. Reductions over other axes (the last axis
    kept, e.g. axis 0 of (N, F)) keep accumulating into the output element: that loop
    vectorises across the last axis and adds rows in the interpreter's order.
    """
    g = em.g
    rank = len(iter_shape)
    s = max(next(d for d in range(rank + 1) if set(range(d, rank)) <= set(_axes(g, r, rank)))
            for r in suffix)
    in_reg = [r for r in suffix if set(range(s, rank)) <= set(_axes(g, r, rank))]
    arrays = [v for v in reads + stored if g.type_of(v).shape]

    # flat only if no reduction indexes into the run (those kept in memory would)
    flat = rank - s > 1 and set(in_reg) == set(reds) and all(
        _run_kind(g.type_of(v).shape, iter_shape, s) for v in arrays)
    # the inner index is uint64: its own name, so a head's int64 loop variable (softmax
    # uses i0, j) never shares it (Numba would unify int64 and uint64 to float64)
    names = [f"i{d}" for d in range(rank - 1)] + ["iu"]
    lines = []
    # the inner loop's length where the types fix it (only the batch size is symbolic)
    inner_dims = iter_shape[s:] if flat else iter_shape[rank - 1:]
    static_len = (math.prod(inner_dims) if all(isinstance(d, int) for d in inner_dims)
                  else None)
    if static_len is not None and static_len > LITERAL_RUN and not elems:
        # A bare sum of a longer run reads its length from the shape: LLVM unrolls a
        # literal loop with so small a body completely before it vectorises, and left a
        # 64-pixel sum as 64 scalar adds (batch norm's per-channel means over
        # (256, 16, 8, 8): 0.089 ms, 0.023-0.036 this way). Loops that also compute and
        # store elementwise values keep the literal, which measured faster for them
        # (batch norm's gradient kernels: 0.04-0.11 ms with it, 0.11-0.23 without).
        static_len = None
    if flat:
        length = (str(static_len) if static_len is not None else
                  " * ".join(f"{var(src)}.shape[{d}]" for d in range(s, rank)))
        lines.append(f"    n_run = {length}")
        for v in arrays:
            shape = g.type_of(v).shape
            lines += ["    " + line for line in run_views(var(v), shape, iter_shape, s)]
        inner, inner_len = "iu", "n_run"
    else:
        inner, inner_len = names[-1], f"{var(src)}.shape[{rank - 1}]"

    def ref(v):
        shape = g.type_of(v).shape
        if flat:
            return run_ref(var(v), shape, iter_shape, names, s, "iu")
        return f"{var(v)}[{_index(shape, iter_shape, names)}]" if shape else f"{var(v)}[()]"

    local = {}
    lines += _reduce_prologue(g, reds, reads, (), local)
    ind = "    "
    for d in range(s):
        lines.append(f"{ind}for i{d} in range({var(src)}.shape[{d}]):")
        ind += "    "
    sums = [r for r in in_reg if g.op_of(r) != "reduce_max"]
    for r in in_reg:
        lines.append(f"{ind}acc{r} = " + ("0.0" if r in sums else _out_ref(g, r, rank, names)))
    if not flat:
        for d in range(s, rank - 1):
            lines.append(f"{ind}for i{d} in range({var(src)}.shape[{d}]):")
            ind += "    "
    if static_len is not None and static_len <= SUM_BLOCK:
        # one block, its length a literal: LLVM sizes the vector loop to it (a 16-pixel
        # run fell through a 64-element vector body into the scalar remainder: a batch
        # norm gradient over (256, 32, 4, 4) took 0.39 ms)
        block = ind
        lines.append(f"{block}# one block of {static_len}")
        loop = f"for {inner} in range(np.uint64({static_len})):"
    else:
        lines.append(f"{ind}for bu in range(0, {inner_len}, {SUM_BLOCK}):")
        block = ind + "    "
        loop = (f"for {inner} in range(np.uint64(bu), np.uint64(min(bu + {SUM_BLOCK}, "
                f"{inner_len}))):")
    for r in sums:
        lines.append(f"{block}part{r} = {literal(0.0, g.type_of(r).dtype)}")
    lines.append(block + loop)
    body = block + "    "
    lines += _loop_body(g, reads, elems, stored, ref, local, body)
    for r in reds:
        (x,) = g.args_of(r)
        out = f"part{r}" if r in sums else f"acc{r}" if r in in_reg else _out_ref(g, r, rank, names)
        lines.append(f"{body}{out} = " + REDUCERS[g.op_of(r)][0].format(acc=out, v=local[x]))
    for r in sums:
        lines.append(f"{block}acc{r} += part{r}")
    ind = "    " * (s + 1)
    for r in in_reg:
        o = _out_ref(g, r, rank, names)
        lines.append(f"{ind}{o} = " + (f"{o} + acc{r}" if r in sums else f"acc{r}"))
    return lines + _scale_means(g, reds, src, rank)


FUSED_EMITTERS = {"softmax_ce": emit_softmax_ce, "matmul_update": emit_matmul_update,
                  "matmul_epilogue": emit_epilogue, "template_epilogue": emit_epilogue,
                  "reduce_loop": emit_reduce_loop}
