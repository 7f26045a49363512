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

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, Union

import torch
from torch import Tensor

Weights = tuple[Tensor, ...]
State = dict
HyperValue = Union[Tensor, Sequence[Tensor]]
Hyper = Mapping[str, HyperValue]


def _at(value: HyperValue, index: int) -> Tensor:
    """The value of a hyperparameter for weight tensor ``index`` (a float or
    tensor is shared by every weight tensor)."""
    return value if isinstance(value, (Tensor, float, int)) else value[index]


@dataclass(frozen=True)
class UpdateRule:
    """A named weight-update rule with its hyperparameters and their defaults.

    ``update_in_place(weights, state, grads, hyper) -> state`` is an optional
    fast twin of ``update`` for steps that are not differentiated: it writes
    the weights (and the state's tensors) in place with ``torch._foreach_*``
    kernels, as ``torch.optim`` does. Its ``hyper`` values are Python floats,
    one float per weight tensor, or one tensor per weight tensor. The tests
    hold the two to the same numbers.
    """

    name: str
    defaults: Mapping[str, float]
    init: Callable[[Weights], State]
    update: Callable[..., tuple[Weights, State]]
    update_in_place: Callable[..., State] | None = None

    @property
    def hyperparameter_names(self) -> tuple[str, ...]:
        return tuple(self.defaults)


def clip_gradients(grads: Weights, max_norm: float, *, per_member: bool = False) -> Weights:
    """Rescale gradients so that their joint 2-norm is at most ``max_norm``.

    The arithmetic of ``torch.nn.utils.clip_grad_norm_`` (factor
    ``min(1, max_norm / (norm + 1e-6))``, one norm over all tensors) as a pure,
    differentiable function, so that it can be part of an update that a
    hypergradient differentiates through (the paper clips at 0.25 for Penn
    Treebank). With ``per_member`` the leading dimension indexes independent
    runs of a population, each clipped by its own norm.
    """
    if per_member:
        squares = sum(g.pow(2).flatten(1).sum(1) for g in grads)
        factor = torch.clamp(max_norm / (squares.sqrt() + 1e-6), max=1.0)
        return tuple(g * factor.view(-1, *[1] * (g.dim() - 1)) for g in grads)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    factor = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return tuple(g * factor for g in grads)


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


def _scaled(tensors, factor):
    if isinstance(factor, float):
        return torch._foreach_mul(tensors, factor)
    return torch._foreach_mul(tensors, list(factor))


def _add_scaled(tensors, others, factor):
    """``tensors + factor * others``, new tensors."""
    if isinstance(factor, float):
        return torch._foreach_add(tensors, others, alpha=factor)
    return torch._foreach_add(tensors, _scaled(others, factor))


def sgd_update_in_place(weights, state, grads, hyper, *, nesterov: bool = False) -> State:
    """:func:`sgd_update`, writing the weights and momentum buffers in place."""
    lr, momentum = hyper["lr"], hyper.get("momentum")
    weight_decay = hyper.get("weight_decay")
    weights, grads = list(weights), list(grads)
    if weight_decay is not None:
        grads = _add_scaled(grads, weights, weight_decay)
    if momentum is None:
        buffers = direction = grads
    else:
        buffers = list(state["momentum_buffer"])
        if isinstance(momentum, float):
            torch._foreach_mul_(buffers, momentum)
        else:
            torch._foreach_mul_(buffers, list(momentum))
        torch._foreach_add_(buffers, grads)
        direction = _add_scaled(grads, buffers, momentum) if nesterov else buffers
    if isinstance(lr, float):
        torch._foreach_add_(weights, direction, alpha=-lr)
    else:
        torch._foreach_sub_(weights, _scaled(direction, lr))
    return {"momentum_buffer": tuple(buffers)}


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


def adam_update_in_place(weights, state, grads, hyper, *, decoupled: bool = False) -> State:
    """:func:`adam_update`, in place. Hyperparameters given as Python floats, or
    one float per weight tensor (the weights that share their values, a
    parameter group, are updated together, as ``torch.optim`` does group by
    group), take ``torch.optim.Adam``'s ``foreach`` operations, and so does a
    learning rate per weight (a tensor of each weight's shape); any other
    tensor takes the differentiable rule's arithmetic."""
    buckets = _float_buckets(hyper, weights)
    if buckets is None:
        new_weights, new_state = adam_update(weights, state, grads, hyper, decoupled=decoupled)
        torch._foreach_copy_(list(weights), list(new_weights))
        return new_state
    step = state["step"] + 1
    t = float(step)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    for values, index in buckets:
        pick = (lambda seq: [seq[i] for i in index]) if len(buckets) > 1 else list
        lr = values["lr"] if "lr" in values else pick(hyper["lr"])      # a float, or a tensor per weight
        _adam_foreach(pick(weights), pick(grads), pick(exp_avg), pick(exp_avg_sq), t, {**values, "lr": lr},
                      decoupled)
    return {"step": step, "exp_avg": tuple(exp_avg), "exp_avg_sq": tuple(exp_avg_sq)}


