"""The lecture's regression case: ReLUs as building blocks of any continuous function.

1. A pulse built by hand from 4 ReLUs: relu(s(x-a)) - relu(s(x-a)-1) - relu(s(x-b)) +
   relu(s(x-b)-1) is 0 outside [a, b+1/s] and 1 on [a+1/s, b]; checked exactly against
   its definition.
2. A two-layer ReLU network fitted with MSE to a smooth 1-D function (universal
   approximation); prints the final error.
"""
import numpy as np

import graphc as gc


def pulse(x, a=-0.5, b=0.5, s=10.0):
    r = gc.relu
    return r(s * (x - a)) - r(s * (x - a) - 1.0) - r(s * (x - b)) + r(s * (x - b) - 1.0)


def pulse_reference(x, a=-0.5, b=0.5, s=10.0):
    return np.clip(s * (x - a), 0, 1) - np.clip(s * (x - b), 0, 1)


class TwoLayer(gc.nn.Module):
    def __init__(self, hidden=64):
        super().__init__()
        self.hidden = gc.nn.Linear(1, hidden)
        self.out = gc.nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(gc.relu(self.hidden(x)))


def target(x):
    return np.sin(3 * x) + 0.3 * x ** 2


def fit(epochs=300, verbose=True, seed=0):
    """Returns (pulse max error, fitted network's mean squared error)."""
    xs = np.linspace(-2, 2, 401)
    pulse_err = float(np.max(np.abs(gc.jit(pulse)(xs) - pulse_reference(xs))))
    gc.manual_seed(seed)
    model = gc.compile(TwoLayer(), input_shape=(None, 1), loss="mse",
                       optimizer=gc.optim.SGD(lr=0.01, momentum=0.9), dtype="float64")
    x = xs.reshape(-1, 1)
    y = target(x)
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        for xb, yb in gc.datasets.batches(x, y, 16, rng=rng):
            loss = model.train_step(xb, yb)
        if verbose and (epoch + 1) % 50 == 0:
            print(f"epoch {epoch + 1:4d}  mse {model.loss(x, y):.5f}")
    err = model.loss(x, y)
    if verbose:
        print(f"pulse from 4 ReLUs: max error {pulse_err:.1e}")
        print(f"two-layer ReLU net fitted to sin(3x) + 0.3x^2 on [-2, 2]: final MSE {err:.5f}")
    return pulse_err, err


if __name__ == "__main__":
    fit()
