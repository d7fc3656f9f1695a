"""The CUDA emitter: a schedule -> readable ``numba.cuda`` source.

It shares :mod:`codegen.schedule` with the CPU emitter: every loop kernel (an
elementwise/broadcast group) becomes one ``@cuda.jit`` kernel with a grid-stride loop
over the flattened iteration space and broadcast index arithmetic, built from the ops'
``scalar`` templates; every template kernel comes from the op's ``cuda_kernel``
(reductions, softmax, losses, tiled matmul, ...). The driver ``run`` is host Python
that launches the kernels in order on device arrays; reshapes are device-array views.

On the device a rank-0 value is a 1-element array (indexed ``[0]``), since that is
what every CUDA toolchain handles.

This module imports no CUDA code itself: the generated source does, when loaded.

>>> from graphc.ir import Graph, TensorType
>>> g = Graph("neg"); x = g.add_input(TensorType(("N",), "float64"), "x")
>>> g.set_outputs([g.add("neg", [x])])
>>> from graphc.codegen.schedule import build_schedule
>>> "@cuda.jit" in emit_cuda_source(g, build_schedule(g))
True
"""
from __future__ import annotations

import math

import numba
import numpy as np

from graphc.ir import CompileError, get_op

from .cpu import Emitter, TemplateContext, var

JIT_FLAGS = "cache=True"
MAX_BLOCKS = 8192        # per launch; grid-stride and block-stride loops cover the rest


def literal(value, dtype: str) -> str:
    """Source text for a constant: ``float32(0.5)``, ``float64(-math.inf)``, ``int64(3)``."""
    v = float(value)
    if dtype == "int64":
        return f"int64({int(v)})"
    if math.isnan(v):
        text = "math.nan"
    elif math.isinf(v):
        text = "math.inf" if v > 0 else "-math.inf"
    else:
        text = repr(v)
    return f"{dtype}({text})"


class CudaTemplateContext(TemplateContext):
    """What a ``cuda_kernel`` template sees; see ``graphc.ir.ops._cuda``."""

    def __init__(self, args, out, in_types, out_type, attrs, shape_expr, threads, tile):
        super().__init__(args, out, in_types, out_type, attrs, shape_expr)
        self.threads = threads
        self.tile = tile
        self.launch = None
        dtype = out_type.dtype
        self.nbtype = dtype if dtype != "int64" else "float64"

    def lit(self, value) -> str:
        dtype = self.out_type.dtype if self.out_type.dtype != "int64" else "float64"
        return literal(value, dtype)


def _index(value_shape, iter_shape, names) -> str:
    if not value_shape:
        return "0"
    lead = len(iter_shape) - len(value_shape)
    return ", ".join(names[lead + k] if d == iter_shape[lead + k] else "0"
                     for k, d in enumerate(value_shape))


def cuda_supported(graph) -> list[str]:
    """Ops of ``graph`` that have no CUDA code (empty when all compile for the GPU)."""
    missing = []
    for nid in graph.topo_order():
        op = get_op(graph.op_of(nid))
        if op.name == "input" or op.scalar is not None or op.cuda_kernel is not None:
            continue
        if op.name not in missing:
            missing.append(op.name)
    return missing


