"""The paper's estimator: the implicit function theorem through the last update.

``dL_V/dλ ≈ (∂u/∂λ)ᵀ p``, ``p ≈ (I − Jᵀ)^{-1} v``, ``J = ∂u/∂w`` at
``(w_{t-1}, λ)``, ``v = ∂L_V/∂w`` at ``w_t = u(w_{t-1}, λ)`` (method.md).
Only the window's last update is differentiated; the optimiser state
entering it is a constant. The linear solve is passed in
(:mod:`onepass.core.solvers`): a K-term Neumann series (``"neumann"``, the
paper; tuning only ``weight_decay`` gives Lorraine et al.) or conjugate
gradients (``"cg"``).
"""
from __future__ import annotations

from functools import partial
from typing import Callable

from ..products import BatchLosses, Ops
from ..solvers import conjugate_gradient, neumann_series
from .base import Estimator, StepResult, register


def hyperstep(ops, part, weights, state, raw, *, solve: Callable):
    """One implicit hypergradient and the update it differentiates, from the
    loss's part ``part`` and the rule's part ``ops``.

    Returns ``(hypergradient, new_weights, new_state, loss, val_loss)``; the
    hypergradient has the structure of ``raw``.
    """
    # g = ∇L_T(w_{t-1}), with r ↦ ∇²L_T r                        (the loss's part)
    gradient = part.gradient(weights, True)
    # w_t = u(w_{t-1}, s_{t-1}, g, λ), linearised                 (the rule's part)
    update = ops.linear_update(weights, state, gradient, raw, state_cotangents=False)
    # v = ∂L_V/∂w at w_t                                          (the loss's part)
    v, val_loss = part.val_gradient(update.weights)

    def transposed_jacobian(s):
        # Jᵀ s = (∂u/∂w)ᵀ s + ∇²L_T (∂u/∂g)ᵀ s
        return update.backward(s, wrt=("weights",))[0]

    p = solve(transposed_jacobian, v)                       # p ≈ (I − Jᵀ)^{-1} v
    (hypergradient,) = update.backward(p, wrt=("raw",))     # (∂u/∂λ)ᵀ p
    return hypergradient, update.weights, update.state, gradient.loss, val_loss


def implicit_hypergradient(update, train_loss, val_loss, weights, state, raw, to_hyper, train_batch, val_batch,
                           terms: int, solve: Callable | None = None):
    """:func:`hyperstep` for plain functions ``loss(weights, batch)`` and a rule's
    ``update`` (see :meth:`~onepass.core.products.Ops.of_functions`). Returns
    ``(hypergradient, new_weights, new_state, val_loss)``."""
    ops = Ops.of_functions(update, to_hyper)
    part = BatchLosses(train_loss, val_loss, functional=True).part(train_batch, val_batch, validated=True)
    solve = solve or partial(neumann_series, terms=terms)
    h, new_weights, new_state, _, loss = hyperstep(ops, part, tuple(weights), state, raw, solve=solve)
    return h, new_weights, new_state, loss


@register
class Implicit(Estimator):
    """A hyperparameter update at the last update of every window."""

    name = "neumann"

    def __init__(self, schedule):
        super().__init__(schedule)
        self.function = partial(hyperstep, solve=self.solver())

    def solver(self) -> Callable:
        return partial(neumann_series, terms=self.schedule.neumann_terms)

    def graph_at(self, position: int) -> bool:
        return position == self.schedule.update_interval

    def step(self, execution, part, step, position, apply):
        if position < self.schedule.update_interval:
            return StepResult(execution.plain_step(part, step))
        weights, state = execution.weights(), execution.state
        result = execution.run(self.function, part, weights, state, execution.raw())
        hypergradient = execution.finish(result, weights, state, step, execution.slots.leaves())
        return StepResult(result[3], result[4], apply(hypergradient))


@register
class ConjugateGradient(Implicit):
    """:class:`Implicit` with ``neumann_terms`` conjugate-gradient iterations
    for ``(I − Jᵀ) p = v`` (exact for SGD near a minimum; see
    :func:`~onepass.core.solvers.conjugate_gradient`)."""

    name = "cg"

    def solver(self) -> Callable:
        return partial(conjugate_gradient, iterations=self.schedule.neumann_terms,
                       members=self.schedule.population)
