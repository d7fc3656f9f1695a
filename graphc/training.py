"""The training loop: ``gc.fit(model, X, y, ...)`` -> :class:`History`.

Shuffles with a seeded ``np.random.Generator`` (its state is checkpointed, so a resumed
run sees the same batches), shows a tqdm bar with the running loss and throughput,
evaluates validation data each epoch, saves atomic checkpoints and stops on a NaN/Inf
loss with a :class:`NumericError` naming the first non-finite tensor.

>>> import numpy as np, graphc as gc
>>> m = gc.compile(gc.nn.Linear(2, 1), input_shape=(None, 2), loss="mse",
...                optimizer=gc.optim.SGD(lr=0.1), dtype="float64")
>>> X = np.random.default_rng(0).normal(size=(32, 2)); Y = X @ [[1.0], [-2.0]]
>>> h = gc.fit(m, X, Y, epochs=3, batch_size=8, progress=False)
>>> len(h.loss), h.loss[-1] < h.loss[0]
(3, True)
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from graphc.ir import InputError, NumericError, interpret

from . import functional as F
from .checkpoint import load_checkpoint, save_checkpoint


@dataclass
class History:
    """Per-epoch records, as plain lists (``as_dict()`` for JSON/pandas)."""

    epoch: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    samples_per_sec: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    seconds: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def __len__(self):
        return len(self.epoch)


def _describe_node(graph, nid) -> str:
    d = graph.nx.nodes[nid]
    t = d["type"]
    args = ", ".join(f"%{a}" for a in d["args"])
    where = f" in {d['name']!r}" if d.get("name") else ""
    return f"%{nid} = {d['op']}({args}){where} [{t}]"


def find_nonfinite(model, x, y, graph: str = "train") -> str | None:
    """Name the first non-finite tensor when running ``graph`` on ``(x, y)``.

    Inputs are checked first (a NaN in the data is reported as input ``'x'``), then every
    node in topological order, evaluated with the NumPy reference interpreter.
    """
    g = model._graph(graph)
    inputs = dict(zip(g.input_names(), model._inputs(graph, x, y)))
    for name, value in inputs.items():
        arr = np.asarray(value)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            bad = np.argwhere(~np.isfinite(arr))[0]
            return (f"input {name!r} (value {arr[tuple(bad)]} at index {tuple(int(i) for i in bad)})")
    with np.errstate(all="ignore"):
        _, values = interpret(g, inputs, return_all=True)
    for nid in g.topo_order():
        v = values.get(nid)
        if v is not None and v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            return _describe_node(g, nid)
    return None


class _Snapshot:
    """Copies of parameters and optimizer state, to undo a step that went non-finite."""

    def __init__(self, model):
        self.model = model
        self.live = {**{("p", k): v for k, v in model._params.items()},
                     **{("b", k): v for k, v in model._buffers.items()}}
        self.saved = {}

    def take(self):
        live = dict(self.live)
        live.update({("s", k): v for k, v in self.model._state.items()})
        for k, v in live.items():
            if k not in self.saved or self.saved[k].shape != v.shape:
                self.saved[k] = np.empty_like(v)
            np.copyto(self.saved[k], v)
        self._keys = list(live)

    def restore(self):
        # optimizer state created by the failed step itself started as zeros
        for name, v in self.model._state.items():
            if ("s", name) not in self._keys:
                v[...] = 0
        for kind, name in self._keys:
            store = {"p": self.model._params, "b": self.model._buffers,
                     "s": self.model._state}[kind]
            np.copyto(store[name], self.saved[(kind, name)])


def _progress(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:   # tqdm is optional: train without a bar
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=True)


def _check_data(X, y, model, what="fit"):
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim == 0 or y.ndim == 0:
        raise InputError(f"{what}: X and y must be arrays of samples, got shapes "
                         f"{X.shape} and {y.shape}")
    if len(X) != len(y):
        raise InputError(f"{what}: X has {len(X)} samples but y has {len(y)}")
    if len(X) == 0:
        raise InputError(f"{what}: no samples")
    return X, y


def evaluate(model, X, y, batch_size: int = 256) -> tuple[float, float | None]:
    """``(mean loss, accuracy)`` over ``(X, y)`` in eval mode (batch norm's running
    statistics, no dropout: the loss of ``model(X)``, as PyTorch's ``model.eval()``);
    accuracy only for class-label losses."""
    X, y = _check_data(X, y, model, "evaluate")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise InputError(f"evaluate: batch_size must be an int >= 1, got {batch_size!r}")
    total, correct = 0.0, 0
    classify = model.loss_name in F.CLASS_LABEL_LOSSES
    for i in range(0, len(X), batch_size):
        xb, yb = X[i:i + batch_size], y[i:i + batch_size]
        total += float(model._run("loss", xb, yb, copy=False)[0]) * len(xb)
        if classify:
            correct += int(np.sum(np.argmax(model(xb), axis=1) == yb))
    return total / len(X), (correct / len(X) if classify else None)


def fit(model, X, y, epochs: int = 1, batch_size: int = 32, shuffle: bool = True,
        validation_data=None, seed: int = 0, progress: bool = True, checkpoint=None,
        resume: bool = False, schedule=None, check_finite: bool = True,
        drop_last: bool = False) -> History:
    """Train ``model`` (a CompiledModel with loss and optimizer) for ``epochs`` epochs.

    ``checkpoint``: a .npz path saved atomically after every epoch (parameters, optimizer
    state, epoch, shuffling RNG, history). With ``resume=True`` and an existing
    checkpoint, training continues after its epoch and gives the same parameters, bit
    for bit, as a run that was never interrupted. ``schedule``: a
    ``gc.schedules`` object stepped once per epoch. ``check_finite``: stop on a NaN/Inf
    loss (or non-finite data) with a NumericError naming the first bad tensor; the model
    keeps its last finite parameters. ``drop_last``: skip the short last batch of each
    epoch (as PyTorch's DataLoader), which a model with batch norm needs when it would
    hold one sample.
    """
    if model.optimizer is None or model.loss_fn is None:
        raise InputError("fit needs a model compiled with loss= and optimizer=")
    if epochs < 0 or batch_size < 1:
        raise InputError(f"fit: epochs ({epochs}) must be >= 0 and batch_size ({batch_size}) >= 1")
    X, y = _check_data(X, y, model)
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise InputError("fit: validation_data must be a pair (X_val, y_val)")
        _check_data(*validation_data, model, what="validation_data")
    n = len(X) - len(X) % batch_size if drop_last else len(X)
    if n == 0:
        raise InputError(f"fit: drop_last with batch_size {batch_size} leaves no batch of the "
                         f"{len(X)} samples")
    min_batch = model.min_train_batch
    if 0 < n % batch_size < min_batch:
        raise InputError(f"fit: {len(X)} samples in batches of {batch_size} leave a last batch "
                         f"of {n % batch_size}, and the model's batch norm needs at least "
                         f"{min_batch} in training (as PyTorch): pass drop_last=True or "
                         f"another batch_size")
    rng = np.random.default_rng(seed)
    history, start, step = History(), 0, 0
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        info = load_checkpoint(model, checkpoint, rng=rng)
        start, step = info["epoch"], info["step"]
        history = History(**info["extra"].get("history", {}))
        if schedule is not None and "schedule" in info["extra"]:
            schedule.load_state_dict(info["extra"]["schedule"])
    snap = _Snapshot(model) if check_finite else None
    n_batches = (n + batch_size - 1) // batch_size
    for epoch in range(start, epochs):
        order = rng.permutation(len(X)) if shuffle else np.arange(len(X))
        bar = _progress(n_batches, f"epoch {epoch + 1}/{epochs}", progress)
        lr = model.optimizer.lr
        t0 = time.perf_counter()
        total = 0.0
        try:
            for b in range(n_batches):
                idx = order[b * batch_size:(b + 1) * batch_size]
                xb, yb = X[idx], y[idx]
                if check_finite:
                    snap.take()
                loss = model.train_step(xb, yb)
                step += 1
                if check_finite and not np.isfinite(loss):
                    snap.restore()
                    culprit = find_nonfinite(model, xb, yb)
                    raise NumericError(
                        f"training stopped at epoch {epoch + 1}, batch {b + 1}: loss is "
                        f"{loss}; first non-finite tensor: {culprit or 'none found'}")
                total += loss * len(idx)
                if bar is not None:
                    done = min((b + 1) * batch_size, n)
                    bar.set_postfix(loss=f"{total / done:.4g}",
                                    samples_s=f"{done / (time.perf_counter() - t0):.0f}")
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t0
        history.epoch.append(epoch + 1)
        history.loss.append(total / n)
        history.samples_per_sec.append(n / seconds)
        history.seconds.append(seconds)
        history.lr.append(lr)
        if validation_data is not None:
            vl, va = evaluate(model, *validation_data)
            history.val_loss.append(vl)
            history.val_accuracy.append(va)
        if schedule is not None:
            schedule.step()
        if checkpoint is not None:
            extra = {"history": history.as_dict()}
            if schedule is not None:
                extra["schedule"] = schedule.state_dict()
            save_checkpoint(model, checkpoint, epoch=epoch + 1, step=step, rng=rng, extra=extra)
    return history


__all__ = ["fit", "evaluate", "History", "find_nonfinite"]
