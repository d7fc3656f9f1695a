"""Convolutional layers named as in ``torch.nn``: Conv2d, pooling, Flatten, BatchNorm, Dropout.

Parameter names, layouts and initialisation follow PyTorch (``conv.weight`` is
``(out, in/groups, kh, kw)``, kaiming-uniform with a=sqrt(5)), so a PyTorch state_dict
loads unchanged. Shape errors name the layer.

>>> import graphc as gc
>>> conv = gc.nn.Conv2d(1, 6, 3, padding=1)
>>> [(n, p.data.shape) for n, p in conv.named_parameters()]
[('weight', (6, 1, 3, 3)), ('bias', (6,))]
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np

from graphc.ir import ShapeError
from graphc.ir.ops.conv import conv_out_hw
from graphc.ir.ops.pool import pool_out_hw
from graphc.ir.types import format_shape

from .. import functional as F
from ..tracing import as_tensor
from .module import Buffer, Module, Parameter, rng


class _Layer(Module):
    """Shared: a layer's name for error messages and a guard that prefixes it."""

    def _trace_name(self):
        name = self.__dict__.get("_name")
        desc = f"{type(self).__name__}({self.extra_repr()})"
        return f"layer {name!r} ({desc})" if name else desc

    @contextmanager
    def _named_errors(self):
        try:
            yield
        except ShapeError as exc:
            msg = str(exc)
            if msg.startswith("layer "):
                raise
            raise ShapeError(f"{self._trace_name()}: {msg}") from None

    def _expect_rank(self, x, ranks, layout):
        if x.ndim not in ranks:
            raise ShapeError(f"{self._trace_name()}: expects input {layout}, got "
                             f"{format_shape(x.shape)}")


class Conv2d(_Layer):
    """2-D convolution over NCHW input, as ``torch.nn.Conv2d`` (zero padding)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = F._pair(kernel_size, "kernel_size")
        self.stride = F._pair(stride, "stride")
        self.padding = F._pair(0 if padding == "valid" else padding, "padding")
        self.dilation = F._pair(dilation, "dilation")
        if min(in_channels, out_channels, groups, *self.kernel_size) <= 0:
            raise ShapeError(f"{self._trace_name()}: sizes must be positive")
        if in_channels % groups or out_channels % groups:
            raise ShapeError(f"{self._trace_name()}: groups={groups} must divide in_channels "
                             f"and out_channels")
        fan_in = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)          # kaiming_uniform(a=sqrt(5)), as torch
        shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = Parameter(rng().uniform(-bound, bound, size=shape))
        self.bias = Parameter(rng().uniform(-bound, bound, size=(out_channels,))) if bias else None

    def forward(self, x):
        x = as_tensor(x)
        self._expect_rank(x, (4,), f"(N, {self.in_channels}, H, W)")
        if x.shape[1] != self.in_channels:
            raise ShapeError(f"{self._trace_name()}: expects {self.in_channels} input channels, "
                             f"got input {format_shape(x.shape)}")
        attrs = {"stride": self.stride, "padding": self.padding, "dilation": self.dilation,
                 "groups": self.groups}
        with self._named_errors():
            conv_out_hw(x.shape[2:], self.kernel_size, attrs, "conv2d", x.shape)
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding,
                            self.dilation, self.groups)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s


class _Pool2d(_Layer):
    _fn = None

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.attrs = F._pool_attrs(kernel_size, stride, padding)
        self.kernel_size, self.stride, self.padding = (self.attrs["kernel"],
                                                       self.attrs["stride"],
                                                       self.attrs["padding"])

    def forward(self, x):
        x = as_tensor(x)
        self._expect_rank(x, (4,), "(N, C, H, W)")
        with self._named_errors():
            pool_out_hw(x.shape, self.attrs, type(self).__name__)
            return type(self)._fn(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """``torch.nn.MaxPool2d`` (stride defaults to the kernel size)."""
    _fn = staticmethod(F.max_pool2d)


class AvgPool2d(_Pool2d):
    """``torch.nn.AvgPool2d`` (padding counted in the divisor, as torch's default)."""
    _fn = staticmethod(F.avg_pool2d)


class Flatten(_Layer):
    """``torch.nn.Flatten``: merge dims ``start_dim..end_dim`` (default: all but the batch)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        with self._named_errors():
            return as_tensor(x).flatten(self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class _BatchNorm(_Layer):
    _ranks: tuple = ()
    _layout = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True):
        super().__init__()
        if not track_running_stats or momentum is None:
            raise ShapeError(f"{type(self).__name__}: graphc needs track_running_stats=True "
                             f"and a float momentum")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(np.ones(num_features)) if affine else None
        self.bias = Parameter(np.zeros(num_features)) if affine else None
        self.running_mean = Buffer(np.zeros(num_features))
        self.running_var = Buffer(np.ones(num_features))

    def forward(self, x):
        x = as_tensor(x)
        self._expect_rank(x, self._ranks, self._layout.format(C=self.num_features))
        if x.shape[1] != self.num_features:
            raise ShapeError(f"{self._trace_name()}: expects {self.num_features} channels, got "
                             f"input {format_shape(x.shape)}")
        with self._named_errors():
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                self.training, self.momentum, self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    """``torch.nn.BatchNorm1d`` over (N, C) or (N, C, L)."""
    _ranks = (2, 3)
    _layout = "(N, {C}) or (N, {C}, L)"


class BatchNorm2d(_BatchNorm):
    """``torch.nn.BatchNorm2d`` over (N, C, H, W)."""
    _ranks = (4,)
    _layout = "(N, {C}, H, W)"


class Dropout(_Layer):
    """``torch.nn.Dropout``: in training, zero with probability ``p`` and scale by 1/(1-p).

    The mask is drawn from a counter-based hash of a seed kept in the buffer ``seed``,
    which each compiled training step advances by one: masks differ between steps and
    are reproducible under ``gc.manual_seed``. Identity in eval mode.
    """

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ShapeError(f"dropout probability has to be between 0 and 1, got {p}")
        self.p = float(p)
        # an integer below 2**20 so float32 state counts steps exactly for ~16M steps
        self.seed = Buffer(np.array(float(rng().integers(0, 2 ** 20))))

    def forward(self, x):
        if self.training and 0.0 < self.p < 1.0:
            # the buffer has the model's dtype: in float32 integers are exact below
            # 2**24 only, where seed + 1 == seed would give every later step one mask;
            # wrapping there gives 2**24 distinct masks before they repeat
            nxt = self.seed._t() + 1.0
            self.seed.update(F.where(nxt >= 2.0 ** 24, nxt - 2.0 ** 24, nxt))
        with self._named_errors():
            return F.dropout(x, self.p, self.training, seed=self.seed)

    def extra_repr(self):
        return f"p={self.p}"
