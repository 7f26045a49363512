"""The train / validation / test tensors every dataset loader returns."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch


@dataclasses.dataclass
class Splits:
    """Inputs and targets of the three splits; dataset classes add their
    statistics as further fields."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def x_trainval(self) -> torch.Tensor:
        """Train and validation inputs together, for algorithms without a validation split."""
        return torch.cat([self.x_train, self.x_val])

    @property
    def y_trainval(self) -> torch.Tensor:
        """Train and validation targets together, matching :attr:`x_trainval`."""
        return torch.cat([self.y_train, self.y_val])

    def to(self, device=None, dtype=None):
        """A copy with every tensor on ``device``; ``dtype`` casts the floating
        tensors only (integer labels stay integer)."""
        def move(value):
            if not isinstance(value, torch.Tensor):
                return value
            return value.to(device=device, dtype=dtype if value.is_floating_point() else None)
        return dataclasses.replace(self, **{f.name: move(getattr(self, f.name))
                                            for f in dataclasses.fields(self)})


def validation_split(n: int, validation_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_index, val_index)`` of ``n`` training examples: the first
    ``validation_size`` entries of ``numpy.random.default_rng(seed).permutation(n)``
    are the validation set, the rest the training set, both in permuted order.

    Raises ``ValueError`` unless ``0 <= validation_size < n``.
    """
    if not 0 <= validation_size < n:
        raise ValueError(f"validation_size={validation_size} must lie in [0, {n}) "
                         f"for {n} training images")
    order = np.random.default_rng(seed).permutation(n)
    return order[validation_size:], order[:validation_size]


def class_labels(values: np.ndarray) -> torch.Tensor:
    """Class indices as the ``int64`` tensor ``cross_entropy`` takes."""
    return torch.as_tensor(np.ascontiguousarray(values), dtype=torch.int64)
