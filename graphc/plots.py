"""Training curves as PNG (matplotlib is an optional dependency).

>>> from graphc.training import History
>>> h = History(epoch=[1, 2], loss=[1.0, 0.5], val_loss=[1.1, 0.7], val_accuracy=[0.5, 0.8])
>>> import os, tempfile; path = os.path.join(tempfile.mkdtemp(), "curve.png")
>>> plot_history(h, path) == path
True
"""
from __future__ import annotations

import os

from graphc.ir import GraphcError


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise GraphcError("plotting needs matplotlib: pip install matplotlib "
                          "(or pip install graphc[plots])") from None
    matplotlib.use("Agg", force=False)   # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def plot_history(history, path, title: str | None = None) -> str:
    """Write loss (and validation loss/accuracy when present) per epoch to ``path`` (PNG).

    ``history`` is a :class:`graphc.training.History` or its ``as_dict()``.
    """
    h = history.as_dict() if hasattr(history, "as_dict") else dict(history)
    if not h.get("loss"):
        raise GraphcError("plot_history: the history has no epochs to plot")
    plt = _pyplot()
    epochs = h.get("epoch") or list(range(1, len(h["loss"]) + 1))
    acc = [a for a in h.get("val_accuracy", []) if a is not None]
    fig, axes = plt.subplots(1, 2 if acc else 1, figsize=(10 if acc else 5, 3.5), squeeze=False)
    ax = axes[0][0]
    ax.plot(epochs, h["loss"], marker="o", label="train loss")
    if h.get("val_loss"):
        ax.plot(epochs[-len(h["val_loss"]):], h["val_loss"], marker="o", label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    if acc:
        ax2 = axes[0][1]
        ax2.plot(epochs[-len(acc):], acc, marker="o", color="tab:green", label="val accuracy")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(0, 1)
        ax2.legend()
        ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path


__all__ = ["plot_history"]
