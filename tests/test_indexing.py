"""Tensor indexing (basic: ints, slices, ..., None) and gc.where, against NumPy: values
and gradients, through gc.jit/gc.grad and in a compiled model whose batch axis is
symbolic; bad indices are one-line ShapeErrors naming the axis and shape."""
import numpy as np
import pytest

import graphc as gc

X = np.random.default_rng(0).standard_normal((4, 5, 6))

KEYS = [np.s_[1], np.s_[-1], np.s_[:, 2], np.s_[..., 1:4], np.s_[::2, ::-1],
        np.s_[1:3, None, 2, -2:], np.s_[None], np.s_[:, :, ::-2], np.s_[3, 4, 5],
        np.s_[..., None], np.s_[1, ..., 2], np.s_[np.int64(2)], np.s_[-100:100, 1:-1],
        np.s_[:]]


@pytest.mark.parametrize("key", KEYS, ids=[repr(k) for k in KEYS])
def test_indexing_matches_numpy_values_and_gradients(key):
    y = gc.jit(lambda a: a[key])(X)
    assert np.shape(y) == X[key].shape
    np.testing.assert_allclose(y, X[key], rtol=0, atol=0)
    g = gc.grad(lambda a: gc.sum(gc.sin(a[key]) * a[key]))(X)
    want = np.zeros_like(X)
    want[key] = np.cos(X[key]) * X[key] + np.sin(X[key])
    np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)


def test_overlapping_slices_accumulate_gradients():
    g = gc.grad(lambda a: gc.sum(a[1:4] * 2.0) + gc.sum(a[::2]))(X[0, 0])
    want = np.zeros(6)
    want[1:4] += 2.0
    want[::2] += 1.0
    np.testing.assert_allclose(g, want)


class FirstFeatures(gc.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = gc.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x[:, 2:10:2]) + x[:, None, 0].expand(-1, 3) * x[..., -1:]


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_slices_of_a_batch_in_a_compiled_model(fuse):
    gc.manual_seed(0)
    m = gc.compile(FirstFeatures(), input_shape=(None, 12), loss="mse", dtype="float64",
                   fuse=fuse)
    p = m.parameters()
    w, b = p["fc.weight"], p["fc.bias"]
    for batch in (5, 2):
        x = np.random.default_rng(batch).standard_normal((batch, 12))
        y = np.random.default_rng(batch + 1).standard_normal((batch, 3))
        h = x[:, 2:10:2]
        out = h @ w.T + b + x[:, None, 0] * x[..., -1:]
        np.testing.assert_allclose(m(x), out, rtol=1e-12)
        d = 2 * (out - y) / out.size
        grads = m.gradients(x, y)
        np.testing.assert_allclose(grads["fc.weight"], d.T @ h, rtol=1e-10)
        np.testing.assert_allclose(grads["fc.bias"], d.sum(0), rtol=1e-10)


