"""A population of independent MLPs, evaluated as one batched computation.

Member ``m`` owns slice ``m`` of every parameter (leading dimension ``P``),
so a :class:`~onepass.core.tuner.Tuner` built with ``population=P`` trains
``P`` runs at once; gradients of the summed per-member losses are exactly
each member's own gradients.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .mlp import MLP


class PopulationMLP(nn.Module):
    """``P`` ReLU MLPs ``n_inputs -> *hidden -> n_outputs`` with stacked weights.

    ``forward(x)`` takes inputs shared by all members, shape ``(N, n_inputs)``,
    or one batch per member, ``(P, N, n_inputs)``, and returns ``(P, N, n_outputs)``.
    Weights are stored as ``(P, fan_in, fan_out)`` so each layer is one
    batched matrix product. No BatchNorm: use single runs for that variant.
    """

    def __init__(self, population: int, n_inputs: int, hidden: Sequence[int] = (50,), n_outputs: int = 1):
        super().__init__()
        widths = [n_inputs, *hidden, n_outputs]
        self.population = population
        # Registered layer by layer, weight then bias, in the order of MLP.parameters().
        for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            self.register_parameter(f"weight{k}", nn.Parameter(torch.empty(population, a, b)))
            self.register_parameter(f"bias{k}", nn.Parameter(torch.empty(population, 1, b)))
        self.layers = len(widths) - 1

    @property
    def weights(self) -> list[Tensor]:
        return [getattr(self, f"weight{k}") for k in range(self.layers)]

    @property
    def biases(self) -> list[Tensor]:
        return [getattr(self, f"bias{k}") for k in range(self.layers)]

    @staticmethod
    def to_member_layout(tensors: Sequence[Tensor], index: int) -> list[Tensor]:
        """Slice ``index`` of tensors shaped like this model's parameters (weights,
        or per-weight hyperparameters) in the layout of :meth:`MLP.parameters`."""
        return [t[index].T if t.shape[1] != 1 else t[index, 0] for t in tensors]

    @classmethod
    def from_models(cls, models: Sequence[MLP]) -> "PopulationMLP":
        """Stack the weights of single :class:`MLP` runs (without BatchNorm)."""
        linears = [[m for m in model if isinstance(m, nn.Linear)] for model in models]
        if any(isinstance(m, nn.BatchNorm1d) for model in models for m in model):
            raise ValueError("PopulationMLP has no BatchNorm variant")
        first = linears[0]
        widths = [first[0].in_features] + [layer.out_features for layer in first]
        population = cls(len(models), widths[0], widths[1:-1], widths[-1]).to(first[0].weight)
        with torch.no_grad():
            for k in range(len(first)):
                population.weights[k].copy_(torch.stack([ls[k].weight.T for ls in linears]))
                population.biases[k].copy_(torch.stack([ls[k].bias[None] for ls in linears]))
        return population

    def member(self, index: int) -> MLP:
        """Member ``index`` as a stand-alone :class:`MLP` (a copy)."""
        widths = [self.weights[0].shape[1]] + [w.shape[2] for w in self.weights]
        model = MLP(widths[0], widths[1:-1], widths[-1]).to(self.weights[0])
        with torch.no_grad():
            for target, value in zip(model.parameters(), self.to_member_layout(list(self.parameters()), index)):
                target.copy_(value)
        return model

    def forward(self, x: Tensor) -> Tensor:
        # matmul + add rather than baddbmm: under torch.compile a product with
        # one output column becomes a fused reduction instead of a batched GEMM
        # call (MKL's is slow for it): 40% off a UCI population's gradient.
        last = self.layers - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.matmul(x, w) + b
            if k < last:
                x = torch.relu(x)
        return x


def member_mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error of each member: ``(P, N, k)`` against ``(N, k)`` → ``(P,)``."""
    return (outputs - targets).pow(2).flatten(1).mean(1)
