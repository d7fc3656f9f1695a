"""Real data that ships with installed packages (nothing downloads at run time)."""
from __future__ import annotations

import numpy as np


def load_digits(test_fraction: float = 0.25, seed: int = 0, dtype="float32"):
    """scikit-learn's 8x8 digits (1,797 images), scaled to [0, 1] and split.

    Returns ``(x_train, y_train, x_test, y_test)`` with ``x`` of shape (n, 64).

    >>> xtr, ytr, xte, yte = load_digits()
    >>> xtr.shape[1], int(ytr.max())
    (64, 9)
    """
    from sklearn.datasets import load_digits as _load

    data = _load()
    x = (data.data / 16.0).astype(dtype)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def batches(x, y, batch_size, shuffle=True, rng=None):
    """Yield ``(xb, yb)`` minibatches; the last may be short."""
    idx = np.arange(len(x))
    if shuffle:
        (rng or np.random.default_rng()).shuffle(idx)
    for start in range(0, len(x), batch_size):
        sel = idx[start:start + batch_size]
        yield x[sel], y[sel]
