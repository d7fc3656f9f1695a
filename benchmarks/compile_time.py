"""Compile time of the MLP training step, per stage, cold and warm.

Cold: a new process with an empty ``GRAPHC_CACHE_DIR`` (Numba compiles everything).
Warm: a new process with the same directory (generated source and machine code are
loaded from the cache). Each child also compiles the same model a second time in the
same process, which should cost next to nothing.

    python benchmarks/compile_time.py            # table
    python benchmarks/compile_time.py --json     # machine-readable

Stages: import (``import graphc``), trace and passes (all graphs ``gc.compile`` builds),
codegen (schedule + emit + write/import the module), numba (the first ``train_step``:
Numba compile or cache load, plus one step).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

TARGET_WARM_S, TARGET_COLD_S = 0.5, 5.0


def _child():
    t0 = time.perf_counter()
    import numpy as np

    import graphc as gc
    t_import = time.perf_counter() - t0

    def build():
        gc.manual_seed(0)
        net = gc.nn.Sequential(gc.nn.Linear(784, 256), gc.nn.ReLU(), gc.nn.Linear(256, 256),
                               gc.nn.ReLU(), gc.nn.Linear(256, 10))
        t = time.perf_counter()
        m = gc.compile(net, input_shape=(None, 784), loss="cross_entropy",
                       optimizer=gc.optim.SGD(lr=0.01))
        t_compile = time.perf_counter() - t
        exe_t = time.perf_counter()
        exe = m._exe("train")
        t_codegen = time.perf_counter() - exe_t
        x = np.zeros((128, 784), np.float32)
        y = np.zeros(128, np.int64)
        t = time.perf_counter()
        m.train_step(x, y)
        t_numba = time.perf_counter() - t
        trace = sum(v for k, v in m.timings.items() if k.startswith("trace."))
        passes = sum(v for k, v in m.timings.items() if k.startswith("passes."))
        return {"cpu": time.process_time(), "trace": trace, "passes": passes,
                "compile_other": t_compile - trace - passes,
                "codegen": t_codegen, "codegen.emit": exe.timings.get("codegen", 0.0),
                "codegen.load": exe.timings.get("load", 0.0), "numba": t_numba,
                "kernels": exe.kernel_count,
                "total": t_compile + t_codegen + t_numba}

    first = build()
    second = build()
    print(json.dumps({"import": t_import, "first": first, "second": second}))


def _run_child(cache_dir):
    env = dict(os.environ, GRAPHC_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, __file__, "--child"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure() -> dict:
    with tempfile.TemporaryDirectory(prefix="graphc-cc-") as d:
        cold = _run_child(d)
        warm = _run_child(d)
    return {"cold": cold, "warm": warm}


def table(r) -> str:
    rows = ["stage", "trace", "passes", "codegen", "numba", "total (excl. import)", "import",
            "process CPU time", "kernels"]
    cols = [("cold", r["cold"]["first"], r["cold"]["import"]),
            ("warm start", r["warm"]["first"], r["warm"]["import"]),
            ("2nd compile, same process", r["cold"]["second"], 0.0)]
    lines = [f"{'':28}" + "".join(f"{c[0]:>28}" for c in cols)]
    for row in rows[1:]:
        cells = []
        for _, s, imp in cols:
            key = {"total (excl. import)": "total", "process CPU time": "cpu"}.get(row, row)
            v = imp if row == "import" else s[key]
            cells.append(f"{v:>28d}" if row == "kernels" else f"{v * 1e3:>25.0f} ms")
        lines.append(f"{row:28}" + "".join(cells))
    cold, warm = r["cold"]["first"]["total"], r["warm"]["first"]["total"]
    lines.append("(wall-clock seconds; the machine may be shared: CPU time is the process's "
                 "own, cumulative)")
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    lines.append(f"targets: cold < {TARGET_COLD_S} s ({verdict(cold < TARGET_COLD_S)}), "
                 f"warm < {TARGET_WARM_S} s ({verdict(warm < TARGET_WARM_S)})")
    return "\n".join(lines)


if __name__ == "__main__":
    if "--child" in sys.argv:
        _child()
    else:
        res = measure()
        print(json.dumps(res, indent=1) if "--json" in sys.argv else table(res))
