"""End to end: the lecture example, compiled MLP gradients vs the interpreter, training."""
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc.ir import interpret
from oracles import assert_close

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def lecture_f(x1, x2):
    return gc.log(x1) + x1 * x2 - gc.sin(x2)


def test_lecture_reverse_mode_table():
    # ln 2 + 2*5 - sin 5 and its partials 1/x1 + x2, x1 - cos x2
    assert gc.jit(lecture_f)(2.0, 5.0) == pytest.approx(np.log(2) + 10 - np.sin(5), rel=1e-12)
    g1, g2 = gc.grad(lecture_f, argnums=(0, 1))(2.0, 5.0)
    assert g1 == pytest.approx(5.5, rel=1e-12)
    assert g2 == pytest.approx(2.0 - np.cos(5.0), rel=1e-12)
    assert round(float(g2), 3) == 1.716
    value, (h1, h2) = gc.value_and_grad(lecture_f, argnums=(0, 1))(2.0, 5.0)
    assert value == pytest.approx(11.652071455, rel=1e-9) and (h1, h2) == (g1, g2)


def test_grad_of_array_function_matches_finite_differences(rng):
    def f(w, x):
        return gc.sum(gc.tanh(x @ w) ** 2.0)

    w, x = rng.normal(size=(3, 2)), rng.normal(size=(4, 3))
    gw = gc.grad(f)(w, x)
    eps = 1e-6
    fd = np.zeros_like(w)
    for i in np.ndindex(w.shape):
        wp, wm = w.copy(), w.copy()
        wp[i] += eps
        wm[i] -= eps
        fd[i] = (np.sum(np.tanh(x @ wp) ** 2) - np.sum(np.tanh(x @ wm) ** 2)) / (2 * eps)
    assert_close(gw, fd, 1e-7)


class MLP(gc.nn.Module):
    def __init__(self, act):
        super().__init__()
        self.fc1 = gc.nn.Linear(6, 5)
        self.fc2 = gc.nn.Linear(5, 4)
        self.fc3 = gc.nn.Linear(4, 3)
        self.act = act

    def forward(self, x):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


@pytest.mark.parametrize("act,loss", [(gc.nn.functional.relu, "cross_entropy"),
                                      (gc.nn.functional.sigmoid, "mse"),
                                      (gc.nn.functional.tanh, "bce_with_logits")])
def test_compiled_mlp_gradients_match_interpreter(act, loss, rng):
    gc.manual_seed(3)
    m = gc.compile(MLP(act), input_shape=(None, 6), loss=loss, dtype="float64")
    for batch in (1, 7):
        x = rng.normal(size=(batch, 6))
        y = rng.integers(0, 3, size=batch) if loss == "cross_entropy" else \
            rng.uniform(size=(batch, 3))
        grads = m.gradients(x, y)
        graph = m._graph("gradients")
        inputs = {"x": x, "y": y, **m._graph_parameters()}   # the graphs' layout
        ref = interpret(graph, inputs)
        assert m.loss(x, y) == pytest.approx(float(ref[0]), rel=1e-12)
        for (name, g), r in zip(grads.items(), ref[1:]):
            assert_close(g, m._public(name, r), 1e-9, what=f"{loss} batch {batch} grad {name}")
        assert_close(m(x), interpret(m._graph("forward"), {"x": x, **m._graph_parameters()})[0],
                     1e-12, what="forward")


def test_train_step_is_sgd_on_compiled_gradients(rng):
    gc.manual_seed(4)
    m = gc.compile(MLP(gc.nn.functional.relu), input_shape=(None, 6), loss="cross_entropy",
                   optimizer=gc.optim.SGD(lr=0.3), dtype="float64")
    x, y = rng.normal(size=(5, 6)), rng.integers(0, 3, size=5)
    before, grads, want = m.parameters(), m.gradients(x, y), m.loss(x, y)
    loss = m.train_step(x, y)           # the loss at the parameters before the update
    assert loss == pytest.approx(want, rel=1e-12)
    assert m.loss(x, y) < want
    for name, p in m.parameters().items():
        assert_close(p, before[name] - 0.3 * grads[name], 1e-12, what=name)


def test_mlp_learns_digits_to_95_percent():
    from mlp_digits import train
    accuracy, history = train(epochs=30, seed=0, verbose=False)
    assert history[-1] < history[0] / 5
    assert accuracy >= 0.95


def test_attention_example_learns_digits():
    """examples/attention_digits.py: slices, batched products, softmax, LayerNorm, GELU,
    Adam, end to end on real data."""
    from attention_digits import train
    accuracy, history = train(verbose=False)
    assert history[-1] < history[0] / 10
    assert accuracy >= 0.93


def test_regression_example_fits_a_smooth_function():
    from regression_relu import fit
    pulse_err, fit_err = fit(verbose=False)
    assert pulse_err < 1e-12
    assert fit_err < 0.005


def test_parameters_round_trip_and_pytorch_layouts():
    gc.manual_seed(0)
    m = gc.compile(MLP(gc.nn.functional.relu), input_shape=(None, 6), dtype="float32")
    params = m.parameters()
    assert params["fc1.weight"].shape == (5, 6) and params["fc1.bias"].shape == (5,)
    new = {k: np.full_like(v, 0.5) for k, v in params.items()}
    m.load_parameters(new)
    assert all(np.all(v == 0.5) for v in m.parameters().values())


def test_output_shape_is_what_calling_the_model_returns():
    net = gc.nn.Sequential(gc.nn.Conv2d(1, 3, 3), gc.nn.ReLU(), gc.nn.MaxPool2d(2))
    m = gc.compile(net, input_shape=(None, 1, 8, 8), dtype="float32")
    assert m.output_shape == ("N", 3, 3, 3)
    out = m(np.ones((5, 1, 8, 8), np.float32))
    assert out.shape == (5, *m.output_shape[1:])
