"""Checkpoints: parameters, buffers, optimizer state, counters and RNG state in one .npz.

Saving is atomic: the archive is written to a temporary file in the same directory,
flushed to disk, then renamed over the target with ``os.replace``. A save that is
interrupted (crash, SIGKILL, full disk) leaves the previous checkpoint intact.

>>> import os, tempfile, numpy as np, graphc as gc
>>> m = gc.compile(gc.nn.Linear(2, 1), input_shape=(None, 2), loss="mse",
...                optimizer=gc.optim.SGD(lr=0.1), dtype="float64")
>>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
>>> save_checkpoint(m, path, epoch=3)
>>> load_checkpoint(m, path)["epoch"]
3
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from graphc.ir import InputError, ShapeError

FORMAT = 1
_P, _B, _S = "param/", "buffer/", "state/"


def _rng_state(rng):
    if rng is None:
        return ""
    return json.dumps(rng.bit_generator.state)


def save_checkpoint(model, path, epoch: int = 0, step: int = 0, rng=None,
                    extra: dict | None = None):
    """Write ``model``'s parameters, buffers, optimizer state, learning rate, ``epoch``,
    ``step`` and ``rng`` (a ``np.random.Generator``) state to ``path`` atomically."""
    path = os.fspath(path)
    arrays = {}
    arrays.update({_P + k: v for k, v in model._params.items()})
    arrays.update({_B + k: v for k, v in model._buffers.items()})
    arrays.update({_S + k: v for k, v in model._state.items()})
    meta = {"format": FORMAT, "epoch": int(epoch), "step": int(step),
            "lr": None if model.optimizer is None else float(model.optimizer.lr),
            "dtype": model.dtype, "extra": extra or {},
            "optimizer": None if model.optimizer is None else type(model.optimizer).__name__}
    arrays["meta"] = np.array(json.dumps(meta))
    arrays["rng"] = np.array(_rng_state(rng))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_checkpoint(model, path, rng=None) -> dict:
    """Restore ``model`` (in place) from ``path``; set ``rng``'s state if given.

    Returns ``{"epoch", "step", "lr", "extra"}``. Shapes and names must match the model.
    """
    path = os.fspath(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read checkpoint {path!r}: {exc}") from None
    with data:
        if "meta" not in data.files or "rng" not in data.files:
            raise InputError(f"{path!r} is not a graphc checkpoint (no 'meta' entry; it holds "
                             f"{sorted(data.files)[:5]})")
        meta = json.loads(str(data["meta"]))
        params = {k[len(_P):]: data[k] for k in data.files if k.startswith(_P)}
        buffers = {k[len(_B):]: data[k] for k in data.files if k.startswith(_B)}
        state = {k[len(_S):]: data[k] for k in data.files if k.startswith(_S)}
        rng_state = str(data["rng"])
    if meta.get("dtype") != model.dtype:
        raise InputError(f"checkpoint {path!r} holds {meta.get('dtype')} values; the model is "
                         f"{model.dtype}")
    saved_opt = meta.get("optimizer")   # absent in checkpoints written before it was kept
    model_opt = None if model.optimizer is None else type(model.optimizer).__name__
    if saved_opt is not None and model_opt is not None and saved_opt != model_opt:
        raise InputError(f"checkpoint {path!r} holds {saved_opt} state; the model trains with "
                         f"{model_opt}")
    model.load_parameters({**params, **buffers})
    for name, value in state.items():
        old = model._state.get(name)
        if old is not None and old.shape != value.shape:
            raise ShapeError(f"checkpoint {path!r}: optimizer state {name} has shape "
                             f"{value.shape}, the model has {old.shape}")
        if old is not None:
            old[...] = value          # in place, like parameters
        else:
            model._state[name] = np.array(value, dtype=model.dtype)
    if meta.get("lr") is not None and model.optimizer is not None:
        model.optimizer.lr = meta["lr"]
    if rng is not None and rng_state:
        rng.bit_generator.state = json.loads(rng_state)
    return {"epoch": meta["epoch"], "step": meta["step"], "lr": meta["lr"],
            "extra": meta["extra"], "rng": json.loads(rng_state) if rng_state else None}


__all__ = ["save_checkpoint", "load_checkpoint"]
