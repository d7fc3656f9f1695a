"""``graphc.nn``: modules, parameters and functional ops named as in ``torch.nn``."""
from .. import functional
from .module import Buffer, Module, Parameter, manual_seed
from .layers import (ELU, GELU, SELU, Embedding, Hardtanh, Identity, LayerNorm, LeakyReLU, Linear,
                     LogSigmoid, LogSoftmax, Mish, ModuleList, ReLU, ReLU6, Sequential,
                     Sigmoid, SiLU, Softmax, Softplus, Softsign, Tanh)
from .conv import (AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten,  # noqa: F401
                   MaxPool2d)

__all__ = ["functional", "Module", "Parameter", "Buffer", "manual_seed", "Linear", "ReLU",
           "Sigmoid", "Tanh", "Softplus", "Identity", "Softmax", "LogSoftmax", "Sequential",
           "ModuleList", "Conv2d", "MaxPool2d", "AvgPool2d", "Flatten", "BatchNorm1d",
           "BatchNorm2d", "Dropout", "LeakyReLU", "ELU", "GELU", "LayerNorm", "SiLU", "Mish",
           "LogSigmoid", "Softsign", "ReLU6", "SELU", "Hardtanh", "Embedding"]
