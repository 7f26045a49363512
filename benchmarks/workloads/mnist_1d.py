"""MNIST-1D (Greydanus, 2020): the ``mnist1d`` package's
``make_dataset(get_dataset_args())`` generates its 4,000/1,000 train/test split
locally (seed 42, about a second). The last 800 training rows are the
validation split. An MLP 40-100-100-10 and a small 1-D CNN; mini-batches of
128, test cross-entropy and accuracy. The package's README reports test
accuracy 68% for its MLP and 94% for its CNN (their own, longer, training)."""
from __future__ import annotations

import functools

import torch
from torch import nn

from onepass.models.mlp import MLP

from .base import Data, Workload

N_VAL = 800
PUBLISHED = {"mnist1d_mlp": 0.68, "mnist1d_cnn": 0.94}


@functools.lru_cache(maxsize=1)
def load() -> Data:
    from mnist1d.data import get_dataset_args, make_dataset
    d = make_dataset(get_dataset_args())
    x = torch.tensor(d["x"], dtype=torch.float32)
    y = torch.tensor(d["y"], dtype=torch.int64)
    n_train = len(x) - N_VAL
    return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                torch.tensor(d["x_test"], dtype=torch.float32), torch.tensor(d["y_test"], dtype=torch.int64))


class CNN1D(nn.Module):
    """1x40 -> three conv layers of 25 channels (kernel 5, stride 2, 1, 1) -> 10."""

    def __init__(self, channels: int = 25):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(channels * 5, 10))

    def forward(self, x):
        return self.body(x.unsqueeze(1))


def workloads() -> list[Workload]:
    return [
        Workload(name="mnist1d_mlp", kind="classification", family="mnist1d", steps=2000, batch=128,
                 build_data=load, build_model=lambda seed: MLP(40, hidden=(100, 100), n_outputs=10),
                 reference={"published_accuracy": PUBLISHED["mnist1d_mlp"]}),
        Workload(name="mnist1d_cnn", kind="classification", family="mnist1d", steps=2000, batch=128,
                 build_data=load, build_model=lambda seed: CNN1D(),
                 reference={"published_accuracy": PUBLISHED["mnist1d_cnn"]}),
    ]
