"""Hypergradient descent (Baydin et al. 2018): the learning rate follows the
training loss, with a hyperparameter update after every weight update.

Two variants:

* ``"baydin"``, the paper's baseline as its reference code runs it: the
  hypergradient of ``a = log10 η`` is taken as ``−∇L_T(w_t) · ∇L_T(w_{t-1})``,
  the raw training gradients of two consecutive updates (no momentum or
  weight-decay terms, no ``η ln 10`` factor), and ``a`` is stepped by SGD with
  learning rate 0.001 (:func:`paper_hypergradient`);
* ``"baydin_exact"``: ``∂L_T(w_t)/∂λ = ∇L_T(w_t) · ∂u(w_{t-1}, λ)/∂λ`` through
  the whole previous update (momentum, weight decay, clipping), and ``η``
  itself stepped by SGD 0.001 (:func:`exact_hypergradient`). A stronger,
  different algorithm.
"""
from __future__ import annotations

import torch

from ..products import Gradient, Ops, clone
from .base import Estimator, StepResult, register


def paper_hypergradient(grads, previous_grads, slot_of, per_weight: bool, members: int | None):
    """``−g_t · g_{t-1}`` summed over the weights that share each learning-rate slot
    (element by element for per-weight rates; per member in a population).
    ``slot_of[i]`` is the slot weight tensor ``i`` reads."""
    slots: dict[int, torch.Tensor] = {}
    for k, g, h in zip(slot_of, grads, previous_grads):
        product = -(g * h)
        if not per_weight:
            product = product.sum() if members is None else product.reshape(members, -1).sum(1)
        slots[k] = product if k not in slots else slots[k] + product
    return [slots[k] for k in sorted(slots)]


def exact_hypergradient(ops, weights, state, grads, raw, next_grads):
    """``(∂u/∂λ)ᵀ ∇L_T(w_t)`` through the update ``w_t = u(w_{t-1}, s, g, λ)``
    taken from ``(weights, state, grads)``."""
    update = ops.linear_update(weights, state, Gradient(tuple(grads), None), raw, state_cotangents=False)
    (hypergradient,) = update.backward(tuple(next_grads), wrt=("raw",))
    return hypergradient


def exact_hypergradient_of(update, weights, state, grads, raw, to_hyper, next_grads):
    """:func:`exact_hypergradient` for a rule's ``update`` and ``to_hyper(raw)``."""
    ops = Ops.of_functions(update, to_hyper)
    return exact_hypergradient(ops, tuple(weights), state, tuple(grads), raw, next_grads)


@register
class Baydin(Estimator):
    """The paper's hypergradient descent; tunes only the learning rate."""

    name = "baydin"
    every_step = True
    validation = False
    tunable = ("lr",)
    hyper_optimizer = "sgd"
    hyper_lr = 0.001

    def __init__(self, schedule):
        super().__init__(schedule)
        self.previous = None   # what the next hypergradient needs of the last update

    def step(self, execution, part, step, position, apply):
        gradient = execution.gradient_now(part, step)
        applied = None
        if self.previous is not None:
            hypergradient = execution.check_hypergradient(self.hypergradient(execution, gradient.grads),
                                                          execution.slots.leaves(), step)
            applied = apply(hypergradient)
        self.remember(execution, gradient)
        return StepResult(gradient.loss, None, applied)

    def hypergradient(self, execution, grads) -> list:
        slots = execution.slots
        return paper_hypergradient(grads, self.previous, slots.slot_of["lr"],
                                   slots.granularity["lr"] == "weight", self.schedule.population)

    def remember(self, execution, gradient) -> None:
        """Take the update with the new learning rate; keep what the next step needs."""
        self.previous = gradient.grads
        execution.update_without_graph(gradient)

    def state_dict(self) -> dict:
        return {"previous": clone(self.previous)}

    def load_state_dict(self, state: dict) -> None:
        self.previous = clone(state["previous"])

    def reset(self) -> None:
        self.previous = None


@register
class BaydinExact(Baydin):
    """Hypergradient descent through the whole previous update, in natural units."""

    name = "baydin_exact"
    hyper_space = "natural"

    def hypergradient(self, execution, grads) -> list:
        result = execution.run(exact_hypergradient, *self.previous, execution.raw(), grads)
        return execution.slots.by_leaf(result)

    def remember(self, execution, gradient) -> None:
        # The update below writes weights and state in place: keep copies of its inputs.
        self.previous = (clone(tuple(execution.params)), clone(execution.state), gradient.grads)
        execution.update_without_graph(gradient)
