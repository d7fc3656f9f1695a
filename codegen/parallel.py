"""Running a large elementwise graph on every core, in row chunks; and how many parts
convolutions and pooling split their batch into (:func:`sample_parts`).

A graph whose work is all elementwise over one shape S (plus whole-tensor sums or maxima
that nothing else reads, such as the loss of ``value_and_grad``) gives the same result
when each core runs the compiled driver on its own rows of S: every S-shaped array is
passed as a view of rows [lo, hi), each chunk writes its sums into a private scalar, and
the scalars are combined at the end (sum: add, max: maximum). Such graphs have no BLAS
calls, so graphc's threads cannot starve OpenBLAS's (the 40-50x slowdown of Numba's
``parallel=True`` next to BLAS); and the workers are plain Python threads that sleep on
a queue between steps (the driver releases the GIL), not OpenMP threads that spin.

Graphs with matmuls, convolutions, reductions over some axes, random masks or scratch
keep running as one native call (BLAS brings its own threads; convolution kernels run
parts of the batch on Numba's threads, with BLAS on one thread meanwhile: see
:func:`sample_parts`).

``GRAPHC_THREADS`` sets the number of chunks (1 turns this off); by default one per
core this process may run on.

>>> from graphc.ir import Graph, TensorType
>>> g = Graph("sq"); x = g.add_input(TensorType((1 << 20,), "float32"), "x")
>>> g.set_outputs([g.add("reduce_sum", [g.add("mul", [x, x])])])
>>> from graphc.codegen.schedule import build_schedule
>>> plan = row_split_plan(g, build_schedule(g))
>>> plan.rows, list(plan.combine.values())
(1048576, ['reduce_sum'])
"""
from __future__ import annotations

import importlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from graphc.ir import FusionKind, get_op

# below this many elements per chunk, waking a thread (~20-50 us) costs more than it saves
MIN_CHUNK_ELEMENTS = 1 << 18
COMBINE = {"reduce_sum": np.add, "reduce_max": np.maximum}
_SOURCE_OPS = ("input", "constant")


def thread_count() -> int:
    """Chunks to split a splittable graph into: ``GRAPHC_THREADS``, else the cores
    this process may use."""
    env = os.environ.get("GRAPHC_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # not Linux
        return max(1, os.cpu_count() or 1)


# ------------------------------------------------------------ convolutions on every core
# Convolution and pooling kernels split their batch into parts run by ``prange``
# (ir/ops/conv.py, ir/ops/pool.py), on Numba's thread pool: examples/resnet_digits.py's
# training step at batch 256 went from 15.9 to 12.6 ms (bench_resnet.py, GRAPHC_THREADS=1
# against the default), LeNet's (batch 64) from 1.95 to 1.28 ms (bench_lenet.py). Three
# hazards, each handled here or in the runtime:
# - OpenBLAS's workers and Numba's spin after their work and take each other's core
#   (that step took 32 ms): such steps run with OpenBLAS on one thread (blas.OneThread),
#   so each product runs on the core that calls it, inside a part or alone.
# - Numba's "workqueue" layer gave no speed-up here and aborts the process when two
#   threads launch parallel loops at once: convolutions stay serial unless Numba's layer
#   is "omp" or "tbb".
# - GNU OpenMP kills a forked child that runs a parallel loop after its parent did:
#   such a child runs serial builds of the same graphs (runtime.Executable).
_PARALLEL_MODULES = {"tbb": "numba.np.ufunc.tbbpool", "omp": "numba.np.ufunc.omppool",
                     "workqueue": "numba.np.ufunc.workqueue"}
_LAYER_ORDER = {"default": ("tbb", "omp", "workqueue"), "safe": ("tbb",),
                "threadsafe": ("tbb", "omp"), "forksafe": ("tbb", "workqueue")}
_forked_after_omp = False


def threading_layer() -> str | None:
    """The layer Numba runs (or, when its first parallel loop runs, will run) parallel
    loops on: "tbb", "omp", "workqueue", or None if none is usable."""
    import numba
    try:
        return numba.threading_layer()
    except ValueError:   # no parallel loop has run yet: Numba's own choice, in its order
        pass
    for layer in _LAYER_ORDER.get(numba.config.THREADING_LAYER, (numba.config.THREADING_LAYER,)):
        try:
            importlib.import_module(_PARALLEL_MODULES[layer])
        except (ImportError, KeyError):
            continue
        return layer
    return None


def forked_after_omp() -> bool:
    """True in a process forked from one that had run a loop on GNU OpenMP (where
    another parallel loop would kill it)."""
    return _forked_after_omp


def _note_fork_in_child():
    global _forked_after_omp
    import numba
    try:
        _forked_after_omp = _forked_after_omp or numba.threading_layer() == "omp"
    except ValueError:
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork_in_child)


