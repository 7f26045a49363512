"""onepass: tune an optimiser's hyperparameters during one training run.

Start with :mod:`onepass.optim`: ``onepass.optim.SGD``, ``Adam`` and ``AdamW``
are drop-in ``torch.optim`` optimizers that tune their own hyperparameters
(the few lines a training loop changes). :mod:`onepass.integrations` brings
them to Lightning and Hugging Face ``Trainer``. :class:`Tuner` is the layer
underneath, for a loop that hands it the batches itself (the CLI, sweeps and
populations use it); the update rules and hypergradient estimators live in
:mod:`onepass.core`.
"""
from .core import NonFiniteError, StepResult, Tuner, get_rule

__version__ = "0.1.0"
__all__ = ["NonFiniteError", "StepResult", "Tuner", "get_rule", "__version__"]
