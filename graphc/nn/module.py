"""PyTorch-style modules: parameters and sub-modules registered by attribute assignment.

>>> import graphc as gc
>>> class Net(gc.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.fc1 = gc.nn.Linear(4, 3)
...     def forward(self, x):
...         return gc.nn.functional.relu(self.fc1(x))
>>> [name for name, _ in Net().named_parameters()]
['fc1.weight', 'fc1.bias']
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from graphc.ir import ShapeError
from graphc.ir.types import format_shape

from ..tracing import Tensor, TensorOps, active, current

_RNG = [np.random.default_rng(0)]


def manual_seed(seed: int):
    """Seed graphc's parameter initialisation (like ``torch.manual_seed``)."""
    _RNG[0] = np.random.default_rng(seed)


def rng() -> np.random.Generator:
    return _RNG[0]


class Parameter(TensorOps):
    """A trainable array. Inside a trace it stands for its graph input.

    ``requires_grad=False`` freezes it, as in PyTorch: a model compiled afterwards
    computes no gradient for it and never updates it.
    """

    def __init__(self, data, requires_grad: bool = True):
        self.data = np.array(data, dtype=np.float64)
        self.requires_grad = bool(requires_grad)

    def requires_grad_(self, requires_grad: bool = True):
        """Set ``requires_grad`` in place and return the parameter (PyTorch's spelling)."""
        self.requires_grad = bool(requires_grad)
        return self

    @property
    def shape(self):
        ctx = active()
        if ctx is not None and id(self) in ctx.bound:
            return self._t().shape
        return self.data.shape

    def _t(self) -> Tensor:
        ctx = current()
        try:
            return Tensor(ctx.graph, ctx.bound[id(self)])
        except KeyError:
            raise ShapeError("a Parameter that is not registered on the traced model was used "
                             "(assign it as a module attribute; to run a gc.nn module, compile "
                             "it with gc.compile: gc.jit traces functions of arrays)") from None

    def __repr__(self):
        return f"Parameter(shape={self.data.shape})"


class Buffer:
    """Non-trainable state (e.g. batch-norm running statistics)."""

    def __init__(self, data):
        self.data = np.array(data, dtype=np.float64)

    def _t(self) -> Tensor:
        ctx = current()
        return Tensor(ctx.graph, ctx.bound[id(self)])

    def update(self, value):
        """Inside a training trace: the buffer's value after this step."""
        ctx = current()
        ctx.buffer_updates[id(self)] = value._t().id


class Module:
    """Base class of all layers and models, as ``torch.nn.Module``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                                 f"before assigning {name!r}")
        for d in (self._parameters, self._buffers, self._modules):
            d.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Buffer):
            self._buffers[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, value):
        setattr(self, name, value if isinstance(value, Buffer) else Buffer(value))

    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        ctx = active()
        if ctx is None:
            return self.forward(*args, **kwargs)
        ctx.scope.append(self.__dict__.get("_name") or type(self).__name__)
        try:
            return self.forward(*args, **kwargs)
        finally:
            ctx.scope.pop()

    # --- traversal -----------------------------------------------------------
    def named_modules(self, prefix="", remove_duplicate=True, _seen=None):
        """``(name, module)`` for this module and those below it. A module held under
        two names (shared, tied) comes once, under its first name, as in PyTorch."""
        if remove_duplicate:
            _seen = set() if _seen is None else _seen
            if id(self) in _seen:
                return
            _seen.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name, remove_duplicate,
                                       _seen)

    def named_parameters(self, prefix="", remove_duplicate=True):
        """``(name, Parameter)``; a parameter reached by two names (a shared module, or
        one Parameter assigned twice) comes once, under its first name, as in PyTorch,
        so it is one input of a compiled graph and its gradient sums every use."""
        yield from self._named_members("_parameters", prefix, remove_duplicate)

    def named_buffers(self, prefix="", remove_duplicate=True):
        yield from self._named_members("_buffers", prefix, remove_duplicate)

    def _named_members(self, kind, prefix, remove_duplicate):
        seen = set()
        for mod_name, m in self.named_modules(prefix, remove_duplicate):
            for name, v in getattr(m, kind).items():
                if remove_duplicate and id(v) in seen:
                    continue
                seen.add(id(v))
                yield (f"{mod_name}.{name}" if mod_name else name), v

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def children(self):
        return list(self._modules.values())

    def modules(self):
        return [m for _, m in self.named_modules()]

    def state_dict(self) -> dict:
        """Parameters and buffers by PyTorch name, as NumPy copies (a shared one under
        each of its names, as PyTorch's)."""
        out = {n: p.data.copy() for n, p in self.named_parameters(remove_duplicate=False)}
        out.update({n: b.data.copy() for n, b in self.named_buffers(remove_duplicate=False)})
        return out

    def load_state_dict(self, state: dict, strict: bool = True):
        own = dict(self.named_parameters(remove_duplicate=False))
        own.update(dict(self.named_buffers(remove_duplicate=False)))
        if strict:
            missing = sorted(set(own) - set(state))
            unexpected = sorted(set(state) - set(own))
            if missing or unexpected:
                raise ShapeError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        for name, value in state.items():
            if name not in own:
                continue
            arr = np.asarray(value, dtype=np.float64)
            if arr.shape != own[name].data.shape:
                raise ShapeError(f"load_state_dict: {name} has shape {format_shape(arr.shape)}, "
                                 f"the model expects {format_shape(own[name].data.shape)}")
            own[name].data = arr.copy()

    def train(self, mode: bool = True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return lines[0] + (")" if len(lines) == 1 else "\n" + "\n".join(lines[1:]) + "\n)")
