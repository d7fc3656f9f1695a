"""Compile time of the MLP 784-256-256-10 training step, per stage, cold and warm.

    python benchmarks/compile_time.py                # table (medians of 3 rounds)
    python benchmarks/compile_time.py --repeat 5     # more rounds
    python benchmarks/compile_time.py --json         # machine-readable, every round

Each round runs two new processes on a fresh temporary cache: **cold** (empty
``GRAPHC_CACHE_DIR`` *and* ``NUMBA_CACHE_DIR``, so Numba compiles everything, graphc's
helper kernels included) and **warm start** (same directories: generated source and
machine code come from the cache). Each process then compiles the same model a
second time (**2nd compile**, same process). A third process measures the **floor**
that any Numba program here pays: ``import numba`` plus the first call of a cached
one-line ``np.dot`` kernel (Numba's first call loads its runtime registries, which
import ``scipy.linalg`` to find BLAS; graphc's start-up skips that import and, on a
warm start, the registries too, see ``codegen/numba_start.py``, so it can come in under
this floor).

Stages (wall-clock, this process):

- ``interpreter``: from the parent's spawn to the child's first line (Python start-up).
- ``import numpy``, ``import graphc``: ``import graphc`` no longer loads Numba.
- ``trace``, ``passes``: all graphs ``gc.compile`` builds (forward, gradients, train).
- ``import numba``: ``graphc.codegen`` (Numba and graphc's emitters) on the first
  compile; Numba's NumPy support (without ``scipy.linalg``) is imported in the cold
  process's compile, a warm start never imports it.
- ``codegen``: schedule + emit + write/import the generated module of the train graph.
- ``numba runtime init``: the rest of Numba's first-call registry loading (a compile
  needs it; a warm start skips it: graphc loads cached machine code without Numba's
  registry refresh, ``codegen/numba_start.py``).
- ``numba compile/load``: the rest of the first ``train_step`` minus one steady step
  (Numba compiling, or loading cached machine code and starting its runtime).

Totals: graphc's own stages (trace, passes, codegen, Numba compile/load); plus Numba's
start-up (``import numba``, runtime init), which any Numba program pays once per process
(the floor row); plus interpreter start-up and ``import numpy``/``import graphc``: the
user-visible time from a new process to a compiled, callable model. Children run with ``OPENBLAS_NUM_THREADS=1``
so the step subtracted is not BLAS threads fighting other processes for the cores.

Children also run with Python's bytecode cache on, as Python's default is: the
development machines set ``PYTHONDONTWRITEBYTECODE=1``, under which a checkout whose
bytecode was never written compiled graphc's 66 modules from source in every new
process (about 250 ms, most of it in ``import graphc``), a cost no installed package
pays (pip writes the bytecode at install; an editable install writes it on its first
import). The cold child of each round writes any bytecode that is missing.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

TARGET_WARM_S, TARGET_COLD_S = 0.5, 5.0
HEAVY = ("numba", "scipy", "sklearn", "tqdm", "matplotlib", "threadpoolctl", "networkx",
         "numba.cuda")
COMPILE_STAGES = ("trace", "passes", "import numba", "codegen", "numba runtime init",
                  "numba compile/load")
GRAPHC_STAGES = ("trace", "passes", "codegen", "numba compile/load")
IMPORT_STAGES = ("interpreter", "import numpy", "import graphc")


def _timed_registries():
    """Time Numba's lazy registry loading (first compile or cache load of any kernel)."""
    from numba.core import cpu
    spent = [0.0]
    orig = cpu.CPUContext.load_additional_registries

    def wrapped(self):
        t = time.perf_counter()
        try:
            return orig(self)
        finally:
            spent[0] += time.perf_counter() - t
    cpu.CPUContext.load_additional_registries = wrapped
    return spent


def _child(spawned_at):
    t_start = time.time()
    t0 = time.perf_counter()
    import numpy as np
    t1 = time.perf_counter()
    import graphc as gc
    t2 = time.perf_counter()
    r = {"interpreter": t_start - spawned_at, "import numpy": t1 - t0,
         "import graphc": t2 - t1,
         "loaded by import graphc": [m for m in HEAVY if m in sys.modules]}
    x = np.zeros((128, 784), np.float32)
    y = np.zeros(128, np.int64)

    def build():
        gc.manual_seed(0)
        net = gc.nn.Sequential(gc.nn.Linear(784, 256), gc.nn.ReLU(), gc.nn.Linear(256, 256),
                               gc.nn.ReLU(), gc.nn.Linear(256, 10))
        s = {}
        t = time.perf_counter()
        m = gc.compile(net, input_shape=(None, 784), loss="cross_entropy",
                       optimizer=gc.optim.SGD(lr=0.01))
        t_compile = time.perf_counter() - t
        s["trace"] = sum(v for k, v in m.timings.items() if k.startswith("trace."))
        s["passes"] = t_compile - s["trace"]      # passes + small bookkeeping
        t = time.perf_counter()
        import graphc.codegen  # noqa: F401  (what the first compile imports: Numba)
        s["import numba"] = time.perf_counter() - t
        spent = _timed_registries() if "reg" not in build.__dict__ else build.reg
        build.reg = spent
        before = spent[0]
        t = time.perf_counter()
        exe = m._exe("train")
        reg_codegen = spent[0] - before
        s["codegen"] = time.perf_counter() - t - reg_codegen
        t = time.perf_counter()
        m.train_step(x, y)
        first = time.perf_counter() - t + reg_codegen
        steps = []
        for _ in range(5):
            t = time.perf_counter()
            m.train_step(x, y)
            steps.append(time.perf_counter() - t)
        s["step"] = statistics.median(steps)
        s["numba runtime init"] = spent[0] - before
        s["numba compile/load"] = max(first - s["step"] - s["numba runtime init"], 0.0)
        s["kernels"] = exe.kernel_count
        s["graphc"] = sum(s[k] for k in GRAPHC_STAGES)
        s["ready"] = sum(s[k] for k in COMPILE_STAGES)
        return s

    r["first"] = build()
    r["second"] = build()
    r["first"]["ready incl. start-up"] = r["first"]["ready"] + sum(r[k] for k in IMPORT_STAGES)
    r["cpu"] = time.process_time()
    print(json.dumps(r))