def sample_parts() -> int:
    """Parts the convolution and pooling kernels split their batch into (``prange``, one per core:
    :func:`thread_count` capped by Numba's threads), or 1 to keep them serial (see the
    hazards above).

    >>> sample_parts() >= 1
    True
    """
    import numba

    from .blas import KIND
    parts = min(thread_count(), numba.config.NUMBA_NUM_THREADS)
    if (parts < 2 or KIND != "numpy-openblas64" or forked_after_omp()
            or threading_layer() not in ("omp", "tbb")):
        return 1
    return parts


@dataclass
class RowSplitPlan:
    """How to cut a driver call into row chunks.

    ``rows``: length of axis 0 of the common shape (``None``: the batch size);
    ``sliced``: argument positions (inputs then buffers) holding S-shaped arrays;
    ``private``: buffer indices of the rank-0 buffers (each chunk writes its own);
    ``combine``: buffer index -> reduction op, for those holding partial results.
    """

    shape: tuple
    rows: int | None
    row_size: int
    sliced: list
    private: list
    combine: dict


def _full_reduction(graph, nid) -> bool:
    op = graph.op_of(nid)
    if op not in COMBINE:
        return False
    arg_type = graph.type_of(graph.args_of(nid)[0])
    axes = dict(graph.node(nid).attrs).get("axes")
    return (axes is None or sorted(a % max(arg_type.rank, 1) for a in axes)
            == list(range(arg_type.rank))) and graph.type_of(nid).rank == 0


def row_split_plan(graph, schedule) -> RowSplitPlan | None:
    """A :class:`RowSplitPlan` if ``graph`` can run in row chunks, else None.

    The argument positions refer to the driver's arguments: the graph's inputs, then
    ``schedule.buffers``, then the buffers of ``schedule.out_copies`` (sorted by output).
    """
    if any(k.scratch for k in schedule.kernels):
        return None
    shapes = set()
    for nid in graph.topo_order():
        op, t = graph.op_of(nid), graph.type_of(nid)
        if op in COMBINE:
            if not _full_reduction(graph, nid) or graph.users(nid):
                return None          # a partial result read by later work
            continue
        if op not in _SOURCE_OPS and get_op(op).kind not in (FusionKind.ELEMWISE,
                                                                FusionKind.BROADCAST):
            return None
        if t.rank:
            shapes.add(t.shape)
    if len(shapes) != 1:
        return None
    (shape,) = shapes
    # a rank-0 value must not depend on the rows (only full reductions, done above, may)
    row_dependent = set()
    for nid in graph.topo_order():
        if graph.type_of(nid).rank or any(a in row_dependent for a in graph.args_of(nid)):
            row_dependent.add(nid)
        rank0_from_rows = graph.type_of(nid).rank == 0 and nid in row_dependent
        if rank0_from_rows and graph.op_of(nid) not in COMBINE:
            return None
    # rank-0 inputs written in place would be updated once per chunk
    written = set(schedule.inplace.values()) | set(schedule.copy_back.values())
    if any(graph.type_of(i).rank == 0 for i in written):
        return None
    values = list(graph.inputs) + list(schedule.buffers)
    values += [graph.outputs[i] for i in sorted(schedule.out_copies)]
    n_inputs = len(graph.inputs)
    sliced, private, combine = [], [], {}
    for pos, v in enumerate(values):
        t = graph.type_of(v)
        if t.rank:
            sliced.append(pos)
        elif pos >= n_inputs:
            private.append(pos - n_inputs)
            if graph.op_of(v) in COMBINE:
                combine[pos - n_inputs] = graph.op_of(v)
    if any(not isinstance(d, int) for d in shape[1:]):
        return None          # only the leading axis may be the batch
    rows = shape[0] if isinstance(shape[0], int) else None
    return RowSplitPlan(shape, rows, int(np.prod(shape[1:], dtype=np.int64)), sliced, private,
                        combine)


def chunk_bounds(rows: int, row_size: int, chunks: int) -> list[tuple[int, int]]:
    """Row ranges for ``chunks`` workers, each starting on a multiple of 64 elements (no
    cache line is written by two cores).

    >>> chunk_bounds(1000, 3, 2)
    [(0, 512), (512, 1000)]
    """
    align = 64 // math.gcd(64, max(row_size, 1))
    step = -(-rows // chunks)
    step = -(-step // align) * align
    return [(lo, min(lo + step, rows)) for lo in range(0, rows, step)]


_POOL = None
_POOL_PID = None
_POOL_LOCK = threading.Lock()


def worker_pool(threads: int) -> ThreadPoolExecutor:
    """The process-wide pool of graphc worker threads (idle ones block on a queue).

    A process forked after the pool was made inherits the pool object but not its
    threads (work submitted there would wait forever), so each process makes its own.
    """
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < threads or _POOL_PID != os.getpid():
            _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="graphc")
            _POOL_PID = os.getpid()
        return _POOL
