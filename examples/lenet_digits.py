"""The lecture's LeNet (PyTorch tutorial style) on scikit-learn's 8x8 digits.

conv -> relu -> max-pool twice, ``x.view(-1, n)``, then three Linear layers. The 8x8
images use 3x3 convolutions with padding 1 (8x8 -> pool 4x4 -> pool 2x2). SGD with
momentum, its rate annealed to zero over the epochs (cosine): at a constant rate the loss
kept spiking late in training, so the final accuracy (0.93-0.976 across runs) hung on
float rounding; annealed, float32 and float64 runs end within one test digit of each
other.

    python examples/lenet_digits.py [--epochs 30] [--no-fuse] [--dtype float64]
"""
import argparse
import time

import numpy as np

import graphc as gc

F = gc.nn.functional


class Net(gc.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = gc.nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = gc.nn.Conv2d(6, 16, 3, padding=1)
        self.fc1 = gc.nn.Linear(16 * 2 * 2, 120)
        self.fc2 = gc.nn.Linear(120, 84)
        self.fc3 = gc.nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, self.num_flat_features(x))
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)

    def num_flat_features(self, x):
        size = x.size()[1:]   # all dimensions except the batch dimension
        num_features = 1
        for s in size:
            num_features *= s
        return num_features


def load(seed=0, dtype="float32"):
    xtr, ytr, xte, yte = gc.datasets.load_digits(seed=seed, dtype=dtype)
    return xtr.reshape(-1, 1, 8, 8), ytr, xte.reshape(-1, 1, 8, 8), yte


def train(epochs=30, batch_size=32, lr=0.03, fuse=True, dtype="float32", seed=0, verbose=True):
    """Returns (test accuracy, per-epoch mean losses, compiled model)."""
    gc.manual_seed(seed)
    xtr, ytr, xte, yte = load(seed, dtype)
    model = gc.compile(Net(), input_shape=(None, 1, 8, 8), loss="cross_entropy",
                       optimizer=gc.optim.SGD(lr=lr, momentum=0.9), fuse=fuse, dtype=dtype)
    schedule = gc.schedules.CosineAnnealingLR(model, T_max=epochs)
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        losses = [model.train_step(xb, yb)
                  for xb, yb in gc.datasets.batches(xtr, ytr, batch_size, rng=rng)]
        history.append(float(np.mean(losses)))
        schedule.step()
        if verbose:
            print(f"epoch {epoch + 1:3d}  loss {history[-1]:.4f}  "
                  f"({(time.perf_counter() - t0) * 1e3:.1f} ms)")
    accuracy = float(np.mean(model(xte).argmax(axis=1) == yte))
    if verbose:
        print(f"test accuracy: {accuracy:.4f} on {len(yte)} held-out digits")
    return accuracy, history, model


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--no-fuse", action="store_true")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args()
    train(args.epochs, fuse=not args.no_fuse, dtype=args.dtype)