def _floor_child():
    """``import numba`` + first call of a cached trivial BLAS kernel (cache in cwd)."""
    t0 = time.perf_counter()
    import numpy as np
    t1 = time.perf_counter()
    from numba import njit
    t2 = time.perf_counter()
    sys.path.insert(0, os.getcwd())
    with open("floor_kernel.py", "w") as f:
        f.write("import numpy as np\nfrom numba import njit\n"
                "@njit(cache=True)\ndef k(a, b, c):\n    np.dot(a, b, c)\n")
    import floor_kernel
    a = np.ones((4, 4), np.float32)
    t3 = time.perf_counter()
    floor_kernel.k(a, a, a.copy())
    t4 = time.perf_counter()
    print(json.dumps({"import numpy": t1 - t0, "import numba": t2 - t1,
                      "first call": t4 - t3, "njit": njit is not None}))


def _run(args, cache_dir, cwd=None):
    env = dict(os.environ, GRAPHC_CACHE_DIR=os.path.join(cache_dir, "graphc"),
               NUMBA_CACHE_DIR=os.path.join(cache_dir, "numba"), OPENBLAS_NUM_THREADS="1")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *args], env=env,
                         check=True, capture_output=True, text=True, cwd=cwd).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(repeat: int = 3) -> dict:
    rounds = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="graphc-cc-") as d:
            cold = _run(["--child", repr(time.time())], d)
            warm = _run(["--child", repr(time.time())], d)
            _run(["--floor"], d, cwd=d)             # primes the floor kernel's cache
            floor = _run(["--floor"], d, cwd=d)
        rounds.append({"cold": cold, "warm": warm, "floor": floor})
    return {"rounds": rounds}


def _median(rounds, *path):
    vals = []
    for r in rounds:
        v = r
        for p in path:
            v = v[p]
        vals.append(v)
    return statistics.median(vals)


def table(res) -> str:
    R = res["rounds"]
    cols = [("cold", "cold", "first"), ("warm start", "warm", "first"),
            ("2nd compile, same proc", "cold", "second")]
    lines = [f"{'stage (median of %d, ms)' % len(R):34}" + "".join(f"{c[0]:>24}" for c in cols)]

    def row(label, get):
        cells = [get(run, which) for _, run, which in cols]
        lines.append(f"{label:34}" + "".join(
            f"{'-':>24}" if v is None else f"{v * 1e3:>24.0f}" for v in cells))
    for k in IMPORT_STAGES:
        row(k, lambda run, which, k=k: None if which == "second" else _median(R, run, k))
    for k in COMPILE_STAGES:
        row(k, lambda run, which, k=k: _median(R, run, which, k))
    row("= graphc's own (trace..compile/load)",
        lambda run, which: _median(R, run, which, "graphc"))
    row("= + Numba start-up (import, init)", lambda run, which: _median(R, run, which, "ready"))
    row("= ready incl. start-up + imports",
        lambda run, which: None if which == "second" else
        _median(R, run, which, "ready incl. start-up"))
    row("(one steady step, subtracted)", lambda run, which: _median(R, run, which, "step"))
    f = R[0]["floor"]
    lines.append(f"kernels in the train step: {R[0]['cold']['first']['kernels']}; "
                 f"import graphc loads: {R[0]['warm']['loaded by import graphc']}")
    lines.append("Numba floor (cached 1-line np.dot kernel, new process): import numba "
                 f"{_median(R, 'floor', 'import numba') * 1e3:.0f} ms + first call "
                 f"{_median(R, 'floor', 'first call') * 1e3:.0f} ms "
                 f"(numpy {f['import numpy'] * 1e3:.0f} ms)")
    verdict = lambda v, t: f"{v:.2f} s {'met' if v < t else 'MISSED'}"  # noqa: E731
    for name, run, target in (("cold", "cold", TARGET_COLD_S), ("warm", "warm", TARGET_WARM_S)):
        lines.append(f"target {name} < {target} s: graphc's own "
                     f"{verdict(_median(R, run, 'first', 'graphc'), target)}; with Numba start-up "
                     f"{verdict(_median(R, run, 'first', 'ready'), target)}; from a new "
                     f"interpreter {verdict(_median(R, run, 'first', 'ready incl. start-up'), target)}")
    lines.append("(wall-clock on a possibly shared machine; 'ready' = compiled and callable; "
                 "Python's bytecode cache on)")
    return "\n".join(lines)


if __name__ == "__main__":
    if "--child" in sys.argv:
        _child(float(sys.argv[sys.argv.index("--child") + 1]))
    elif "--floor" in sys.argv:
        _floor_child()
    else:
        n = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 3
        res = measure(n)
        print(json.dumps(res, indent=1) if "--json" in sys.argv else table(res))
