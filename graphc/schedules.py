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
    """Base. As PyTorch's schedulers, each ``step()`` moves the optimizer's *current* rate
    (``next_lr``), so schedules chain (two on one optimizer multiply) and a rate set by
    hand between steps is where the next step starts from. ``base_lr`` is the rate the
    optimizer had when its first schedule was made (PyTorch's ``initial_lr``)."""

    def __init__(self, target):
        self.optimizer = _optimizer(target)
        # kept on the optimizer, as PyTorch keeps it in the param group, so a second
        # schedule on the same optimizer starts from the same base
        self.base_lr = float(self.optimizer.__dict__.setdefault("initial_lr", self.optimizer.lr))
        self.last_epoch = 0
        self.optimizer.lr = float(self.next_lr(self.optimizer.lr, 0))

    def next_lr(self, lr: float, epoch: int) -> float:
        """The rate at ``epoch`` given the rate ``lr`` the optimizer has now."""
        raise NotImplementedError

    def step(self) -> float:
        """Advance one epoch (or batch) and set the optimizer's rate; returns the new rate."""
        self.last_epoch += 1
        self.optimizer.lr = float(self.next_lr(self.optimizer.lr, self.last_epoch))
        return self.optimizer.lr

    def get_last_lr(self) -> float:
        return self.optimizer.lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict):
        """Restore the epoch count; the rate itself comes back with the optimizer's (a
        checkpoint holds it), as in PyTorch."""
        self.base_lr = float(state["base_lr"])
        self.last_epoch = int(state["last_epoch"])


class StepLR(LRScheduler):
    """Multiply the rate by ``gamma`` every ``step_size`` epochs (from the base alone:
    ``base * gamma ** (epoch // step_size)``)."""

    def __init__(self, target, step_size: int, gamma: float = 0.1):
        if not (isinstance(step_size, int) and step_size >= 1):
            raise OpError(f"StepLR: step_size must be an int >= 1, got {step_size!r}")
        self.step_size, self.gamma = int(step_size), _factor("StepLR", "gamma", gamma)
        super().__init__(target)

    def next_lr(self, lr, epoch):
        return lr * self.gamma if epoch > 0 and epoch % self.step_size == 0 else lr


class ExponentialLR(LRScheduler):
    """Multiply the rate by ``gamma`` every epoch (``base * gamma ** epoch``)."""

    def __init__(self, target, gamma: float):
        self.gamma = _factor("ExponentialLR", "gamma", gamma)
        super().__init__(target)

    def next_lr(self, lr, epoch):
        return lr * self.gamma if epoch > 0 else lr


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base - eta_min) (1 + cos(pi epoch / T_max)) / 2`` over the first
    ``T_max`` epochs, stepped by PyTorch's recursive form: past ``T_max`` the rate
    follows the cosine back up (period ``2 T_max``), as PyTorch's does."""

    def __init__(self, target, T_max: int, eta_min: float = 0.0):  # noqa: N803 (torch name)
        if not (isinstance(T_max, int) and T_max >= 1):
            raise OpError(f"CosineAnnealingLR: T_max must be an int >= 1, got {T_max!r}")
        self.T_max, self.eta_min = int(T_max), _factor("CosineAnnealingLR", "eta_min", eta_min)
        super().__init__(target)

    def next_lr(self, lr, epoch):
        T, lo = self.T_max, self.eta_min
        if epoch == 0:
            return lr
        if (epoch - 1 - T) % (2 * T) == 0:
            return lr + (self.base_lr - lo) * (1 - math.cos(math.pi / T)) / 2
        return (1 + math.cos(math.pi * epoch / T)) / (1 + math.cos(math.pi * (epoch - 1) / T)) \
            * (lr - lo) + lo


class LinearLR(LRScheduler):
    """Linear warm-up (``torch.optim.lr_scheduler.LinearLR``): the factor goes from
    ``start_factor`` to ``end_factor`` over ``total_iters`` steps, then stays."""

    def __init__(self, target, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5):
        if not (0 < start_factor <= 1 and 0 <= end_factor <= 1 and isinstance(total_iters, int)
                and total_iters >= 1):
            raise OpError(f"LinearLR: need 0 < start_factor <= 1, 0 <= end_factor <= 1, "
                          f"total_iters an int >= 1; got {start_factor}, {end_factor}, "
                          f"{total_iters!r}")
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = int(total_iters)
        super().__init__(target)

    def next_lr(self, lr, epoch):
        if epoch == 0:
            return lr * self.start_factor
        if epoch > self.total_iters:
            return lr
        step = self.end_factor - self.start_factor
        return lr * (1 + step / (self.total_iters * self.start_factor + (epoch - 1) * step))


def _factor(name, key, value) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and 0 <= value < math.inf):
        raise OpError(f"{name}: {key} must be a finite number >= 0, got {value!r}")
    return float(value)


def LinearWarmup(target, warmup_steps: int, start_factor: float | None = None):  # noqa: N802
    """Linear warm-up to the optimizer's rate over ``warmup_steps`` steps, starting at
    ``start_factor * lr`` (default ``1 / warmup_steps``): ``LinearLR`` with end factor 1.

    >>> import graphc as gc
    >>> w = LinearWarmup(gc.optim.SGD(lr=0.4), warmup_steps=4)
    >>> [round(w.step(), 3) for _ in range(5)]
    [0.175, 0.25, 0.325, 0.4, 0.4]
    """
    if not (isinstance(warmup_steps, int) and warmup_steps >= 1):
        raise OpError(f"LinearWarmup: warmup_steps must be an int >= 1, got {warmup_steps!r}")
    start = 1.0 / warmup_steps if start_factor is None else start_factor
    return LinearLR(target, start_factor=start, end_factor=1.0, total_iters=warmup_steps)


__all__ = ["LRScheduler", "StepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR",
           "LinearWarmup"]
