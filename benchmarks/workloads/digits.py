"""scikit-learn's bundled 8x8 digits (1,797 images; fixed permutation, 60/20/20
train/validation/test, pixels standardised on train+validation): an MLP
64-128-10 and a small CNN with BatchNorm and dropout; mini-batches of 128,
test cross-entropy and accuracy."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from onepass.models.mlp import MLP

from .base import Data, Workload


def load() -> Data:
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order]
    n_test = n_val = len(x) // 5
    n_trainval = len(x) - n_test
    mean, std = x[:n_trainval].mean(0), x[:n_trainval].std(0)
    x = (x - mean) / np.where(std > 0, std, 1.0)
    x, y = torch.tensor(x), torch.tensor(y, dtype=torch.int64)
    n_train = n_trainval - n_val
    return Data(x[:n_train], y[:n_train], x[n_train:n_trainval], y[n_train:n_trainval], x[n_trainval:],
                y[n_trainval:])


class DigitsCNN(nn.Module):
    """1x8x8 -> conv 16 + BN -> conv 32 + BN -> 2x2 max-pool -> dropout 0.25 -> 10."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.25), nn.Linear(32 * 4 * 4, 10))

    def forward(self, x):
        return self.body(x.reshape(-1, 1, 8, 8))


def workloads() -> list[Workload]:
    return [
        Workload(name="digits_mlp", kind="classification", family="digits", steps=2000, batch=128,
                 build_data=load, build_model=lambda seed: MLP(64, hidden=(128,), n_outputs=10)),
        Workload(name="digits_cnn", kind="classification", family="digits", steps=1000, batch=128,
                 build_data=load, build_model=lambda seed: DigitsCNN()),
    ]
