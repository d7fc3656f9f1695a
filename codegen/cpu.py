"""The CPU emitter: a schedule -> readable Numba source.

Each kernel is one ``@njit`` function with the IR lines it implements as comments; a
driver function ``run`` calls them in order, so a whole step is one native call.

Loop kernels evaluate every node of the group per element with intermediates in
locals; a group whose operands all share the iteration shape runs as one flat loop
(vectorisable), otherwise as a loop nest with broadcast indexing.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from graphc.ir import BATCH, get_op
from graphc.ir.printer import format_node

from . import blas, fastmath, interleave, memops
from .schedule import batch_source, scratch_arenas

# every generated CPU function: no GIL held, NumPy's division semantics, no bounds checks
BASE_FLAGS = "nogil=True, error_model='numpy', boundscheck=False"
JIT_FLAGS = "cache=True, " + BASE_FLAGS
# Kernels are inlined into the driver by Numba, so a step compiles and caches as ONE
# function (one cache entry to load at warm start, no per-function LLVM/cache overhead:
# cold compile of a small MLP step went 19 s -> 16 s on a loaded 2-core machine); each
# kernel stays a readable function in the source.
KERNEL_FLAGS = BASE_FLAGS + ", inline='always'"


def jit_flags(base: str, fm: set, parallel: bool = False, interleaved: bool = False) -> str:
    """``base`` decorator flags plus parallel=True, the fast-math flags ``fm`` and
    interleave.InterleavedCompiler, each where asked for.

    >>> jit_flags("nogil=True", {"reassoc", "contract"}, interleaved=True)
    "nogil=True, fastmath={'contract', 'reassoc'}, pipeline_class=InterleavedCompiler"
    """
    flags = base + (", parallel=True" if parallel else "")
    flags += ", fastmath={" + ", ".join(map(repr, sorted(fm))) + "}" if fm else ""
    return flags + (", " + interleave.PIPELINE_FLAG if interleaved else "")


def literal(value, dtype: str) -> str:
    """Source text for a constant of ``dtype``: ``np.float32(0.5)``, ``-np.inf``."""
    if dtype == "int64":
        return f"np.int64({int(value)})"      # exact: no detour through a float
    v = float(value)
    if math.isnan(v):
        text = "np.nan"
    elif math.isinf(v):
        text = "np.inf" if v > 0 else "-np.inf"
    else:
        text = repr(v)
    if dtype == "float32":
        return f"np.float32({text})"
    if dtype == "int64":
        return f"np.int64({int(v)})"
    return text


class TemplateContext:
    """What an op's kernel template sees: operand names, types, attrs, and ``emit``."""

    def __init__(self, args, out, in_types, out_type, attrs, shape_expr, scratch=(), parts=1):
        self.args = args
        self.scratch = list(scratch)   # names of the scratch arrays (OpDef.scratch)
        # how many parts the kernel may split its samples into, each with its own
        # scratch (OpDef.scratch was asked for that many); a kernel that does so with
        # ``prange`` sets ``parallel``, and is then compiled on its own with parallel=True
        self.parts = parts
        self.parallel = False
        self.out = out
        self.in_types = in_types
        self.out_type = out_type
        self.attrs = attrs
        self.shape_expr = shape_expr
        self.lines: list[str] = []
        # LLVM fast-math flags the kernel's loops need (e.g. {"reassoc"} so a dot
        # product vectorises); a kernel asking for more than the driver has is compiled
        # on its own instead of inlined into the driver
        self.fastmath: set[str] = set()

    def emit(self, line: str):
        self.lines.append(line)

    def lit(self, value) -> str:
        dtype = self.out_type.dtype if self.out_type.dtype != "int64" else "float64"
        return literal(value, dtype)


def var(nid: int) -> str:
    return f"v{nid}"


def _index(value_shape, iter_shape, names) -> str:
    """Index of a value of ``value_shape`` broadcast against the loop over ``iter_shape``."""
    if not value_shape:
        return "()"
    lead = len(iter_shape) - len(value_shape)
    idx = []
    for k, d in enumerate(value_shape):
        full = iter_shape[lead + k]
        idx.append(names[lead + k] if d == full else "0")
    return ", ".join(idx)


def _run_kind(shape, iter_shape, s):
    """How a value of ``shape`` spans the loop's trailing axes ``s..``: "full" (whole,
    so a reshaped view indexes them with one flat index), "bcast" (size 1 on each) or
    None (mixed: the axes cannot be one loop)."""
    rank = len(iter_shape)
    dims = [(d, iter_shape[rank - len(shape) + j]) for j, d in enumerate(shape)
            if rank - len(shape) + j >= s]
    if len(dims) == rank - s and all(d == full for d, full in dims):
        return "full"
    return "bcast" if all(d == 1 for d, _ in dims) else None


