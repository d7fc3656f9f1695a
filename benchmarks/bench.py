"""graphc against NumPy (and PyTorch / JAX where installed): one command, one table.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench.py [--quick]
        [--blas-threads N] [--only mlp chain lenet]

Workloads (float32, medians of repeated steps after warm-up; the implementations of a
workload are timed in alternating rounds, so load drift on a shared machine hits all):
- MLP 784-256-256-10, ReLU, softmax cross-entropy, SGD: one training step (forward,
  backward, update) at batch 128 and 1024; GFLOP/s against the measured sgemm peak.
- Elementwise chain y = sigmoid(x)*tanh(x) + 0.5*relu(x) - softplus(x) on 4M floats,
  value and gradient of sum(y); GB/s over the 32 MB that must move (read x, write dy/dx)
  against a copy of the same 16 MB (the memory-traffic floor), timed in the same rounds;
  the target line holds graphc against the fastest copy call of the run.
- LeNet (1x28x28) at batch 64 (benchmarks/bench_lenet.py): one training step.

The table ends with one line per speed target of issue 8 (ratios of the medians above).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

import graphc as gc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from numpy_losses import softmax_cross_entropy  # noqa: E402
from timing import interleaved_medians, interleaved_times, median_time  # noqa: E402

LR = 0.01


# ---------------------------------------------------------------- environment
def _load_numba_blas():
    # Numba's np.dot (so graphc's matmuls) calls SciPy's own OpenBLAS through
    # scipy.linalg.cython_blas, a different library from NumPy's: load it so threadpoolctl
    # sees (and limits) both
    import scipy.linalg.cython_blas  # noqa: F401


def blas_info() -> str:
    _load_numba_blas()
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    rows = [f"{i.get('internal_api')} {i.get('version')} core={i.get('architecture')} "
            f"threads={i.get('num_threads')} ({os.path.basename(i.get('filepath', ''))})"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    return "\n  ".join(rows) or "no BLAS found by threadpoolctl"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        import platform
        return platform.processor() or platform.machine()


FASTEST_COPY = "copy floor, fastest call"
PEAK_N = 2048
PEAK_ROW = f"np.dot {PEAK_N}^3 (sgemm peak)"


def sgemm_peak_run(n=PEAK_N, gemm=np.dot):
    """A call of ``gemm(a, b, out)`` on n x n float32 (NumPy's np.dot: the sgemm peak),
    for timing in the MLP's rounds beside the steps it is the yardstick for."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b, c = a.copy(), np.empty_like(a)
    return lambda: gemm(a, b, c)


def sgemm_peak(n=PEAK_N, reps=10) -> tuple[float, float]:
    """GFLOP/s of NumPy's np.dot and of graphc's own gemm inside Numba (codegen/blas.py)."""
    from numba import njit

    from graphc.codegen.blas import gemm

    @njit
    def graphc_gemm(a, b, c):
        gemm(a, b, c, False, False, 1.0, 0.0)
    t_np = median_time(sgemm_peak_run(n), reps)
    t_gc = median_time(sgemm_peak_run(n, graphc_gemm), reps)
    return 2 * n**3 / t_np / 1e9, 2 * n**3 / t_gc / 1e9


def copy_floor_runs(x) -> dict:
    """{name: call} copying ``x`` (read n floats, write n floats, the chain's traffic) on
    one thread and on one thread per core (graphc runs large elementwise graphs on every
    core, so the floor must too). Timed in the chain's own rounds, beside the
    implementations: measured once at start-up instead, the floor moved 0.64-1.08 ms
    between runs here (a 16 MB copy is at the mercy of who else uses the 32 MB L3)."""
    from concurrent.futures import ThreadPoolExecutor

    from graphc.codegen.parallel import chunk_bounds, thread_count
    out = np.empty_like(x)
    runs = {"copy floor, 1 thread": lambda: np.copyto(out, x)}
    threads = thread_count()
    if threads > 1:
        parts = [(out[lo:hi], x[lo:hi]) for lo, hi in chunk_bounds(x.size, 1, threads)]
        pool = ThreadPoolExecutor(len(parts))   # np.copyto releases the GIL
        runs[f"copy floor, {threads} threads"] = (
            lambda: list(pool.map(lambda p: np.copyto(*p), parts)))
    return runs


# ---------------------------------------------------------------- MLP
SIZES = (784, 256, 256, 10)


def mlp_flops(batch) -> float:
    fwd = sum(2 * batch * i * o for i, o in zip(SIZES[:-1], SIZES[1:]))
    return 3 * fwd - 2 * batch * SIZES[0] * SIZES[1]   # no gradient w.r.t. the input


def mlp_data(batch):
    rng = np.random.default_rng(batch)
    return (rng.standard_normal((batch, SIZES[0])).astype(np.float32),
            rng.integers(0, SIZES[-1], batch))


def graphc_mlp(fuse):
    gc.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers.append(gc.nn.Linear(a, b))
        if i < len(SIZES) - 2:
            layers.append(gc.nn.ReLU())
    m = gc.compile(gc.nn.Sequential(*layers), input_shape=(None, SIZES[0]),
                   loss="cross_entropy", optimizer=gc.optim.SGD(lr=LR), fuse=fuse)

    def step(x, y):
        return m.train_step(x, y)
    step.model = m      # for benchmarks/mlp_profile.py
    return step


def numpy_mlp():
    rng = np.random.default_rng(0)
    ws = [(rng.standard_normal((o, i)).astype(np.float32) / np.sqrt(i),
           np.zeros(o, np.float32)) for i, o in zip(SIZES[:-1], SIZES[1:])]

    def step(x, y):
        acts, pre = [x], []
        for k, (w, b) in enumerate(ws):
            h = acts[-1] @ w.T + b
            pre.append(h)
            acts.append(np.maximum(h, 0) if k < len(ws) - 1 else h)
        loss, g = softmax_cross_entropy(acts[-1], y)
        for k in range(len(ws) - 1, -1, -1):
            w, b = ws[k]
            gw, gb = g.T @ acts[k], g.sum(axis=0)
            if k:
                g = (g @ w) * (pre[k - 1] > 0)
            w -= LR * gw
            b -= LR * gb
        return loss
    return step


def torch_mlp(compiled=False):
    """PyTorch eager step, or with ``compiled`` the loss torch.compile'd: Inductor fuses
    forward and backward (AOTAutograd); zero_grad, backward() and the SGD step stay eager
    (compiling the whole step function breaks its graph at exactly those calls)."""
    import torch
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(net.parameters(), lr=LR)

    def loss_fn(x, y):
        return torch.nn.functional.cross_entropy(net(x), y)
    if compiled:
        loss_fn = torch.compile(loss_fn)

    def step(x, y):
        opt.zero_grad()
        loss = loss_fn(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        opt.step()
        return float(loss)
    return step


def jax_mlp():
    import jax
    import jax.numpy as jnp
    key = jax.random.PRNGKey(0)
    params = []
    for i, o in zip(SIZES[:-1], SIZES[1:]):
        key, k = jax.random.split(key)
        params.append((jax.random.normal(k, (o, i), jnp.float32) / np.sqrt(i), jnp.zeros(o)))

    def loss_fn(ps, x, y):
        h = x
        for k, (w, b) in enumerate(ps):
            h = h @ w.T + b
            if k < len(ps) - 1:
                h = jax.nn.relu(h)
        return jnp.mean(jax.nn.logsumexp(h, axis=1) - h[jnp.arange(h.shape[0]), y])

    @jax.jit
    def update(ps, x, y):
        loss, g = jax.value_and_grad(loss_fn)(ps, x, y)
        return jax.tree_util.tree_map(lambda p, d: p - LR * d, ps, g), loss
    state = [params]

    def step(x, y):
        state[0], loss = update(state[0], x, y)
        return loss.block_until_ready()
    return step


# ---------------------------------------------------------------- elementwise chain
CHAIN_N = 4 * 2**20


def chain_graphc(x, fuse, public):
    vg = gc.value_and_grad(lambda v: gc.sum(gc.sigmoid(v) * gc.tanh(v) + 0.5 * gc.relu(v)
                                           - gc.softplus(v)), fuse=fuse)
    if public:
        return lambda: vg(x)
    exe = vg.compiled((x,))
    return lambda: exe.run([x], copy=False)


def chain_numpy(x):
    def run():
        with np.errstate(over="ignore"):
            s = 1 / (1 + np.exp(-x))
            t = np.tanh(x)
            r = np.maximum(x, 0)
            sp = r + np.log1p(np.exp(-np.abs(x)))
            y = s * t + 0.5 * r - sp
            g = s * (1 - s) * t + s * (1 - t * t) + 0.5 * (x > 0) - s
        return y.sum(dtype=np.float32), g
    return run


def _torch_chain_loss(v):
    import torch
    return (torch.sigmoid(v) * torch.tanh(v) + 0.5 * torch.relu(v)
            - torch.nn.functional.softplus(v)).sum()


def chain_torch(x):
    import torch
    xt = torch.from_numpy(x)

    def run():
        v = xt.detach().requires_grad_()
        _torch_chain_loss(v).backward()
        return v.grad
    return run


def chain_torch_compile(x):
    """torch.compile of value-and-gradient as one function (torch.func.grad_and_value):
    one graph, forward and backward fused by Inductor; compiled on the first call."""
    import torch
    f = torch.compile(torch.func.grad_and_value(_torch_chain_loss))
    xt = torch.from_numpy(x)
    return lambda: f(xt)[0]


def chain_jax(x):
    import jax
    import jax.numpy as jnp
    f = jax.jit(jax.value_and_grad(lambda v: jnp.sum(
        jax.nn.sigmoid(v) * jnp.tanh(v) + 0.5 * jax.nn.relu(v) - jax.nn.softplus(v))))
    xj = jnp.asarray(x)
    return lambda: f(xj)[1].block_until_ready()


# ---------------------------------------------------------------- driver
def _optional(make):
    try:
        return make()
    except ImportError:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="limit BLAS threads (threadpoolctl); on a busy machine 1 avoids "
                         "OpenBLAS threads spinning while their partner is descheduled")
    ap.add_argument("--only", nargs="+", choices=("mlp", "chain", "lenet"),
                    default=("mlp", "chain", "lenet"), help="run only these workloads")
    args = ap.parse_args(argv)
    if args.blas_threads:
        from threadpoolctl import threadpool_limits
        _load_numba_blas()
        threadpool_limits(args.blas_threads, user_api="blas")
    q = 0.25 if args.quick else 1.0
    print(f"graphc {gc.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")
    print(f"BLAS:\n  {blas_info()}")
    # the chain's loop is bound by the CPU's vector units (AVX2 or AVX-512, how many FMA
    # pipes): results from different machines are not comparable without this line
    import llvmlite.binding as llvm
    print(f"CPU: {_cpu_model()}, {os.cpu_count()} CPUs, LLVM target {llvm.get_host_cpu_name()}")
    print("OPENBLAS_CORETYPE=%s OPENBLAS_L2_SIZE=%s" % (os.environ.get("OPENBLAS_CORETYPE"),
                                                        os.environ.get("OPENBLAS_L2_SIZE")))
    peak_np, peak = sgemm_peak()
    from graphc.codegen.blas import KIND
    from graphc.codegen.parallel import thread_count
    print(f"sgemm peak (2048^3): numpy np.dot {peak_np:.0f} GFLOP/s, graphc's gemm ({KIND}) "
          f"{peak:.0f} GFLOP/s; graphc runs large elementwise "
          f"graphs on {thread_count()} thread(s) (GRAPHC_THREADS)")
    rows = []

    def add(workload, impl, seconds, items, work, unit):
        rate = f"{work / seconds / 1e9:.1f} {unit}" if work else "-"
        rows.append((workload, impl, seconds * 1e3, items / seconds, rate))
        print(f"  {workload:22} {impl:34} {seconds * 1e3:9.3f} ms", flush=True)

    if "mlp" in args.only:
        _mlp_rows(q, add)
    if "chain" in args.only:
        _chain_rows(q, add)
    if "lenet" in args.only:
        _lenet_rows(q, add)
    _print_table(rows, peak_np, peak)


def _mlp_rows(q, add):
    mlp_impls = [("graphc fused", lambda: graphc_mlp(True)),
                 ("graphc unfused", lambda: graphc_mlp(False)),
                 ("numpy", numpy_mlp), ("pytorch eager", lambda: _optional(torch_mlp)),
                 ("pytorch compile (loss; step eager)",
                  lambda: _optional(lambda: torch_mlp(compiled=True))),
                 ("jax jit", lambda: _optional(jax_mlp))]
    # build (and compile) everything first, then time all implementations in alternating
    # rounds (interleaved_medians)
    mlp_steps, mlp_build = {}, {}
    for name, make in mlp_impls:
        t = time.perf_counter()
        step = make()
        if step is None:
            continue
        step(*mlp_data(128))
        mlp_steps[name], mlp_build[name] = step, time.perf_counter() - t
    for batch, reps in ((128, int(200 * q)), (1024, int(40 * q))):
        x, y = mlp_data(batch)
        fns = {name: (lambda st=st: st(x, y)) for name, st in mlp_steps.items()}
        if batch == 1024:
            # the peak that b1024's GFLOP/s is held against, in the same rounds (measured
            # once at start-up, it moved 187-206 GFLOP/s between runs here)
            fns[PEAK_ROW] = sgemm_peak_run()
        for name, s in interleaved_medians(fns, max(reps, 5)).items():
            if name == PEAK_ROW:
                add(f"MLP b{batch}", name, s, PEAK_N, 2 * PEAK_N**3, "GFLOP/s")
                continue
            add(f"MLP b{batch}", name + (f" (build {mlp_build[name]:.1f}s)" if batch == 128
                                         else ""), s, batch, mlp_flops(batch), "GFLOP/s")


def _chain_rows(q, add):
    x = np.random.default_rng(1).standard_normal(CHAIN_N).astype(np.float32)
    chain_impls = [("graphc fused", lambda: chain_graphc(x, True, False)),
                   ("graphc fused, copies out", lambda: chain_graphc(x, True, True)),
                   ("graphc unfused", lambda: chain_graphc(x, False, False)),
                   ("numpy", lambda: chain_numpy(x)),
                   ("pytorch eager", lambda: _optional(lambda: chain_torch(x))),
                   ("pytorch compile", lambda: _optional(lambda: chain_torch_compile(x))),
                   ("jax jit", lambda: _optional(lambda: chain_jax(x)))]
    chain_impls += [(name, lambda run=run: run) for name, run in copy_floor_runs(x).items()]
    chain_runs, chain_build = {}, {}
    for name, make in chain_impls:
        t = time.perf_counter()
        run = make()
        if run is None:
            continue
        run()   # compiles (graphc, torch.compile, jax.jit): timed here, not in the steps
        chain_runs[name], chain_build[name] = run, time.perf_counter() - t
    # the chain's implementations disturb each other most (16 MB arrays; PyTorch's and
    # JAX's worker threads): more calls per round, two of them untimed
    times = interleaved_times(chain_runs, max(int(40 * q), 5), round_warmup=2)
    for name, ts in times.items():
        add("chain 4M fwd+bwd", f"{name} (build {chain_build[name]:.1f}s)",
            statistics.median(ts), CHAIN_N, 2 * x.nbytes, "GB/s")
    # the floor's median moves with the neighbours' memory traffic (0.7-1.9 ms here), so
    # the fastest copy of the run is reported too: what the hardware can do
    fastest = min(min(ts) for name, ts in times.items() if name.startswith("copy floor"))
    add("chain 4M fwd+bwd", FASTEST_COPY, fastest, CHAIN_N, 2 * x.nbytes, "GB/s")


def _lenet_rows(q, add):
    # LeNet (1x28x28, batch 64): the rows of benchmarks/bench_lenet.py, same process
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_lenet import lenet_rows
    for name, s, build in lenet_rows(batch=64, repeat=max(int(50 * q), 5)):
        label = {"PyTorch eager": "pytorch eager", "JAX jit": "jax jit",
                 "NumPy": "numpy"}.get(name, name)
        add("LeNet b64", f"{label} (build {build:.1f}s)", s, 64, 0.0, "")


def _print_table(rows, peak_np, peak):
    print()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          f"(timings are only comparable on an otherwise idle machine)")
    print(f"{'workload':20} {'implementation':34} {'ms/step':>10} {'samples/s':>12} {'rate':>16}")
    for w, impl, ms, sps, rate in rows:
        print(f"{w:20} {impl:34} {ms:10.3f} {sps:12.0f} {rate:>16}")
    print(f"\nsgemm peak {peak_np:.0f} (numpy) / {peak:.0f} (graphc gemm) GFLOP/s")
    print("\nissue 8 targets (ratios of medians from the rounds above):")
    for line in target_lines(rows, peak_np):
        print("  " + line)


