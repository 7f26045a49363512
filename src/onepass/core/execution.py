"""The mutable state of one run or one population: weights, the rule's state,
the hyperparameters' slots, frozen members, and how a plain step or an
estimator's step function is executed (eager on autograd, or one compiled
(``torch.compile``) ``torch.func`` function). The products themselves are in
:mod:`.products`; the loss's part of every update comes in as a value
(:class:`~.products.LossPart`), built by whoever drives the estimator."""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
from torch import Tensor

from .hyperparameters import Slots, member_view
from .products import Gradient, LossPart, Ops, Tensors, detach, mask_members, tree_map
from .rules import UpdateRule, clip_gradients


def _floats(value):
    """A tensor as a Python float, and a sequence of 0-d tensors (one value per
    weight tensor: per-group values) as a tuple of floats; anything else (a
    float, a tensor per weight) as it is."""
    if isinstance(value, Tensor):
        return value.item()
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, Tensor) and v.dim() == 0 for v in value):
        if len({(v.dtype, v.device) for v in value}) == 1:
            return tuple(torch.stack(list(value)).tolist())     # one host sync, not one per tensor
        return tuple(v.item() for v in value)
    return value


class NonFiniteError(FloatingPointError):
    """A loss, gradient or hypergradient was NaN or infinite.

    Attributes:
        quantity: ``"training loss"``, ``"training gradient"``, ``"validation loss"``
            or ``"hypergradient"``.
        step: the 1-based index of the weight update where it occurred.
        where: the parameter it occurred in, when known.
    """

    def __init__(self, quantity: str, step: int, *, where: str | None = None,
                 left: str = "weights and hyperparameters were left as they were"):
        place = f" in {where}" if where else ""
        super().__init__(f"non-finite {quantity} at update {step}{place}; {left}")
        self.quantity = quantity
        self.step = step
        self.where = where




