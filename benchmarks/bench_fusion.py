"""Fused vs unfused vs plain NumPy: an 8-op elementwise chain and an MLP training step.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_fusion.py [--repeats 15]

Reports the median time per call, the bytes each implementation moves (every kernel
reads its operands from memory and writes its stored results; NumPy moves what the
unfused kernels move) as GB/s, and the ratio to the fused time. The variants run in
turn (round robin) so load from other processes hits them alike. Not a test.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import graphc as gc
from graphc.codegen import compile_graph
from graphc.ir import BATCH, Graph, TensorType
from graphc.pipeline import optimize

CHAIN_N = 4 * 1024 * 1024


def timed_round_robin(fns: dict, repeats) -> dict:
    """{label: (median ms, min ms)}; the variants take turns (who goes first rotates), so
    a machine whose load drifts (shared cores) slows them alike."""
    for fn in fns.values():
        fn()
    labels = list(fns)
    times = {label: [] for label in fns}
    for r in range(repeats):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            fn = fns[label]
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    return {label: (float(np.median(t)) * 1e3, float(np.min(t)) * 1e3)
            for label, t in times.items()}


def kernel_bytes(exe, batch):
    """Bytes the schedule's kernels read and write (views cost nothing)."""
    g = exe.graph
    total = 0
    for k in exe.schedule.kernels:
        if k.kind == "view":
            continue
        for v in list(k.inputs) + list(k.outputs):
            t = g.type_of(v)
            shape = t.concrete(batch) if t.has_batch else t.shape
            total += int(np.prod(shape, dtype=np.int64)) * np.dtype(t.dtype).itemsize
    return total


# ------------------------------------------------------------------ elementwise chain
def chain_graph():
    g = Graph("chain8")
    f32 = "float32"
    x = g.add_input(TensorType((BATCH,), f32), "x")
    y = g.add_input(TensorType((BATCH,), f32), "y")
    c = lambda v: g.constant(v, f32)  # noqa: E731
    t = g.add("mul", [x, c(1.5)])                 # 1
    t = g.add("add", [t, c(0.5)])                 # 2
    t = g.add("maximum", [t, c(0.0)])             # 3
    t = g.add("mul", [t, t])                      # 4
    t = g.add("sub", [t, x])                      # 5
    t = g.add("mul", [t, c(0.25)])                # 6
    t = g.add("minimum", [t, c(4.0)])             # 7
    t = g.add("add", [t, y])                      # 8
    g.set_outputs([t], ["out"])
    return g


def chain_numpy(x, y):
    t = x * np.float32(1.5)
    t = t + np.float32(0.5)
    t = np.maximum(t, np.float32(0.0))
    t = t * t
    t = t - x
    t = t * np.float32(0.25)
    t = np.minimum(t, np.float32(4.0))
    return t + y


def bench_chain(repeats):
    rng = np.random.default_rng(0)
    x = rng.normal(size=CHAIN_N).astype(np.float32)
    y = rng.normal(size=CHAIN_N).astype(np.float32)
    fns, info = {}, {}
    for label, fuse in (("fused", True), ("unfused", False)):
        g, _ = optimize(chain_graph(), fuse=fuse)
        exe = compile_graph(g)
        got = exe.run([x, y], copy=False)[0]
        np.testing.assert_allclose(got, chain_numpy(x, y), rtol=1e-6, atol=1e-6)
        fns[label] = (lambda e: lambda: e.run([x, y], copy=False))(exe)
        info[label] = (kernel_bytes(exe, CHAIN_N), exe.kernel_count)
    fns["numpy"] = lambda: chain_numpy(x, y)
    info["numpy"] = (info["unfused"][0], 8)
    times = timed_round_robin(fns, repeats)
    return {label: times[label] + info[label] for label in fns}