def run_start(shapes, iter_shape) -> int:
    """The first loop axis from which every value in ``shapes`` is whole or broadcast,
    so axes ``s..rank-1`` can run as one flat loop (``len(iter_shape)`` if none can).

    Why: a broadcast bias (C, 1, 1) against (N, C, 8, 8) otherwise leaves an 8-element
    innermost loop that barely vectorises (LeNet's conv2 bias + relu: 0.056 -> 0.017 ms
    as one loop over 64).

    >>> run_start([(4, 3, 8, 8), (3, 1, 1)], (4, 3, 8, 8))
    2
    >>> run_start([(4, 3, 8, 8), (8,)], (4, 3, 8, 8))
    3
    """
    rank = len(iter_shape)
    for s in range(rank):
        if all(_run_kind(sh, iter_shape, s) for sh in shapes if sh):
            return s
    return rank


def run_ref(name, shape, iter_shape, names, s, run):
    """``name[...]`` for a value of ``shape`` in a loop whose axes ``s..`` are the one flat
    loop ``run`` (a "full" value is read through its reshaped view ``name_r``)."""
    if not shape:
        return f"{name}[()]"
    lead = len(iter_shape) - len(shape)
    kind = _run_kind(shape, iter_shape, s)
    idx = []
    for j, d in enumerate(shape):
        a = lead + j
        if a < s:
            idx.append(names[a] if d == iter_shape[a] else "0")
        elif kind == "full":
            idx.append(run)
            break
        else:
            idx.append("0")
    return f"{name}{'_r' if kind == 'full' else ''}[{', '.join(idx)}]"


def run_views(name, shape, iter_shape, s, length="n_run") -> list[str]:
    """The reshaped view ``name_r`` a "full" value is read through (nothing otherwise)."""
    if not shape or _run_kind(shape, iter_shape, s) != "full":
        return []
    keep = [f"{name}.shape[{j}]" for j in range(len(shape) - (len(iter_shape) - s))]
    return [f"{name}_r = {name}.reshape(({', '.join(keep + [length])},))"]


class Emitter:
    """What every target's emitter shares: the graph, its schedule, where the driver reads
    the batch size ``n``, shape expressions, IR comments and kernel signatures."""

    def __init__(self, graph, schedule):
        self.g = graph
        self.s = schedule
        source = batch_source(graph)
        self.batch_source = (var(source[0]), source[1]) if source else None

    def shape_expr(self, t) -> str:
        dims = ["n" if d == BATCH else str(d) for d in t.shape]
        return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"

    def comment(self, nid) -> str:
        return "    # " + format_node(self.g, nid)

    def params(self, k) -> list[str]:
        """A kernel's parameter names: the values it reads, then those it stores."""
        return [var(n) for n in k.inputs] + [var(n) for n in k.outputs]

    def signature(self, k):
        return f"def {k.name}({', '.join(self.params(k))}):"


def _relu_operand(g, args, local: dict):
    """For ``gt(a, 0)``: ``z`` if ``a = relu(z)`` and ``z`` is in a local too, else ``a``.

    Relu's gradient mask is ``gt(relu(z), 0)`` (it reads relu's stored output, as
    PyTorch's does), and ``relu(z) > 0`` is ``z > 0`` (nan: false both ways). In a loop
    that has ``z`` the mask then shares the comparison ``x > 0`` that sigmoid's numerator
    selection also makes (one instruction fewer per vector in the elementwise chain's
    loop)."""
    a, c = args
    if (g.op_of(a) == "relu" and g.args_of(a)[0] in local and g.op_of(c) == "constant"
            and dict(g.nx.nodes[c]["attrs"])["value"] == 0):
        return g.args_of(a)[0]
    return a


def scalar_expr(g, n, local: dict) -> str:
    """The scalar expression of elementwise node ``n``, its operands named by ``local``
    (node id -> local variable); float32 gets graphc's vectorisable exp/log/tanh
    instead of libm calls.

    >>> from graphc.ir import Graph, TensorType
    >>> g = Graph("f"); x = g.add_input(TensorType((3,), "float32"), "x")
    >>> scalar_expr(g, g.add("exp", [x]), {x: "x0"})
    'fexp32(x0)'
    """
    d = g.nx.nodes[n]
    args = [local[a] for a in d["args"]]
    if d["op"] == "gt":
        args[0] = local[_relu_operand(g, d["args"], local)]
    lit = lambda value, dt=d["type"].dtype: literal(value, dt)  # noqa: E731
    expr = get_op(d["op"]).scalar(args, dict(d["attrs"]), lit)
    return fastmath.rewrite(expr, d["type"].dtype, d["op"], args)


