"""graphc.passes: graph -> graph transforms (autodiff, optimizer update, cleanup, fusion)."""
from .autodiff import add_gradients
from .dce import dce
from .cse import cse
from .collect import collect_terms
from .fold import fold
from .simplify import simplify
from .optimizer import (apply_optimizer, OptimizerRule, OPTIMIZER_RULES, STEP_STATE,
                        transform_gradients)
from .manager import PassManager, PassRecord

__all__ = ["add_gradients", "dce", "cse", "collect_terms", "fold", "simplify", "apply_optimizer",
           "OptimizerRule", "OPTIMIZER_RULES", "STEP_STATE", "transform_gradients",
           "PassManager", "PassRecord"]