# ------------------------------------------------------------------ MLP training step
class MLP(gc.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = gc.nn.Linear(784, 256)
        self.fc2 = gc.nn.Linear(256, 256)
        self.fc3 = gc.nn.Linear(256, 10)

    def forward(self, x):
        relu = gc.nn.functional.relu
        return self.fc3(relu(self.fc2(relu(self.fc1(x)))))


class NumpyMLP:
    """The same step by hand in NumPy: forward, softmax cross-entropy, backward, SGD momentum."""

    def __init__(self, params, lr, momentum):
        self.p = {k: v.copy() for k, v in params.items()}
        self.buf = {k: np.zeros_like(v) for k, v in params.items()}
        self.lr, self.m = np.float32(lr), np.float32(momentum)

    def step(self, x, y):
        p = self.p
        z1 = x @ p["fc1.weight"].T + p["fc1.bias"]
        a1 = np.maximum(z1, 0)
        z2 = a1 @ p["fc2.weight"].T + p["fc2.bias"]
        a2 = np.maximum(z2, 0)
        z3 = a2 @ p["fc3.weight"].T + p["fc3.bias"]
        m = z3.max(axis=1, keepdims=True)
        e = np.exp(z3 - m)
        s = e.sum(axis=1, keepdims=True)
        n = x.shape[0]
        loss = float(np.mean(m[:, 0] + np.log(s[:, 0]) - z3[np.arange(n), y]))
        d3 = e / s
        d3[np.arange(n), y] -= 1
        d3 /= np.float32(n)
        grads = {"fc3.weight": d3.T @ a2, "fc3.bias": d3.sum(0)}
        d2 = (d3 @ p["fc3.weight"]) * (z2 > 0)
        grads["fc2.weight"], grads["fc2.bias"] = d2.T @ a1, d2.sum(0)
        d1 = (d2 @ p["fc2.weight"]) * (z1 > 0)
        grads["fc1.weight"], grads["fc1.bias"] = d1.T @ x, d1.sum(0)
        for k, gk in grads.items():
            self.buf[k] *= self.m
            self.buf[k] += gk
            p[k] -= self.lr * self.buf[k]
        return loss


def bench_mlp(repeats, batch=128):
    gc.manual_seed(0)
    net = MLP()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    fns, info, losses = {}, {}, {}
    for label, fuse in (("fused", True), ("unfused", False)):
        model = gc.compile(net, input_shape=(None, 784), loss="cross_entropy", fuse=fuse,
                           optimizer=gc.optim.SGD(lr=0.01, momentum=0.9), dtype="float32")
        losses[label] = model.train_step(x, y)
        exe = model._exe("train")
        fns[label] = (lambda m: lambda: m.train_step(x, y))(model)
        info[label] = (kernel_bytes(exe, batch), exe.kernel_count)
    ref = NumpyMLP({k: v.data.astype(np.float32) for k, v in net.named_parameters()}, 0.01, 0.9)
    losses["numpy"] = ref.step(x, y)
    assert abs(losses["numpy"] - losses["fused"]) < 1e-4 * max(1.0, abs(losses["numpy"])), losses
    fns["numpy"] = lambda: ref.step(x, y)
    info["numpy"] = (info["unfused"][0], None)
    times = timed_round_robin(fns, repeats)
    return {label: times[label] + info[label] for label in fns}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=51)
    args = ap.parse_args()
    results = {"chain8 4M f32 (fwd)": bench_chain(args.repeats),
               "MLP 784-256-256-10 b128 (train step)": bench_mlp(args.repeats)}
    print(f"{'benchmark':<38}{'variant':<9}{'kernels':>8}{'median ms':>10}{'min ms':>9}"
          f"{'MB moved':>9}{'GB/s':>7}{'x fused':>8}")
    for bench, rows in results.items():
        fused_ms = rows["fused"][0]
        for label, (ms, best, nbytes, kernels) in rows.items():
            print(f"{bench:<38}{label:<9}{kernels if kernels else '-':>8}{ms:>10.3f}"
                  f"{best:>9.3f}{nbytes / 1e6:>9.1f}{nbytes / ms / 1e6:>7.2f}"
                  f"{ms / fused_ms:>8.2f}")
    print("GB/s = bytes the variant's kernels read and write / median time; "
          "x fused = median / fused median.")


if __name__ == "__main__":
    main()
