"""A small residual network with batch norm on scikit-learn's 8x8 digits.

stem conv 3x3 (16) -> BN -> relu, a residual block, a down-sampling residual block
(stride 2, 1x1 projection shortcut), global average pool, Linear. BatchNorm uses batch
statistics while training and its running statistics in ``model(x)`` (eval mode).

    python examples/resnet_digits.py [--epochs 10] [--no-fuse]
"""
import argparse
import time

import numpy as np

import graphc as gc

nn = gc.nn
F = gc.nn.functional


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + skip)          # the residual add


class ResNet(nn.Module):
    def __init__(self, width=16, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.pool = nn.AvgPool2d(4)        # 4x4 -> 1x1
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(self.flatten(self.pool(x)))


def train(epochs=10, batch_size=32, lr=0.05, fuse=True, dtype="float32", seed=0, verbose=True):
    """Returns (test accuracy, per-epoch mean losses, compiled model)."""
    gc.manual_seed(seed)
    xtr, ytr, xte, yte = gc.datasets.load_digits(seed=seed, dtype=dtype)
    xtr, xte = xtr.reshape(-1, 1, 8, 8), xte.reshape(-1, 1, 8, 8)
    model = gc.compile(ResNet(), input_shape=(None, 1, 8, 8), loss="cross_entropy",
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
        print(f"test accuracy: {accuracy:.4f} on {len(yte)} held-out digits (eval mode: "
              f"running statistics)")
    return accuracy, history, model


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--no-fuse", action="store_true")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args()
    train(args.epochs, fuse=not args.no_fuse, dtype=args.dtype)
