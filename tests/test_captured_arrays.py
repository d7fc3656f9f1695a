"""NumPy arrays a jitted function closes over (or reads as globals) are captured when it is
traced, as jax.jit bakes in constants: values and gradients against NumPy, the IR shows
them as named ``const`` inputs, later changes to the caller's array do not leak in, and
arrays that cannot be captured are one-line errors."""
import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.ir import DTypeError, ShapeError

RNG = np.random.default_rng(0)
W_GLOBAL = RNG.standard_normal((3, 4))


def _layer(w, b):
    """A closure over two arrays, as a user would write a fixed linear map."""
    def f(x):
        return gc.tanh(w @ x + b)
    return f


def test_closed_over_arrays_match_numpy_values_and_gradients():
    w, b, x = RNG.standard_normal((3, 4)), RNG.standard_normal(3), RNG.standard_normal(4)
    f = _layer(w, b)
    np.testing.assert_allclose(gc.jit(f)(x), np.tanh(w @ x + b), rtol=1e-12)
    g = gc.grad(lambda v: gc.sum(f(v) * f(v)))(x)
    t = np.tanh(w @ x + b)
    np.testing.assert_allclose(g, w.T @ (2 * t * (1 - t * t)), rtol=1e-10, atol=1e-12)


def test_globals_are_captured_and_take_the_arguments_dtype():
    x = RNG.standard_normal(4).astype(np.float32)
    y = gc.jit(lambda v: W_GLOBAL @ v)(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, W_GLOBAL.astype(np.float32) @ x, rtol=1e-5)


def test_the_ir_names_captured_inputs_and_one_array_is_one_input():
    w, b = np.ones((2, 3)), np.zeros(2)
    f = gc.jit(lambda x: gc.relu(w @ x + b) + w @ x)
    text = f.lower(np.ones(3))
    assert "input[role='const']  # w" in text and "input[role='const']  # b" in text
    assert text.count("role='const'") == 2
    consts = f.captured((np.ones(3),))
    assert [c.shape for c in consts] == [(2, 3), (2,)]


def test_values_are_baked_in_when_traced():
    b = np.array([1.0, 2.0])
    f = gc.jit(lambda x: x * b)
    np.testing.assert_array_equal(f(np.ones(2)), [1.0, 2.0])
    b[:] = 7.0
    np.testing.assert_array_equal(f(np.ones(2)), [1.0, 2.0])   # as jax.jit: traced once
    np.testing.assert_array_equal(gc.jit(lambda x: x * b)(np.ones(2)), [7.0, 7.0])


def test_temporary_arrays_made_in_the_function_stay_distinct():
    """Each temporary is its own input, even when Python reuses a freed array's id."""
    f = gc.jit(lambda x: x * np.full(3, 2.0) + x * np.full(3, 5.0) - np.arange(3.0))
    np.testing.assert_array_equal(f(np.ones(3)), [7.0, 6.0, 5.0])


def test_unnamed_arrays_get_const_names():
    table = {"scale": np.array([2.0, 3.0])}
    text = gc.jit(lambda x: x * table["scale"]).lower(np.ones(2))
    assert "input[role='const']  # const0" in text


def test_value_and_grad_differentiates_arguments_only():
    c = np.array([1.0, -2.0, 0.5])
    value, grads = gc.value_and_grad(lambda x, y: gc.sum(x * y * c), argnums=(0, 1))(
        np.ones(3), np.full(3, 2.0))
    assert value == pytest.approx(np.sum(2.0 * c))
    np.testing.assert_allclose(grads[0], 2.0 * c)
    np.testing.assert_allclose(grads[1], c)


def test_arrays_that_cannot_be_captured_are_clear_errors():
    s = np.array(["a", "b"])
    with pytest.raises(DTypeError, match=r"shape \(2,\) and dtype <U1"):
        gc.jit(lambda x: x * s)(np.ones(2))
    w = np.ones((2, 3))
    with pytest.raises(ShapeError, match=r"operands %0 x: \(4,\), %\d+ w: \(2, 3\)"):
        gc.jit(lambda x: x + w)(np.ones(4))

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x) * np.array([1.0, 2.0])

    with pytest.raises(ShapeError, match="register_buffer"):
        gc.compile(Scaled(), (4, 3))(np.ones((4, 3), np.float32))