def target_lines(rows, peak_np) -> list[str]:
    """One line per speed target: the measured ratio, the target, met or missed."""
    ms = {(w, impl.split(" (build")[0]): t for w, impl, t, _, _ in rows}
    lines = []

    def ratio(workload, slow, fast, target):
        if (workload, slow) in ms and (workload, fast) in ms:
            r = ms[workload, slow] / ms[workload, fast]
            lines.append(f"{workload}: graphc fused {r:.2f}x faster than {slow} "
                         f"(target >= {target}x): {'met' if r >= target else 'MISSED'}")
    ratio("MLP b128", "jax jit", "graphc fused", 1.2)
    ratio("MLP b1024", "jax jit", "graphc fused", 1.1)
    if ("MLP b1024", "graphc fused") in ms:
        where = "at start-up"
        if ("MLP b1024", PEAK_ROW) in ms:
            peak_np = 2 * PEAK_N**3 / (ms["MLP b1024", PEAK_ROW] / 1e3) / 1e9
            where = "in the rounds"
        share = mlp_flops(1024) / (ms["MLP b1024", "graphc fused"] / 1e3) / 1e9 / peak_np
        lines.append(f"MLP b1024: graphc fused at {share:.1%} of the numpy sgemm peak "
                     f"({peak_np:.0f} GFLOP/s {where}; target >= 85%): "
                     f"{'met' if share >= 0.85 else 'MISSED'}")
    ratio("LeNet b64", "pytorch eager", "graphc fused", 1.3)
    ratio("chain 4M fwd+bwd", "pytorch compile", "graphc fused", 4.0)
    floors = [t for (w, impl), t in ms.items() if w == "chain 4M fwd+bwd"
              and impl.startswith("copy floor") and impl != FASTEST_COPY]
    chain = ms.get(("chain 4M fwd+bwd", "graphc fused"))
    if floors and chain:
        # met only against the fastest copy: a floor slowed by other traffic is no floor
        best = ms.get(("chain 4M fwd+bwd", FASTEST_COPY), min(floors))
        r_med, r_best = chain / min(floors), chain / best
        lines.append(f"chain 4M fwd+bwd: graphc fused {r_best:.2f}x the fastest copy "
                     f"({best:.3f} ms; {r_med:.2f}x the copy's median, {min(floors):.3f} ms; "
                     f"target <= 2x): {'met' if r_best <= 2 else 'MISSED'}")
    return lines


if __name__ == "__main__":
    main()
