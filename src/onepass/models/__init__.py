"""Neural network models."""

from onepass.models.mlp import MLP, MODEL_KINDS, build_model

__all__ = ["MLP", "MODEL_KINDS", "build_model"]
