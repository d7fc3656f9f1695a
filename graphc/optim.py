"""Optimizers, named and parameterised as in ``torch.optim``.

An optimizer here is a description: gc.compile turns it into update nodes in the
training-step graph (see ``graphc.passes.optimizer``). The learning rate is a run-time
input, so changing ``opt.lr`` (or a schedule) never recompiles.

>>> import graphc as gc
>>> gc.optim.SGD(lr=0.1, momentum=0.9).hyper()
{'momentum': 0.9, 'nesterov': False, 'weight_decay': 0.0}
"""
from __future__ import annotations

from graphc.ir import OpError


class Optimizer:
    rule = ""

    def __init__(self, lr: float):
        if not lr >= 0:
            raise OpError(f"{type(self).__name__}: invalid learning rate {lr!r}")
        self.lr = float(lr)

    def hyper(self) -> dict:
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in {"lr": self.lr, **self.hyper()}.items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """``torch.optim.SGD(lr, momentum, nesterov, weight_decay)`` (dampening 0)."""

    rule = "sgd"

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(lr)
        if momentum < 0 or weight_decay < 0:
            raise OpError(f"SGD: momentum ({momentum}) and weight_decay ({weight_decay}) "
                          f"must be >= 0")
        if nesterov and momentum <= 0:
            raise OpError("SGD: nesterov momentum requires momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = float(momentum), bool(nesterov), \
            float(weight_decay)

    def hyper(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


__all__ = ["Optimizer", "SGD"]
