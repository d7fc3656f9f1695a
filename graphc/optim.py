"""Optimizers, named and parameterised as in ``torch.optim``.

An optimizer here is a description: gc.compile turns it into update nodes in the
training-step graph (see ``graphc.passes.optimizer``). The learning rate is a run-time
input, so changing ``opt.lr`` (or a schedule) never recompiles.

>>> import graphc as gc
>>> gc.optim.SGD(lr=0.1, momentum=0.9).hyper()
{'momentum': 0.9, 'nesterov': False, 'weight_decay': 0.0}
"""
from __future__ import annotations

import numpy as np

from graphc.ir import OpError


class Optimizer:
    rule = ""

    def __init__(self, lr: float):
        self.lr = lr

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value):
        # checked here, so CompiledModel.set_lr and schedules get the same one-line error
        if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
            value = value.item()      # a 0-d NumPy array or torch tensor
        number = _is_number(value)
        if not (number and 0 <= value < float("inf")):
            raise OpError(f"{type(self).__name__}: invalid learning rate {value!r} (a finite "
                          f"number >= 0)")
        self._lr = float(value)

    def __setattr__(self, name, value):
        # the update rule (momentum, betas, ...) is compiled into the training step; only
        # the learning rate is a run-time input. Changing the rest afterwards would be
        # ignored while repr() showed the new value, so it is an error.
        if self.__dict__.get("_compiled") and name not in ("lr", "_lr"):
            raise OpError(f"{type(self).__name__}.{name} is compiled into a model's training "
                          f"step; only lr can change after gc.compile (compile again with a "
                          f"new optimizer to change {name})")
        object.__setattr__(self, name, value)

    def hyper(self) -> dict:
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in {"lr": self.lr, **self.hyper()}.items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """``torch.optim.SGD(lr, momentum, nesterov, weight_decay)`` (dampening 0)."""

    rule = "sgd"

    def __init__(self, lr: float = 1e-3, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(lr)
        _check("SGD", momentum=momentum, weight_decay=weight_decay)
        if nesterov and momentum <= 0:
            raise OpError("SGD: nesterov momentum requires momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = float(momentum), bool(nesterov), \
            float(weight_decay)

    def hyper(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _check(name, **values):
    for key, v in values.items():
        if not (_is_number(v) and 0 <= v < float("inf")):
            raise OpError(f"{name}: invalid {key} {v!r} (a finite number >= 0)")


def _betas(name, betas):
    try:
        b1, b2 = (float(b) for b in betas)
    except (TypeError, ValueError):
        raise OpError(f"{name}: betas must be a pair of floats, got {betas!r}") from None
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise OpError(f"{name}: betas {betas!r} must each be in [0, 1)")
    return (b1, b2)


class Adam(Optimizer):
    """``torch.optim.Adam(lr, betas, eps, weight_decay)`` with bias correction (amsgrad off).

    >>> Adam(lr=1e-3).hyper()["betas"]
    (0.9, 0.999)
    """

    rule = "adam"
    decoupled = False

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(lr)
        name = type(self).__name__
        _check(name, eps=eps, weight_decay=weight_decay)
        self.betas, self.eps, self.weight_decay = _betas(name, betas), float(eps), \
            float(weight_decay)

    def hyper(self):
        return {"betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay,
                "decoupled": self.decoupled}


class AdamW(Adam):
    """``torch.optim.AdamW``: Adam with decoupled weight decay ``p *= 1 - lr * wd``."""

    decoupled = True

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(lr, betas, eps, weight_decay)


class Adagrad(Optimizer):
    """``torch.optim.Adagrad(lr, lr_decay, weight_decay, eps)`` (initial accumulator 0)."""

    rule = "adagrad"

    def __init__(self, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 eps: float = 1e-10):
        super().__init__(lr)
        _check("Adagrad", lr_decay=lr_decay, weight_decay=weight_decay, eps=eps)
        self.lr_decay, self.weight_decay, self.eps = float(lr_decay), float(weight_decay), \
            float(eps)

    def hyper(self):
        return {"lr_decay": self.lr_decay, "weight_decay": self.weight_decay, "eps": self.eps}


class RMSprop(Optimizer):
    """``torch.optim.RMSprop(lr, alpha, eps, weight_decay, momentum, centered)``."""

    rule = "rmsprop"

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        super().__init__(lr)
        _check("RMSprop", alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum)
        self.alpha, self.eps, self.weight_decay = float(alpha), float(eps), float(weight_decay)
        self.momentum, self.centered = float(momentum), bool(centered)

    def hyper(self):
        return {"alpha": self.alpha, "eps": self.eps, "weight_decay": self.weight_decay,
                "momentum": self.momentum, "centered": self.centered}


class LAMB(Optimizer):
    """LAMB (You et al. 2019) with ``torch_optimizer.Lamb``'s keywords and defaults.

    Adam direction ``u = m / (sqrt(v) + eps) + weight_decay * p``, scaled per parameter
    tensor by the trust ratio ``min(||p||, clamp_value) / ||u||`` (1 when either norm is
    0). ``debias=True`` scales the step by ``sqrt(1 - b2^t) / (1 - b1^t)``.
    """

    rule = "lamb"

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, clamp_value: float = 10.0, debias: bool = False):
        super().__init__(lr)
        _check("LAMB", eps=eps, weight_decay=weight_decay, clamp_value=clamp_value)
        self.betas, self.eps, self.weight_decay = _betas("LAMB", betas), float(eps), \
            float(weight_decay)
        self.clamp_value, self.debias = float(clamp_value), bool(debias)

    def hyper(self):
        return {"betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay,
                "clamp_value": self.clamp_value, "debias": self.debias}


Lamb = LAMB

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "LAMB", "Lamb"]
