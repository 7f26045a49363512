"""A generated noisy-label token task, and the held-out workload the recipe
issue's new user wrote: an embedding + MLP classifier with two parameter
groups on 2,000 rows, which overfits.

``token_task`` makes sequences of 24 tokens; about a quarter of the positions
hold a keyword from one of 4 groups, half of them from the label's group; a
share of the labels is flipped. ``hf_bert`` uses it at seed 0 with 10% noise;
``token_mlp`` at seed 1 with 10% noise, 1,600 training, 400 validation and
1,000 test rows: a 32-wide embedding averaged over the sequence, then
32-128-128-4, the embedding in a group of its own without weight decay, as a
user writes for AdamW. Mini-batches of 32, 1,500 updates (30 epochs of the
training split: the validation loss is lowest near update 450 and then
rises). It is held out: it checks the recipe and chooses nothing.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from .base import Data, Workload

VOCAB, LENGTH, CLASSES, GROUP = 64, 24, 4, 4


def token_task(seed: int, noise: float, sizes: tuple[int, int, int]) -> Data:
    """Train, validation and test splits of ``sizes`` rows, generated from ``seed``."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    labels = rng.integers(CLASSES, size=n)
    tokens = rng.integers(2 + CLASSES * GROUP, VOCAB, size=(n, LENGTH))          # filler
    keyword = rng.random((n, LENGTH)) < 0.25
    own = rng.random((n, LENGTH)) < 0.5
    group = np.where(own, labels[:, None], rng.integers(CLASSES, size=(n, LENGTH)))
    tokens = np.where(keyword, 2 + group * GROUP + rng.integers(GROUP, size=(n, LENGTH)), tokens)
    tokens[:, 0] = 1                                                             # [CLS]
    flip = rng.random(n) < noise
    labels = np.where(flip, rng.integers(CLASSES, size=n), labels)
    x, y = torch.tensor(tokens, dtype=torch.int64), torch.tensor(labels, dtype=torch.int64)
    a, b = sizes[0], sizes[0] + sizes[1]
    return Data(x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], info={"label_noise": noise})


class TokenMLP(nn.Module):
    """Embedding (64 tokens x 32) averaged over the sequence, then 32-128-128-4."""

    def __init__(self, width: int = 32, hidden: int = 128):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, CLASSES))

    def forward(self, tokens):
        return self.mlp(self.embedding(tokens).mean(1))


def _groups(model: TokenMLP) -> list[dict]:
    return [{"params": list(model.embedding.parameters()), "weight_decay": 0.0},
            {"params": list(model.mlp.parameters())}]


@functools.lru_cache(maxsize=1)
def _load() -> Data:
    return token_task(seed=1, noise=0.1, sizes=(1600, 400, 1000))


def workloads() -> list[Workload]:
    return [Workload(name="token_mlp", kind="classification", family="tokens", steps=1500, batch=32,
                     build_data=_load, build_model=lambda seed: TokenMLP(), groups=_groups)]
