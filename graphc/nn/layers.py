"""Layers named as in ``torch.nn``, initialised as PyTorch initialises them."""
from __future__ import annotations

import math

import numpy as np

from graphc.ir import OpError, ShapeError
from graphc.ir.types import format_shape

from .. import functional as F
from ..tracing import as_tensor
from .module import Module, Parameter, rng


def _uniform(bound, shape):
    return rng().uniform(-bound, bound, size=shape)


class Linear(Module):
    """``y = x W^T + b`` with ``weight`` of shape ``(out_features, in_features)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ShapeError(f"Linear({in_features}, {out_features}): sizes must be positive")
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)   # kaiming_uniform(a=sqrt(5)), as torch
        self.weight = Parameter(_uniform(bound, (out_features, in_features)))
        self.bias = Parameter(_uniform(bound, (out_features,))) if bias else None

    def forward(self, x):
        x = as_tensor(x)
        if x.ndim < 2 or x.shape[-1] != self.in_features:
            raise ShapeError(f"{self._trace_name()}: expects input (N, ..., {self.in_features}), "
                             f"got {format_shape(x.shape)}")
        return F.linear(x, self.weight, self.bias)

    def _trace_name(self):
        name = self.__dict__.get("_name")
        return f"layer {name!r} (Linear)" if name else f"Linear({self.in_features}, {self.out_features})"

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Embedding(Module):
    """A lookup table: ``weight[input]`` for int64 token ids ``input`` of any shape,
    ``weight`` of shape ``(num_embeddings, embedding_dim)`` drawn from N(0, 1) as in
    PyTorch. Compile a model that starts with one with ``input_dtype="int64"``.

    >>> import numpy as np, graphc as gc
    >>> emb = gc.nn.Embedding(10, 4)
    >>> m = gc.compile(emb, input_shape=(None, 3), input_dtype="int64")
    >>> m(np.array([[1, 2, 9]])).shape
    (1, 3, 4)
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None,
                 max_norm=None, scale_grad_by_freq=False, sparse=False):
        super().__init__()
        if num_embeddings <= 0 or embedding_dim <= 0:
            raise ShapeError(f"Embedding({num_embeddings}, {embedding_dim}): sizes must be "
                             f"positive")
        unsupported = {k: v for k, v in (("padding_idx", padding_idx), ("max_norm", max_norm),
                                         ("scale_grad_by_freq", scale_grad_by_freq),
                                         ("sparse", sparse))
                       if v is not None and v is not False}
        if unsupported:
            raise OpError(f"Embedding: {', '.join(f'{k}={v!r}' for k, v in unsupported.items())}"
                          f" is not supported")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(rng().normal(size=(num_embeddings, embedding_dim)))

    def forward(self, x):
        return F.embedding(x, self.weight)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


def _activation(name, fn):
    cls = type(name, (Module,), {
        "forward": lambda self, x: fn(x),
        "__doc__": f"Module form of ``{fn.__name__}``.",
    })
    return cls


ReLU = _activation("ReLU", F.relu)
Sigmoid = _activation("Sigmoid", F.sigmoid)
Tanh = _activation("Tanh", F.tanh)
Softplus = _activation("Softplus", F.softplus)
SiLU = _activation("SiLU", F.silu)
Mish = _activation("Mish", F.mish)
LogSigmoid = _activation("LogSigmoid", F.logsigmoid)
Softsign = _activation("Softsign", F.softsign)
ReLU6 = _activation("ReLU6", F.relu6)
SELU = _activation("SELU", F.selu)


class Hardtanh(Module):
    """``torch.nn.Hardtanh``."""

    def __init__(self, min_val=-1.0, max_val=1.0, inplace=False):
        super().__init__()
        if min_val > max_val:
            raise OpError(f"Hardtanh: min_val {min_val} is greater than max_val {max_val}")
        self.min_val, self.max_val = float(min_val), float(max_val)

    def forward(self, x):
        return F.hardtanh(x, self.min_val, self.max_val)

    def extra_repr(self):
        return f"min_val={self.min_val}, max_val={self.max_val}"


class LeakyReLU(Module):
    """``torch.nn.LeakyReLU``."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class ELU(Module):
    """``torch.nn.ELU``."""

    def __init__(self, alpha=1.0, inplace=False):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x):
        return F.elu(x, self.alpha)

    def extra_repr(self):
        return f"alpha={self.alpha}"


class GELU(Module):
    """``torch.nn.GELU`` (``approximate='none'``: erf; ``'tanh'``: PyTorch's formula)."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ShapeError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class LayerNorm(Module):
    """``torch.nn.LayerNorm``: normalise over the trailing ``normalized_shape`` dims;
    ``weight`` (ones) and ``bias`` (zeros) of that shape when ``elementwise_affine``."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True):
        super().__init__()
        shape = ((normalized_shape,) if isinstance(normalized_shape, int)
                 else tuple(normalized_shape))
        if not shape or any(not isinstance(d, int) or d <= 0 for d in shape):
            raise ShapeError(f"LayerNorm: normalized_shape must be positive ints, got "
                             f"{normalized_shape!r}")
        self.normalized_shape, self.eps = shape, float(eps)
        self.weight = Parameter(np.ones(shape)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(shape)) if elementwise_affine and bias else None

    def forward(self, x):
        x = as_tensor(x)
        if tuple(x.shape[-len(self.normalized_shape):]) != self.normalized_shape:
            raise ShapeError(f"LayerNorm{self.normalized_shape}: expects input (..., "
                             f"{', '.join(map(str, self.normalized_shape))}), got "
                             f"{format_shape(x.shape)}")
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class Identity(Module):
    def forward(self, x):
        return x


class Softmax(Module):
    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, self.dim)


class LogSoftmax(Softmax):
    def forward(self, x):
        return F.log_softmax(x, self.dim)


class Sequential(Module):
    """Apply sub-modules in order; named ``0``, ``1``, ... as in PyTorch."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        items = list(self._modules.values())
        return Sequential(*items[i]) if isinstance(i, slice) else items[i]

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x


class ModuleList(Module):
    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, m):
        setattr(self, str(len(self._modules)), m)
        return self

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]
