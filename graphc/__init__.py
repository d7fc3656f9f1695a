"""graphc: a compiler for neural networks.

>>> import graphc as gc
>>> def f(x1, x2):
...     return gc.log(x1) + x1 * x2 - gc.sin(x2)
>>> round(float(gc.jit(f)(2.0, 5.0)), 4)
11.6521
"""
from graphc.ir import (CompileError, DTypeError, GraphcError, GraphError, InputError,
                       NumericError, OpError, ShapeError, SpecError)

from . import datasets, functional, nn, optim, plots, schedules, training
from .checkpoint import load_checkpoint, save_checkpoint
from .compiled import CompiledModel, compile
from .functional import (abs, amax, amin, argmax, argmin, clamp, clip, cos, erf, exp,
                         floor_divide, log, log_softmax, logsumexp, max, maximum, mean, min,
                         minimum, neg, relu, remainder,
                         reshape, sigmoid, sin, softmax, softplus, sqrt, square, std, sum,
                         tanh, transpose, var, where, cat, concat, stack, take, index_select)
from .jit import grad, jit, value_and_grad
from .nn.module import manual_seed
from .tracing import Tensor
from .training import History, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "jit", "grad", "value_and_grad", "compile", "CompiledModel", "Tensor", "nn", "optim",
    "functional", "datasets", "manual_seed", "schedules", "plots", "training", "fit", "evaluate", "History",
    "save_checkpoint", "load_checkpoint",
    "exp", "log", "sin", "cos", "tanh", "sigmoid", "relu", "softplus", "sqrt", "abs",
    "square", "maximum", "minimum", "sum", "mean", "max", "amax", "min", "amin", "argmax",
    "argmin", "var", "std", "logsumexp", "clamp", "clip", "erf", "neg", "softmax",
    "log_softmax", "remainder", "floor_divide",
    "reshape", "transpose", "where", "cat", "concat", "stack", "take", "index_select",
    "GraphcError", "ShapeError", "DTypeError", "OpError", "GraphError", "SpecError",
    "InputError", "CompileError", "NumericError",
]
from .functional import avg_pool2d, batch_norm, conv2d, dropout, max_pool2d  # noqa: E402,F401
