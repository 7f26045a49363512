"""Diff-through-Opt: the exact hypergradient through the window's last updates.

``dL_V/dλ`` is accumulated backwards through the last ``unroll_steps``
updates of each window, ``w_k = u(w_{k-1}, s_{k-1}, ∇L_T(w_{k-1}), λ)``; the
weights and state entering the first of them are constants. Each update
contributes ``(∂u/∂λ)ᵀ`` of the cotangent reaching it, and passes back
``(∂u/∂w)ᵀ c + ∇²L_T (∂u/∂g)ᵀ c`` to the weights and ``(∂u/∂s)ᵀ c`` to the
state. Eager runs take the updates as they come and keep their
linearisations; compiled populations take plain steps and replay the
stretch at the window's end (:func:`replay`). Both call :func:`advance`
and :func:`reverse_accumulate`.
"""
from __future__ import annotations

from ..products import BatchLosses, Ops, clone, tree_map
from .base import Estimator, StepResult, register


def advance(ops, part, weights, state, raw, first: bool):
    """One update with its linearisation (a
    :class:`~onepass.core.products.LinearUpdate`) and its training loss, from
    the loss's part ``part``. The first update's gradient is a constant (no
    Hessian–vector products)."""
    gradient = part.gradient(weights, not first)
    return ops.linear_update(weights, state, gradient, raw), gradient.loss


def reverse_accumulate(updates: list, v):
    """Reverse accumulation of ``dL_V/dλ`` through ``updates``, with ``v = ∂L_V/∂w_T``."""
    if updates[-1].connected:   # one graph through the stretch: autograd runs the loop below
        return updates[-1].backward(v, wrt=("raw",))[0]
    ct_weights, ct_state, total = v, None, None
    for k, update in enumerate(reversed(updates)):
        if k == len(updates) - 1:            # the stretch's first update: its inputs are constants
            (ct_raw,) = update.backward(ct_weights, ct_state, wrt=("raw",))
        else:                                # c ← (∂u/∂w)ᵀ c + ∇²L_T (∂u/∂g)ᵀ c, and the state's
            ct_weights, ct_state, ct_raw = update.backward(ct_weights, ct_state)
        total = ct_raw if total is None else tree_map(lambda a, b: a + b, total, ct_raw)
    return total


def replay(ops, parts, weights, state, raw):
    """The whole stretch from its first weights, one loss's part per update (the
    last with the validation gradient): ``(hypergradient, weights, state, last
    training loss, val_loss)``."""
    updates = []
    for i, part in enumerate(parts):
        update, loss = advance(ops, part, weights, state, raw, first=i == 0)
        weights, state = update.weights, update.state
        updates.append(update)
    v, val_loss = parts[-1].val_gradient(weights)
    return reverse_accumulate(updates, v), weights, state, loss, val_loss


def unrolled_hypergradient(update, train_loss, val_loss, weights, state, raw, to_hyper, train_batches,
                           val_batch):
    """:func:`replay` for plain functions ``loss(weights, batch)`` and a rule's
    ``update`` (see :meth:`~onepass.core.products.Ops.of_functions`). Returns
    ``(hypergradient, (weights, state), val_loss)``."""
    ops = Ops.of_functions(update, to_hyper)
    losses = BatchLosses(train_loss, val_loss, functional=True)
    batches = tuple(train_batches)
    parts = tuple(losses.part(batch, val_batch, validated=i == len(batches) - 1) for i, batch in enumerate(batches))
    h, weights, state, _, loss = replay(ops, parts, tuple(weights), state, raw)
    return h, (weights, state), loss


@register
class Unroll(Estimator):
    """Differentiates the last ``unroll_steps`` updates of every window."""

    name = "unroll"

    def __init__(self, schedule):
        super().__init__(schedule)
        self._stretch = None   # eager: the updates so far; compiled: (start weights, state, loss's parts)

    def graph_at(self, position: int) -> bool:
        interval = self.schedule.update_interval
        return position > interval - self.schedule.unroll_steps + 1

    def step(self, execution, part, step, position, apply):
        interval, steps = self.schedule.update_interval, self.schedule.unroll_steps
        if position <= interval - steps:
            return StepResult(execution.plain_step(part, step))
        first = position == interval - steps + 1
        closes = position == interval
        if execution.compile_steps:
            return self._compiled_step(execution, part, step, first, closes, apply)
        if first or self._stretch is None:
            self._stretch = []
        updates = self._stretch
        ops = execution.ops()
        if not updates:
            weights, state = execution.weights(), execution.state
        elif ops.chains and part.chains and execution.population is None:   # one graph through the stretch
            weights, state = updates[-1].weights, updates[-1].state
        else:   # each update its own graph, from the committed weights (a diverged member keeps its last finite ones)
            weights, state = tuple(p.detach() for p in execution.params), execution.state
        update, loss = advance(ops, part, weights, state, execution.raw(), first=not updates)
        if not closes:
            execution.finish((None, update.weights, update.state, loss, None), weights, state, step, ())
            updates.append(update)   # only once it is taken: a refused update is not part of the stretch
            return StepResult(loss)
        v, val_loss = part.val_gradient(update.weights)
        result = (reverse_accumulate(updates + [update], v), update.weights, update.state, loss, val_loss)
        checked = execution.finish(result, weights, state, step, execution.slots.leaves())
        self._stretch = None
        return StepResult(loss, val_loss, apply(checked))

    def _compiled_step(self, execution, part, step, first, closes, apply):
        if first or self._stretch is None:  # plain steps update in place: keep copies
            self._stretch = (clone(tuple(execution.params)), clone(execution.state), [])
        weights, state, parts = self._stretch
        parts.append(part)
        if not closes:
            return StepResult(execution.plain_step(part, step))
        self._stretch = None
        frozen = execution.diverged.clone()
        result = execution.run(replay, tuple(parts), weights, state, execution.raw())
        if execution.any_diverged:  # the replay froze them from the stretch's start: keep where they stopped
            weights_now = tuple(p.detach() for p in execution.params)
            new_weights, new_state = execution.keep_members(frozen, weights_now, execution.state,
                                                            result[1], result[2])
            result = (result[0], new_weights, new_state, result[3], result[4])
        checked = execution.finish(result, tuple(p.detach() for p in execution.params), execution.state,
                                   step, execution.slots.leaves())
        return StepResult(result[3], result[4], apply(checked))

    def in_window(self) -> bool:
        return self._stretch is not None

    def reset(self) -> None:
        self._stretch = None
