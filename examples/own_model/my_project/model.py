"""The model: a small residual network of tanh blocks.

``onepass`` calls :func:`build` (named in the config as
``model.target: my_project.model:build``) with ``model.kwargs`` right after
``torch.manual_seed(seed)``, and expects a ``torch.nn.Module`` whose output has
the targets' shape (here ``(n, 1)``; logits ``(n, classes)`` for classification).
"""
from torch import nn


class ResidualTanh(nn.Module):
    """``x -> Linear -> depth × (x + tanh(Linear(x))) -> Linear``."""

    def __init__(self, in_features: int, hidden: int, depth: int, out_features: int):
        super().__init__()
        self.inp = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, out_features)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h).tanh()
        return self.out(h)


def build(in_features: int = 4, hidden: int = 32, depth: int = 2, out_features: int = 1) -> nn.Module:
    """The model of the example config."""
    return ResidualTanh(in_features, hidden, depth, out_features)