class CudaEmitter(Emitter):
    def __init__(self, graph, schedule, threads=256, tile=16, max_blocks=MAX_BLOCKS):
        if threads & (threads - 1):
            raise CompileError(f"CUDA block size {threads} is not a power of two")
        super().__init__(graph, schedule)
        self.threads = threads
        self.tile = tile
        self.max_blocks = max_blocks

    def shape_expr(self, t) -> str:
        # device arrays have no rank 0: scalars live in one-element arrays
        return "(1,)" if not t.shape else super().shape_expr(t)

    # ------------------------------------------------------------ kernels
    def emit_loop(self, k):
        """One grid-stride kernel evaluating the whole group per element, in registers."""
        g = self.g
        iter_shape = g.type_of(k.outputs[0]).shape
        for o in k.outputs:
            if g.type_of(o).shape != iter_shape:
                raise CompileError(f"loop kernel {k.name}: outputs of different shapes")
        rank = len(iter_shape)
        first = var(k.outputs[0])
        names = [f"i{d}" for d in range(rank)]
        lines = ["@cuda.jit(" + JIT_FLAGS + ")", self.signature(k)]
        lines += [self.comment(n) for n in k.nodes]
        lines.append(f"    for idx in range(cuda.grid(1), {first}.size, cuda.gridsize(1)):")
        ind = "        "
        if rank == 1:
            lines.append(f"{ind}i0 = idx")
        elif rank > 1:
            lines.append(f"{ind}rem = idx")
            for d in range(rank - 1, 0, -1):
                lines.append(f"{ind}i{d} = rem % {first}.shape[{d}]")
                lines.append(f"{ind}rem = rem // {first}.shape[{d}]")
            lines.append(f"{ind}i0 = rem")

        def ref(v):
            return f"{var(v)}[{_index(g.type_of(v).shape, iter_shape, names)}]"

        local = {}
        for v in k.inputs:
            lines.append(f"{ind}x{v} = {ref(v)}")
            local[v] = f"x{v}"
        for n in k.nodes:
            d = g.nx.nodes[n]
            opdef = get_op(d["op"])
            template = opdef.cuda_scalar or opdef.scalar
            lit = lambda value, dt=d["type"].dtype: literal(value, dt)  # noqa: E731
            expr = template([local[a] for a in d["args"]], dict(d["attrs"]), lit)
            lines.append(f"{ind}t{n} = {expr}")
            local[n] = f"t{n}"
        for o in k.outputs:
            lines.append(f"{ind}{ref(o)} = {local[o]}")
        launch = (f"_blocks({first}.size)", str(self.threads))
        return lines, launch

    def _context(self, n):
        d = self.g.nx.nodes[n]
        return CudaTemplateContext([var(a) for a in d["args"]], var(n),
                                   [self.g.type_of(a) for a in d["args"]], d["type"],
                                   dict(d["attrs"]), self.shape_expr, self.threads, self.tile)

    def _cuda_template(self, n):
        op = get_op(self.g.op_of(n))
        if op.cuda_kernel is None:
            raise CompileError(f"op {op.name!r} (node %{n}) has no CUDA kernel template "
                               f"(OpDef.cuda_kernel); it cannot be compiled with target='cuda'")
        return op.cuda_kernel

    def emit_template(self, k):
        (n,) = k.nodes
        ctx = self._context(n)
        self._cuda_template(n)(ctx)
        if ctx.launch is None:
            raise CompileError(f"the CUDA template of op {self.g.op_of(n)!r} set no launch "
                               f"configuration (ctx.launch)")
        lines = ["@cuda.jit(" + JIT_FLAGS + ")", self.signature(k), self.comment(n)]
        return lines + ["    " + line for line in ctx.lines], ctx.launch

    def emit_view(self, k) -> list[str]:
        (n,) = k.nodes
        ctx = self._context(n)
        self._cuda_template(n)(ctx)
        return [self.comment(n)] + ["    " + line for line in ctx.lines]

    # ------------------------------------------------------------ driver
    def driver_params(self) -> list[str]:
        return [var(n) for n in self.g.inputs] + [var(n) for n in self.s.buffers] + \
               [f"out{i}" for i in sorted(self.s.out_copies)]

    def emit(self) -> str:
        g, s = self.g, self.s
        missing = cuda_supported(g)
        if missing:
            raise CompileError(f"op(s) {', '.join(repr(m) for m in missing)} have no CUDA kernel "
                               f"template (OpDef.cuda_kernel); graph {g.name!r} cannot be "
                               f"compiled with target='cuda'")
        parts = [f"# graphc generated CUDA code for graph {g.name!r}",
                 f"# numba {numba.__version__}, numpy {np.__version__}; "
                 f"{self.threads} threads per block, matmul tile {self.tile}",
                 "import math", "import numpy as np",
                 "from numba import cuda, float32, float64, int64, uint64", "",
                 f"THREADS = {self.threads}", "",
                 "def _blocks(size):",
                 "    return max(1, min((size + THREADS - 1) // THREADS, "
                 f"{self.max_blocks}))", "",
                 "def _rows(rows):",
                 f"    return max(1, min(rows, {self.max_blocks}))", ""]
        launches = {}
        for k in s.kernels:
            if k.kind == "loop":
                lines, launches[k.index] = self.emit_loop(k)
            elif k.kind == "template":
                lines, launches[k.index] = self.emit_template(k)
            elif k.kind == "view":
                continue
            else:
                raise CompileError(f"no CUDA code generator for kernel kind {k.kind!r} "
                                   f"({k.name})")
            parts += lines + [""]
        driver = [f"def run({', '.join(self.driver_params())}):",
                  '    """Launch every kernel in order on device arrays (asynchronous)."""']
        if self.batch_source is not None:
            driver.append(f"    n = {self.batch_source[0]}.shape[{self.batch_source[1]}]")
        for value, target in s.inplace.items():
            driver.append(f"    {var(value)} = {var(target)}  # updated in place")
        for k in s.kernels:
            if k.kind == "view":
                driver += self.emit_view(k)
            else:
                args = [var(n) for n in k.inputs] + [var(n) for n in k.outputs]
                blocks, threads = launches[k.index]
                driver.append(f"    {k.name}[{blocks}, {threads}]({', '.join(args)})")
        for value, target in s.copy_back.items():
            driver.append(f"    {var(target)}.copy_to_device({var(value)})")
        for i, value in sorted(s.out_copies.items()):
            driver.append(f"    out{i}.copy_to_device({var(value)})")
        driver.append("    return 0")
        return "\n".join(parts + driver) + "\n"


def emit_cuda_source(graph, schedule, threads=256, tile=16, max_blocks=MAX_BLOCKS) -> str:
    """``numba.cuda`` source for ``graph`` in ``schedule`` order; its driver is ``run``.

    ``threads`` per block (a power of two), ``tile`` of the matmul kernel, and at most
    ``max_blocks`` blocks per grid-stride launch.
    """
    return CudaEmitter(graph, schedule, threads, tile, max_blocks).emit()
