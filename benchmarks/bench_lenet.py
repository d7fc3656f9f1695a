"""LeNet-5 training step (batch 64, 1x28x28): median ms per step, graphc vs plain NumPy,
torch eager and JAX jit.

conv 5x5 6ch -> relu -> pool 2 -> conv 5x5 16ch -> relu -> pool 2 -> 120 -> 84 -> 10,
cross-entropy, SGD with momentum. Run with OpenBLAS at full speed:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_lenet.py

torch and JAX are compared only if importable (neither is a dependency).
``lenet_rows()`` returns the rows for ``benchmarks/bench.py``.

On a busy 2-core machine OpenBLAS's own threads stall the small fully-connected matmuls
(~30 ms each instead of ~0.1 ms); ``OPENBLAS_NUM_THREADS=1`` avoids that. The printed
line says which setting was used.
"""
import argparse
import os
import sys
import time

import numpy as np

import graphc as gc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from numpy_losses import softmax_cross_entropy  # noqa: E402
from timing import interleaved_medians  # noqa: E402

F = gc.nn.functional


class LeNet(gc.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = gc.nn.Conv2d(1, 6, 5)
        self.conv2 = gc.nn.Conv2d(6, 16, 5)
        self.fc1 = gc.nn.Linear(16 * 4 * 4, 120)
        self.fc2 = gc.nn.Linear(120, 84)
        self.fc3 = gc.nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, 16 * 4 * 4)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def make_graphc(x, y, fuse, dtype):
    """(step, build s) of graphc's compiled training step."""
    gc.manual_seed(0)
    t0 = time.perf_counter()
    m = gc.compile(LeNet(), input_shape=(None, 1, 28, 28), loss="cross_entropy",
                   optimizer=gc.optim.SGD(lr=0.01, momentum=0.9), fuse=fuse, dtype=dtype)
    m.train_step(x, y)
    compile_s = time.perf_counter() - t0

    def step():
        return m.train_step(x, y)
    step.model = m      # for benchmarks/mlp_profile.py --model lenet
    return step, compile_s


def make_torch(x, y):
    """(step, build s) of the same step in PyTorch eager, or None."""
    try:
        import torch
    except ImportError:
        return None
    t0 = time.perf_counter()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(256, 120), torch.nn.ReLU(),
        torch.nn.Linear(120, 84), torch.nn.ReLU(), torch.nn.Linear(84, 10))
    step = torch_training_step(net, x, y, lr=0.01, momentum=0.9)
    build_s = time.perf_counter() - t0
    return step, build_s


def torch_training_step(net, x, y, lr, momentum):
    """A PyTorch eager training step of ``net`` on fixed NumPy data (cross-entropy, SGD with
    momentum), already called once: the step the benchmarks time against graphc's."""
    import torch
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()
    step()
    return step


def _windows(h, k):
    """(N, OH, OW, C*k*k) columns of ``h`` (N, C, H, W) for a k x k valid convolution."""
    win = np.lib.stride_tricks.sliding_window_view(h, (k, k), axis=(2, 3))
    n, c, oh, ow = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n, oh, ow, c * k * k)


