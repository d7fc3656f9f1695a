"""Learning-rate schedules, named as in ``torch.optim.lr_scheduler``.

The learning rate is a run-time rank-0 input of the compiled training step, so a
schedule only sets ``optimizer.lr``: nothing is recompiled. Call ``step()`` once per
epoch (or per batch, if the schedule counts batches).

>>> import graphc as gc
>>> opt = gc.optim.SGD(lr=0.1)
>>> sched = StepLR(opt, step_size=2, gamma=0.5)
>>> [round(sched.step(), 4) for _ in range(4)]
[0.1, 0.05, 0.05, 0.025]
"""
from __future__ import annotations

import math

from graphc.ir import OpError


def _optimizer(target):
    """Accept an optimizer or anything holding one (a CompiledModel)."""
    opt = getattr(target, "optimizer", target)
    if opt is None or not hasattr(opt, "lr"):
        raise OpError(f"a schedule needs a gc.optim optimizer or a model compiled with one, "
                      f"got {target!r}")
    return opt


class LRScheduler:
    """Base: ``lr_at(epoch)`` is the closed-form rate after ``epoch`` calls to ``step()``."""

    def __init__(self, target):
        self.optimizer = _optimizer(target)
        self.base_lr = float(self.optimizer.lr)
        self.last_epoch = 0
        self.optimizer.lr = self.lr_at(0)

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self) -> float:
        """Advance one epoch (or batch) and set the optimizer's rate; returns the new rate."""
        self.last_epoch += 1
        self.optimizer.lr = float(self.lr_at(self.last_epoch))
        return self.optimizer.lr

    def get_last_lr(self) -> float:
        return self.optimizer.lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict):
        self.base_lr = float(state["base_lr"])
        self.last_epoch = int(state["last_epoch"])
        self.optimizer.lr = float(self.lr_at(self.last_epoch))


class StepLR(LRScheduler):
    """``lr = base * gamma ** (epoch // step_size)``."""

    def __init__(self, target, step_size: int, gamma: float = 0.1):
        if step_size < 1:
            raise OpError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(target)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(LRScheduler):
    """``lr = base * gamma ** epoch``."""

    def __init__(self, target, gamma: float):
        self.gamma = float(gamma)
        super().__init__(target)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** epoch


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base - eta_min) (1 + cos(pi epoch / T_max)) / 2`` (SGDR closed
    form, as torch documents it), held at ``eta_min`` after ``T_max``."""

    def __init__(self, target, T_max: int, eta_min: float = 0.0):  # noqa: N803 (torch name)
        if T_max < 1:
            raise OpError(f"CosineAnnealingLR: T_max must be >= 1, got {T_max}")
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(target)

    def lr_at(self, epoch):
        e = min(epoch, self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * e / self.T_max)) / 2


class LinearLR(LRScheduler):
    """Linear warm-up (``torch.optim.lr_scheduler.LinearLR``): the factor goes from
    ``start_factor`` to ``end_factor`` over ``total_iters`` steps, then stays."""

    def __init__(self, target, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1 or total_iters < 1:
            raise OpError(f"LinearLR: need 0 < start_factor <= 1, 0 <= end_factor <= 1, "
                          f"total_iters >= 1; got {start_factor}, {end_factor}, {total_iters}")
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = int(total_iters)
        super().__init__(target)

    def lr_at(self, epoch):
        frac = min(epoch, self.total_iters) / self.total_iters
        return self.base_lr * (self.start_factor + (self.end_factor - self.start_factor) * frac)


def LinearWarmup(target, warmup_steps: int, start_factor: float | None = None):  # noqa: N802
    """Linear warm-up to the optimizer's rate over ``warmup_steps`` steps, starting at
    ``start_factor * lr`` (default ``1 / warmup_steps``): ``LinearLR`` with end factor 1.

    >>> import graphc as gc
    >>> w = LinearWarmup(gc.optim.SGD(lr=0.4), warmup_steps=4)
    >>> [round(w.step(), 3) for _ in range(5)]
    [0.175, 0.25, 0.325, 0.4, 0.4]
    """
    start = 1.0 / warmup_steps if start_factor is None else start_factor
    return LinearLR(target, start_factor=start, end_factor=1.0, total_iters=warmup_steps)


__all__ = ["LRScheduler", "StepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR",
           "LinearWarmup"]
