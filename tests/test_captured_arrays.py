"""NumPy arrays a jitted function closes over (or reads as globals) are captured when it is
traced, as jax.jit bakes in constants: values and gradients against NumPy, the IR shows
them as named ``const`` inputs, later changes to the caller's array do not leak in, and
arrays that cannot be captured are one-line errors."""
import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.ir import DTypeError, ShapeError
from oracles import central_difference

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


def test_operators_between_an_array_and_a_tensor_are_traced():
    """arr + t, arr @ t, arr < t, arr ** t with the array on the left: NumPy hands them to
    the Tensor, which traces them as the reflected operators (values and gradients)."""
    c, w = RNG.uniform(0.5, 2.0, (3, 4)), RNG.standard_normal((2, 3))
    x = RNG.standard_normal((3, 4))

    def f(a):
        return ((c + a) * (c - a) / (c + 3.0) + (w @ a).sum(0) + (c < a) + c ** a
                + np.float64(2.0) * a + np.float64(2.0) ** a)
    want = ((c + x) * (c - x) / (c + 3.0) + (w @ x).sum(0) + (c < x) + c ** x + 2.0 * x
            + 2.0 ** x)
    np.testing.assert_allclose(gc.jit(f)(x), want, rtol=1e-12)
    g = gc.grad(lambda a: gc.sum(f(a)))(x)
    num = central_difference(lambda v: float(np.sum(f(v["x"]))), {"x": x}, "x")
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-6)


def test_numpy_functions_on_tensors_are_one_line_errors():
    x = np.ones((3, 4))
    cases = [(lambda a: np.exp(a), "np.exp cannot take a traced Tensor: use gc.exp(...) or "
                                   "x.exp(...)"),
             (lambda a: np.sum(a, axis=0), "np.sum cannot take a traced Tensor: use gc.sum(...)"),
             (lambda a: np.concatenate([a, a]), "use gc.concatenate(...)"),
             (lambda a: np.linalg.norm(a), "np.norm cannot take a traced Tensor"),
             (lambda a: x.copy().__iadd__(a), "np.add(..., out=): a NumPy array cannot hold"),
             (lambda a: (-x) ** a, "base ** tensor with an array (3, 4) of dtype float64"),
             (lambda a: 0 ** a, "0 ** tensor: the base must be a positive constant")]
    for fn, needle in cases:
        with pytest.raises(gc.OpError) as info:
            gc.jit(fn)(x)
        assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_len_and_iteration_follow_dim_0():
    x = RNG.standard_normal((3, 4))
    first, second, third = gc.jit(lambda a: tuple(r * len(a) for r in a))(x)
    np.testing.assert_allclose(np.stack([first, second, third]), x * 3)
    np.testing.assert_allclose(gc.grad(lambda a: gc.sum(sum(r * r for r in a)))(x), 2 * x)

    class Rows(nn.Module):
        def forward(self, a):
            return a * len(a)
    with pytest.raises(ShapeError, match=r"len\(\) of \(N, 4\): the batch dimension has no "
                                         r"size while tracing"):
        gc.compile(Rows(), input_shape=(None, 4))(x)
    with pytest.raises(ShapeError, match="len.. of a 0-d tensor"):
        gc.jit(lambda a: len(a.sum()))(x)
    # iterable now, a lone tensor must still not pass for a list of tensors
    for join in (gc.cat, gc.stack):
        with pytest.raises(ShapeError, match="takes a list or tuple of tensors, got a single "
                                             "Tensor"):
            gc.jit(lambda a: join(a, 0))(x)