def _float_buckets(hyper: Hyper, weights: Weights) -> list[tuple[dict, list[int]]] | None:
    """The weight tensors' indices grouped by their hyperparameters' float
    values (``lr`` may instead be a tensor of each weight's shape: then it is
    left out of the grouping and of the values), or None where another value
    is a tensor."""
    n = len(weights)
    if all(isinstance(v, float) for v in hyper.values()):
        return [(dict(hyper), list(range(n)))]

    def per_tensor_floats(v):
        return isinstance(v, (tuple, list)) and len(v) == n and all(isinstance(x, float) for x in v)

    lr = hyper.get("lr")
    per_weight_lr = (isinstance(lr, (tuple, list)) and len(lr) == n
                     and all(isinstance(x, Tensor) and x.shape == w.shape for x, w in zip(lr, weights)))
    others = {k: v for k, v in hyper.items() if not (k == "lr" and per_weight_lr)}
    if not all(isinstance(v, float) or per_tensor_floats(v) for v in others.values()):
        return None
    buckets: dict[tuple, list[int]] = {}
    for i in range(n):
        buckets.setdefault(tuple(v if isinstance(v, float) else v[i] for v in others.values()), []).append(i)
    return [(dict(zip(others, key)), index) for key, index in buckets.items()]


def _adam_foreach(weights, grads, exp_avg, exp_avg_sq, t: float, hyper: Mapping, decoupled: bool) -> None:
    """One Adam step of tensors sharing float hyperparameters, in place: torch.optim.Adam's
    own operations, in its order (the same bits); ``lr`` a float or a tensor per weight."""
    lr, beta1, beta2, eps = hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["eps"]
    weight_decay = hyper.get("weight_decay")
    if weight_decay is not None:
        if not decoupled:
            grads = torch._foreach_add(grads, weights, alpha=weight_decay)
        elif isinstance(lr, float):
            torch._foreach_mul_(weights, 1 - lr * weight_decay)
        else:
            torch._foreach_mul_(weights, torch._foreach_add(torch._foreach_mul(lr, -weight_decay), 1.0))
    torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_div_(denom, (1 - beta2 ** t) ** 0.5)
    torch._foreach_add_(denom, eps)
    if isinstance(lr, float):
        torch._foreach_addcdiv_(weights, exp_avg, denom, -lr / (1 - beta1 ** t))
    else:
        torch._foreach_addcdiv_(weights, torch._foreach_mul(exp_avg, lr), denom, -1 / (1 - beta1 ** t))


def _adamw_update(weights, state, grads, hyper):
    return adam_update(weights, state, grads, hyper, decoupled=True)


def _adamw_update_in_place(weights, state, grads, hyper):
    return adam_update_in_place(weights, state, grads, hyper, decoupled=True)


def _sgd_nesterov_update(weights, state, grads, hyper):
    return sgd_update(weights, state, grads, hyper, nesterov=True)


def _sgd_nesterov_update_in_place(weights, state, grads, hyper):
    return sgd_update_in_place(weights, state, grads, hyper, nesterov=True)


_SGD_DEFAULTS = {"lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0}
_ADAM_DEFAULTS = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}

RULES: dict[str, UpdateRule] = {
    "sgd": UpdateRule("sgd", _SGD_DEFAULTS, sgd_init, sgd_update, sgd_update_in_place),
    "sgd_nesterov": UpdateRule("sgd_nesterov", _SGD_DEFAULTS, sgd_init, _sgd_nesterov_update,
                               _sgd_nesterov_update_in_place),
    "adam": UpdateRule("adam", {**_ADAM_DEFAULTS, "weight_decay": 0.0}, adam_init, adam_update,
                       adam_update_in_place),
    "adamw": UpdateRule("adamw", {**_ADAM_DEFAULTS, "weight_decay": 1e-2}, adam_init, _adamw_update,
                        _adamw_update_in_place),
}


def get_rule(name: str | UpdateRule) -> UpdateRule:
    """Look up a rule by name (``sgd``, ``sgd_nesterov``, ``adam``, ``adamw``)."""
    if isinstance(name, UpdateRule):
        return name
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown update rule {name!r}; choose one of {', '.join(RULES)}") from None
