"""The mutable state of one run or one population: weights, the rule's state, the
hyperparameters' slots, frozen members, and how a plain step or an estimator's
step function is executed (eager on autograd, or one compiled (``torch.compile``)
``torch.func`` function). The products themselves are in :mod:`.products`."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .hyperparameters import Slots, member_view
from .products import Ops, Tensors, detach, mask_members, tree_map
from .rules import UpdateRule, clip_gradients


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
    """The weights, the rule's state and the gradients of one run or one population.

    It knows how to take a plain step and how to run an estimator's step
    function: eagerly with :class:`Ops` on autograd, or, with ``compile`` and a
    population, as one ``torch.compile``\\ d ``torch.func`` function. Members of
    a population whose loss or hypergradient is not finite are frozen here;
    a single run raises :class:`NonFiniteError` instead.
    """

    def __init__(self, model: nn.Module, params: list[nn.Parameter], batch_loss: Callable,
                 rule: UpdateRule, slots: Slots, *, max_grad_norm: float | None,
                 population: int | None, compile: bool):
        self.model = model
        self.params = params
        names = {id(p): n for n, p in model.named_parameters()}
        self.names = [names[id(p)] for p in params]
        self.buffer_names = [n for n, _ in model.named_buffers()]
        self.batch_loss = batch_loss
        self.rule = rule
        self.slots = slots
        self.max_grad_norm = max_grad_norm
        self.population = population
        with torch.no_grad():
            self.state = rule.init(tuple(params))
        self.diverged: Tensor | None = None   # population: bool (P,), members frozen for good
        if population is not None:
            self.diverged = torch.zeros(population, dtype=torch.bool, device=params[0].device)
        self.any_diverged = False   # a Python bool: no sync per step
        self.compile_steps = compile and population is not None
        self._compiled: dict[Callable, Callable] = {}
        self._compiled_gradient = self._compile_gradient() if compile else None
        self._hyper_cache: dict | None = None
        self._hyper_floats: dict | None = None
        self._ops: Ops | None = None

    # ------------------------------------------------------------ losses

    def forward_with(self, weights: Sequence[Tensor], keep_buffers: bool = False) -> Callable:
        """Call the model with ``weights`` in place of its parameters. With
        ``keep_buffers`` its running statistics are left untouched."""
        if not keep_buffers and all(w is p for w, p in zip(weights, self.params)):
            return self.model
        tensors = dict(zip(self.names, weights))
        if keep_buffers and self.buffer_names:
            buffers = dict(self.model.named_buffers())
            tensors.update({n: buffers[n].clone() for n in self.buffer_names})

        def forward(*args, **kwargs):
            return functional_call(self.model, tensors, args, kwargs)
        return forward

    def train_loss(self, weights, batch) -> Tensor:
        return self.batch_loss(self.forward_with(weights), batch)

    def val_loss(self, weights, batch) -> Tensor:
        return self.batch_loss(self.forward_with(weights, keep_buffers=True), batch)

    def clip(self, grads: Tensors) -> Tensors:
        if self.max_grad_norm is None:
            return tuple(grads)
        return clip_gradients(grads, self.max_grad_norm, per_member=self.population is not None)

    def rule_update(self, weights, state, grads, raw, fixed, frozen, skip):
        """Clipping, the transforms and the rule: the update as a pure function."""
        return self.rule.update(weights, state, self.clip(grads), self.hyper_of(raw, fixed, frozen, skip))

    def hyper_of(self, raw, fixed, frozen, skip) -> dict:
        """The rule's ``hyper`` mapping (:meth:`Slots.hyper`); front ends that
        scale a value (a learning-rate schedule) override this one place."""
        return self.slots.hyper(raw, fixed, frozen, skip)

    # ------------------------------------------------------------ ops

    def frozen(self) -> Tensor | None:
        return self.diverged if self.any_diverged else None

    def ops(self) -> Ops:
        """Eager :class:`Ops` for the current hyperparameters and frozen members,
        cached until :meth:`invalidate`."""
        if self._ops is None:
            self._ops = self._ops_for(False, self.slots.fixed, self.frozen(), self.slots.zero_fixed())
        return self._ops

    def _ops_for(self, functional: bool, fixed, frozen, skip) -> Ops:
        def update(weights, state, grads, raw):
            return self.rule_update(weights, state, grads, raw, fixed, frozen, skip)
        return Ops(self.train_loss, self.val_loss, update, frozen, functional)

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
        (compiled once per ``fn``; the fixed hyperparameters and frozen members are inputs)."""
        if not self.compile_steps:
            return fn(self.ops(), *args)
        if fn not in self._compiled:
            def pure(fixed, frozen, skip, *inputs):
                return fn(self._ops_for(True, fixed, frozen, skip), *inputs)
            self._compiled[fn] = torch.compile(pure, dynamic=False)
        return self._compiled[fn](self.slots.fixed, self.diverged, self.slots.zero_fixed(), *args)

    # ------------------------------------------------------------ plain steps

    def gradient_now(self, batch, step: int) -> tuple[Tensor, Tensors]:
        """``(loss, ∇L_T)`` at the current weights without a graph, checked
        (frozen members' gradients zeroed); not clipped."""
        if self._compiled_gradient is not None:
            grads, loss = self._compiled_gradient(tuple(p.detach() for p in self.params), batch)
        else:
            gradient = self.ops().gradient(tuple(self.params), batch)
            grads, loss = gradient.grads, gradient.loss
        self.check_losses(loss, "training loss", step)
        return loss, self.masked(grads)

    def update_without_graph(self, grads: Tensors) -> None:
        """Take the update in place (the rule's fast twin), outside any graph."""
        grads = self.clip(grads)
        with torch.no_grad():
            if self.rule.update_in_place is not None:
                self.state = self.rule.update_in_place(tuple(self.params), self.state, grads,
                                                       self.hyper_in_place())
            else:
                self.commit(*self.rule.update(tuple(self.params), self.state, grads, self.hyper()))

    def plain_step(self, batch, step: int) -> Tensor:
        loss, grads = self.gradient_now(batch, step)
        self.update_without_graph(grads)
        return loss

    def commit(self, new_weights, new_state) -> None:
        """Make ``new_weights`` the parameters' values. The storage is swapped,
        not written in place, but a graph that saved a parameter itself (a
        leaf) reads its new value: use such graphs before committing."""
        for p, w in zip(self.params, new_weights):
            p.data = w.detach().to(p.dtype)   # float32 hyperparameters promote low-precision weights
        self.state = detach(new_state)

    def hyper(self) -> dict:
        """The rule's ``hyper`` mapping (no graph), cached until the values change."""
        if self._hyper_cache is None:
            with torch.no_grad():
                self._hyper_cache = self.hyper_of(self.slots.raw, self.slots.fixed, self.frozen(),
                                                  self.slots.zero_fixed())
        return self._hyper_cache

    def hyper_in_place(self) -> dict:
        """:meth:`hyper` with scalars as Python floats, for ``update_in_place``."""
        if self._hyper_floats is None:
            self._hyper_floats = {name: value.item() if isinstance(value, Tensor) else value
                                  for name, value in self.hyper().items()}
        return self._hyper_floats

    def invalidate(self) -> None:
        """The hyperparameters (or the frozen members) changed."""
        self._hyper_cache = self._hyper_floats = self._ops = None

    # ------------------------------------------------------------ checks

    def masked(self, tensors: Tensors) -> Tensors:
        return mask_members(tensors, self.frozen())

    def check_losses(self, loss: Tensor, quantity: str, step: int) -> None:
        """Single run: raise :class:`NonFiniteError`. Population: freeze the
        members whose loss is not finite."""
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

    # ------------------------------------------------------------ compiled gradient

    def _compile_gradient(self) -> Callable:
        """``(weights, batch) -> (grads, loss)`` through ``torch.compile``."""
        def grads_and_loss(weights, batch):
            gradient = Ops(self.train_loss, self.val_loss, None, None, functional=True).gradient(weights, batch)
            return gradient.grads, gradient.loss
        return torch.compile(grads_and_loss, dynamic=False)
