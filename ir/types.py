"""Tensor types: a static shape with an optional symbolic batch dimension, and a dtype.

The batch dimension is written ``N`` (the string ``BATCH``); every other dimension is
a concrete int. One compiled graph serves every batch size.

>>> t = TensorType((BATCH, 64), "float32")
>>> t.concrete(128)
(128, 64)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DTypeError, ShapeError

BATCH = "N"
DTYPES = ("float32", "float64", "int64")
FLOAT_DTYPES = ("float32", "float64")


def dtype_name(dtype) -> str:
    """Normalise a dtype spelling (``np.float32``, ``"f4"``, ``"float32"``) to its name."""
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise DTypeError(f"unknown dtype {dtype!r}; graphc supports {', '.join(DTYPES)}") from exc
    if name not in DTYPES:
        raise DTypeError(f"unsupported dtype {name}; graphc supports {', '.join(DTYPES)}")
    return name


def numpy_dtype(name: str) -> np.dtype:
    return np.dtype(name)


def _check_dim(d):
    if d == BATCH or (isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0):
        return d if d == BATCH else int(d)
    raise ShapeError(f"bad dimension {d!r}: dimensions are non-negative ints or {BATCH!r}")


def format_shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


@dataclass(frozen=True)
class TensorType:
    """Shape (ints and at most the symbol ``N``) plus dtype name; hashable."""

    shape: tuple
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(_check_dim(d) for d in self.shape))
        object.__setattr__(self, "dtype", dtype_name(self.dtype))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def has_batch(self) -> bool:
        return BATCH in self.shape

    def concrete(self, batch: int | None) -> tuple:
        """The shape with ``N`` replaced by ``batch``."""
        if self.has_batch and batch is None:
            raise ShapeError(f"type {self} needs a batch size")
        return tuple(batch if d == BATCH else d for d in self.shape)

    def numel_static(self):
        """(static factor, batch power): numel = factor * N**power."""
        factor, power = 1, 0
        for d in self.shape:
            if d == BATCH:
                power += 1
            else:
                factor *= d
        return factor, power

    def with_shape(self, shape) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype) -> "TensorType":
        return TensorType(self.shape, dtype)

    def __str__(self):
        short = {"float32": "f32", "float64": "f64", "int64": "i64"}[self.dtype]
        return f"{short}[{', '.join(str(d) for d in self.shape)}]"

    @staticmethod
    def parse(text: str) -> "TensorType":
        """Inverse of ``str``: ``f32[N, 10]`` -> TensorType((N, 10), float32)."""
        long = {"f32": "float32", "f64": "float64", "i64": "int64"}
        text = text.strip()
        head, _, rest = text.partition("[")
        if head not in long or not rest.endswith("]"):
            raise ShapeError(f"cannot parse type {text!r}; expected e.g. f32[N, 10]")
        body = rest[:-1].strip()
        dims = []
        for part in (body.split(",") if body else []):
            part = part.strip()
            dims.append(BATCH if part == BATCH else int(part))
        return TensorType(tuple(dims), long[head])
