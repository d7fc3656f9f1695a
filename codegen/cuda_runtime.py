"""The CUDA runtime: device-resident parameters, one launch sequence per call.

Parameters, optimizer state and hyper-parameters live in a :class:`DeviceStore` shared
by all graphs of a model and stay on the device between steps; scratch buffers are
device arrays allocated once per batch size, shared by values whose lifetimes are apart
(the liveness plan of ``codegen/schedule.py``, as on the CPU). A call copies only the
batch (data and labels) in and the non-aliased outputs (the loss) out; updated
parameters are copied back to their NumPy arrays only when asked
(:meth:`DeviceStore.pull`).

Importing this module does not import ``numba.cuda``; :func:`check_cuda` does, and it
turns a missing GPU, driver or toolkit into a :class:`CompileError` that says what to
install. Set ``NUMBA_ENABLE_CUDASIM=1`` before Numba is imported to run every kernel
in Numba's CUDA simulator (slow, no GPU needed).

>>> import os, graphc.codegen.cuda_runtime as cr
>>> cr.INSTALL_HINT.startswith("pip install")
True
"""
from __future__ import annotations

import threading
import time

import numpy as np

from graphc.ir import CompileError
from graphc.ir.registry import get_op

from .cache import load_module
from .cuda import MAX_BLOCKS, emit_cuda_source
from .runtime import Executable, planned_arrays
from .schedule import LOOP_KINDS, build_schedule

INSTALL_HINT = ("pip install 'graphc[cuda]' (numba-cuda with the CUDA 12 toolkit wheels) on a "
                "machine with an NVIDIA GPU and its CUDA driver; or set NUMBA_ENABLE_CUDASIM=1 "
                "before importing graphc to run the slow CUDA simulator")
TRANSFERRED_ROLES = ("data", "label")   # copied in on every call; the rest stay resident


def simulator_enabled() -> bool:
    from numba.core import config
    return bool(config.ENABLE_CUDASIM)


def check_cuda():
    """``numba.cuda`` if a GPU (or the simulator) can run kernels, else a CompileError."""
    try:
        from numba import cuda
    except Exception as exc:   # numba built without CUDA support, broken toolkit paths...
        raise CompileError(f"target='cuda' needs Numba's CUDA target, which failed to import "
                           f"({type(exc).__name__}: {exc}); {INSTALL_HINT}") from None
    _quiet_small_grid_warnings()
    if simulator_enabled():
        return cuda
    try:
        ok = cuda.is_available()
    except Exception:
        ok = False
    if not ok:
        raise CompileError(f"target='cuda' found no usable NVIDIA GPU or CUDA driver; "
                           f"{INSTALL_HINT}")
    return cuda


def _quiet_small_grid_warnings():
    # graphc sizes each grid to its work: a mean loss is one block, a bias-gradient
    # reduction one block per column, by design. Numba warns "Grid size N will likely
    # result in GPU under-utilization" on every such launch (seen: hundreds per training
    # run on an H100), which buries real warnings.
    import warnings
    # (the message may start with a terminal bold code: match anywhere in it)
    warnings.filterwarnings("ignore", message=r".*Grid size \d+ will likely result in GPU "
                            r"under-utilization")


def _device_shape(shape) -> tuple:
    return tuple(shape) if len(shape) else (1,)   # rank-0 values are 1-element arrays


class DeviceStore:
    """Device copies of resident inputs (parameters, optimizer state, hyper-parameters).

    Entries are keyed by input name, so every graph of a model shares one copy. A host
    array seen again is not re-uploaded, except hyper-parameters (the learning rate),
    which are re-sent when their value changed; outputs aliased to an input mark its
    device copy as newer than the host's.
    """

    def __init__(self, cuda):
        self.cuda = cuda
        self._entries: dict = {}    # name -> [host array, device array, device newer, last hyper]
        self._lock = threading.RLock()

    def device(self, name, host, role):
        with self._lock:
            e = self._entries.get(name)
            if e is None or e[1].shape != _device_shape(host.shape) or e[1].dtype != host.dtype:
                e = [host, self.cuda.to_device(host.reshape(_device_shape(host.shape))),
                     False, host.copy()]
                self._entries[name] = e
            elif e[0] is not host:      # a different array for this name: its values win
                e[1].copy_to_device(host.reshape(e[1].shape))
                e[0], e[2], e[3] = host, False, host.copy()
            elif role == "hyper" and not np.array_equal(e[3], host):
                e[1].copy_to_device(host.reshape(e[1].shape))
                e[3] = host.copy()
            return e[1]

    def mark_written(self, name):
        with self._lock:
            if name in self._entries:
                self._entries[name][2] = True

    def pull(self, names=None):
        """Copy device values newer than the host back into the host arrays (in place)."""
        with self._lock:
            for name, e in self._entries.items():
                if e[2] and (names is None or name in names):
                    e[1].copy_to_host(e[0].reshape(e[1].shape))
                    e[2] = False

    def push(self):
        """Re-send every host array (after the host values were changed in place)."""
        with self._lock:
            for e in self._entries.values():
                e[1].copy_to_device(e[0].reshape(e[1].shape))
                e[2] = False
                e[3] = e[0].copy()


