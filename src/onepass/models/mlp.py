"""Multi-layer perceptrons (the paper's UCI and Fashion-MNIST models)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from onepass.models.lstm import LSTMLanguageModel
from onepass.models.resnet import ResNet18


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


MODEL_KINDS = ("mlp", "lstm", "resnet18")


def build_model(spec: dict, n_inputs: int, n_outputs: int) -> nn.Module:
    """Build a model from a config mapping such as ``{"kind": "mlp", "hidden": [50]}``.

    Keys per kind (all optional):

    * ``mlp``: ``hidden`` (list of widths, default ``[50]``) and
      ``batch_norm`` (default false); ``n_inputs -> hidden -> n_outputs``.
    * ``lstm``: :class:`~onepass.models.lstm.LSTMLanguageModel` over a
      vocabulary of ``n_inputs`` words (``n_outputs`` must equal it), with
      ``embedding_dim``, ``hidden_dim`` (default 650 each), ``num_layers``
      (2), ``dropout`` (0.5), ``tie_weights`` (false) and
      ``double_backward`` (true).
    * ``resnet18``: :class:`~onepass.models.resnet.ResNet18` with
      ``n_outputs`` classes and ``n_inputs`` image channels; ``width``
      (default 64: channels of the first stage).

    Raises ``ValueError`` naming an unknown kind or unexpected keys.
    """
    options = dict(spec)
    kind = options.pop("kind", None)
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(MODEL_KINDS)}")
    allowed = {
        "mlp": {"hidden", "batch_norm"},
        "lstm": {"embedding_dim", "hidden_dim", "num_layers", "dropout", "tie_weights",
                 "double_backward"},
        "resnet18": {"width"},
    }[kind]
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unexpected keys for model kind {kind!r}: {sorted(unknown)}")
    if kind == "lstm":
        if n_outputs != n_inputs:
            raise ValueError(f"an lstm language model predicts its own vocabulary: "
                             f"n_outputs={n_outputs} differs from n_inputs={n_inputs}")
        return LSTMLanguageModel(n_inputs, **options)
    if kind == "resnet18":
        return ResNet18(num_classes=n_outputs, in_channels=n_inputs, **options)
    return MLP(
        n_inputs,
        hidden=tuple(options.get("hidden", (50,))),
        n_outputs=n_outputs,
        batch_norm=bool(options.get("batch_norm", False)),
    )