class Execution:
    """The weights, the rule's state and the hyperparameters' use in one run or one population.

    It takes plain updates and runs an estimator's step function: eagerly
    with :class:`Ops` on autograd, or, with ``compile`` and a population, as
    one ``torch.compile``\\ d ``torch.func`` function (``rebuild`` then remakes
    each :class:`~onepass.core.products.LossPart` inside it from its
    ``data``). It knows nothing of models or losses: every update's training
    gradient comes in a :class:`~onepass.core.products.LossPart`. Members of
    a population whose loss or hypergradient is not finite are frozen here;
    a single run raises :class:`NonFiniteError` instead.

    Parameters without a gradient in an update (``Gradient.missing``) keep
    their weights and rule state, as in ``torch.optim``.
    """

    def __init__(self, params: list[Tensor], rule: UpdateRule, slots: Slots, *, max_grad_norm: float | None,
                 population: int | None, compile: bool, rebuild: Callable | None = None):
        self.params = params
        self.rule = rule
        self.slots = slots
        self.max_grad_norm = max_grad_norm
        self.population = population
        self.restart_state()
        self.diverged: Tensor | None = None   # population: bool (P,), members frozen for good
        if population is not None:
            self.diverged = torch.zeros(population, dtype=torch.bool, device=params[0].device)
        self.any_diverged = False   # a Python bool: no sync per step
        self.compile_steps = compile and population is not None
        if self.compile_steps and rebuild is None:
            raise ValueError("a compiled population needs rebuild (the loss's part from its data)")
        self.rebuild = rebuild
        self._compiled: dict = {}
        self._unscaled: dict | None = None
        self._hyper_cache: dict | None = None
        self._hyper_floats: dict | None = None
        self._ops: Ops | None = None
        self._seen = (slots.values_version, slots.scale_version)

    # ------------------------------------------------------------ the rule

    def restart_state(self) -> None:
        """The update rule's state (momentum buffers, Adam's moments) from its start."""
        with torch.no_grad():
            self.state = self.rule.init(tuple(self.params))

    def clip(self, grads: Tensors, max_norm: float | None = None) -> Tensors:
        max_norm = self.max_grad_norm if max_norm is None else max_norm
        if max_norm is None:
            return tuple(grads)
        return clip_gradients(grads, max_norm, per_member=self.population is not None)

    def rule_update(self, weights, state, grads, raw, fixed, frozen, skip, max_norm=None, missing=()):
        """Clipping, the transforms and the rule: the update as a pure function.
        Parameters in ``missing`` keep their weights and state."""
        new_weights, new_state = self.rule.update(weights, state, self.clip(grads, max_norm),
                                                  self.hyper_of(raw, fixed, frozen, skip))
        if not missing:
            return new_weights, new_state
        n, keep = len(self.params), set(missing)

        def merge(old, new):
            if isinstance(new, (tuple, list)) and len(new) == n:
                return type(new)(o if i in keep else x for i, (o, x) in enumerate(zip(old, new)))
            return new
        return merge(tuple(weights), tuple(new_weights)), {k: merge(state[k], v) for k, v in new_state.items()}

    def hyper_of(self, raw, fixed, frozen, skip) -> dict:
        """The rule's ``hyper`` mapping (:meth:`Slots.hyper`, with pinned values
        and the learning-rate factors)."""
        return self.slots.scale_lr(self.slots.pin(self.slots.hyper(raw, fixed, frozen, skip)))

    # ------------------------------------------------------------ ops

    def frozen(self) -> Tensor | None:
        return self.diverged if self.any_diverged else None

    def ops(self) -> Ops:
        """Eager :class:`Ops` for the current hyperparameters and frozen members,
        cached until :meth:`invalidate`."""
        self._check_slots()
        if self._ops is None:
            self._ops = self._ops_for(False, self.slots.fixed, self.frozen(), self.slots.zero_fixed())
        return self._ops

    def _ops_for(self, functional: bool, fixed, frozen, skip) -> Ops:
        def update(weights, state, grads, raw, max_norm=None, missing=()):
            return self.rule_update(weights, state, grads, raw, fixed, frozen, skip, max_norm, missing)
        return Ops(update, frozen, functional)

    def raw(self):
        """The raw hyperparameters as inputs of a step function: the leaves
        themselves (eager) or detached copies (compiled)."""
        return self.slots.detached_raw() if self.compile_steps else dict(self.slots.raw)

    def weights(self) -> Tensors:
        if self.compile_steps:
            return tuple(p.detach() for p in self.params)
        return tuple(self.params)

    def run(self, fn: Callable, *args):
        """``fn(ops, *args)``: eagerly, or as one compiled ``torch.func`` function
        (compiled once per ``fn``; the fixed hyperparameters and frozen members are
        inputs). An argument that is a :class:`LossPart`, or a tuple of them,
        enters the compiled function as its ``data`` and is rebuilt inside."""
        if not self.compile_steps:
            return fn(self.ops(), *args)
        layout = tuple(2 if isinstance(a, tuple) and a and isinstance(a[0], LossPart) else
                       1 if isinstance(a, LossPart) else 0 for a in args)
        inputs = tuple(tuple(p.data for p in a) if kind == 2 else a.data if kind == 1 else a
                       for kind, a in zip(layout, args))
        key = (fn, layout)
        if key not in self._compiled:
            rebuild = self.rebuild

            def pure(fixed, frozen, skip, *inputs):
                args = tuple(tuple(rebuild(d, frozen) for d in a) if kind == 2 else
                             rebuild(a, frozen) if kind == 1 else a for kind, a in zip(layout, inputs))
                return fn(self._ops_for(True, fixed, frozen, skip), *args)
            self._compiled[key] = torch.compile(pure, dynamic=False)
        return self._compiled[key](self.slots.fixed, self.diverged, self.slots.zero_fixed(), *inputs)

    # ------------------------------------------------------------ plain steps

    def gradient_now(self, part: LossPart, step: int) -> Gradient:
        """The training gradient at the current weights without a graph, checked
        (frozen members' gradients zeroed); not clipped."""
        gradient = part.gradient(tuple(self.params), False)
        self.check_losses(gradient.loss, "training loss", step)
        frozen = self.frozen()
        if frozen is None:
            return gradient
        return dataclasses.replace(gradient, grads=mask_members(gradient.grads, frozen))

    def update_without_graph(self, gradient: Gradient) -> None:
        """Take the update in place (the rule's fast twin), outside any graph,
        on the parameters that have a gradient."""
        grads = self.clip(gradient.grads)
        missing = gradient.missing
        if not missing:
            with torch.no_grad():
                if self.rule.update_in_place is not None:
                    self.state = self.rule.update_in_place(tuple(self.params), self.state, grads,
                                                           self.hyper_in_place())
                else:
                    self.commit(*self.rule.update(tuple(self.params), self.state, grads, self.hyper()))
            return
        keep, n = set(missing), len(self.params)
        present = [i for i in range(n) if i not in keep]
        if not present:
            return

        def subset(value):
            if isinstance(value, (tuple, list)) and len(value) == n:
                return tuple(value[i] for i in present)
            return value

        def merge(old, new):
            if isinstance(old, (tuple, list)) and len(old) == n:
                out = list(old)
                for i, x in zip(present, new):
                    out[i] = x
                return tuple(out)
            return new
        weights = tuple(self.params[i] for i in present)
        state = {k: subset(v) for k, v in self.state.items()}
        with torch.no_grad():
            if self.rule.update_in_place is not None:
                hyper = {k: subset(v) for k, v in self.hyper_in_place().items()}
                new_state = self.rule.update_in_place(weights, state, subset(grads), hyper)
            else:
                hyper = {k: subset(v) for k, v in self.hyper().items()}
                new_weights, new_state = self.rule.update(weights, state, subset(grads), hyper)
                for p, w in zip(weights, new_weights):
                    p.data = w.detach().to(p.dtype)
        self.state = {k: merge(self.state[k], v) for k, v in new_state.items()}

    def plain_step(self, part: LossPart, step: int) -> Tensor:
        gradient = self.gradient_now(part, step)
        self.update_without_graph(gradient)
        return gradient.loss

    def commit(self, new_weights, new_state) -> None:
        """Make ``new_weights`` the parameters' values. The storage is swapped,
        not written in place, but a graph that saved a parameter itself (a
        leaf) reads its new value: use such graphs before committing."""
        for p, w in zip(self.params, new_weights):
            p.data = w.detach().to(p.dtype)   # float32 hyperparameters promote low-precision weights
        self.state = detach(new_state)

    def hyper(self) -> dict:
        """The rule's ``hyper`` mapping (no graph), cached until the values change;
        a new learning-rate factor rescales the cached values instead of
        recomputing them from the slots."""
        self._check_slots()
        if self._hyper_cache is None:
            slots = self.slots
            with torch.no_grad():
                if self._unscaled is None:
                    self._unscaled = slots.pin(slots.hyper(slots.raw, slots.fixed, self.frozen(),
                                                           slots.zero_fixed()))
                self._hyper_cache = slots.scale_lr(self._unscaled)
        return self._hyper_cache

    def hyper_in_place(self) -> dict:
        """:meth:`hyper` with scalars as Python floats, for ``update_in_place``
        (a value per weight tensor too, where each is a scalar: per-group values);
        a fixed value given as a float (:attr:`Slots.exact`) is used as it is."""
        self._check_slots()
        if self._hyper_floats is None:
            exact = self.slots.exact
            self._hyper_floats = {name: exact[name] if name in exact else _floats(value)
                                  for name, value in self.hyper().items()}
        return self._hyper_floats

    def invalidate(self) -> None:
        """The hyperparameters (or the frozen members) changed."""
        self._unscaled = self._hyper_cache = self._hyper_floats = self._ops = None

    def _check_slots(self) -> None:
        """Follow what was written into the slots since the caches were made."""
        seen = (self.slots.values_version, self.slots.scale_version)
        if seen != self._seen:
            if seen[0] != self._seen[0]:
                self.invalidate()
            else:   # only the learning-rate factors or the exact floats
                self._hyper_cache = self._hyper_floats = None
            self._seen = seen

    # ------------------------------------------------------------ checks

    def masked(self, tensors: Tensors) -> Tensors:
        return mask_members(tensors, self.frozen())

    def check_losses(self, loss: Tensor, quantity: str, step: int) -> None:
        """Single run: raise :class:`NonFiniteError`. Population: freeze the
        members whose loss is not finite. ``None`` (not known) passes."""
        if loss is None:
            return
        if self.population is None:
            if not torch.isfinite(loss):
                raise NonFiniteError(quantity, step)
            return
        bad = ~torch.isfinite(loss)
        if bad.any():
            self._freeze(bad)

    def check_hypergradient(self, hypergradient: Sequence, leaves: Sequence[Tensor], step: int) -> list[Tensor]:
        """Missing entries become zeros; a non-finite one raises (single run)
        or freezes its member, whose hypergradient is then zero."""
        hypergradient = [torch.zeros_like(l) if g is None else g for l, g in zip(leaves, hypergradient)]
        if self.population is None:
            if not all(torch.isfinite(g).all() for g in hypergradient):
                raise NonFiniteError("hypergradient", step)
            return hypergradient
        bad = torch.zeros_like(self.diverged)
        for g in hypergradient:
            bad = bad | ~torch.isfinite(g).reshape(self.population, -1).all(1)
        if bad.any():
            self._freeze(bad)
        return list(self.masked(hypergradient))

    def _freeze(self, members: Tensor) -> None:
        self.diverged = self.diverged | members
        self.any_diverged = True
        self.invalidate()

    def finish(self, result, weights_before: Tensors, state_before, step: int, leaves) -> list[Tensor]:
        """Check and commit the outcome ``(hypergradient, weights, state, loss,
        val_loss)`` of a differentiated step that started from ``weights_before``
        (``hypergradient`` and ``val_loss`` may be ``None``); members that
        diverged in it keep their weights. Returns the checked hypergradient,
        in the order of ``leaves``."""
        hypergradient, new_weights, new_state, loss, val_loss = result
        frozen = self.diverged
        self.check_losses(loss, "training loss", step)
        if val_loss is not None:
            self.check_losses(val_loss, "validation loss", step)
        if hypergradient is not None:
            hypergradient = self.check_hypergradient(self.slots.by_leaf(hypergradient), leaves, step)
        if self.population is not None:
            newly = self.diverged & ~frozen
            if newly.any():
                new_weights, new_state = self.keep_members(newly, weights_before, state_before,
                                                           new_weights, new_state)
        self.commit(new_weights, new_state)
        return hypergradient

    def keep_members(self, mask: Tensor, old_weights, old_state, new_weights, new_state):
        """``(new_weights, new_state)`` with the members in ``mask`` taken from the old ones."""
        def keep(old, new):
            if isinstance(new, Tensor) and new.dim() > 0 and new.shape[0] == self.population:
                return torch.where(member_view(mask, new.dim()), old, new)
            return new
        return (tuple(keep(o.detach(), n) for o, n in zip(old_weights, new_weights)),
                tree_map(keep, detach(old_state), new_state))
