"""Gathers by integer index: x[idx], gc.take, gc.index_select, nn.Embedding.

Values against NumPy's indexing, gradients against PyTorch autograd where it is
installed (else central differences), an Embedding model's training against PyTorch's.
The take/take_grad ops themselves are checked op by op in test_ops.py (registry samples).
"""
import numpy as np
import pytest

import graphc as gc
from oracles import central_difference

try:
    import torch
except ImportError:     # the oracle below falls back to finite differences
    torch = None

RNG = np.random.default_rng(7)
X = RNG.normal(size=(4, 6))
IDX = np.array([[0, 3], [-1, 3]])          # a repeat and a negative index


def _forms(x, i):
    """Indexing forms a PyTorch user writes, summed with distinct weights (the same
    expression runs on a traced Tensor, a NumPy array and a torch tensor)."""
    return ((x[:, i] ** 2).sum() + 2.0 * x[i[0]].sum() + 3.0 * x[..., [1, 1, 3]].sum()
            + 4.0 * x[None, [0, 2], 1:].sum())


def test_index_forms_match_numpy_and_autograd():
    value, grad = gc.value_and_grad(_forms)(X, IDX)
    np.testing.assert_allclose(value, _forms(X, IDX), rtol=1e-12)
    if torch is not None:
        xt = torch.tensor(X, requires_grad=True)
        _forms(xt, torch.tensor(IDX)).backward()
        want = xt.grad.numpy()
    else:
        want = central_difference(lambda v: _forms(v["x"], IDX), {"x": X}, "x")
    np.testing.assert_allclose(grad, want, rtol=1e-10 if torch else 1e-6, atol=1e-8)


def test_take_and_index_select_are_numpy_take():
    out = gc.jit(lambda x, i: (gc.take(x, i, 1), gc.index_select(x, 0, i[1])))(X, IDX)
    np.testing.assert_array_equal(out[0], np.take(X, IDX, axis=1))
    np.testing.assert_array_equal(out[1], X[IDX[1]])


def _embedding_models(vocab, dim, length):
    class Net(gc.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = gc.nn.Embedding(vocab, dim)
            self.fc = gc.nn.Linear(length * dim, 3)

        def forward(self, x):
            return self.fc(self.emb(x).reshape(-1, length * dim))

    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(vocab, dim)
            self.fc = torch.nn.Linear(length * dim, 3)

        def forward(self, x):
            return self.fc(self.emb(x).reshape(-1, length * dim))

    return Net(), TorchNet().double()


@pytest.mark.skipif(torch is None, reason="needs PyTorch as the oracle")
def test_embedding_model_trains_as_pytorch():
    torch.manual_seed(0)
    vocab, dim, length = 11, 5, 4
    net, tnet = _embedding_models(vocab, dim, length)
    m = gc.compile(net, input_shape=(None, length), input_dtype="int64", loss="cross_entropy",
                   optimizer=gc.optim.SGD(lr=0.1, momentum=0.9), dtype="float64")
    m.load_parameters({k: v.detach().numpy() for k, v in tnet.state_dict().items()})
    opt = torch.optim.SGD(tnet.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    for batch in (6, 6, 3):          # a short last batch too
        x = rng.integers(0, vocab, size=(batch, length))
        x[0, :2] = 3                 # one token twice in a row: its gradients add
        y = rng.integers(0, 3, size=batch)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tnet(torch.tensor(x)), torch.tensor(y))
        loss.backward()
        opt.step()
        assert abs(m.train_step(x, y) - loss.item()) < 1e-12
    params = m.parameters()
    for name, value in tnet.state_dict().items():
        np.testing.assert_allclose(params[name], value.numpy(), rtol=1e-10, atol=1e-12)


def test_embedding_input_errors():
    m = gc.compile(gc.nn.Embedding(10, 4), input_shape=(None, 3), input_dtype="int64")
    assert m(np.array([[1, 2, 9]])).shape == (1, 3, 4)
    for bad, shown in ((10, "index 10"), (-1, "index -1")):   # PyTorch refuses -1 as well
        with pytest.raises(gc.InputError, match=f"input 'x': {shown} is out of range .* "
                                                r"extent 10.*valid 0\.\.9"):
            m(np.array([[1, bad, 2]]))
    with pytest.raises(gc.InputError, match="expected integers"):
        m(np.ones((1, 3)))
    with pytest.raises(gc.ShapeError, match="embedding needs int64 indices.*input_dtype"):
        gc.compile(gc.nn.Embedding(10, 4), input_shape=(None, 3))
    with pytest.raises(gc.ShapeError, match="input_dtype must be 'float32'.*'int64'"):
        gc.compile(gc.nn.Embedding(10, 4), input_shape=(None, 3), input_dtype="float64")
    with pytest.raises(gc.OpError, match="padding_idx=0 is not supported"):
        gc.nn.Embedding(10, 4, padding_idx=0)


def test_traced_index_errors():
    i = np.array([0, 2])
    cases = [
        (lambda x: x[np.array([0, 6])], gc.ShapeError, "index 6 is out of range"),
        (lambda x: x[i, i], gc.ShapeError, "one integer array"),
        (lambda x: x[i, 1], gc.ShapeError, "one integer array"),
        (lambda x: x[x > 0], gc.ShapeError, "boolean masks"),
        (lambda x: x[np.array([True, False, True, True])], gc.ShapeError, "boolean masks"),
        (lambda x: gc.take(x, i, 2), gc.ShapeError, "axis 2 is out of range"),
    ]
    for fn, exc, text in cases:
        with pytest.raises(exc, match=text):
            gc.jit(fn)(X)
    # an index array along the symbolic batch axis of a model
    class Pick(gc.nn.Module):
        def forward(self, x):
            return x[np.array([0, 1])]
    with pytest.raises(gc.ShapeError, match="batch axis"):
        gc.compile(Pick(), input_shape=(None, 3))


def test_an_index_computed_out_of_range_is_an_error():
    """Inputs are checked before the call; an index made inside the graph is checked by
    the kernel, so it is an error and not a read past the array."""
    f = gc.jit(lambda x, i: x[i * 3])
    np.testing.assert_array_equal(f(X, np.array([0, 1])), X[[0, 3]])
    with pytest.raises(gc.InputError, match="computed in the graph is out of range for "
                                            "axis 0 of extent 4"):
        f(X, np.array([0, 2]))


def test_one_element_gathers_and_integer_scalars():
    """A gather of one element has a 0-d result (the flat[argmax] idiom); a 0-d integer
    argument is an int64 index, as in NumPy and PyTorch."""
    got = gc.jit(lambda x, i: (x.reshape(-1)[x.argmax()], gc.take(x[0], 2, 0), x[i],
                               x.index_select(1, IDX[1])))(X, np.int64(2))
    np.testing.assert_array_equal(got[0], X.max())
    np.testing.assert_array_equal(got[1], X[0, 2])
    np.testing.assert_array_equal(got[2], X[2])
    np.testing.assert_array_equal(got[3], X[:, IDX[1]])
    grad = gc.grad(lambda x: x.reshape(-1)[x.argmax()] * 3.0)(X)
    want = np.zeros_like(X)
    want.flat[X.argmax()] = 3.0
    np.testing.assert_array_equal(grad, want)
