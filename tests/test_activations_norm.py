"""LeakyReLU, ELU, GELU (erf and tanh) and LayerNorm: values and gradients against
NumPy formulas, and a compiled model against PyTorch (where installed) with the same
weights."""
import numpy as np
import pytest
from scipy.special import erf

import graphc as gc

X = np.linspace(-6.0, 6.0, 25).reshape(5, 5)


def _numpy_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        g[i] = (f(x + d).sum() - f(x - d).sum()) / (2 * eps)
    return g


REFERENCES = {
    "leaky_relu": (lambda a: gc.nn.functional.leaky_relu(a, 0.1),
                   lambda x: np.where(x > 0, x, 0.1 * x)),
    "elu": (lambda a: gc.nn.functional.elu(a, 0.7),
            lambda x: np.where(x > 0, x, 0.7 * (np.exp(np.minimum(x, 0)) - 1))),
    "gelu": (lambda a: gc.nn.functional.gelu(a),
             lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2)))),
    "gelu_tanh": (lambda a: gc.nn.functional.gelu(a, approximate="tanh"),
                  lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_activation_values_and_gradients(name):
    ours, ref = REFERENCES[name]
    x = X + 0.05                                    # off the kinks at 0
    np.testing.assert_allclose(gc.jit(ours)(x), ref(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gc.grad(lambda a: gc.sum(ours(a)))(x), _numpy_grad(ref, x),
                               rtol=1e-6, atol=1e-8)


def test_elu_gradient_stays_finite_for_large_inputs():
    x = np.array([-800.0, -1.0, 0.5, 100.0, 800.0])
    g = gc.grad(lambda a: gc.sum(gc.nn.functional.elu(a)))(x)
    np.testing.assert_allclose(g, [0.0, np.exp(-1.0), 1.0, 1.0, 1.0], atol=1e-300)


def test_layer_norm_values_and_gradients_over_two_dims():
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(3, 4, 5)), rng.normal(size=(4, 5)), rng.normal(size=(4, 5))

    def ref(x, w=w, b=b):
        m = x.mean(axis=(1, 2), keepdims=True)
        v = ((x - m) ** 2).mean(axis=(1, 2), keepdims=True)
        return (x - m) / np.sqrt(v + 1e-5) * w + b

    def ours(a, ww, bb):
        return gc.nn.functional.layer_norm(a, (4, 5), ww, bb)

    np.testing.assert_allclose(gc.jit(ours)(x, w, b), ref(x), rtol=1e-10)
    proj = rng.normal(size=x.shape)
    gx, gw, gb = gc.grad(lambda a, ww, bb, pr: gc.sum(ours(a, ww, bb) * pr),
                         argnums=(0, 1, 2))(x, w, b, proj)
    np.testing.assert_allclose(gx, _numpy_grad(lambda z: ref(z) * proj, x), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(gw, _numpy_grad(lambda z: ref(x, w=z) * proj, w), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(gb, proj.sum(axis=0), rtol=1e-10)


def test_layer_norm_shape_errors_name_the_shapes():
    with pytest.raises(gc.ShapeError, match=r"LayerNorm\(4,\): expects input \(\.\.\., 4\), "
                                            r"got \(N, 5\)"):
        gc.compile(gc.nn.LayerNorm(4), input_shape=(None, 5))(np.ones((2, 5)))
    with pytest.raises(gc.ShapeError, match="normalized_shape must be positive ints"):
        gc.nn.LayerNorm(0)
    with pytest.raises(gc.ShapeError, match="approximate must be 'none' or 'tanh'"):
        gc.nn.GELU("fast")


def _net(nn):
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 8),
                         nn.LeakyReLU(0.1), nn.Linear(8, 8), nn.ELU(0.7), nn.Linear(8, 3),
                         nn.GELU(approximate="tanh"))


# fused only: the unfused kernels of these ops are the registry's op tests' (each op
# alone, against the interpreter), and compiling the model twice cost CI 35-45 s
def test_model_matches_pytorch(fuse=True):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tnet = _net(torch.nn).double()
    with torch.no_grad():                       # non-trivial LayerNorm affine
        tnet[1].weight.uniform_(0.5, 1.5)
        tnet[1].bias.uniform_(-0.5, 0.5)
    m = gc.compile(_net(gc.nn), input_shape=(None, 6), loss="cross_entropy",
                   dtype="float64", fuse=fuse)
    m.load_parameters({k: v.detach().numpy() for k, v in tnet.state_dict().items()})
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 6)) * 2, rng.integers(0, 3, size=7)
    tx = torch.tensor(x)
    out = tnet(tx)
    np.testing.assert_allclose(m(x), out.detach().numpy(), rtol=1e-10, atol=1e-12)
    torch.nn.functional.cross_entropy(out, torch.tensor(y)).backward()
    grads = m.gradients(x, y)
    for name, p in tnet.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-8, atol=1e-12,
                                   err_msg=name)


def test_dropout_seed_keeps_advancing_in_float32():
    """The seed buffer has the model's dtype: in float32, seed + 1 == seed from 2**24 on,
    which would give every later step the same mask; it wraps to 0 there instead."""
    net = gc.nn.Sequential(gc.nn.Linear(3, 3), gc.nn.Dropout(0.5))
    m = gc.compile(net, input_shape=(None, 3), loss="mse", optimizer=gc.optim.SGD(lr=0.0))
    x, y = np.ones((2, 3)), np.zeros((2, 3))
    for start, want in ((5.0, [6.0, 7.0]), (2.0 ** 24 - 2, [2.0 ** 24 - 1, 0.0])):
        m.load_parameters({"1.seed": np.array(start)}, strict=False)
        seen = []
        for _ in range(2):
            m.train_step(x, y)
            seen.append(float(m.buffers()["1.seed"]))
        assert seen == want
