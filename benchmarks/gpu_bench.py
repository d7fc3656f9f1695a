"""GPU training-step benchmark: graphc target="cuda" fused vs unfused, and PyTorch CUDA eager.

    python benchmarks/gpu_bench.py                 # on a machine with an NVIDIA GPU
    python benchmarks/gpu_bench.py --steps 50 --dtype float32
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/gpu_bench.py --smoke   # tiny, no GPU: checks the script

Models: MLP 784-256-256-10 (batch 1024) and LeNet-5 (batch 256, 1x28x28 input),
cross-entropy loss, SGD with momentum 0.9. A training step = forward, backward and
update, ending with the loss copied to the host (both frameworks), so every step is
synchronised. Times are the median over ``--steps`` steps after ``--warmup`` steps
(the first step, which compiles the kernels, is reported separately).

LeNet-5 here is conv5x5(6, pad 2) -> relu -> maxpool2 -> conv5x5(16) -> relu -> maxpool2
-> 400-120-84-10, the same layers in both frameworks. ``--smoke`` shrinks both models
(MLP 12-8-8-10, LeNet on 1x12x12 with 2 and 3 channels) and runs one step each.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import graphc as gc


# ----------------------------------------------------------------- models
def mlp_graphc(smoke):
    h = 8 if smoke else 256
    return gc.nn.Sequential(gc.nn.Linear(784 if not smoke else 12, h), gc.nn.ReLU(),
                            gc.nn.Linear(h, h), gc.nn.ReLU(), gc.nn.Linear(h, 10))


def lenet_dims(smoke):
    """(channels 1, channels 2, flattened size, hidden 1, hidden 2): LeNet-5 on 1x28x28,
    or a tiny one on 1x12x12 for the simulator (12 -> 12 -> 6 -> 2 -> 1 pixels)."""
    return (2, 3, 3 * 1 * 1, 8, 8) if smoke else (6, 16, 16 * 5 * 5, 120, 84)


def lenet(nn, smoke):
    c1, c2, flat, h1, h2 = lenet_dims(smoke)
    return nn.Sequential(nn.Conv2d(1, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(flat, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(),
                         nn.Linear(h2, 10))


def lenet_graphc(smoke):
    return lenet(gc.nn, smoke)


def mlp_torch(torch, smoke):
    nn = torch.nn
    h = 8 if smoke else 256
    return nn.Sequential(nn.Linear(784 if not smoke else 12, h), nn.ReLU(), nn.Linear(h, h),
                         nn.ReLU(), nn.Linear(h, 10))


def lenet_torch(torch, smoke):
    return lenet(torch.nn, smoke)


MODELS = {
    # name: (graphc builder, torch builder, input shape without batch, batch, smoke shape, smoke batch)
    "MLP 784-256-256-10": (mlp_graphc, mlp_torch, (784,), 1024, (12,), 8),
    "LeNet-5": (lenet_graphc, lenet_torch, (1, 28, 28), 256, (1, 12, 12), 2),
}


# ----------------------------------------------------------------- timing
def time_steps(step, steps, warmup):
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), min(times)


def bench_graphc(builder, in_shape, batch, fuse, dtype, args):
    gc.manual_seed(0)
    net = builder(args.smoke)
    model = gc.compile(net, input_shape=(None,) + in_shape, loss="cross_entropy",
                       optimizer=gc.optim.SGD(lr=0.01, momentum=0.9), target="cuda",
                       fuse=fuse, dtype=dtype)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch,) + in_shape).astype(dtype)
    y = rng.integers(0, 10, size=batch)
    first, med, best = time_steps(lambda: model.train_step(x, y), args.steps, args.warmup)
    return first, med, best, model.kernel_count("train")


def bench_torch(torch, builder, in_shape, batch, dtype, args):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    tdtype = getattr(torch, dtype)
    net = builder(torch, args.smoke).to(device=dev, dtype=tdtype)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x_host = rng.normal(size=(batch,) + in_shape).astype(dtype)
    y_host = rng.integers(0, 10, size=batch)

    def step():
        # the batch comes from host memory every step, as in graphc's train_step
        x = torch.from_numpy(x_host).to(dev)
        y = torch.from_numpy(y_host).to(dev)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss.item()
    first, med, best = time_steps(step, args.steps, args.warmup)
    return first, med, best


def gpu_name():
    from numba import cuda
    if not hasattr(cuda, "get_current_device"):
        return "none"          # the simulator
    try:
        name = cuda.get_current_device().name
    except Exception as exc:   # noqa: BLE001 - report, do not fail the table
        return f"unknown ({exc})"
    return name.decode() if isinstance(name, bytes) else str(name)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps per row (median)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes and 1 step: checks the script (e.g. in the CUDA simulator)")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup = 1, 0

    from graphc.codegen.cuda_runtime import check_cuda, simulator_enabled
    check_cuda()
    if simulator_enabled():
        # the simulator's threads busy-wait on the GIL: short switch intervals let them run
        import sys
        sys.setswitchinterval(1e-4)
    torch = None
    if not args.no_torch and not simulator_enabled():
        try:
            import torch as _torch
            if _torch.cuda.is_available():
                torch = _torch
        except ImportError:
            pass
    print(f"GPU: {gpu_name()}{' (CUDA simulator)' if simulator_enabled() else ''}; "
          f"dtype {args.dtype}; median of {args.steps} steps after {args.warmup} warm-up; "
          f"torch {torch.__version__ + ' eager' if torch else 'not available'}")
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        gbuild, tbuild, shape, batch, sshape, sbatch = MODELS[name]
        if args.smoke:
            shape, batch = sshape, sbatch
        for label, fuse in (("graphc cuda fused", True), ("graphc cuda unfused", False)):
            try:
                first, med, best, kernels = bench_graphc(gbuild, shape, batch, fuse,
                                                         args.dtype, args)
                rows.append((name, batch, label, f"{med * 1e3:.3f}", f"{best * 1e3:.3f}",
                             f"{first:.2f}", str(kernels)))
            except (NotImplementedError, gc.CompileError) as exc:
                rows.append((name, batch, label, "skipped", "", "", str(exc)[:90]))
        if torch is not None:
            try:
                first, med, best = bench_torch(torch, tbuild, shape, batch, args.dtype, args)
                rows.append((name, batch, "torch cuda eager", f"{med * 1e3:.3f}",
                             f"{best * 1e3:.3f}", f"{first:.2f}", ""))
            except Exception as exc:   # noqa: BLE001 - one failing row must not hide the rest
                rows.append((name, batch, "torch cuda eager", "failed", "", "", str(exc)[:90]))
    header = ("model", "batch", "engine", "step ms (median)", "step ms (min)", "first step s",
              "kernels / note")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
