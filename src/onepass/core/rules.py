"""Differentiable weight-update rules.

A rule is a pair of pure functions, in the spirit of optax:

* ``init(weights) -> state``
* ``update(weights, state, grads, hyper) -> (weights, state)``

``weights`` and ``grads`` are tuples of tensors, ``state`` is a dict of tensors
and tuples of tensors, and ``hyper`` maps a hyperparameter name to its value in
natural units: one tensor shared by every weight tensor, or a sequence with one
entry per weight tensor (a 0-d tensor, or a tensor of the weight's shape for a
per-weight value).  Nothing is done in place and no Python branch depends on a
tensor's value, so a rule can be differentiated with ``torch.autograd`` or
``torch.func`` and batched with ``torch.func.vmap``.

The arithmetic follows ``torch.optim.SGD``, ``Adam`` and ``AdamW`` exactly, so
that a rule and its ``torch.optim`` twin agree step by step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence, Union

import torch
from torch import Tensor

Weights = tuple[Tensor, ...]
State = dict
HyperValue = Union[Tensor, Sequence[Tensor]]
Hyper = Mapping[str, HyperValue]


def _at(value: HyperValue, index: int) -> Tensor:
    """The value of a hyperparameter for weight tensor ``index``."""
    return value if isinstance(value, Tensor) else value[index]


@dataclass(frozen=True)
class UpdateRule:
    """A named weight-update rule with its hyperparameters and their defaults."""

    name: str
    defaults: Mapping[str, float]
    init: Callable[[Weights], State]
    update: Callable[..., tuple[Weights, State]]
    options: Mapping[str, object] = field(default_factory=dict)

    @property
    def hyperparameter_names(self) -> tuple[str, ...]:
        return tuple(self.defaults)


# --- SGD ---------------------------------------------------------------------

def sgd_init(weights: Weights) -> State:
    """Momentum buffers start at zero, so the first step gives ``b_1 = g``."""
    return {"momentum_buffer": tuple(torch.zeros_like(w) for w in weights)}


def sgd_update(weights: Weights, state: State, grads: Weights, hyper: Hyper,
               *, nesterov: bool = False) -> tuple[Weights, State]:
    """SGD in PyTorch's convention (no dampening).

    ``g = ∇L_T + ξ w``;  ``b_t = μ b_{t-1} + g``;  ``w_t = w_{t-1} − η b_t``
    (Nesterov: ``w_t = w_{t-1} − η (g + μ b_t)``).
    """
    lr, momentum = hyper["lr"], hyper.get("momentum")
    weight_decay = hyper.get("weight_decay")
    new_weights, new_buffers = [], []
    for i, (w, g, b) in enumerate(zip(weights, grads, state["momentum_buffer"])):
        if weight_decay is not None:
            g = g + _at(weight_decay, i) * w
        if momentum is None:
            b, direction = g, g
        else:
            mu = _at(momentum, i)
            b = mu * b + g
            direction = g + mu * b if nesterov else b
        new_weights.append(w - _at(lr, i) * direction)
        new_buffers.append(b)
    return tuple(new_weights), {"momentum_buffer": tuple(new_buffers)}


# --- Adam / AdamW ------------------------------------------------------------

def adam_init(weights: Weights) -> State:
    return {
        "step": torch.zeros((), dtype=weights[0].dtype, device=weights[0].device),
        "exp_avg": tuple(torch.zeros_like(w) for w in weights),
        "exp_avg_sq": tuple(torch.zeros_like(w) for w in weights),
    }


def adam_update(weights: Weights, state: State, grads: Weights, hyper: Hyper,
                *, decoupled: bool = False) -> tuple[Weights, State]:
    """Adam (L2 weight decay added to the gradient) or, with ``decoupled``, AdamW.

    ``m = β1 m + (1−β1) g``;  ``v = β2 v + (1−β2) g²``;
    ``w = w − η/(1−β1^t) · m / (√v / √(1−β2^t) + ε)``.
    """
    lr, beta1, beta2, eps = hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["eps"]
    weight_decay = hyper.get("weight_decay")
    step = state["step"] + 1
    new_weights, new_m, new_v = [], [], []
    for i, (w, g, m, v) in enumerate(zip(weights, grads, state["exp_avg"], state["exp_avg_sq"])):
        eta, b1, b2 = _at(lr, i), _at(beta1, i), _at(beta2, i)
        if weight_decay is not None:
            if decoupled:
                w = w * (1 - eta * _at(weight_decay, i))
            else:
                g = g + _at(weight_decay, i) * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        bias_correction1 = 1 - b1 ** step
        bias_correction2 = 1 - b2 ** step
        # √(v + tiny): finite derivative where v = 0 (a weight that never had a gradient).
        root_v = torch.sqrt(v + torch.finfo(v.dtype).tiny)
        denom = root_v / torch.sqrt(bias_correction2) + _at(eps, i)
        new_weights.append(w - (eta / bias_correction1) * m / denom)
        new_m.append(m)
        new_v.append(v)
    return tuple(new_weights), {"step": step, "exp_avg": tuple(new_m), "exp_avg_sq": tuple(new_v)}


def _adamw_update(weights, state, grads, hyper):
    return adam_update(weights, state, grads, hyper, decoupled=True)


def _sgd_nesterov_update(weights, state, grads, hyper):
    return sgd_update(weights, state, grads, hyper, nesterov=True)


_ADAM_DEFAULTS = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}

RULES: dict[str, UpdateRule] = {
    "sgd": UpdateRule("sgd", {"lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0}, sgd_init, sgd_update),
    "sgd_nesterov": UpdateRule("sgd_nesterov", {"lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0},
                               sgd_init, _sgd_nesterov_update),
    "adam": UpdateRule("adam", {**_ADAM_DEFAULTS, "weight_decay": 0.0}, adam_init, adam_update),
    "adamw": UpdateRule("adamw", {**_ADAM_DEFAULTS, "weight_decay": 1e-2}, adam_init, _adamw_update),
}


def get_rule(name: str | UpdateRule) -> UpdateRule:
    """Look up a rule by name (``sgd``, ``sgd_nesterov``, ``adam``, ``adamw``)."""
    if isinstance(name, UpdateRule):
        return name
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown update rule {name!r}; choose one of {', '.join(RULES)}") from None