def _pool_fwd(h):
    n, c, hh, ww = h.shape
    r = h.reshape(n, c, hh // 2, 2, ww // 2, 2)
    out = r.max(axis=(3, 5))
    return out, r == out[:, :, :, None, :, None]


def _pool_bwd(g, mask):
    n, c, oh, ow = g.shape
    return (mask * g[:, :, :, None, :, None]).reshape(n, c, 2 * oh, 2 * ow)


def numpy_lenet_step(params, lr=0.01, momentum=0.9):
    """A plain NumPy LeNet training step (im2col convolutions, 2x2 max pooling with a
    mask, cross-entropy, SGD with PyTorch's momentum), updating ``params`` in place:
    ``{name: array}`` with graphc's (PyTorch's) names and layouts. Returns
    ``step(x, y) -> loss``; the benchmark's baseline without a compiler."""
    p = params
    buf = {k: np.zeros_like(v) for k, v in p.items()}

    def conv(h, w, b):
        cols = _windows(h, w.shape[-1])
        out = cols @ w.reshape(w.shape[0], -1).T + b
        return out.transpose(0, 3, 1, 2), cols

    def conv_grads(g, cols, w):
        gm = g.transpose(0, 2, 3, 1).reshape(-1, g.shape[1])
        return (gm.T @ cols.reshape(gm.shape[0], -1)).reshape(w.shape), gm.sum(axis=0), gm

    def step(x, y):
        a1, cols1 = conv(x, p["conv1.weight"], p["conv1.bias"])
        h1, m1 = _pool_fwd(np.maximum(a1, 0))
        a2, cols2 = conv(h1, p["conv2.weight"], p["conv2.bias"])
        h2, m2 = _pool_fwd(np.maximum(a2, 0))
        f0 = h2.reshape(len(x), -1)
        f1 = np.maximum(f0 @ p["fc1.weight"].T + p["fc1.bias"], 0)
        f2 = np.maximum(f1 @ p["fc2.weight"].T + p["fc2.bias"], 0)
        z = f2 @ p["fc3.weight"].T + p["fc3.bias"]
        loss, g = softmax_cross_entropy(z, y)
        grads = {}
        for name, h, mask in (("fc3", f2, f2 > 0), ("fc2", f1, f1 > 0), ("fc1", f0, None)):
            grads[name + ".weight"], grads[name + ".bias"] = g.T @ h, g.sum(axis=0)
            g = g @ p[name + ".weight"]
            if mask is not None:
                g = g * mask
        g = _pool_bwd(g.reshape(h2.shape), m2) * (a2 > 0)
        w2 = p["conv2.weight"]
        grads["conv2.weight"], grads["conv2.bias"], gm = conv_grads(g, cols2, w2)
        dcols = (gm @ w2.reshape(w2.shape[0], -1)).reshape(*a2.shape[:1], *a2.shape[2:],
                                                           *w2.shape[1:])
        dh1 = np.zeros_like(h1)
        k, (oh, ow) = w2.shape[-1], a2.shape[2:]
        for i in range(k):          # col2im: each tap adds its window back
            for j in range(k):
                dh1[:, :, i:i + oh, j:j + ow] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
        g = _pool_bwd(dh1, m1) * (a1 > 0)
        grads["conv1.weight"], grads["conv1.bias"], _ = conv_grads(g, cols1, p["conv1.weight"])
        for name, gr in grads.items():
            buf[name] *= momentum
            buf[name] += gr
            p[name] -= lr * buf[name]
        return loss
    return step


def make_numpy(x, y):
    """(step, build s) of :func:`numpy_lenet_step` from the initial weights graphc's
    model starts with."""
    gc.manual_seed(0)
    t0 = time.perf_counter()
    params = {k: v.astype(x.dtype) for k, v in LeNet().state_dict().items()}
    run = numpy_lenet_step(params)
    run(x, y)
    return (lambda: run(x, y)), time.perf_counter() - t0


def make_jax(x, y):
    """(step, build s) of the same step under ``jax.jit`` (value_and_grad + SGD with
    momentum, conv via ``lax.conv_general_dilated``, pool via ``lax.reduce_window``), or
    None if JAX is not installed."""
    try:
        import jax
        import jax.numpy as jnp
        from jax import lax
    except ImportError:
        return None
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)

    def init(shape, fan_in):
        bound = 1.0 / np.sqrt(fan_in)
        return jnp.asarray(rng.uniform(-bound, bound, shape).astype(x.dtype))

    params = {"c1w": init((6, 1, 5, 5), 25), "c1b": init((6,), 25),
              "c2w": init((16, 6, 5, 5), 150), "c2b": init((16,), 150),
              "f1w": init((256, 120), 256), "f1b": init((120,), 256),
              "f2w": init((120, 84), 120), "f2b": init((84,), 120),
              "f3w": init((84, 10), 84), "f3b": init((10,), 84)}
    moms = jax.tree_util.tree_map(jnp.zeros_like, params)

    def conv(h, w, b):
        h = lax.conv_general_dilated(h, w, (1, 1), "VALID",
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return h + b[None, :, None, None]

    def pool(h):
        return lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def loss_fn(p, xb, yb):
        h = pool(jax.nn.relu(conv(xb, p["c1w"], p["c1b"])))
        h = pool(jax.nn.relu(conv(h, p["c2w"], p["c2b"])))
        h = h.reshape(h.shape[0], -1)
        h = jax.nn.relu(h @ p["f1w"] + p["f1b"])
        h = jax.nn.relu(h @ p["f2w"] + p["f2b"])
        logits = h @ p["f3w"] + p["f3b"]
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

    @jax.jit
    def train(p, m, xb, yb):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        m = jax.tree_util.tree_map(lambda mi, gi: 0.9 * mi + gi, m, g)
        p = jax.tree_util.tree_map(lambda pi, mi: pi - 0.01 * mi, p, m)
        return p, m, loss

    xj, yj = jnp.asarray(x), jnp.asarray(y)
    state = [params, moms]

    def step():
        p, m, loss = train(state[0], state[1], xj, yj)
        loss.block_until_ready()
        state[0], state[1] = p, m
    step()
    build_s = time.perf_counter() - t0
    return step, build_s


def lenet_rows(batch=64, repeat=50, warmup=5, dtype="float32"):
    """Rows ``(implementation, median seconds per step, build seconds)`` for the LeNet
    training step: graphc fused and unfused, plain NumPy, then PyTorch eager and JAX jit
    where installed. Set OPENBLAS_* in the calling process (see the module docstring).

    >>> rows = lenet_rows(batch=8, repeat=3)      # doctest: +SKIP
    >>> rows[0][0]                                # doctest: +SKIP
    'graphc fused'
    """
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, batch)
    makers = [("graphc fused", lambda: make_graphc(x, y, True, dtype)),
              ("graphc unfused", lambda: make_graphc(x, y, False, dtype)),
              ("NumPy", lambda: make_numpy(x, y)),
              ("PyTorch eager", lambda: make_torch(x, y)), ("JAX jit", lambda: make_jax(x, y))]
    steps, builds = {}, {}
    for name, make in makers:
        got = make()
        if got is not None:
            steps[name], builds[name] = got
    # all built first, then timed in alternating rounds (load drift hits all alike)
    medians = interleaved_medians(steps, repeat, rounds=5, warmup=warmup)
    return [(name, medians[name], builds[name]) for name in steps]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    rows = lenet_rows(args.batch, args.repeat, args.warmup, args.dtype)
    print(f"LeNet train step, batch {args.batch}, {args.dtype}, median of {args.repeat} in "
          f"alternating rounds "
          f"(OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')})")
    ref = rows[0][1]
    for name, sec, build_s in rows:
        print(f"  {name:15s} {sec * 1e3:7.2f} ms/step  {ref / sec:5.2f}x graphc fused's speed"
              f"   (build + first step {build_s:.1f} s)")


if __name__ == "__main__":
    main()
