"""Multi-layer perceptrons (the paper's UCI and Fashion-MNIST models)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    """Fully connected ReLU network ``n_inputs -> *hidden -> n_outputs``.

    Each hidden ``Linear`` is followed by an optional ``BatchNorm1d`` (before
    the activation) and a ``ReLU``; the output layer is a bare ``Linear``.
    ``MLP(8)`` is the paper's UCI model 8-50-1, ``MLP(784, n_outputs=10)`` its
    Fashion-MNIST one.
    """

    def __init__(
        self,
        n_inputs: int,
        hidden: Sequence[int] = (50,),
        n_outputs: int = 1,
        batch_norm: bool = False,
    ):
        layers: list[nn.Module] = []
        width = n_inputs
        for units in hidden:
            layers.append(nn.Linear(width, units))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(nn.ReLU())
            width = units
        layers.append(nn.Linear(width, n_outputs))
        super().__init__(*layers)


MODEL_KINDS = ("mlp",)


def build_model(spec: dict, n_inputs: int, n_outputs: int) -> nn.Module:
    """Build a model from a config mapping such as ``{"kind": "mlp", "hidden": [50]}``.

    Keys for ``kind: mlp``: ``hidden`` (list of widths, default ``[50]``) and
    ``batch_norm`` (default false). Raises ``ValueError`` naming an unknown
    kind or unexpected keys.
    """
    options = dict(spec)
    kind = options.pop("kind", None)
    if kind != "mlp":
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(MODEL_KINDS)}")
    unknown = set(options) - {"hidden", "batch_norm"}
    if unknown:
        raise ValueError(f"unexpected keys for model kind 'mlp': {sorted(unknown)}")
    return MLP(
        n_inputs,
        hidden=tuple(options.get("hidden", (50,))),
        n_outputs=n_outputs,
        batch_norm=bool(options.get("batch_norm", False)),
    )
