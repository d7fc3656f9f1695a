"""Benchmarks of training steps: graphc fused vs unfused vs a plain NumPy reference.

>>> from graphc.spec import load_spec
>>> print(format_table(run_bench(load_spec("examples/mlp.toml"), batch=64, steps=20)))  # doctest: +SKIP
"""
from __future__ import annotations

import statistics
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

from graphc.ir import input_index_bounds


@dataclass
class BenchRow:
    variant: str
    ms: float                # median ms per step
    samples_per_s: float
    kernels: int | None      # kernels launched per step (None: not a graphc variant)
    alloc_bytes: int         # peak bytes allocated during one step (tracemalloc), median
    speedup: float = 1.0     # unfused ms / this ms


class NumpyMLP:
    """A hand-written NumPy training step for specs made of linear layers and
    elementwise activations with cross-entropy loss and SGD: the baseline graphc must
    beat, and an independent check of its numbers."""

    ACTS = ("relu", "sigmoid", "tanh", "softplus")

    def __init__(self, layers, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.layers = layers                      # [("linear", W, b) | (act,)]
        self.params = params                      # flat list of arrays, updated in place
        self.lr, self.momentum, self.nesterov, self.wd = lr, momentum, nesterov, weight_decay
        self.bufs = [np.zeros_like(p) for p in params]

    @classmethod
    def from_spec(cls, spec):
        """A reference for ``spec`` or None when the spec is not an MLP it covers."""
        if spec.module_factory is not None or spec.loss != "cross_entropy":
            return None
        opt = dict(spec.optimizer)
        if str(opt.pop("type")).lower() != "sgd" or set(opt) - {"lr", "momentum", "nesterov",
                                                               "weight_decay"}:
            return None
        if len(spec.input_shape) != 1:
            return None
        kinds = [layer["type"] for layer in spec.layers]
        if any(k != "linear" and k not in cls.ACTS for k in kinds):
            return None
        if any(layer.get("bias") is False for layer in spec.layers):
            return None
        module = spec.build()    # same seed -> the same initial parameters as graphc's
        named = dict(module.named_parameters())
        layers, params = [], []
        for i, kind in enumerate(kinds):
            if kind == "linear":
                w = named[f"{i}.weight"].data.astype(spec.dtype)
                b = named[f"{i}.bias"].data.astype(spec.dtype)
                layers.append(("linear", w, b))
                params += [w, b]
            else:
                layers.append((kind,))
        return cls(layers, params, opt.get("lr", 0.01), opt.get("momentum", 0.0),
                   opt.get("nesterov", False), opt.get("weight_decay", 0.0))

    def train_step(self, x, y) -> float:
        ins, outs, h = [], [], x
        for layer in self.layers:
            ins.append(h)
            kind = layer[0]
            if kind == "linear":
                h = h @ layer[1].T + layer[2]
            elif kind == "relu":
                h = np.maximum(h, 0)
            elif kind == "sigmoid":
                h = 1 / (1 + np.exp(-h))
            elif kind == "tanh":
                h = np.tanh(h)
            else:
                h = np.logaddexp(0, h)
            outs.append(h)
        n = len(y)
        z = h - h.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -logp[np.arange(n), y].mean()
        g = np.exp(logp)
        g[np.arange(n), y] -= 1
        g /= n
        grads = []
        for layer, inp, out in zip(reversed(self.layers), reversed(ins), reversed(outs)):
            kind = layer[0]
            if kind == "linear":
                grads = [g.T @ inp, g.sum(axis=0)] + grads
                g = g @ layer[1]
            elif kind == "relu":
                g = g * (inp > 0)
            elif kind == "sigmoid":
                g = g * out * (1 - out)
            elif kind == "tanh":
                g = g * (1 - out * out)
            else:
                g = g / (1 + np.exp(-inp))
        for p, grad, buf in zip(self.params, grads, self.bufs):
            d = grad + self.wd * p if self.wd else grad
            if self.momentum:
                buf *= self.momentum
                buf += d
                d = d + self.momentum * buf if self.nesterov else buf
            p -= (self.lr * d).astype(p.dtype)
        return float(loss)


def sample_batch(spec, model, batch, seed=0):
    """A random batch and matching labels for ``model`` (labels from its train graph)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *spec.input_shape)).astype(spec.dtype)
    if spec.loss is None:
        return x, None
    g = model._graph("gradients")
    yid = g.input_named("y")
    t = g.type_of(yid)
    if t.dtype == "int64":
        lo, hi = input_index_bounds(g)["y"][:2]      # the classes, from the loss op
        return x, rng.integers(lo, hi, size=batch).astype(np.int64)
    shape = t.concrete(batch)
    if spec.loss == "bce":
        return x, rng.uniform(0, 1, size=shape).astype(spec.dtype)
    return x, rng.standard_normal(shape).astype(spec.dtype)


def _measure(name, step, batch, steps, kernels, warmup=2) -> BenchRow:
    for _ in range(warmup):          # the first call compiles (Numba) or warms caches
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    allocs = []
    tracemalloc.start()
    try:
        for _ in range(3):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            step()
            allocs.append(tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()
    ms = statistics.median(times) * 1e3
    return BenchRow(name, ms, batch / (ms / 1e3), kernels, int(statistics.median(allocs)))


def run_bench(spec, batch=None, steps=30, target="cpu", seed=0) -> list[BenchRow]:
    """Rows for graphc fused, graphc unfused and (where it exists) the NumPy reference."""
    batch = batch or spec.batch_size
    rows = []
    x = y = None
    for fuse in (True, False):
        model = spec.compile(target=target, fuse=fuse)
        if x is None:
            x, y = sample_batch(spec, model, batch, seed)
        rows.append(_measure(f"graphc {'fused' if fuse else 'unfused'}",
                             lambda m=model: m.train_step(x, y), batch, steps,
                             model.kernel_count("train")))
    ref = NumpyMLP.from_spec(spec)
    if ref is not None:
        rows.append(_measure("numpy", lambda: ref.train_step(x, y), batch, steps, None))
    base = rows[1].ms
    for r in rows:
        r.speedup = base / r.ms if r.ms > 0 else float("inf")
    return rows


COLUMNS = ("variant", "ms/step", "samples/s", "kernels", "alloc B/step", "vs unfused")


def format_table(rows) -> str:
    """One aligned table; ``ms/step`` is the median over the timed steps."""
    cells = [COLUMNS]
    for r in rows:
        cells.append((r.variant, f"{r.ms:.3f}", f"{r.samples_per_s:,.0f}",
                      "-" if r.kernels is None else str(r.kernels), f"{r.alloc_bytes:,}",
                      f"{r.speedup:.2f}x"))
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = []
    for row in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)
