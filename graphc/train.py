"""Training a spec on a bundled data set: progress bar, accuracy, checkpoint, loss curve.

>>> from graphc.spec import load_spec
>>> train_spec(load_spec("examples/mlp.toml"), epochs=5, out_dir="runs/mlp")  # doctest: +SKIP
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from graphc.ir import SpecError


def load_data(name, spec):
    """``(x_train, y_train, x_test, y_test)`` shaped for ``spec``'s input."""
    import graphc as gc
    if name != "digits":
        raise SpecError(f"unknown data set {name!r}; available: digits")
    xtr, ytr, xte, yte = gc.datasets.load_digits(dtype=spec.dtype)
    if math.prod(spec.input_shape) != xtr.shape[1]:
        raise SpecError(f"{spec.source}: input_shape {list(spec.input_shape)} does not fit the "
                        f"digits data ({xtr.shape[1]} features, e.g. [64] or [1, 8, 8])")
    shape = tuple(spec.input_shape)
    return xtr.reshape(-1, *shape), ytr, xte.reshape(-1, *shape), yte


def accuracy(model, x, y, batch=256) -> float:
    hits = 0
    for s in range(0, len(x), batch):
        hits += int((model(x[s:s + batch]).argmax(axis=1) == y[s:s + batch]).sum())
    return hits / len(x)


def train_spec(spec, data="digits", epochs=10, batch=None, out_dir="runs", target="cpu",
               fuse=True, out=None):
    """Train, print per-epoch loss and test accuracy, write ``checkpoint.npz``,
    ``losses.csv`` and (with matplotlib) ``loss_curve.png`` into ``out_dir``.
    Returns ``(test accuracy, per-epoch mean losses)``."""
    import graphc as gc
    from tqdm import tqdm
    out = out or sys.stdout
    if spec.loss != "cross_entropy":
        raise SpecError(f"{spec.source}: loss: training on {data} needs loss = "
                        f"'cross_entropy', got {spec.loss!r}")
    xtr, ytr, xte, yte = load_data(data, spec)
    model = spec.compile(target=target, fuse=fuse)
    classes = int(max(ytr.max(), yte.max())) + 1
    out_classes = model.output_shape[-1]
    if out_classes < classes:
        raise SpecError(f"{spec.source}: the model gives {out_classes} outputs per sample but "
                        f"{data} has {classes} classes: its last layer needs "
                        f"out_features = {classes}")
    batch = batch or spec.batch_size
    rng = np.random.default_rng(spec.seed)
    history = []
    print(f"training {spec.name} on {data}: {len(xtr)} train / {len(xte)} test samples, "
          f"batch {batch}, {epochs} epochs, {model.optimizer!r}", file=out)
    bar = tqdm(range(epochs), desc=spec.name, unit="epoch", file=sys.stderr,
               disable=None, leave=False)
    # batch norm needs two samples per training batch: a shorter last batch is skipped
    min_batch = model.min_train_batch
    if 0 < len(xtr) % batch < min_batch:
        print(f"note: the last batch of {len(xtr) % batch} sample(s) is skipped each epoch "
              f"(batch norm needs {min_batch} in training)", file=out)
    for epoch in bar:
        losses = [model.train_step(xb, yb)
                  for xb, yb in gc.datasets.batches(xtr, ytr, batch, rng=rng)
                  if len(xb) >= min_batch]
        history.append(float(np.mean(losses)))
        if not math.isfinite(history[-1]):
            raise gc.NumericError(f"epoch {epoch + 1}: the training loss is {history[-1]}; "
                                  f"lower the learning rate")
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        if epoch == 0 or epoch + 1 == epochs or (epoch + 1) % max(1, epochs // 5) == 0:
            tqdm.write(f"epoch {epoch + 1:>3}/{epochs}  loss {history[-1]:.4f}  "
                       f"test acc {accuracy(model, xte, yte):.3f}", file=out)
    bar.close()
    acc = accuracy(model, xte, yte)
    print(f"test accuracy: {acc:.4f} ({int(round(acc * len(xte)))}/{len(xte)})", file=out)
    os.makedirs(out_dir, exist_ok=True)
    ckpt = os.path.join(out_dir, "checkpoint.npz")
    np.savez(ckpt, **model.parameters(), **model.buffers())
    with open(os.path.join(out_dir, "losses.csv"), "w") as fh:
        fh.write("epoch,loss\n" + "".join(f"{i + 1},{v!r}\n" for i, v in enumerate(history)))
    print(f"wrote {ckpt} and {os.path.join(out_dir, 'losses.csv')}", file=out)
    png = _plot(history, os.path.join(out_dir, "loss_curve.png"), spec.name)
    print(f"wrote {png}" if png else "matplotlib is not installed; skipped loss_curve.png",
          file=out)
    return acc, history


def _plot(history, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(range(1, len(history) + 1), history, marker="o", markersize=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss")
    ax.set_title(f"{title}: training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
