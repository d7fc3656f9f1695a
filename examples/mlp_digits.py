"""Train a 64-32-10 MLP with SGD on scikit-learn's 8x8 digits; print loss and accuracy.

    python examples/mlp_digits.py [--epochs 30] [--no-fuse] [--dtype float64]
"""
import argparse
import time

import numpy as np

import graphc as gc


class MLP(gc.nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.fc1 = gc.nn.Linear(64, hidden)
        self.fc2 = gc.nn.Linear(hidden, 10)

    def forward(self, x):
        return self.fc2(gc.nn.functional.relu(self.fc1(x)))


def train(epochs=30, batch_size=32, lr=0.05, fuse=True, dtype="float32", seed=0, verbose=True):
    """Returns (test accuracy, per-epoch losses)."""
    gc.manual_seed(seed)
    xtr, ytr, xte, yte = gc.datasets.load_digits(seed=seed, dtype=dtype)
    model = gc.compile(MLP(), input_shape=(None, 64), loss="cross_entropy",
                       optimizer=gc.optim.SGD(lr=lr, momentum=0.9), fuse=fuse, dtype=dtype)
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        losses = [model.train_step(xb, yb)
                  for xb, yb in gc.datasets.batches(xtr, ytr, batch_size, rng=rng)]
        history.append(float(np.mean(losses)))
        if verbose:
            print(f"epoch {epoch + 1:3d}  loss {history[-1]:.4f}  "
                  f"({(time.perf_counter() - t0) * 1e3:.1f} ms)")
    accuracy = float(np.mean(model(xte).argmax(axis=1) == yte))
    if verbose:
        print(f"test accuracy: {accuracy:.4f} on {len(yte)} held-out digits")
    return accuracy, history


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--no-fuse", action="store_true")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args()
    train(args.epochs, fuse=not args.no_fuse, dtype=args.dtype)
