"""``@`` on operands of rank >= 3 (torch.matmul's rules: vectors, broadcast leading dims,
transposes of the last two axes read through flags), checked against NumPy values and
finite differences; a self-attention block over a symbolic batch against PyTorch."""
import numpy as np
import pytest

import graphc as gc

CASES = [((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((4,), (2, 4, 5)), ((2, 3, 4), (4,)),
         ((2, 1, 3, 4), (5, 4, 2)), ((3, 4), (2, 4, 5)), ((4,), (4,))]


def _fd(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        g[i] = (f(x + d) - f(x - d)) / (2 * eps)
    return g


@pytest.mark.parametrize("sa,sb", CASES, ids=[f"{a}@{b}" for a, b in CASES])
def test_matmul_values_and_gradients(sa, sb):
    rng = np.random.default_rng(len(sa) * 10 + len(sb))
    a, b = rng.normal(size=sa), rng.normal(size=sb)
    y = gc.jit(lambda x, z: x @ z)(a, b)
    np.testing.assert_allclose(y, a @ b, rtol=1e-12)
    assert np.shape(y) == (a @ b).shape
    ga, gb = gc.grad(lambda x, z: gc.sum(gc.sin(x @ z)), argnums=(0, 1))(a, b)
    np.testing.assert_allclose(ga, _fd(lambda x: np.sin(x @ b).sum(), a), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gb, _fd(lambda z: np.sin(a @ z).sum(), b), rtol=1e-6, atol=1e-8)


def test_transposes_of_the_last_two_axes_become_flags():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4))
    f = gc.jit(lambda x, z: x @ z.transpose(-2, -1))
    np.testing.assert_allclose(f(a, b), a @ b.swapaxes(-1, -2), rtol=1e-12)
    g = f.compiled((a, b)).graph
    ops = [g.op_of(n) for n in g.nx]
    assert "transpose" not in ops and ops.count("batch_matmul") == 1


def test_shape_errors_name_the_operands():
    a = np.ones((2, 3, 4))
    with pytest.raises(gc.ShapeError, match=r"inner sizes 4 and 5 differ"):
        gc.jit(lambda x, z: x @ z)(a, np.ones((2, 5, 4)))
    with pytest.raises(gc.ShapeError, match=r"leading dims of \(2, 3, 4\) and \(3, 4, 2\)"):
        gc.jit(lambda x, z: x @ z)(a, np.ones((3, 4, 2)))


class Attention(gc.nn.Module):
    """One head of self-attention over (N, T, D), then a classifier on the mean token."""

    def __init__(self, nn, T=4, D=6, classes=3):
        super().__init__()
        self.T, self.D = T, D
        self.q, self.k, self.v = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.norm = nn.LayerNorm(D)
        self.out = nn.Linear(D, classes)

    def forward(self, x, F=None):
        F = F or gc.nn.functional
        x = x.reshape(-1, self.T, self.D)
        q, k, v = self.q(x), self.k(x), self.v(x)
        att = F.softmax(q @ k.transpose(-2, -1) * (1.0 / np.sqrt(self.D)), dim=-1)
        h = self.norm(x + att @ v)
        return self.out(h.mean(1))


# fused only: the unfused kernels of these ops are the registry's op tests' (each op
# alone, against the interpreter), and compiling the model twice cost CI 35-45 s
def test_self_attention_matches_pytorch(fuse=True):
    torch = pytest.importorskip("torch")

    class TorchAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Attention(torch.nn)
            for name in ("q", "k", "v", "norm", "out"):
                self.add_module(name, getattr(self.inner, name))

        def forward(self, x):
            return Attention.forward(self.inner, x, torch.nn.functional)

    torch.manual_seed(0)
    tnet = TorchAttention().double()
    m = gc.compile(Attention(gc.nn), input_shape=(None, 24), loss="cross_entropy",
                   dtype="float64", fuse=fuse)
    m.load_parameters({k: v.detach().numpy() for k, v in tnet.state_dict().items()
                       if not k.startswith("inner.")})
    rng = np.random.default_rng(2)
    for batch in (5, 1):
        x, y = rng.normal(size=(batch, 24)), rng.integers(0, 3, size=batch)
        tnet.zero_grad()
        out = tnet(torch.tensor(x))
        np.testing.assert_allclose(m(x), out.detach().numpy(), rtol=1e-10, atol=1e-12)
        torch.nn.functional.cross_entropy(out, torch.tensor(y)).backward()
        grads = m.gradients(x, y)
        for name, p in tnet.named_parameters():
            if not name.startswith("inner."):
                np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-8,
                                           atol=1e-12, err_msg=name)
