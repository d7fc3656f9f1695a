"""LeNet-5 training step (batch 64, 1x28x28): median ms per step, graphc vs torch eager.

conv 5x5 6ch -> relu -> pool 2 -> conv 5x5 16ch -> relu -> pool 2 -> 120 -> 84 -> 10,
cross-entropy, SGD with momentum. Run with OpenBLAS at full speed:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_lenet.py

torch is compared only if it is importable (it is not a dependency).

On a busy 2-core machine OpenBLAS's own threads stall the small fully-connected matmuls
(~30 ms each instead of ~0.1 ms); ``OPENBLAS_NUM_THREADS=1`` avoids that. The printed
line says which setting was used.
"""
import argparse
import os
import time

import numpy as np

import graphc as gc

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


def _median_ms(step, warmup, repeat):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def bench_graphc(x, y, fuse, dtype, warmup, repeat):
    gc.manual_seed(0)
    t0 = time.perf_counter()
    m = gc.compile(LeNet(), input_shape=(None, 1, 28, 28), loss="cross_entropy",
                   optimizer=gc.optim.SGD(lr=0.01, momentum=0.9), fuse=fuse, dtype=dtype)
    m.train_step(x, y)
    compile_s = time.perf_counter() - t0
    return _median_ms(lambda: m.train_step(x, y), warmup, repeat), compile_s


def bench_torch(x, y, warmup, repeat):
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(256, 120), torch.nn.ReLU(),
        torch.nn.Linear(120, 84), torch.nn.ReLU(), torch.nn.Linear(84, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()
    return _median_ms(step, warmup, repeat)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-fuse", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 1, 28, 28)).astype(args.dtype)
    y = rng.integers(0, 10, args.batch)
    ms, compile_s = bench_graphc(x, y, not args.no_fuse, args.dtype, args.warmup, args.repeat)
    print(f"graphc LeNet train step, batch {args.batch}, {args.dtype}: {ms:.2f} ms/step "
          f"(median of {args.repeat}; compile + first step {compile_s:.1f} s; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')})")
    torch_ms = bench_torch(x, y, args.warmup, args.repeat)
    if torch_ms is None:
        print("torch: not installed, no comparison")
    else:
        print(f"torch eager: {torch_ms:.2f} ms/step ({torch_ms / ms:.2f}x graphc's time)")


if __name__ == "__main__":
    main()
