"""``torch.optim`` optimizers that tune their hyperparameters while they train.

``onepass.optim.SGD``, ``Adam`` and ``AdamW`` take their ``torch.optim``
namesakes' arguments plus the :class:`~onepass.Tuner`'s, and fit an existing
loop: gradient accumulation, ``clip_grad_norm_``, ``GradScaler``, LR
schedulers, DDP and ``optimizer.state_dict()`` keep working. See
:class:`TunedOptimizer` for the loop's side of the contract.
"""
from .fold import Fold
from .optimizer import SGD, Adam, AdamW, TunedOptimizer

__all__ = ["SGD", "Adam", "AdamW", "Fold", "TunedOptimizer"]
