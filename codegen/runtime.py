"""The runtime: owns buffers, checks inputs, calls the compiled driver.

Buffers are allocated once per batch size and reused on every later call with that
size, so a steady-state call allocates nothing. Parameters and optimizer state are
arrays the caller owns; aliased outputs are written into them in place.

>>> from graphc.ir import Graph, TensorType
>>> g = Graph("double"); x = g.add_input(TensorType(("N",), "float64"), "x")
>>> g.set_outputs([g.add("add", [x, x])])
>>> exe = compile_graph(g)
>>> exe.run({"x": [1.0, 2.0]})[0]
array([2., 4.])
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

import numpy as np
from numba import njit
from numba.core.errors import NumbaError

from graphc.ir import BATCH, CompileError, InputError, input_index_bounds
from graphc.ir.types import format_shape

from .cache import load_module
from .blas import OneThread
from .cpu import emit_cpu_source, uses_prange
from .numba_start import load_without_refresh
from .parallel import (COMBINE, MIN_CHUNK_ELEMENTS, chunk_bounds, forked_after_omp,
                       row_split_plan, sample_parts, thread_count, worker_pool)
from .schedule import arena_sizes, build_schedule, scratch_arenas

MAX_BATCH_SIZES = 8   # buffer sets kept (least recently used dropped)
# id(graph) -> (graph, schedule, source, module): a graph object compiled again (e.g.
# the optimized graph that ``gc.compile`` shares between identical models) skips
# scheduling, emission and the module import; the entry keeps the graph alive, so its
# id cannot be reused while the entry exists
_CODEGEN: OrderedDict = OrderedDict()
_CODEGEN_MAX = 64
_CODEGEN_LOCK = threading.Lock()


@njit(cache=True, nogil=True)
def first_outside(values, lo, hi):
    """Index of the first value outside [lo, hi), or -1 (no temporaries, unlike
    ``values.min()``, so checking labels allocates nothing per step)."""
    for i in range(values.size):
        if values[i] < lo or values[i] >= hi:
            return i
    return -1


load_without_refresh(first_outside)


def planned_arrays(graph, schedule, batch, make) -> list:
    """One array per entry of ``schedule.buffers`` at ``batch``, made by
    ``make(shape, dtype)`` once per representative of the liveness plan
    (``schedule.shares``): values whose lifetimes are apart get the same array. Then one
    per output copied at the end (``schedule.out_copies``, in output order). Used by the
    CPU and CUDA runtimes alike.

    >>> from graphc.ir import Graph, TensorType
    >>> g = Graph("f"); x = g.add_input(TensorType(("N", 4), "float32"), "x")
    >>> a = g.add("exp", [x]); b = g.add("neg", [a]); c = g.add("exp", [b])
    >>> g.set_outputs([g.add("reduce_sum", [c], {"axes": (0,), "keepdims": False})])
    >>> s = build_schedule(g)
    >>> arrays = planned_arrays(g, s, 3, lambda shape, dtype: np.empty(shape, dtype))
    >>> arrays[s.buffers.index(c)] is arrays[s.buffers.index(a)], arrays[0].shape
    (True, (3, 4))
    """
    made: dict = {}
    arrays = []
    for v in schedule.buffers:
        rep = schedule.shares.get(v, v)
        if rep not in made:
            t = graph.type_of(v)
            made[rep] = make(t.concrete(batch), t.dtype)
        arrays.append(made[rep])
    for i in sorted(schedule.out_copies):
        t = graph.type_of(graph.outputs[i])
        arrays.append(make(t.concrete(batch), t.dtype))
    return arrays


_DTYPES = {name: np.dtype(name) for name in ("float32", "float64", "int64")}


def _np_dtype(name):
    # comparing an array's dtype with a dtype object is ~10x cheaper than with a string
    return _DTYPES.get(name) or np.dtype(name)


class Executable:
    """A compiled graph: ``run(inputs) -> outputs``, thread-safe."""

    def __init__(self, graph, schedule, source, module, target="cpu"):
        self.graph = graph
        self.schedule = schedule
        self.source = source
        self.module = module
        self.target = target
        self.input_names = graph.input_names()
        self.input_types = [graph.type_of(i) for i in graph.inputs]
        self.roles = [graph.input_role(i) for i in graph.inputs]
        self.index_bounds = input_index_bounds(graph)
        # batch norm in training needs two values per channel (graphc.functional)
        self.min_batch = graph.meta.get("min_batch", 0)
        self._buffers: OrderedDict = OrderedDict()
        self._out_plan = None     # (output plan, fresh positions): _output_plan
        self._lock = threading.Lock()
        self.timings: dict = {}
        # large elementwise graphs run in row chunks on every core (codegen/parallel.py)
        self.threads = thread_count()
        self.split_plan = row_split_plan(graph, schedule) if self.threads > 1 else None
        self._sliced_inputs = frozenset(  # input positions cut into rows (per call)
            p for p in (self.split_plan.sliced if self.split_plan else ()) if p < len(graph.inputs))
        self._chunk_args: dict = {}   # batch -> (buffers, bounds, per-chunk arguments)
        self.last_chunks: list = []   # row ranges of the last call; [] when not split
        # kernels splitting the batch across cores run with OpenBLAS on one thread
        self.one_blas_thread = target == "cpu" and uses_prange(source)

    @property
    def kernel_count(self) -> int:
        return sum(1 for k in self.schedule.kernels if k.kind != "view")

    # --------------------------------------------------------------- inputs
    def check_input(self, name, value, t):
        if (isinstance(value, np.ndarray) and value.dtype == _np_dtype(t.dtype)
                and value.flags.c_contiguous):
            arr = value   # the common case: no conversion, no copy
        else:
            try:
                arr = np.asarray(value)
            except Exception as exc:  # ragged lists and the like
                raise InputError(f"input {name!r}: cannot make an array of it ({exc})") from None
            if t.dtype == "int64":
                if arr.dtype.kind not in "iu":
                    raise InputError(f"input {name!r}: expected integers, got dtype "
                                     f"{arr.dtype}")
            elif arr.dtype.kind not in "fiub":
                raise InputError(f"input {name!r}: expected {t.dtype} numbers, got dtype "
                                 f"{arr.dtype}")
            arr = np.asarray(arr, dtype=t.dtype, order="C")  # (ascontiguousarray makes 0-d 1-d)
        if arr.ndim != t.rank or not all(d == s or d == BATCH for d, s in zip(t.shape, arr.shape)):
            raise InputError(f"input {name!r}: expected shape {format_shape(t.shape)} "
                             f"({t}), got {format_shape(arr.shape)}")
        return arr

    def prepare(self, inputs, trusted=()) -> tuple[list, int | None]:
        """Checked arrays in input order, and the batch size.

        Inputs at the positions in ``trusted`` (arrays the caller owns and created with
        the right dtype and shape, such as a compiled model's parameters) are passed
        through unchecked: the per-step cost is then only that of the data and labels.
        """
        if isinstance(inputs, dict):
            missing = [n for n in self.input_names if n not in inputs]
            if missing:
                raise InputError(f"missing input(s) {missing} for graph {self.graph.name!r}")
            inputs = [inputs[n] for n in self.input_names]
        if len(inputs) != len(self.input_names):
            raise InputError(f"graph {self.graph.name!r} takes {len(self.input_names)} inputs "
                             f"{self.input_names}, got {len(inputs)}")
        arrays, batch, batch_from = [], None, None
        for i, (name, value, t) in enumerate(zip(self.input_names, inputs, self.input_types)):
            if i in trusted:
                arrays.append(value)
                continue
            arr = self.check_input(name, value, t)
            for axis, d in enumerate(t.shape):
                if d == BATCH:
                    if batch is None:
                        batch, batch_from = arr.shape[axis], name
                    elif arr.shape[axis] != batch:
                        raise InputError(f"input {name!r} has batch size {arr.shape[axis]} "
                                         f"but {batch_from!r} has {batch}")
            bounds = self.index_bounds.get(name)
            if bounds is not None:
                lo, hi, noun, what = bounds
                at = first_outside(arr.reshape(-1), lo, hi)
                if at >= 0:
                    bad = int(arr.reshape(-1)[at])
                    raise InputError(f"input {name!r}: {noun} {bad} is out of range for "
                                     f"{what}: valid {lo}..{hi - 1}")
            arrays.append(arr)
        if batch is not None and batch < self.min_batch:
            raise InputError(f"batch size {batch}: graph {self.graph.name!r} normalises over "
                             f"the batch in training (batch norm) and needs at least "
                             f"{self.min_batch} samples, as PyTorch does (drop the short "
                             f"last batch)")
        return arrays, batch

    def buffers_for(self, batch):
        bufs = self._buffers.get(batch)
        if bufs is None:
            bufs = planned_arrays(self.graph, self.schedule, batch,
                                  lambda shape, dtype: np.empty(shape, dtype=dtype))
            # kernel scratch (im2col columns, ...): one flat arena per dtype, after the
            # buffers, so collect()'s buffer indices are unchanged
            sizes = arena_sizes(self.schedule, batch)
            bufs += [np.empty(sizes[dt], dtype=dt) for dt in scratch_arenas(self.schedule)]
            self._buffers[batch] = bufs
            while len(self._buffers) > MAX_BATCH_SIZES:
                self._buffers.popitem(last=False)
        else:
            self._buffers.move_to_end(batch)
        return bufs

    # --------------------------------------------------------------- run
    def run(self, inputs, copy: bool = True, trusted=()):
        """Run on ``inputs`` (list in input order or dict by name); returns the outputs.

        With ``copy=True`` (the default) the outputs are the caller's own arrays: those
        held in buffers are written by the driver into new arrays, the others copied.
        With ``copy=False`` the outputs are the runtime's own buffers, overwritten by the
        next call with the same batch size (from any thread); a steady-state call then
        allocates no array. ``copy`` may also be a set of output indices to copy, e.g.
        ``{0}`` for a loss read after the call returns (rank-0 ones come back as Python
        scalars). ``trusted``: see :meth:`prepare`.
        """
        arrays, batch = self.prepare(inputs, trusted)
        with self._lock:
            if self.one_blas_thread and forked_after_omp():
                self._rebuild_serial()
            bufs = self.buffers_for(batch)
            # outputs handed to the caller are written straight into new arrays: copying
            # them out of the runtime's buffers afterwards cost more than the kernels
            # (a 16 MB gradient: 2 ms of single-threaded copy after a 1.8 ms step)
            fresh = self._fresh_outputs(bufs) if copy is True else None
            call_bufs = bufs
            if fresh:
                call_bufs = list(bufs)
                for k, arr in fresh.items():
                    call_bufs[k] = arr
            try:
                chunks = self._chunks_for(batch, bufs) if self.split_plan else None
                if chunks is None:
                    # two plain calls, not ``with (... else nullcontext())``: a context
                    # object per step is an allocation tests/test_alloc.py catches
                    if self.one_blas_thread:
                        with OneThread():
                            self.module.run(*arrays, *call_bufs)
                    else:
                        self.module.run(*arrays, *call_bufs)
                    self.last_chunks = []
                else:
                    self._run_in_chunks(arrays, bufs, chunks, fresh)
            except IndexError as exc:   # raised by a kernel: an index made in the graph
                raise InputError(f"graph {self.graph.name!r}: {exc}") from None
            except NumbaError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CompileError(f"Numba could not compile graph {self.graph.name!r} "
                                   f"(source: {self.module.__graphc_path__}): {first}") from exc
            outs = self.collect(arrays, call_bufs)
            if copy is True:
                handed = {id(a) for a in fresh.values()} if fresh else set()
                result = []
                for o in outs:
                    if id(o) in handed:    # a new array, given once (an output listed
                        handed.discard(id(o))   # twice gets a copy the second time)
                        result.append(o)
                    else:
                        result.append(o.copy())
                outs = result
            elif copy:   # copied under the lock: another thread may reuse the buffers
                # (a rank-0 output becomes a Python scalar: no array per step)
                outs = [(o.item() if o.ndim == 0 else o.copy()) if i in copy else o
                        for i, o in enumerate(outs)]
        return outs

    def _rebuild_serial(self):
        """Swap in a build whose kernels run serially (scratch for one part, so new
        buffers too), for a process forked after its parent ran parallel loops on GNU
        OpenMP (codegen/parallel.py)."""
        self.schedule = build_schedule(self.graph, parts=1)
        self.source = emit_cpu_source(self.graph, self.schedule)
        self.module = load_module(self.source, tag=self.graph.name)
        self.one_blas_thread = False
        self._buffers.clear()
        self._out_plan = None

    def _chunks_for(self, batch, bufs):
        """(row ranges, buffer arguments per chunk) for this batch size, built once; None
        when the work is too small to be worth waking threads for."""
        hit = self._chunk_args.get(batch)
        if hit is None or hit[0] is not bufs:   # (new buffers after an eviction: rebuild)
            plan = self.split_plan
            rows = plan.rows if plan.rows is not None else batch
            chunks = min(self.threads, rows * plan.row_size // MIN_CHUNK_ELEMENTS)
            if chunks < 2:
                hit = (bufs, None, None)
            else:
                bounds = chunk_bounds(rows, plan.row_size, chunks)
                n_in = len(self.input_names)
                sliced = {p - n_in for p in plan.sliced if p >= n_in}
                per_chunk = []
                for c, (lo, hi) in enumerate(bounds):
                    per_chunk.append([b[lo:hi] if j in sliced
                                      else (np.empty_like(b) if c and j in plan.private else b)
                                      for j, b in enumerate(bufs)])
                hit = (bufs, bounds, per_chunk)
            self._chunk_args[batch] = hit
            while len(self._chunk_args) > MAX_BATCH_SIZES:
                self._chunk_args.pop(next(iter(self._chunk_args)))
        return None if hit[1] is None else hit[1:]

    def _run_in_chunks(self, arrays, bufs, chunks, fresh=None):
        bounds, per_chunk = chunks
        args = [[a[lo:hi] if i in self._sliced_inputs else a for i, a in enumerate(arrays)]
                + per_chunk[c] for c, (lo, hi) in enumerate(bounds)]
        if fresh:   # this call's new output arrays, cut into the same rows
            n_in = len(arrays)
            for c, (lo, hi) in enumerate(bounds):
                for k, arr in fresh.items():
                    args[c][n_in + k] = arr[lo:hi] if n_in + k in self.split_plan.sliced else arr
        pool = worker_pool(len(bounds) - 1)
        pending = [pool.submit(self.module.run, *a) for a in args[1:]]
        try:
            self.module.run(*args[0])
        finally:
            for f in pending:
                f.result()
        for j, op in self.split_plan.combine.items():
            for c in range(1, len(bounds)):
                COMBINE[op](bufs[j], per_chunk[c][j], out=bufs[j])
        self.last_chunks = bounds

    def _fresh_outputs(self, bufs) -> dict:
        """{buffer position: new empty array} for the outputs a copying call returns that
        the driver can write into directly (see :meth:`_output_plan`). Any array will do
        there: every kernel writes its outputs before anything reads them, as it must for
        the runtime's own buffers on their first call."""
        return {k: np.empty_like(bufs[k]) for k in self._plans()[1]}

    def collect(self, arrays, bufs):
        """The output arrays: inputs updated in place, buffers, or final copies."""
        return [arrays[k] if from_input else bufs[k] for from_input, k in self._plans()[0]]

    def _plans(self):
        if self._out_plan is None:
            self._out_plan = self._output_plan()
        return self._out_plan

    def _output_plan(self):
        """(per output: (True, input index) or (False, buffer index); the buffer positions
        a copying call fills with new arrays: outputs held in a buffer, not rank 0 (those
        become scalars or tiny copies), each position once); computed once."""
        g, s = self.graph, self.schedule
        where = {nid: (True, i) for i, nid in enumerate(g.inputs)}
        for j, v in enumerate(s.buffers):
            where[v] = (False, j)
        for v, target in list(s.inplace.items()) + list(s.copy_back.items()):
            where[v] = where[target]
        copies = {idx: len(s.buffers) + j for j, idx in enumerate(sorted(s.out_copies))}
        plan = []
        for idx, v in enumerate(g.outputs):
            if idx in copies:
                plan.append((False, copies[idx]))
            elif idx in g.aliases:
                plan.append((True, g.aliases[idx]))
            else:
                plan.append(where[v])
        fresh = []
        for (from_input, k), v in zip(plan, g.outputs):
            if not from_input and k not in fresh and g.type_of(v).rank:
                fresh.append(k)
        return plan, tuple(fresh)


def compile_graph(graph, target: str = "cpu", **options) -> Executable:
    """Schedule, emit, cache and load ``graph``; compiled by Numba on first run.

    ``target="cuda"`` hands over to :func:`codegen.cuda_runtime.compile_cuda_graph`
    (imported only then, so the CPU path never imports ``numba.cuda``); ``options``
    go to it (``store``, ``threads``, ``tile``).
    """
    if target == "cuda":
        from .cuda_runtime import compile_cuda_graph
        return compile_cuda_graph(graph, **options)
    if target != "cpu":
        raise CompileError(f"unknown target {target!r} for compile_graph; use 'cpu' or 'cuda'")
    t0 = time.perf_counter()
    with _CODEGEN_LOCK:
        hit = _CODEGEN.get(id(graph))
    if hit is not None and hit[0] is graph:
        exe = Executable(graph, *hit[1:], target)   # own buffers and lock
        exe.timings = {"codegen": 0.0, "load": 0.0, "reused": time.perf_counter() - t0}
        return exe
    schedule = build_schedule(graph, parts=sample_parts())
    source = emit_cpu_source(graph, schedule)
    t1 = time.perf_counter()
    module = load_module(source, tag=graph.name)
    exe = Executable(graph, schedule, source, module, target)
    exe.timings = {"codegen": t1 - t0, "load": time.perf_counter() - t1}
    with _CODEGEN_LOCK:
        _CODEGEN[id(graph)] = (graph, schedule, source, module)
        while len(_CODEGEN) > _CODEGEN_MAX:
            _CODEGEN.popitem(last=False)
    return exe
