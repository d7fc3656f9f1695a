"""Compile every generated CUDA kernel to PTX (sm_90) with NVVM, no GPU needed.

The simulator runs kernels as Python, so it cannot tell whether Numba's CUDA compiler
accepts them; this does. It needs NVVM and libdevice, e.g. from the
``nvidia-cuda-nvcc-cu12`` wheel with ``CUDA_HOME=<site-packages>/nvidia/cuda_nvcc``.
Prints ``SKIP: ...`` and exits 0 when NVVM is not found; exits 1 on a failure.

    CUDA_HOME=.../nvidia/cuda_nvcc python tests/cuda_ptx_check.py
"""
from __future__ import annotations

import os
import sys

os.environ.pop("NUMBA_ENABLE_CUDASIM", None)

from numba import cuda, types  # noqa: E402

import graphc as gc  # noqa: E402
from graphc.codegen.cache import load_module  # noqa: E402
from graphc.codegen.cuda import emit_cuda_source  # noqa: E402
from graphc.codegen.cuda_runtime import _cuda_schedulable  # noqa: E402
from graphc.codegen.schedule import build_schedule  # noqa: E402
from graphc.ir import BATCH, Graph, TensorType, all_ops  # noqa: E402


def nvvm_available() -> str | None:
    try:
        from numba.cuda.cudadrv.nvvm import NVVM
        NVVM()
        return None
    except Exception as exc:   # noqa: BLE001
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def compile_graph_ptx(g, cc=(9, 0)) -> int:
    g = _cuda_schedulable(g)      # as compile_cuda_graph does
    s = build_schedule(g)
    mod = load_module(emit_cuda_source(g, s), tag=f"ptx_{g.name}")
    count = 0
    for k in s.kernels:
        if k.kind == "view":
            continue
        sig = tuple(types.Array(getattr(types, g.type_of(v).dtype), max(1, g.type_of(v).rank), "C")
                    for v in list(k.inputs) + list(k.outputs))
        try:
            cuda.compile_ptx(getattr(mod, k.name).py_func, sig, cc=cc)
        except Exception as exc:
            raise RuntimeError(f"{g.name}/{k.name}: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}\n"
                               f"source: {mod.__graphc_path__}") from exc
        count += 1
    return count


def op_graphs(dtype):
    for name, op in sorted(all_ops().items()):
        if name == "input" or (op.cuda_kernel is None and op.scalar is None):
            continue
        for si, sample in enumerate(op.samples):
            g = Graph(f"{name}_{si}_{dtype}")
            ids = []
            for i, shape in enumerate(sample.shapes):
                dom = sample.domain(i)
                bdim = sample.batch_dims[i] if i < len(sample.batch_dims) else None
                sym = tuple(BATCH if k == bdim else d for k, d in enumerate(shape))
                ids.append(g.add_input(TensorType(sym, "int64" if dom.startswith("labels:")
                                                  else dtype), f"a{i}"))
            g.set_outputs([g.add(name, ids, sample.attrs)])
            yield g


def main():
    why = nvvm_available()
    if why:
        print(f"SKIP: NVVM not found ({why})")
        return 0
    total = 0
    for dtype in ("float32", "float64"):
        gc.manual_seed(0)
        net = gc.nn.Sequential(gc.nn.Linear(4, 8), gc.nn.ReLU(), gc.nn.Linear(8, 3),
                               gc.nn.LogSoftmax())
        for loss in ("nll", "cross_entropy"):
            m = gc.compile(net, input_shape=(None, 4), loss=loss, dtype=dtype,
                           optimizer=gc.optim.SGD(lr=0.1, momentum=0.9))
            for kind in ("forward", "train"):
                total += compile_graph_ptx(m._graph(kind))
        # conv, pooling, batch norm and dropout in the forward and train graphs
        cnn = gc.nn.Sequential(gc.nn.Conv2d(1, 2, 3, padding=1, bias=False),
                               gc.nn.BatchNorm2d(2), gc.nn.ReLU(), gc.nn.MaxPool2d(2),
                               gc.nn.AvgPool2d(1), gc.nn.Flatten(), gc.nn.Dropout(0.25),
                               gc.nn.Linear(2 * 3 * 3, 3))
        m = gc.compile(cnn, input_shape=(None, 1, 6, 6), loss="cross_entropy", dtype=dtype,
                       optimizer=gc.optim.SGD(lr=0.1, momentum=0.9))
        for kind in ("forward", "train"):
            total += compile_graph_ptx(m._graph(kind))
        for g in op_graphs(dtype):
            total += compile_graph_ptx(g)
    print(f"OK: {total} kernels compiled to PTX for sm_90")
    return 0


if __name__ == "__main__":
    sys.exit(main())