@pytest.mark.parametrize("key,message", [
    (np.s_[4], "index 4 is out of range for axis 0 of (4, 5, 6)"),
    (np.s_[:, 2:2], "slice 2:2:None of axis 1 (extent 5) selects nothing"),
    (np.s_[..., ...], "only have one ellipsis"),
    (np.s_[0, 0, 0, 0], "too many indices (4) for shape (4, 5, 6)"),
    (np.s_[[0, 1], [0, 1]], "one integer array beside slices"),
    (np.s_[1.5], "not float indices"),
])
def test_bad_indices_are_shape_errors(key, message):
    with pytest.raises(gc.ShapeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gc.jit(lambda a: a[key])(X)


def test_the_batch_axis_is_taken_whole():
    class Bad(gc.nn.Module):
        def forward(self, x):
            return x[0]
    with pytest.raises(gc.ShapeError, match=r"axis 0 of \(N, 3\) is the batch axis"):
        gc.compile(Bad(), input_shape=(None, 3))(np.ones((2, 3)))


# ------------------------------------------------------------------ where
def test_where_with_a_comparison_mask_values_and_gradients():
    x = X[0]
    np.testing.assert_allclose(gc.jit(lambda a: gc.where(a > 0, a, 0.0))(x),
                               np.where(x > 0, x, 0.0))
    ga, gb = gc.grad(lambda a, b: gc.sum(gc.where(a > b, a * a, gc.sin(b))),
                     argnums=(0, 1))(x, x[::-1].copy())
    mask = x > x[::-1]
    np.testing.assert_allclose(ga, np.where(mask, 2 * x, 0.0))
    np.testing.assert_allclose(gb, np.where(mask, 0.0, np.cos(x[::-1])))


def test_where_broadcasts_and_takes_an_integer_condition():
    cond = np.array([1, 0, 2, 0, 0, -1], np.int64)
    b = np.arange(5.0).reshape(5, 1)
    got = gc.jit(lambda c, a, bb: gc.where(c, a, bb))(cond, X[0], b)
    np.testing.assert_allclose(got, np.where(cond != 0, X[0], b))
    gb = gc.grad(lambda a, bb: gc.sum(gc.where(a < 0, 2.0, bb)), argnums=1)(X[0], b)
    np.testing.assert_allclose(gb, (X[0] >= 0).sum(axis=1, keepdims=True).astype(float))


def test_tensor_where_method_is_torch_argument_order():
    x = X[1]
    np.testing.assert_allclose(gc.jit(lambda a: a.where(a < 0, -1.0))(x),
                               np.where(x < 0, x, -1.0))


# ------------------------------------------------------------------ reductions' aliases
def test_reductions_take_numpy_spellings_as_pytorch_does():
    x = X[0]
    np.testing.assert_allclose(gc.jit(lambda a: a.mean(axis=1, keepdims=True))(x),
                               x.mean(axis=1, keepdims=True))
    np.testing.assert_allclose(gc.jit(lambda a: gc.sum(a, axis=0))(x), x.sum(axis=0))
    np.testing.assert_allclose(gc.jit(lambda a: gc.amax(a, axis=(0, 1)))(x), x.max())
    with pytest.raises(gc.ShapeError, match="dim or its alias axis, not both"):
        gc.jit(lambda a: gc.sum(a, 0, axis=1))(x)


@pytest.mark.parametrize("dim", [0, 1, -1, -2])
def test_softmax_and_log_softmax_along_any_dim(dim):
    def sm(x):
        e = np.exp(x - x.max(axis=dim, keepdims=True))
        return e / e.sum(axis=dim, keepdims=True)

    np.testing.assert_allclose(gc.jit(lambda a: gc.softmax(a, dim))(X), sm(X), rtol=1e-12)
    np.testing.assert_allclose(gc.jit(lambda a: gc.log_softmax(a, dim=dim))(X),
                               np.log(sm(X)), rtol=1e-12)
    w = np.cos(X)      # d/dx sum(w * softmax): s * (w - sum(w s)) along dim
    g = gc.grad(lambda a, ww: gc.sum(gc.softmax(a, dim) * ww))(X, w)
    s = sm(X)
    np.testing.assert_allclose(g, s * (w - (w * s).sum(axis=dim, keepdims=True)), rtol=1e-10,
                               atol=1e-14)
    with pytest.raises(gc.ShapeError, match=r"dim 3 is out of range for shape \(4, 5, 6\)"):
        gc.jit(lambda a: gc.softmax(a, 3))(X)


# ------------------------------------------------------------------ cat / stack
def test_cat_and_stack_match_numpy_values_and_gradients():
    rng = np.random.default_rng(3)
    a, b, c = rng.normal(size=(2, 3)), rng.normal(size=(2, 5)), rng.normal(size=(2, 1))
    np.testing.assert_allclose(gc.jit(lambda x, y, z: gc.cat([x, y, z], dim=1))(a, b, c),
                               np.concatenate([a, b, c], 1))
    np.testing.assert_allclose(gc.jit(lambda x, y: gc.cat((x, y)))(a, a * 2),
                               np.concatenate([a, a * 2]))
    np.testing.assert_allclose(gc.jit(lambda x, y: gc.stack([x, y], dim=-1))(a, a * 2),
                               np.stack([a, a * 2], -1))
    w = rng.normal(size=(2, 9))
    ga, gb, gc_ = gc.grad(lambda x, y, z, ww: gc.sum(gc.sin(gc.cat([x, y, z], -1)) * ww),
                          argnums=(0, 1, 2))(a, b, c, w)
    full = np.cos(np.concatenate([a, b, c], 1)) * w
    np.testing.assert_allclose(ga, full[:, :3])
    np.testing.assert_allclose(gb, full[:, 3:8])
    np.testing.assert_allclose(gc_, full[:, 8:])


class Skip(gc.nn.Module):
    """A DenseNet-style skip: the input joined to a layer's output along the features."""

    def __init__(self):
        super().__init__()
        self.fc = gc.nn.Linear(4, 3)
        self.out = gc.nn.Linear(7, 2)

    def forward(self, x):
        return self.out(gc.cat([x, gc.tanh(self.fc(x))], dim=1))


def test_cat_of_batched_features_in_a_compiled_model():
    gc.manual_seed(0)
    m = gc.compile(Skip(), input_shape=(None, 4), loss="mse", dtype="float64")
    p = m.parameters()
    x = np.random.default_rng(1).normal(size=(5, 4))
    y = np.zeros((5, 2))
    h = np.concatenate([x, np.tanh(x @ p["fc.weight"].T + p["fc.bias"])], 1)
    out = h @ p["out.weight"].T + p["out.bias"]
    np.testing.assert_allclose(m(x), out, rtol=1e-12)
    np.testing.assert_allclose(m.gradients(x, y)["out.weight"], (2 * out / out.size).T @ h,
                               rtol=1e-10)


def test_cat_errors_name_the_shapes():
    a = np.ones((2, 3))
    with pytest.raises(gc.ShapeError, match=r"cat: shapes \(2, 3\), \(4, 2\) differ outside "
                                            r"dim 0"):
        gc.jit(lambda x, y: gc.cat([x, y]))(a, np.ones((4, 2)))
    with pytest.raises(gc.ShapeError, match="dim 0 is the batch axis"):
        gc.compile(type("Bad", (gc.nn.Module,), {"forward": lambda s, x: gc.cat([x, x])})(),
                   input_shape=(None, 3))(a)
