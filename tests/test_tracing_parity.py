"""Traced code means what it means in PyTorch and NumPy: comparisons, NaN in max/min,
reductions over size-1 axes, dims out of range, and what cannot be traced says so.
NumPy is the oracle (PyTorch agrees on every case here)."""
import numpy as np
import pytest

import graphc as gc

F = gc.nn.functional
NAN = np.nan
X = np.array([[0.0, 1.0, 2.0], [1.0, -3.0, 1.0]])


def test_equality_is_elementwise():
    """`x == 1.0` used to be Python's False, baked into the graph as a constant."""
    got = gc.jit(lambda a: (gc.where(a == 1.0, 10.0, a), a * (a != 1.0), (a == a.T.T) * 2.0,
                            X == a))(X)
    want = (np.where(X == 1.0, 10.0, X), X * (X != 1.0), (X == X) * 2.0, (X == X) * 1.0)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    i = np.array([1, 2, 2])
    np.testing.assert_array_equal(gc.jit(lambda a: a == 2)(i), (i == 2).astype(np.int64))


def test_nan_propagates_through_max_and_min():
    v = np.array([[1.0, NAN, 0.0], [3.0, 4.0, 5.0]])
    fns = [lambda a: a.amax(), lambda a: a.max(), lambda a: a.amax(1), lambda a: a.amin(0),
           lambda a: gc.maximum(a, a[:, ::-1]), lambda a: gc.minimum(a[:, ::-1], a),
           lambda a: gc.relu(a), lambda a: a.max(1).values]
    refs = [np.max(v), np.max(v), np.max(v, 1), np.min(v, 0), np.maximum(v, v[:, ::-1]),
            np.minimum(v[:, ::-1], v), np.maximum(v, 0), np.max(v, 1)]
    for dtype in ("float64", "float32"):
        got = gc.jit(lambda a: tuple(f(a) for f in fns))(v.astype(dtype))
        for k, (g, w) in enumerate(zip(got, refs)):
            np.testing.assert_array_equal(g, w.astype(dtype), err_msg=f"case {k} {dtype}")


def test_reductions_over_size_one_axes_feed_other_reductions():
    """A keepdims reduction over an axis of extent 1 has its operand's shape; fusion put
    the next reduction in the same loop, and code generation failed with a KeyError."""
    x = np.array([[0.5, -1.0, 2.0, 0.25]])
    got = gc.jit(lambda a: (gc.exp(a).sum(0, keepdim=True).sum(),
                            a.max(0, keepdim=True).values.sum(),
                            gc.exp(a).sum(0, keepdim=True).sum(1)))(x)
    np.testing.assert_allclose(got[0], np.exp(x).sum(), rtol=1e-12)
    np.testing.assert_allclose(got[1], x.sum(), rtol=1e-12)
    np.testing.assert_allclose(got[2], np.exp(x).sum(1), rtol=1e-12)
    value, grad = gc.value_and_grad(lambda a: a.min(1, keepdim=True).values.sum())(x.T)
    assert value == pytest.approx(x.sum()) and np.array_equal(grad, np.ones_like(x.T))


def test_a_sum_of_libm_calls_keeps_nan():
    """'reassoc' on a float64 reduction loop let LLVM fold exp(log(x)) to x."""
    value, grad = gc.value_and_grad(lambda a: gc.exp(gc.log(a)).sum())(np.array([-2.0, 3.0]))
    assert np.isnan(value) and np.isnan(grad[0]) and grad[1] == pytest.approx(1.0)


@pytest.mark.parametrize("fn,text", [
    (lambda a: a.transpose(0, 2), "transpose: dim 2 is out of range for shape (2, 3)"),
    (lambda a: a.unsqueeze(5), "unsqueeze: dim 5 is out of range"),
    (lambda a: a.sum(1).transpose(0, 1), "transpose: dim 1 is out of range for shape (2,)"),
    (lambda a: a.sum(1).expand(-1, 3), "-1 (keep) only for its own dims"),
    (lambda a: a.permute(0, 0), "not a permutation"),
    (lambda a: a.flatten(1, 0), "start_dim 1 comes after end_dim 0"),
    (lambda a: a.squeeze(2), "squeeze: dim 2 is out of range"),
])
def test_dims_out_of_range_are_errors(fn, text):
    with pytest.raises(gc.ShapeError, match=text.replace("(", r"\(").replace(")", r"\)")):
        gc.jit(fn)(X)


