"""Functions built from registry ops (clamp, var, std, logsumexp, amin, activations such
as silu and hardtanh, ``base ** x``, ``%`` and ``//``) and their Tensor-method spellings: values against
NumPy/SciPy formulas, gradients against central differences of those formulas, float32
against float64, the gradient at kinks against PyTorch's documented rules, and
everything against PyTorch autograd where it is installed.

The table's meaning is checked with the reference interpreter (no compile), and the
compiled code once for all its entries together: a new entry costs no new compile.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf as np_erf
from scipy.special import logsumexp as np_logsumexp

import graphc as gc
from graphc.ir import interpret
from graphc.jit import _signature
from graphc.spec import ACTIVATIONS
from oracles import assert_close, central_difference

F = gc.nn.functional
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
# 24 points, none within 0.03 of a kink (0, +-0.5, +-1, 1.5, 6 after the scaling below)
X = np.linspace(-7.3, 7.1, 24).reshape(2, 3, 4)
X[0, 0, 0] = -2.5


def _softplus(x):
    return np.logaddexp(0.0, x)


# name -> (graphc function, NumPy reference, PyTorch function of a torch tensor)
CASES = {
    "amin dim": (lambda x: gc.amin(x, dim=1), lambda x: x.min(1), lambda t: t.amin(1)),
    "min method axis": (lambda x: x.min(axis=(0, 2)), lambda x: x.min((0, 2)),
                        lambda t: t.amin((0, 2))),
    "max(dim).values, min(dim)[0]": (
        lambda x: x.max(1).values[:, None, :] + gc.min(x, 2, True)[0],
        lambda x: x.max(1)[:, None, :] + x.min(2, keepdims=True),
        lambda t: t.max(1).values[:, None, :] + torch_min(t, 2, True)[0]),
    "max of all, max(a, b)": (lambda x: x.max() + gc.max(x, x * 0.5),
                              lambda x: x.max() + np.maximum(x, x * 0.5),
                              lambda t: t.max() + torch_max(t, t * 0.5)),
    "var": (lambda x: gc.var(x, 1), lambda x: x.var(1, ddof=1), lambda t: t.var(1)),
    "var method keepdim": (lambda x: x.var((0, 2), keepdim=True, correction=0),
                           lambda x: x.var((0, 2), keepdims=True),
                           lambda t: t.var((0, 2), keepdim=True, correction=0)),
    "var unbiased=False": (lambda x: gc.var(x, -1, False), lambda x: x.var(-1),
                           lambda t: t.var(-1, unbiased=False)),
    "std all": (lambda x: gc.std(x), lambda x: x.std(ddof=1), lambda t: t.std()),
    "std method axis": (lambda x: x.std(axis=2, correction=2),
                        lambda x: x.std(2, ddof=2), lambda t: t.std(2, correction=2)),
    "logsumexp": (lambda x: gc.logsumexp(x, 1), lambda x: np_logsumexp(x, 1),
                  lambda t: t.logsumexp(1)),
    "logsumexp method keepdim": (lambda x: x.logsumexp((0, 2), keepdim=True),
                                 lambda x: np_logsumexp(x, (0, 2), keepdims=True),
                                 lambda t: t.logsumexp((0, 2), keepdim=True)),
    "clamp": (lambda x: gc.clamp(x, -0.5, 1.5), lambda x: np.clip(x, -0.5, 1.5),
              lambda t: t.clamp(-0.5, 1.5)),
    "clamp method min": (lambda x: x.clamp(min=0.5), lambda x: np.maximum(x, 0.5),
                         lambda t: t.clamp(min=0.5)),
    "clip max": (lambda x: gc.clip(x, max=-1.0), lambda x: np.minimum(x, -1.0),
                 lambda t: t.clip(max=-1.0)),
    "hardtanh": (lambda x: F.hardtanh(x), lambda x: np.clip(x, -1, 1),
                 lambda t: _tf().hardtanh(t)),
    "relu6": (lambda x: F.relu6(x), lambda x: np.clip(x, 0, 6), lambda t: _tf().relu6(t)),
    "silu": (F.silu, lambda x: x / (1 + np.exp(-x)), lambda t: _tf().silu(t)),
    "mish": (F.mish, lambda x: x * np.tanh(_softplus(x)), lambda t: _tf().mish(t)),
    "logsigmoid": (F.logsigmoid, lambda x: -_softplus(-x), lambda t: _tf().logsigmoid(t)),
    "softsign": (F.softsign, lambda x: x / (1 + np.abs(x)), lambda t: _tf().softsign(t)),
    "selu": (F.selu, lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(x)),
             lambda t: _tf().selu(t)),
    "abs()": (lambda x: abs(x) ** 0.5, lambda x: np.abs(x) ** 0.5, lambda t: t.abs() ** 0.5),
    "2 ** x": (lambda x: 2.0 ** (x * 0.5) + 0.5 ** x, lambda x: 2.0 ** (x * 0.5) + 0.5 ** x,
               lambda t: 2.0 ** (t * 0.5) + 0.5 ** t),
    "methods": (lambda x: x.square() + x.pow(3) * 0.01 - x.neg() + x.erf(),
                lambda x: x ** 2 + x ** 3 * 0.01 + x + np_erf(x),
                lambda t: t.square() + t.pow(3) * 0.01 - t.neg() + t.erf()),
    # no X is within 0.01 of a jump of these (x / 1.3, 2 / (x + 7.9), x / 0.7 near an
    # integer); // has no gradient (JAX's zero; PyTorch refuses it, hence the detach)
    "remainder, floor division": (
        lambda x: x % 1.3 + 2.0 % (x + 7.9) + (x // 0.7) * 0.25 + gc.remainder(x, -1.1),
        lambda x: (np.remainder(x, 1.3) + np.remainder(2.0, x + 7.9)
                   + np.floor_divide(x, 0.7) * 0.25 + np.remainder(x, -1.1)),
        # (PyTorch differentiates number % tensor only as tensor % tensor)
        lambda t: (t % 1.3 + (t * 0 + 2.0) % (t + 7.9) + (t.detach() // 0.7) * 0.25
                   + t.remainder(-1.1))),
    "softmax methods": (lambda x: x.softmax(1) + x.log_softmax(dim=0),
                        lambda x: (np.exp(x - np_logsumexp(x, 1, keepdims=True))
                                   + x - np_logsumexp(x, 0, keepdims=True)),
                        lambda t: t.softmax(1) + t.log_softmax(dim=0)),
}
NAMES = sorted(CASES)


def torch_max(*args):
    import torch
    return torch.max(*args)


def torch_min(*args):
    import torch
    return torch.min(*args)


def _tf():
    import torch
    return torch.nn.functional


def _interpreted(traced, *args):
    """``traced``'s outputs for ``args`` by the NumPy reference interpreter (no passes,
    no code generation): what the functions and their gradients mean."""
    graph = traced.build(_signature(args), [])
    return interpret(graph, list(args))


@pytest.fixture(scope="module")
def reference():
    """{name: (value, gradient)} per entry, float64, by the interpreter: one input each."""
    fns = [CASES[n][0] for n in NAMES]
    xs = [X] * len(NAMES)
    values = _interpreted(gc.jit(lambda *a: tuple(f(x) for f, x in zip(fns, a))), *xs)
    grads = _interpreted(gc.grad(lambda *a: sum(gc.sum(f(x)) for f, x in zip(fns, a)),
                                 argnums=tuple(range(len(NAMES)))), *xs)[1:]
    return {n: (v, g) for n, v, g in zip(NAMES, values, grads)}


@pytest.mark.parametrize("name", NAMES)
def test_values_and_gradients_match_numpy(name, reference):
    value, grad = reference[name]
    ref = CASES[name][1]
    assert_close(value, ref(X), rtol=1e-12, atol=1e-12, what=f"{name} value")
    numeric = central_difference(lambda v: float(np.sum(ref(v["x"]))), {"x": X}, "x")
    assert_close(grad, numeric, rtol=1e-6, atol=1e-7, what=f"{name} gradient")


def test_match_pytorch_autograd(reference):
    torch = pytest.importorskip("torch")
    for name in NAMES:
        t = torch.tensor(X, requires_grad=True)
        out = CASES[name][2](t)
        out.sum().backward()
        value, grad = reference[name]
        assert_close(value, out.detach().numpy(), rtol=1e-12, what=f"{name} value")
        assert_close(grad, t.grad.numpy(), rtol=1e-12, what=f"{name} gradient")


def test_compiled_float32_matches_the_reference(reference):
    """All entries on one float32 input, through every pass and the CPU code generator
    (fast float32 math included): values per entry, and the gradient of their sum."""
    fns = [CASES[n][0] for n in NAMES]
    x = X.astype(np.float32)
    values = gc.jit(lambda a: tuple(f(a) for f in fns))(x)
    grad = gc.grad(lambda a: sum(gc.sum(f(a)) for f in fns))(x)
    for name, value in zip(NAMES, values):
        assert value.dtype == np.float32
        assert_close(value, reference[name][0], rtol=2e-5, what=f"{name} value")
    assert grad.dtype == np.float32
    assert_close(grad, sum(reference[n][1] for n in NAMES), rtol=2e-5, what="gradient")


# ----------------------------------------------------------------- kinks and edge values

def test_gradients_at_the_bounds_follow_pytorch():
    """clamp passes the gradient at min and max (min <= x <= max); hardtanh and relu6
    do not (min < x < max); amin, maximum and minimum share it equally among ties."""
    x = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 6.0])
    g = gc.grad(lambda a: gc.sum(gc.clamp(a, -1.0, 1.0)))(x)
    np.testing.assert_array_equal(g, ((x >= -1) & (x <= 1)).astype(float))
    g = gc.grad(lambda a: gc.sum(F.hardtanh(a) + F.relu6(a)))(x)
    np.testing.assert_array_equal(g, ((x > -1) & (x < 1)) + ((x > 0) & (x < 6)))
    g = gc.grad(lambda a: gc.sum(gc.amin(a, dim=1)))(np.array([[1.0, 1.0, 2.0],
                                                                  [3.0, 0.0, 0.0]]))
    np.testing.assert_array_equal(g, [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    # maximum and minimum split the gradient on ties; elu's at 0 is alpha
    y = np.array([-2.0, 0.0, 1.0, 1.0, 2.0, 0.0])
    gx, gy = gc.grad(lambda a, b: gc.sum(gc.maximum(a, b) + gc.minimum(a, b) * 3.0),
                     argnums=(0, 1))(x, y)
    np.testing.assert_array_equal(gx, np.where(x == y, 2.0, np.where(x > y, 1.0, 3.0)))
    np.testing.assert_array_equal(gy, np.where(x == y, 2.0, np.where(x > y, 3.0, 1.0)))
    g = gc.grad(lambda a: gc.sum(F.elu(a, 0.7)))(np.array([-1.0, 0.0, 1.0]))
    np.testing.assert_allclose(g, [0.7 * np.exp(-1.0), 0.7, 1.0], rtol=1e-15)
    try:
        import torch
    except ImportError:
        return
    t = torch.tensor(x, requires_grad=True)
    (t.clamp(-1.0, 1.0).sum() * 2 + _tf().hardtanh(t).sum() + _tf().relu6(t).sum()).backward()
    g = gc.grad(lambda a: gc.sum(gc.clamp(a, -1.0, 1.0)) * 2 + gc.sum(F.hardtanh(a))
                + gc.sum(F.relu6(a)))(x)
    np.testing.assert_array_equal(g, t.grad.numpy())
    t, u = torch.tensor(x, requires_grad=True), torch.tensor(y, requires_grad=True)
    (torch.maximum(t, u) + torch.minimum(t, u) * 3.0 + _tf().elu(t, 0.7)).sum().backward()
    gx, gy = gc.grad(lambda a, b: gc.sum(gc.maximum(a, b) + gc.minimum(a, b) * 3.0
                                         + F.elu(a, 0.7)), argnums=(0, 1))(x, y)
    np.testing.assert_allclose(gx, t.grad.numpy(), rtol=1e-15)
    np.testing.assert_array_equal(gy, u.grad.numpy())


def test_clamp_with_tensor_bounds():
    """Bounds broadcast; the gradient goes to the bound where it is taken."""
    rng = np.random.default_rng(1)
    x, lo, hi = rng.normal(size=(3, 4)), rng.normal(size=(4,)) - 0.5, np.full((3, 1), 0.4)
    f = lambda a, b, c: gc.clamp(a, b, c)    # noqa: E731
    out = gc.jit(f)(x, lo, hi)
    np.testing.assert_array_equal(out, np.minimum(np.maximum(x, lo), hi))
    gx, glo, ghi = gc.grad(lambda a, b, c: gc.sum(f(a, b, c)), argnums=(0, 1, 2))(x, lo, hi)
    below, above = x < lo, np.maximum(x, lo) > hi
    np.testing.assert_array_equal(gx, ~below & ~above)
    np.testing.assert_array_equal(glo, (below & ~above).sum(0))
    np.testing.assert_array_equal(ghi, above.sum(1, keepdims=True))


def test_argmax_argmin_and_max_min_along_a_dim_follow_numpy():
    """First index of the extreme along dim (nan counts as it), as NumPy's argmax and
    PyTorch's; max/min along dim give (values, indices) read at that index, and the
    gradient of the values goes to that element alone."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 3, size=(4, 5, 3)).astype(np.float64)     # ties everywhere
    x[1, 2, 0], x[2, 1, 1], x[0, 3, 1] = np.nan, np.inf, -np.inf
    x[3, :, 2] = np.nan
    for dim, keep in ((0, False), (1, True), (-1, False)):
        outs = gc.jit(lambda a: (*a.max(dim, keep), *gc.min(a, dim, keepdim=keep),
                                 gc.argmax(a, dim, keep), a.argmin(dim, keepdim=keep)))(x)
        with np.errstate(invalid="ignore"):
            want = (np.max(x, dim, keepdims=keep), np.argmax(x, dim, keepdims=keep),
                    np.min(x, dim, keepdims=keep), np.argmin(x, dim, keepdims=keep),
                    np.argmax(x, dim, keepdims=keep), np.argmin(x, dim, keepdims=keep))
        for got, expected in zip(outs, want):
            np.testing.assert_array_equal(got, expected, err_msg=f"dim={dim}")
        assert outs[1].dtype == np.int64 and outs[4].dtype == np.int64
    assert gc.jit(lambda a: gc.argmax(a))(x) == np.argmax(x)
    g = gc.grad(lambda a: gc.sum(a.max(1).values))(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]]))
    np.testing.assert_array_equal(g, [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    with pytest.raises(gc.ShapeError, match=r"argmax: dim 0 of \(N, 3\) is the batch axis"):
        gc.compile(_ArgmaxOverBatch(), input_shape=(None, 3))


class _ArgmaxOverBatch(gc.nn.Module):
    def forward(self, x):
        return x.argmax(0).astype("float32")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_logsumexp_of_extreme_rows(dtype):
    inf = np.inf
    x = np.array([[1000.0, 1000.0], [-1000.0, -999.0], [-inf, -inf], [inf, 1.0],
                  [-inf, 2.0], [np.nan, 1.0]], dtype=dtype)
    with np.errstate(all="ignore"):
        expected = np_logsumexp(x.astype(np.float64), axis=1)
    out = gc.jit(lambda a: gc.logsumexp(a, 1))(x)
    np.testing.assert_allclose(out, expected, rtol=1e-6 if dtype == "float32" else 1e-15)
    g = gc.grad(lambda a: gc.sum(gc.logsumexp(a[:2], 1)))(x)
    softmax = np.exp(x[:2].astype(np.float64) - expected[:2, None])
    np.testing.assert_allclose(g[:2], softmax, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(g[2:], 0.0)


def test_var_over_the_batch_axis_of_a_compiled_model():
    """The count N - correction is read at run time: one model, several batch sizes."""
    class Spread(gc.nn.Module):
        def forward(self, x):
            return x.var(0, keepdim=True) + x.std(dim=(0, 1), unbiased=False) + x * 0.0

    m = gc.compile(Spread(), input_shape=(None, 3), loss=None, dtype="float64")
    rng = np.random.default_rng(2)
    for n in (2, 5, 9):
        x = rng.normal(size=(n, 3))
        np.testing.assert_allclose(m(x), x.var(0, ddof=1, keepdims=True) + x.std()
                                   + x * 0.0, rtol=1e-12)


def test_bad_arguments_give_one_line_errors():
    x = np.ones((2, 3))
    cases = [
        (lambda a: gc.clamp(a), gc.OpError, "give min, max or both"),
        (lambda a: gc.var(a, unbiased=True, correction=1), gc.OpError, "not both"),
        (lambda a: gc.var(a, correction=-1), gc.OpError, "correction must be"),
        (lambda a: 0.0 ** a, gc.OpError, "base must be a positive constant"),
        (lambda a: (-2) ** a, gc.OpError, "-2 ** tensor"),
        (lambda a: F.hardtanh(a, 1.0, -1.0), gc.OpError, "min_val 1.0 is greater"),
        (lambda a: gc.logsumexp(a, 2), gc.ShapeError, "dim 2 is out of range for shape (2, 3)"),
        (lambda a: gc.sum(a, dim="rows"), gc.ShapeError, "dim must be an int"),
        (lambda a: a.std(dim=1.5), gc.ShapeError, "dim must be an int"),
        (lambda a: a - a.max(1), gc.ShapeError, "give (values, indices), as in PyTorch: "
                                                 "take .values"),
        (lambda a: a.argmax((0, 1)), gc.ShapeError, "argmax: dim must be one int"),
    ]
    for fn, error, needle in cases:
        with pytest.raises(error) as info:
            gc.jit(fn)(x)
        assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)
    with pytest.raises(gc.OpError, match="min_val 2.0 is greater than max_val 1.0"):
        gc.nn.Hardtanh(2.0, 1.0)


# ----------------------------------------------------------------- modules

# every activation module a spec can name, and the parameterised ones, with their
# arguments; each is compared with the torch.nn module of the same name
MODULES = {"ReLU": (), "Sigmoid": (), "Tanh": (), "Softplus": (), "SiLU": (), "Mish": (),
           "LogSigmoid": (), "Softsign": (), "ReLU6": (), "SELU": (), "Hardtanh": (-0.5, 2.0),
           "ELU": (0.7,), "LeakyReLU": (0.2,), "GELU": ("tanh",)}


def test_every_spec_activation_is_compared():
    assert set(ACTIVATIONS.values()) <= set(MODULES)


def test_activation_modules_match_their_functions_and_pytorch():
    mods = [getattr(gc.nn, name)(*args) for name, args in MODULES.items()]
    outs = gc.jit(lambda x: tuple(m(x) for m in mods))(X)
    refs = {"SiLU": F.silu, "Mish": F.mish, "LogSigmoid": F.logsigmoid,
            "Softsign": F.softsign, "ReLU6": F.relu6, "SELU": F.selu,
            "Hardtanh": lambda a: F.hardtanh(a, -0.5, 2.0)}
    expected = gc.jit(lambda x: tuple(refs[n](x) for n in refs))(X)
    for name, want in zip(refs, expected):
        np.testing.assert_array_equal(outs[list(MODULES).index(name)], want, err_msg=name)
    try:
        import torch
    except ImportError:
        return
    for (name, args), out in zip(MODULES.items(), outs):
        theirs = getattr(torch.nn, name)(*args)(torch.tensor(X)).numpy()
        np.testing.assert_allclose(out, theirs, rtol=1e-12, atol=1e-15, err_msg=name)