class CpuEmitter(Emitter):
    def __init__(self, graph, schedule):
        super().__init__(graph, schedule)
        # A float32 graph's driver contracts a*b+c into FMAs, as float32 loops do anyway
        # (fastmath.LOOP_FLAGS): a kernel whose loop asks for no more than that is then
        # inlined instead of compiled on its own (each separate function costs ~0.5 s of
        # cold compile, mostly re-optimising the gemm code it links in). float64 graphs
        # keep separate roundings, as the interpreter computes them.
        dtypes = {graph.type_of(n).dtype for n in graph.nx.nodes}
        self.driver_fastmath = set(fastmath.LOOP_FLAGS) if "float64" not in dtypes else set()
        self.uses_prange = False

    def kernel_flags(self, fm: set, parallel: bool = False, interleaved: bool = False) -> str:
        """Decorator flags of a kernel whose loops need fast-math flags ``fm``: inlined
        into the driver (compiled with its flags) if those cover ``fm`` and it has no
        ``prange`` and needs no interleaving, else compiled and cached on its own with
        ``fm`` (and parallel=True, or interleave.InterleavedCompiler)."""
        if fm <= self.driver_fastmath and not parallel and not interleaved:
            return KERNEL_FLAGS
        return jit_flags(JIT_FLAGS, fm, parallel, interleaved)

    def driver_flags(self) -> str:
        return jit_flags(JIT_FLAGS, self.driver_fastmath)

    # ------------------------------------------------------------ kernels

    def emit_loop(self, k) -> list[str]:
        g = self.g
        iter_shape = g.type_of(k.outputs[0]).shape
        for o in k.outputs:
            if g.type_of(o).shape != iter_shape:
                raise ValueError(f"loop kernel {k.name}: outputs of different shapes")
        rank = len(iter_shape)
        all_shapes = {g.type_of(v).shape for v in list(k.inputs) + list(k.nodes)}
        flat = rank > 1 and all_shapes <= {iter_shape, ()}
        lines = [f"@njit({KERNEL_FLAGS})", self.signature(k)]
        lines += [self.comment(n) for n in k.nodes]
        body, pre = [], []
        run = rank
        if rank == 0:
            names, depth = [], 1
        elif flat or rank == 1:
            first = var(k.outputs[0])
            names = ["i"] * rank
            if flat:
                for v in list(k.inputs) + list(k.outputs):
                    if g.type_of(v).shape:
                        pre.append(f"    {var(v)}_f = {var(v)}.reshape({var(v)}.size)")
                pre.append(f"    for i in range({first}.size):")
            else:
                pre.append(f"    for i in range({first}.shape[0]):")
            depth = 2
        else:
            names = [f"i{d}" for d in range(rank)]
            first = var(k.outputs[0])
            # trailing axes every operand spans whole or broadcast run as one flat loop
            shapes = {v: g.type_of(v).shape for v in list(k.inputs) + list(k.outputs)}
            run = run_start(list(shapes.values()), iter_shape)
            if run > rank - 2:
                run = rank
            else:
                pre.append("    n_run = " + " * ".join(f"{first}.shape[{d}]"
                                                      for d in range(run, rank)))
                for v, shape in shapes.items():
                    pre += ["    " + line for line in run_views(var(v), shape, iter_shape, run)]
            for d in range(min(run, rank)):
                pre.append("    " * (d + 1) + f"for i{d} in range({first}.shape[{d}]):")
            if run < rank:
                pre.append("    " * (run + 1) + "for ir in range(n_run):")
            depth = min(run + 1, rank) + 1
        ind = "    " * depth

        def ref(v):
            shape = g.type_of(v).shape
            if not shape:
                return f"{var(v)}[()]"
            if flat:
                return f"{var(v)}_f[i]"
            if rank > 1 and run < rank:
                return run_ref(var(v), shape, iter_shape, names, run, "ir")
            return f"{var(v)}[{_index(shape, iter_shape, names)}]"

        local = {}
        for v in k.inputs:
            if not g.type_of(v).shape:
                pre.insert(0, f"    s{v} = {var(v)}[()]")
                local[v] = f"s{v}"
            else:
                body.append(f"{ind}x{v} = {ref(v)}")
                local[v] = f"x{v}"
        for n in k.nodes:
            body.append(f"{ind}t{n} = {scalar_expr(g, n, local)}")
            local[n] = f"t{n}"
        for o in k.outputs:
            body.append(f"{ind}{ref(o)} = {local[o]}")
        # one loop over the whole tensor whose body calls the fast-math polynomials:
        # compiled on its own with four vectors in flight (interleave.py); loops over
        # trailing runs keep LLVM's choice (a run may be shorter than four vectors)
        if (flat or rank == 1) and interleave.wants_interleave(body):
            lines[0] = f"@njit({self.kernel_flags(self.driver_fastmath, interleaved=True)})"
        return lines + pre + body

    def emit_template(self, k) -> list[str]:
        (n,) = k.nodes
        d = self.g.nx.nodes[n]
        scratch = [f"scratch{j}" for j in range(len(k.scratch))]
        ctx = TemplateContext([var(a) for a in d["args"]], var(n),
                              [self.g.type_of(a) for a in d["args"]], d["type"],
                              dict(d["attrs"]), self.shape_expr, scratch, self.s.parts)
        get_op(d["op"]).kernel(ctx)
        sig = self.signature(k)
        if scratch:
            sig = sig[:-2] + ", " + ", ".join(scratch) + "):"
        flags = self.kernel_flags(ctx.fastmath | self.driver_fastmath, ctx.parallel)
        self.uses_prange |= ctx.parallel
        return ([f"@njit({flags})", sig, self.comment(n)] +
                ["    " + line for line in ctx.lines])

    def scratch_views(self, k) -> list[str]:
        """Driver expressions for kernel ``k``'s scratch: consecutive views of the start
        of its dtype's arena (no allocation; every kernel reuses the same memory)."""
        offsets: dict = {}
        views = []
        for t in k.scratch:
            size = " * ".join("n" if d == BATCH else str(d) for d in t.shape) or "1"
            start = offsets.get(t.dtype, "0")
            end = f"{start} + {size}" if start != "0" else size
            views.append(f"scratch_{t.dtype}[{start}:{end}].reshape({self.shape_expr(t)})")
            offsets[t.dtype] = end
        return views

    def emit_view(self, k) -> list[str]:
        (n,) = k.nodes
        d = self.g.nx.nodes[n]
        ctx = TemplateContext([var(a) for a in d["args"]], var(n),
                              [self.g.type_of(a) for a in d["args"]], d["type"],
                              dict(d["attrs"]), self.shape_expr)
        get_op(d["op"]).kernel(ctx)
        return [self.comment(n)] + ["    " + line for line in ctx.lines]

    # ------------------------------------------------------------ driver
    def driver_params(self) -> list[str]:
        return [var(n) for n in self.g.inputs] + [var(n) for n in self.s.buffers] + \
               [f"out{i}" for i in sorted(self.s.out_copies)] + \
               [f"scratch_{dt}" for dt in scratch_arenas(self.s)]

    def emit(self) -> str:
        g, s = self.g, self.s
        parts = [f"# graphc generated code for graph {g.name!r}",
                 f"# numba {numba.__version__}, numpy {np.__version__}",
                 "import math", "import numpy as np", "from numba import njit",
                 fastmath.IMPORT_LINE, interleave.IMPORT_LINE, blas.IMPORT_LINE,
                 memops.IMPORT_LINE, ""]
        from .fused import FUSED_EMITTERS, lone_reduction   # (fused imports this module)
        for k in s.kernels:
            kind = "reduce_loop" if k.kind == "template" and lone_reduction(g, k) else k.kind
            if kind == "loop":
                parts += self.emit_loop(k) + [""]
            elif kind == "template":
                parts += self.emit_template(k) + [""]
            elif kind != "view":   # fused group kinds (fusion pass)
                parts += FUSED_EMITTERS[kind](self, k) + [""]
        if self.uses_prange:
            parts[parts.index("from numba import njit")] = PRANGE_IMPORT
        driver = [f"@njit({self.driver_flags()})", f"def run({', '.join(self.driver_params())}):"]
        if self.batch_source is not None:
            driver.append(f"    n = {self.batch_source[0]}.shape[{self.batch_source[1]}]")
        for value, target in s.inplace.items():
            driver.append(f"    {var(value)} = {var(target)}  # updated in place")
        for k in s.kernels:
            if k.kind == "view":
                driver += self.emit_view(k)
            else:
                args = [var(n) for n in k.inputs] + [var(n) for n in k.outputs] + \
                    self.scratch_views(k)
                driver.append(f"    {k.name}({', '.join(args)})")
        for value, target in s.copy_back.items():
            driver.append(_copy_line(var(target), var(value), g.type_of(value).rank))
        for i, value in sorted(s.out_copies.items()):
            driver.append(_copy_line(f"out{i}", var(value), g.type_of(value).rank))
        driver.append("    return 0")
        return "\n".join(parts + driver) + "\n"


def _copy_line(dst, src, rank) -> str:
    return f"    {dst}[()] = {src}[()]" if rank == 0 else f"    {dst}[:] = {src}"


PRANGE_IMPORT = "from numba import njit, prange"


def uses_prange(source: str) -> bool:
    """True if generated ``source`` has kernels that run parts of a batch on separate
    cores (it imports ``prange`` only then)."""
    return f"\n{PRANGE_IMPORT}\n" in source


def emit_cpu_source(graph, schedule) -> str:
    """Numba source for ``graph`` run in ``schedule`` order; its driver is ``run``."""
    return CpuEmitter(graph, schedule).emit()