def test_shape_methods_as_pytorch():
    got = gc.jit(lambda a: (a.permute(-1, 0), a.reshape(1, 2, 1, 3).squeeze((0, 2)),
                            a.sum().flatten(), a.transpose(-1, -2), a ** np.int64(2)))(X)
    want = (X.T, X, X.sum().reshape(1), X.T, X ** 2)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_what_cannot_be_traced_says_so():
    def g(x):
        return (x ** 2).sum()
    with pytest.raises(gc.OpError, match="cannot be called inside another traced function"):
        gc.jit(lambda x: gc.grad(g)(x))(X)
    with pytest.raises(gc.ShapeError, match="batch size .* not known while tracing"):
        class PerSample(gc.nn.Module):
            def forward(self, x):
                return x.sum(1) / x.shape[0]
        gc.compile(PerSample(), input_shape=(None, 3))
    with pytest.raises(gc.ShapeError, match="gc.compile"):
        gc.jit(gc.nn.Linear(3, 2))(X)


def test_captured_labels_are_int64():
    logits = X.astype(np.float32)
    value = gc.jit(lambda a: F.cross_entropy(a, np.array([2, 0])))(logits)
    want = -np.log(np.exp(X) / np.exp(X).sum(1, keepdims=True))[[0, 1], [2, 0]].mean()
    assert value == pytest.approx(want, rel=1e-6)
    with pytest.raises(gc.ShapeError, match="label 3 is out of range for 3 classes"):
        gc.jit(lambda a: F.cross_entropy(a, np.array([3, 0])))(logits)


def test_negative_zero_is_its_own_constant():
    """-0.0 == 0.0 in Python, so hash-consing merged the constants: 1 / -0.0 gave inf."""
    got = gc.jit(lambda a: 1.0 / gc.where(a > 0, 0.0, -0.0))(np.array([1.0, -1.0]))
    np.testing.assert_array_equal(got, [np.inf, -np.inf])


def _methods(a):
    """PyTorch's small Tensor methods; the same code runs on torch tensors."""
    return ((a.detach() * a).sum() + a.t().sum() + 2.0 * a.mT.sum() + a.reciprocal().sum()
            + a.clamp_min(0.0).sum() + a.clamp_max(1.0).sum() + a.masked_fill(a > 1, 0.0).sum()
            + a.add(a, alpha=2).sum() + a.sub(a.mul(3.0)).div(2.0).sum() + a.rsqrt().abs().sum()
            + a.clone().contiguous().exp().sum())


def test_small_tensor_methods_match_autograd():
    torch = pytest.importorskip("torch")
    x = np.array([[1.0, 2.5, 3.0], [0.5, 2.0, 1.5]])
    value, grad = gc.value_and_grad(_methods)(x)
    xt = torch.tensor(x, requires_grad=True)
    want = _methods(xt)
    want.backward()
    assert value == pytest.approx(want.item(), rel=1e-12)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-12)
    assert gc.jit(lambda a: a.numel() * a.sign())(x).max() == 6.0
    with pytest.raises(gc.ShapeError, match="item"):
        gc.jit(lambda a: a.sum().item())(x)


def test_std_has_a_zero_gradient_where_the_variance_is_zero():
    """sqrt's infinite derivative at 0 times zero deviations was NaN; PyTorch gives 0."""
    x = np.array([[1.0, 1.0, 1.0], [1.0, 3.0, 2.0], [1.0, NAN, 2.0]])
    value, grad = gc.value_and_grad(lambda a: a.std(1).sum())(x)
    np.testing.assert_array_equal(grad[0], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(grad[1], [-0.5, 0.5, 0.0], atol=1e-12)
    assert np.isnan(value) and np.isnan(grad[2]).all()     # NaN in, NaN out


def test_max_pooling_keeps_nan_and_routes_its_gradient_to_the_first_one():
    x = np.array([[1, NAN, 3, -2], [0.5, 2, -np.inf, np.inf], [NAN, NAN, 1, 1],
                  [0, 1, 2, 3]], dtype=float).reshape(1, 1, 4, 4)
    pool = gc.nn.functional.max_pool2d
    np.testing.assert_array_equal(gc.jit(lambda a: pool(a, 2))(x).ravel(),
                                  [NAN, np.inf, NAN, 3.0])
    grad = gc.grad(lambda a: pool(a, 2).sum())(x).reshape(4, 4)
    want = np.zeros((4, 4))
    want[0, 1] = want[1, 3] = want[2, 0] = want[3, 3] = 1.0    # PyTorch's too
    np.testing.assert_array_equal(grad, want)
