"""Weights the compiled graphs hold input-major, ``(in, out)`` (``gc.compile`` chooses
them: see ``CompiledModel._choose_input_major``): which are chosen, and that outside
the graphs every array keeps PyTorch's ``(out, in)`` layout."""
import numpy as np
import pytest

import graphc as gc
from graphc.checkpoint import load_checkpoint, save_checkpoint
from oracles import assert_close, central_difference


class TiedNet(gc.nn.Module):
    """One weight applied to the data and again to a hidden value: it needs dA."""

    def __init__(self):
        super().__init__()
        self.fc = gc.nn.Linear(4, 4)
        self.out = gc.nn.Linear(4, 2)

    def forward(self, x):
        return self.out(gc.nn.functional.relu(self.fc(gc.nn.functional.relu(self.fc(x)))))


def _mlp(opt=None):
    gc.manual_seed(5)
    net = gc.nn.Sequential(gc.nn.Flatten(), gc.nn.Linear(6, 5), gc.nn.Tanh(),
                           gc.nn.Linear(5, 3))
    return gc.compile(net, input_shape=(None, 2, 3), loss="cross_entropy",
                      optimizer=opt or gc.optim.SGD(lr=0.1, momentum=0.9), dtype="float64")


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return rng.normal(size=(7, 2, 3)), rng.integers(0, 3, size=7)


def test_only_weights_applied_to_parameter_free_values_are_input_major():
    m = _mlp()
    # the first weight multiplies the (flattened) data, the second a hidden value
    assert m._input_major == {"1.weight"}
    assert "meta input_major = ('1.weight',)" in m.ir("train")
    assert "f64[6, 5] = input[role='param']  # 1.weight" in m.ir("forward")
    tied = gc.compile(TiedNet(), input_shape=(None, 4), loss="cross_entropy",
                      optimizer=gc.optim.SGD(lr=0.1))
    assert tied._input_major == frozenset()
    assert gc.compile(gc.nn.Linear(3, 2), input_shape=(None, 3))._input_major == {"weight"}


def test_public_arrays_keep_pytorch_layout(batch):
    x, y = batch
    m = _mlp()
    params = m.parameters()
    assert params["1.weight"].shape == (5, 6) and params["1.weight"].flags.c_contiguous
    grads = m.gradients(x, y)
    assert grads["1.weight"].shape == (5, 6) and grads["1.weight"].flags.c_contiguous

    def loss(values):
        m.load_parameters(values)
        return m.loss(x, y)
    for name in ("1.weight", "3.weight"):
        assert_close(grads[name], central_difference(loss, params, name), 1e-6,
                     what=f"gradient of {name}")
    m.load_parameters(params)
    assert np.array_equal(m.parameters()["1.weight"], params["1.weight"])


def test_momentum_steps_and_state_in_pytorch_layout(batch):
    """SGD momentum (torch's rule: v = mu v + g, p -= lr v) from gradients() as oracle."""
    x, y = batch
    m = _mlp()
    p0, g0 = m.parameters(), m.gradients(x, y)
    m.train_step(x, y)
    p1, g1 = m.parameters(), m.gradients(x, y)
    m.train_step(x, y)
    p2, state = m.parameters(), m.optimizer_state()
    for name in p0:
        v1 = g0[name]
        v2 = 0.9 * v1 + g1[name]
        assert_close(p1[name], p0[name] - 0.1 * v1, 1e-12, what=f"{name} after step 1")
        assert_close(p2[name], p1[name] - 0.1 * v2, 1e-12, what=f"{name} after step 2")
        assert_close(state[f"{name}.momentum_buffer"], v2, 1e-12, what=f"{name} momentum")


def test_checkpoint_restores_input_major_state_before_any_step(batch, tmp_path):
    """A checkpoint loaded into a model that has not stepped yet creates the optimizer
    state from the file (PyTorch layout); the first step must read it input-major."""
    x, y = batch
    a = _mlp(gc.optim.Adam(lr=0.01))
    a.train_step(x, y)
    save_checkpoint(a, tmp_path / "a.npz")
    b = _mlp(gc.optim.Adam(lr=0.01))
    load_checkpoint(b, tmp_path / "a.npz")
    assert a.train_step(x, y) == b.train_step(x, y)
    for name, value in a.parameters().items():
        assert np.array_equal(b.parameters()[name], value), name
    for name, value in a.optimizer_state().items():
        assert np.array_equal(b.optimizer_state()[name], value), name
