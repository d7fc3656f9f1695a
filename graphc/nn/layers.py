"""Layers named as in ``torch.nn``, initialised as PyTorch initialises them."""
from __future__ import annotations

import math

from graphc.ir import ShapeError
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
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ShapeError(f"{self._trace_name()}: expects input (N, {self.in_features}), "
                             f"got {format_shape(x.shape)}")
        return F.linear(x, self.weight, self.bias)

    def _trace_name(self):
        name = self.__dict__.get("_name")
        return f"layer {name!r} (Linear)" if name else f"Linear({self.in_features}, {self.out_features})"

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}"


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
        return list(self._modules.values())[i]

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
