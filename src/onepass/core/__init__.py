"""Core numerics: update rules, hyperparameter slots, hypergradient estimators,
how a step is executed, and the tuner. No I/O."""
from .budget import CostBudget
from .estimators import ESTIMATORS, StepResult
from .execution import NonFiniteError
from .hyperparameters import TRANSFORMS, to_natural, to_raw
from .products import Gradient, LossPart
from .rules import RULES, UpdateRule, adam_update, get_rule, sgd_update
from .solvers import conjugate_gradient, neumann_series
from .tuner import DataParallel, Tuner

__all__ = [
    "CostBudget", "DataParallel", "ESTIMATORS", "Gradient", "LossPart", "RULES", "TRANSFORMS", "NonFiniteError",
    "StepResult", "Tuner", "UpdateRule",
    "adam_update", "conjugate_gradient", "get_rule", "neumann_series", "sgd_update", "to_natural",
    "to_raw",
]
