"""onepass: tune an optimiser's hyperparameters during one training run.

The public API is :class:`Tuner`; the update rules and hypergradient
estimators it is built on live in :mod:`onepass.core`.
"""
from .core import NonFiniteError, StepResult, Tuner, get_rule

__version__ = "0.1.0"
__all__ = ["NonFiniteError", "StepResult", "Tuner", "get_rule", "__version__"]
