"""The exception hierarchy every graphc layer raises.

Each error carries a one-line message that names the node, layer or field involved
and the shapes or values that disagree, so users never see a raw Numba or KeyError
traceback.
"""


class GraphcError(Exception):
    """Base class of every error graphc raises on purpose."""


class ShapeError(GraphcError, ValueError):
    """Shapes do not fit an op, a layer or a call, e.g. ``matmul (N, 64) @ (32, 10)``."""


class DTypeError(GraphcError, TypeError):
    """A dtype is unsupported or does not match what the graph was compiled for."""


class OpError(GraphcError, KeyError):
    """An op name, loss name or attribute is unknown or malformed."""

    def __str__(self):  # KeyError would repr() the message, adding quotes
        return str(self.args[0]) if self.args else ""


class GraphError(GraphcError):
    """The graph itself is malformed (verifier failures, cycles, dangling edges)."""


class SpecError(GraphcError, ValueError):
    """A model spec (TOML/JSON/Python) is malformed: names the file, layer and field."""


class InputError(GraphcError, ValueError):
    """Data passed at call time is wrong: shape, dtype, label range, non-finite values."""


class CompileError(GraphcError):
    """Code generation or compilation failed or the target is unavailable."""


class NumericError(GraphcError, FloatingPointError):
    """A NaN or Inf appeared; names the first tensor that produced it."""
