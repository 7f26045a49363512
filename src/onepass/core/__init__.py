"""Core numerics: update rules, hypergradient estimators and the tuner. No I/O."""
from .hypergradients import (
    baydin_hypergradient_functional,
    implicit_hypergradient,
    implicit_hypergradient_functional,
    neumann_series,
    unrolled_hypergradient_functional,
)
from .hyperparameters import TRANSFORMS, to_natural, to_raw
from .rules import RULES, UpdateRule, adam_update, get_rule, sgd_update
from .tuner import NonFiniteError, StepResult, Tuner

__all__ = [
    "RULES", "TRANSFORMS", "NonFiniteError", "StepResult", "Tuner", "UpdateRule",
    "adam_update", "baydin_hypergradient_functional", "get_rule", "implicit_hypergradient",
    "implicit_hypergradient_functional", "neumann_series", "sgd_update", "to_natural", "to_raw",
    "unrolled_hypergradient_functional",
]
