"""Per-kernel times of graphc's compiled training step: the bench.py MLP, LeNet, or the
ResNet of examples/resnet_digits.py.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/mlp_profile.py \
        [--model mlp|lenet|resnet] [--batch 1024] [--blas-threads N] [--reps 20] [--unfused]

Each kernel of the generated module is called on its own, on the executable's own
buffers and scratch (arguments as the driver passes them: its statements are replayed),
and timed; the table shows each kernel's best median over three rounds, its share, and
GFLOP/s for the matmul kernels, then the whole native step (``run``) and ``train_step``
(with the Python around it). The kernels are run in driver order, so each sees the data
its predecessors left. The "in step" column times each kernel once per replay of the
whole step (median over the replays): what it costs where the step runs it, its
predecessors' data in the caches instead of its own. Where it exceeds the first column,
the kernel pays for the step around it (the sum of that column is close to ``run``).
"""
from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
from timing import median_time  # noqa: E402

from graphc.codegen.blas import OneThread  # noqa: E402


def _flops(src, name, arrays):
    """2*m*n*k of the kernel's gemm call (from its source line), or None."""
    body = src.split(f"def {name}(", 1)[1].split("\n@njit", 1)[0]
    hit = re.search(r"gemm\((v\d+), (v\d+), (v\d+), (True|False), (True|False)", body)
    if not hit:
        return None
    a, ta = arrays[hit.group(1)], hit.group(4) == "True"
    c = arrays[hit.group(3)]
    return 2 * c.size * (a.shape[0] if ta else a.shape[1])


def _model(name, batch, fuse):
    """(compiled model, x, y) of the MLP of bench.py or the LeNet of bench_lenet.py."""
    if name == "mlp":
        x, y = bench.mlp_data(batch)
        return bench.graphc_mlp(fuse).model, x, y
    rng = np.random.default_rng(0)
    if name == "resnet":
        import bench_resnet
        x = rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, batch)
        return bench_resnet.make_graphc(x, y, fuse).model, x, y
    import bench_lenet
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    step, _ = bench_lenet.make_graphc(x, y, fuse, "float32")
    return step.model, x, y


def _kernel_calls(src, mod, args):
    """[(kernel name, function, argument values)] in driver order: the driver's statements
    (aliases, reshaped views, scratch slices) are replayed on its actual arguments."""
    params = re.search(r"def run\((.*?)\):", src).group(1).split(", ")
    env = dict(zip(params, args), np=np)
    calls = []
    for line in src.split("\ndef run(", 1)[1].split("\n")[1:]:
        line = line.strip()
        if line.startswith("return"):
            break
        if not line or line.startswith("#"):
            continue
        hit = re.match(r"(k\d+_\w+)\((.*)\)$", line)
        if hit:
            calls.append((hit.group(1), getattr(mod, hit.group(1)),
                          list(eval(f"({hit.group(2)},)", env))))
        else:
            exec(line, env)
    return calls, env


def profile(batch=1024, reps=20, fuse=True, model_name="mlp"):
    """[(kernel name, seconds, flops or None)], seconds of run(), seconds of train_step."""
    model, x, y = _model(model_name, batch, fuse)
    model.train_step(x, y)
    exe = model._exe("train")
    arrays, _ = exe.prepare(model._inputs("train", x, y), model._arg_plans["train"][3])
    bufs = exe.buffers_for(batch)
    src, mod = exe.source, exe.module
    calls, env = _kernel_calls(src, mod, list(arrays) + list(bufs))
    # as the runtime does: a step whose convolutions run on Numba's threads runs with
    # OpenBLAS on one thread (without it, those kernels took 8 ms each here, not 0.6)
    with (OneThread() if exe.one_blas_thread else contextlib.nullcontext()):
        best = {}
        for _ in range(3):
            for name, fn, args in calls:
                t = median_time(lambda: fn(*args), reps, warmup=2)
                best[name] = min(best.get(name, t), t)
        in_step = {name: [] for name, _, _ in calls}
        for replay in range(3 * reps + 2):
            for name, fn, args in calls:
                t = time.perf_counter()
                fn(*args)
                if replay >= 2:
                    in_step[name].append(time.perf_counter() - t)
        t_run = median_time(lambda: mod.run(*arrays, *bufs), reps, warmup=2)
    rows = [(name, best[name], statistics.median(in_step[name]), _flops(src, name, env))
            for name, _, _ in calls]
    t_step = median_time(lambda: model.train_step(x, y), reps, warmup=2)
    return rows, t_run, t_step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("mlp", "lenet", "resnet"), default="mlp")
    ap.add_argument("--batch", type=int, default=None,
                    help="default: 1024 (MLP), 64 (LeNet), 256 (ResNet)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--blas-threads", type=int, default=None)
    ap.add_argument("--unfused", action="store_true")
    args = ap.parse_args(argv)
    if args.blas_threads:
        from threadpoolctl import threadpool_limits
        bench._load_numba_blas()
        threadpool_limits(args.blas_threads, user_api="blas")
    print(f"BLAS:\n  {bench.blas_info()}")
    batch = args.batch or {"mlp": 1024, "lenet": 64, "resnet": 256}[args.model]
    rows, t_run, t_step = profile(batch, args.reps, not args.unfused, args.model)
    total = sum(r[1] for r in rows)
    what = {"mlp": f"MLP {bench.SIZES}", "lenet": "LeNet (1x28x28)",
            "resnet": "ResNet of examples/resnet_digits.py (1x8x8)"}[args.model]
    print(f"{what} batch {batch}, {'unfused' if args.unfused else 'fused'}")
    print(f"{'kernel':62} {'ms':>8} {'share':>6} {'GFLOP/s':>8} {'in step':>8}")
    for name, t, t_in, fl in rows:
        rate = f"{fl / t / 1e9:8.1f}" if fl else " " * 8
        print(f"{name[:62]:62} {t * 1e3:8.3f} {t / total:6.1%} {rate} {t_in * 1e3:8.3f}")
    print(f"{'sum of kernels':62} {total * 1e3:8.3f} {'':6} {'':8} "
          f"{sum(r[2] for r in rows) * 1e3:8.3f}")
    print(f"{'run() (one native call)':62} {t_run * 1e3:8.3f}")
    rate = (f"  ({bench.mlp_flops(batch) / t_step / 1e9:.1f} GFLOP/s)"
            if args.model == "mlp" else "")
    print(f"{'train_step (with Python checks)':62} {t_step * 1e3:8.3f}{rate}")


if __name__ == "__main__":
    main()