class CudaExecutable(Executable):
    """A graph compiled for the GPU: ``run(inputs) -> outputs`` (NumPy in and out)."""

    def __init__(self, graph, schedule, source, module, store, cuda):
        super().__init__(graph, schedule, source, module, "cuda")
        self.store = store
        self.cuda = cuda
        self.transfer = [r in TRANSFERRED_ROLES for r in self.roles]
        self.written = sorted({graph.aliases[o] for o in graph.aliases})
        self._launched = False

    def buffers_for(self, batch):
        bufs = self._buffers.get(batch)
        if bufs is None:
            def dev(shape, dtype):
                return self.cuda.device_array(_device_shape(shape), dtype=dtype)
            staged = [dev(t.concrete(batch), t.dtype) if tr else None
                      for t, tr in zip(self.input_types, self.transfer)]
            # values whose lifetimes are apart share one device array, as on the CPU
            scratch = planned_arrays(self.graph, self.schedule, batch, dev)
            bufs = (staged, scratch)
            self._buffers[batch] = bufs
            while len(self._buffers) > 8:
                self._buffers.popitem(last=False)
        else:
            self._buffers.move_to_end(batch)
        return bufs

    def run(self, inputs, copy: bool = True, trusted=()):
        """Run on ``inputs``; non-aliased outputs come back as NumPy arrays.

        Outputs aliased to a resident input (updated parameters) are device arrays with
        ``copy=False`` (nothing is transferred) and synced NumPy copies with ``copy=True``.
        ``copy`` may also be a set of output indices to sync (e.g. ``{0}``, the loss); a
        rank-0 output among them comes back as a Python scalar, as on the CPU.
        ``trusted``: inputs passed through unchecked, see :meth:`Executable.prepare`.
        """
        arrays, batch = self.prepare(inputs, trusted)
        g = self.graph
        with self._lock:
            staged, scratch = self.buffers_for(batch)
            devs = []
            for i, arr in enumerate(arrays):
                if self.transfer[i]:
                    if arr.size:
                        staged[i].copy_to_device(arr.reshape(staged[i].shape))
                    devs.append(staged[i])
                else:
                    devs.append(self.store.device(self.input_names[i], arr, self.roles[i]))
            self._launch(devs, scratch)
            for i in self.written:
                self.store.mark_written(self.input_names[i])
            outs = self.collect(devs, scratch)
            results = []
            for idx, d in enumerate(outs):
                wanted = copy is True or (copy is not False and idx in copy)
                if idx in g.aliases:
                    if wanted:
                        name = self.input_names[g.aliases[idx]]
                        self.store.pull([name])
                        results.append(arrays[g.aliases[idx]].copy())
                    else:
                        results.append(d)
                else:
                    shape = g.type_of(g.outputs[idx]).concrete(batch)
                    host = d.copy_to_host().reshape(shape)
                    results.append(host.item() if copy is not True and wanted and not shape
                                   else host)
        return results

    def _launch(self, devs, scratch):
        if self._launched:
            self.module.run(*devs, *scratch)
            return
        t0 = time.perf_counter()
        try:
            self.module.run(*devs, *scratch)
            self.cuda.synchronize()
        except CompileError:
            raise
        except Exception as exc:
            if not type(exc).__module__.startswith("numba"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CompileError(
                f"CUDA compilation/launch of graph {self.graph.name!r} failed "
                f"({type(exc).__name__}: {first}); generated source: "
                f"{getattr(self.module, '__graphc_path__', '?')}. If the CUDA toolkit "
                f"(NVVM) is missing: {INSTALL_HINT}") from exc
        self._launched = True
        self.timings["first_launch"] = time.perf_counter() - t0


def _cuda_schedulable(graph):
    """``graph``, with fusion groups the CUDA emitter has no generator for split back
    into single-node kernels (always valid: the intermediates just go to memory)."""
    groups: dict = {}
    for nid in graph.nx.nodes:
        grp = graph.nx.nodes[nid].get("group")
        if grp is not None:
            groups.setdefault(grp, []).append(nid)
    unsupported = {grp for grp, ns in groups.items()
                   if not all(get_op(graph.op_of(n)).kind in LOOP_KINDS for n in ns)}
    if not unsupported:
        return graph
    g = graph.copy()
    g.meta = dict(graph.meta)
    for nid in g.nx.nodes:
        if g.nx.nodes[nid].get("group") in unsupported:
            g.nx.nodes[nid]["group"] = None
    return g


def compile_cuda_graph(graph, store: DeviceStore | None = None, threads: int | None = None,
                       tile: int | None = None, max_blocks: int | None = None) -> CudaExecutable:
    """Schedule, emit, cache and load ``graph`` for the GPU (kernels compile on first run).

    ``threads`` (block size), ``tile`` (matmul tile) and ``max_blocks`` (per grid-stride
    launch) default to 256, 16 and 8192 on a GPU. The simulator runs every thread as a
    Python thread, so there they default to 8, 4 and 2, which also makes the grid- and
    block-stride loops take several turns on tiny shapes.
    """
    cuda = check_cuda()
    sim = simulator_enabled()
    threads = threads or (8 if sim else 256)
    tile = tile or (4 if sim else 16)
    max_blocks = max_blocks or (2 if sim else MAX_BLOCKS)
    t0 = time.perf_counter()
    graph = _cuda_schedulable(graph)
    schedule = build_schedule(graph)
    source = emit_cuda_source(graph, schedule, threads, tile, max_blocks)
    t1 = time.perf_counter()
    module = load_module(source, tag=f"cuda_{graph.name}")
    exe = CudaExecutable(graph, schedule, source, module, store or DeviceStore(cuda), cuda)
    exe.timings = {"codegen": t1 - t0, "load": time.perf_counter() - t1}
    return exe
