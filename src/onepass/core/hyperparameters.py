"""Hyperparameters in a transformed space where they are unconstrained.

``lr = 10^a``, ``weight_decay = 10^b``, ``eps = 10^e``, ``momentum = sigmoid(c)``,
``beta1 = sigmoid(d)``, ``beta2 = sigmoid(f)``.  Hypergradients are taken with
respect to the raw values ``a, b, c, ...``; the transform is part of the graph.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

_LN10 = math.log(10.0)


@dataclass(frozen=True)
class Transform:
    """Maps a raw, unconstrained value to the hyperparameter's natural value."""

    to_natural: Callable[[Tensor], Tensor]
    to_raw: Callable[[Tensor], Tensor]
    domain: str
    contains: Callable[[float], bool]
    slope: Callable[[Tensor], Tensor]          # d natural / d raw, as a function of natural
    into_domain: Callable[[Tensor], Tensor]    # clamp a natural value into the open domain


LOG10 = Transform(lambda a: torch.exp(a * _LN10), torch.log10, "positive", lambda x: x > 0,
                  lambda x: x * _LN10, lambda x: x.clamp_min(1e-30))
LOGIT = Transform(torch.sigmoid, torch.logit, "strictly between 0 and 1", lambda x: 0 < x < 1,
                  lambda x: x * (1 - x), lambda x: x.clamp(1e-6, 1 - 1e-6))

TRANSFORMS: dict[str, Transform] = {
    "lr": LOG10,
    "weight_decay": LOG10,
    "eps": LOG10,
    "momentum": LOGIT,
    "beta1": LOGIT,
    "beta2": LOGIT,
}

GRANULARITIES = ("scalar", "group", "tensor", "weight")


# Spellings people use for our names; difflib alone cannot see these.
ALIASES = {
    "learning_rate": "lr", "learningrate": "lr", "step_size": "lr", "eta": "lr",
    "wd": "weight_decay", "weightdecay": "weight_decay", "l2": "weight_decay",
    "mu": "momentum", "beta_1": "beta1", "beta_2": "beta2", "epsilon": "eps",
}


def closest(name: str, choices) -> str:
    """A 'did you mean' suffix for an unknown name, or an empty string."""
    choices = list(choices)
    alias = ALIASES.get(name.lower())
    match = [alias] if alias in choices else difflib.get_close_matches(name, choices, n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def check_tunable(name: str, value: float) -> None:
    """Refuse an initial value that the transform cannot represent."""
    transform = TRANSFORMS[name]
    if not (math.isfinite(value) and transform.contains(value)):
        raise ValueError(
            f"cannot tune {name}={value!r}: it is optimised in a transformed space and must be "
            f"{transform.domain} (for example start weight_decay at 1e-7 rather than 0)")


def to_raw(name: str, natural: Tensor) -> Tensor:
    return TRANSFORMS[name].to_raw(natural)


def to_natural(name: str, raw: Tensor) -> Tensor:
    return TRANSFORMS[name].to_natural(raw)
