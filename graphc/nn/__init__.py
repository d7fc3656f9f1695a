"""``graphc.nn``: modules, parameters and functional ops named as in ``torch.nn``."""
from .. import functional
from .module import Buffer, Module, Parameter, manual_seed
from .layers import (Identity, Linear, LogSoftmax, ModuleList, ReLU, Sequential, Sigmoid,
                     Softmax, Softplus, Tanh)

__all__ = ["functional", "Module", "Parameter", "Buffer", "manual_seed", "Linear", "ReLU",
           "Sigmoid", "Tanh", "Softplus", "Identity", "Softmax", "LogSoftmax", "Sequential",
           "ModuleList"]
