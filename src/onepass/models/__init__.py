"""Neural network models."""

from onepass.models.lstm import LSTMLanguageModel, detach_hidden
from onepass.models.mlp import MLP, MODEL_KINDS, build_model
from onepass.models.population import PopulationMLP, member_mse
from onepass.models.resnet import ResNet18

__all__ = [
    "LSTMLanguageModel",
    "MLP",
    "MODEL_KINDS",
    "PopulationMLP",
    "ResNet18",
    "build_model",
    "detach_hidden",
    "member_mse",
]
