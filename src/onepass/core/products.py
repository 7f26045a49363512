"""The products an estimator is written against: the loss's part and the rule's part.

An estimator (:mod:`onepass.core.estimators`) sees one weight update
``w_t = u(w_{t-1}, s_{t-1}, g, λ)`` with ``g = ∇L_T(w_{t-1})`` through two
kinds of products, kept apart:

* the **loss's part** (:meth:`Ops.gradient`, :meth:`Ops.val_gradient`): the
  training gradient ``g``, the Hessian–vector products ``r ↦ ∇²L_T r`` and the
  validation gradient ``v = ∇L_V(w_t)``. Only these depend on the data, so
  in data-parallel training only these are averaged across ranks (``reduce``);
* the **rule's part** (:meth:`Ops.linear_update`): vector–Jacobian products
  through the update rule itself, with gradient clipping and the
  hyperparameter transforms: ``(∂u/∂w)ᵀ``, ``(∂u/∂s)ᵀ``, ``(∂u/∂g)ᵀ``,
  ``(∂u/∂λ)ᵀ``. Adam's update is not linear in ``g``, so this part must see
  the averaged gradient, never be averaged itself.

So ``Jᵀ s = (∂u/∂w)ᵀ s + ∇²L_T (∂u/∂g)ᵀ s``.

:class:`Ops` computes both with ``torch.autograd`` (eager; on a module's own
parameters when it is given them) or with ``torch.func`` (pure functions of
their tensors, so that a whole estimator step can go through
``torch.compile``). Eager vs compiled and one run vs a population of ``P``
runs are choices made here and in :class:`~onepass.core.execution.Execution`; the estimators are
written once against :class:`Ops`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .hyperparameters import member_view

Tensors = tuple[Tensor, ...]


# Small trees of tensors (weights, rule states, raw hyperparameters): dicts,
# tuples and lists. Written out because torch's generic pytree costs ~10% of
# an eager unrolled step on the paper's small models.

def tree_map(fn: Callable, *trees):
    """``fn`` over the leaves of trees of the same structure."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: tree_map(fn, *(t[k] for t in trees)) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(tree_map(fn, *parts) for parts in zip(*trees))
    return fn(*trees)


def tree_leaves(tree) -> list:
    """The leaves of ``tree``, in :func:`tree_map`'s order."""
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in tree_leaves(v)]
    if isinstance(tree, (tuple, list)):
        return [leaf for v in tree for leaf in tree_leaves(v)]
    return [tree]


def tree_rebuild(tree, leaves):
    """``tree``'s structure holding ``leaves`` (an iterator), in :func:`tree_leaves`'s order."""
    if isinstance(tree, dict):
        return {k: tree_rebuild(v, leaves) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_rebuild(v, leaves) for v in tree)
    return next(leaves)



@dataclass
class Gradient:
    """The loss's part at some weights: ``grads = ∇L_T``, the loss, and with a
    graph ``hvp(r) = ∇²L_T r``. ``inputs``/``graph_grads`` are the autograd
    leaves the gradient was taken at and the gradient with its graph."""

    grads: Tensors
    loss: Tensor
    hvp: Callable[[Tensors], Tensors] | None = None
    inputs: Tensors | None = None
    graph_grads: Tensors | None = None


@dataclass
class LinearUpdate:
    """One update ``(w_t, s_t) = u(w_{t-1}, s_{t-1}, g(w_{t-1}), λ)`` and its adjoint.

    ``backward(ct_weights, ct_state=None, wrt=("weights", "state", "raw"))``
    returns, for the names in ``wrt`` in that order, the cotangents at the
    update's inputs: for ``"weights"`` the total derivative
    ``(∂u/∂w)ᵀ c + ∇²L_T (∂u/∂g)ᵀ c`` (through the gradient too, when the
    gradient was taken with a graph), for ``"state"`` ``(∂u/∂s)ᵀ c``, for
    ``"raw"`` ``(∂u/∂λ)ᵀ c`` with the structure of the raw hyperparameters.
    """

    weights: Tensors
    state: Any
    backward: Callable[..., tuple]
    connected: bool = False
    """Its inputs carry the graph of earlier updates (eager autograd, nothing to
    reduce): a backward pass to ``"raw"`` then runs through all of them."""


def _total(loss: Tensor) -> Tensor:
    """The scalar to differentiate: a population's per-member losses are summed
    (member ``m``'s gradient is then its own loss's gradient)."""
    return loss if loss.dim() == 0 else loss.sum()


def _with_total(loss_fn: Callable, batch) -> Callable:
    """``w ↦ (summed loss, loss)`` for ``torch.func.grad(..., has_aux=True)``."""
    def total_and_loss(weights):
        loss = loss_fn(weights, batch)
        return _total(loss), loss
    return total_and_loss


def mask_members(tensors: Tensors, frozen: Tensor | None) -> Tensors:
    """``tensors`` with the slices of ``frozen`` population members zeroed."""
    if frozen is None:
        return tuple(tensors)
    return tuple(torch.where(member_view(frozen, t.dim()), 0.0, t) for t in tensors)


def _add(a: Tensors, b: Tensors) -> Tensors:
    return tuple(x + y for x, y in zip(a, b))


@dataclass
class Ops:
    """The products an estimator needs, by autograd (eager) or ``torch.func``.

    Args:
        loss: ``loss(weights, batch)`` → the training loss, a scalar or one value per member.
        val_loss: the same for the validation loss (running statistics left alone).
        update: ``update(weights, state, grads, raw) -> (weights, state)``: clipping,
            the hyperparameter transforms and the rule, a pure function.
        frozen: population members whose gradients are zeroed, or ``None``.
        functional: use ``torch.func`` (compilable) instead of ``torch.autograd``.
        reduce: applied to every vector of the loss's part (gradients,
            Hessian–vector products, validation gradients); ``None`` for one process.
    """

    loss: Callable
    val_loss: Callable
    update: Callable
    frozen: Tensor | None = None
    functional: bool = False
    reduce: Callable[[Tensors], Tensors] | None = None

    @classmethod
    def of_functions(cls, update: Callable, to_hyper: Callable, train_loss: Callable,
                     val_loss: Callable | None = None) -> "Ops":
        """``torch.func`` ops for plain functions ``loss(weights, batch)`` and a
        rule's ``update(weights, state, grads, hyper)`` with ``to_hyper(raw)``
        giving its natural values: how tests, ``vmap`` and other front ends
        call an estimator directly."""
        def rule(weights, state, grads, raw):
            return update(weights, state, grads, to_hyper(raw))
        return cls(train_loss, val_loss or train_loss, rule, functional=True)

    def _reduced(self, tensors: Tensors) -> Tensors:
        tensors = mask_members(tensors, self.frozen)
        return tuple(self.reduce(tensors)) if self.reduce is not None else tensors

    # ---------------------------------------------------------- loss's part

    def gradient(self, weights: Tensors, batch, graph: bool = False) -> Gradient:
        """``∇L_T`` at ``weights``; with ``graph`` also ``r ↦ ∇²L_T r``."""
        if self.functional:
            def grads_of(w):
                grads, loss = torch.func.grad(_with_total(self.loss, batch), has_aux=True)(w)
                return self._reduced(grads), loss
            if not graph:
                grads, loss = grads_of(weights)
                return Gradient(grads, loss)
            grads, hvp_fn, loss = torch.func.vjp(grads_of, tuple(weights), has_aux=True)
            return Gradient(grads, loss, lambda r: self._reduced(hvp_fn(tuple(r))[0]))
        weights = _differentiable(weights)
        with torch.enable_grad():
            loss = self.loss(weights, batch)
            grads = torch.autograd.grad(_total(loss), weights, create_graph=graph)
            grads = self._reduced(grads)
        if not graph:
            return Gradient(grads, loss)

        def hvp(r):
            return self._reduced(torch.autograd.grad(grads, weights, tuple(r), retain_graph=True))
        return Gradient(tuple(g.detach() for g in grads), loss, hvp, weights, grads)

    def val_gradient(self, weights: Tensors, batch) -> tuple[Tensors, Tensor]:
        """``(v, L_V)``: the validation gradient at ``weights`` (per member)."""
        if self.functional:
            v, loss = torch.func.grad(_with_total(self.val_loss, batch), has_aux=True)(tuple(weights))
            return self._reduced(v), loss
        weights = tuple(w.detach().requires_grad_() for w in weights)
        with torch.enable_grad():
            loss = self.val_loss(weights, batch)
            v = torch.autograd.grad(_total(loss), weights)
        return self._reduced(v), loss.detach()

    # ---------------------------------------------------------- rule's part

    def linear_update(self, weights: Tensors, state, gradient: Gradient, raw,
                      state_cotangents: bool = True) -> LinearUpdate:
        """The update at ``(weights, state, gradient.grads, raw)`` and its adjoint.

        The rule's part is a VJP through the update alone; the loss's part,
        ``∇²L_T (∂u/∂g)ᵀ c``, comes from ``gradient.hvp``, with ``reduce``
        between the two. Eagerly and with nothing to reduce, autograd takes
        both in one backward pass through the update and the gradient's graph.
        Without ``state_cotangents`` the state entering the update is a
        constant (the implicit estimator), and ``"state"`` may not be asked for.
        """
        if self.functional:
            return self._functional_update(weights, state, gradient, raw)
        fused = self.reduce is None and gradient.graph_grads is not None
        inputs = {
            "weights": gradient.inputs if fused else tuple(w.detach().requires_grad_() for w in weights),
            "state": (tree_map(_differentiable_state if fused else _fresh_state, state)
                      if state_cotangents else state),
            "grads": gradient.graph_grads if fused else tuple(g.detach().requires_grad_() for g in gradient.grads),
            "raw": raw,
        }
        with torch.enable_grad():
            new_weights, new_state = self.update(inputs["weights"], inputs["state"], inputs["grads"],
                                                 inputs["raw"])
        state_leaves = tree_leaves(new_state)
        plans: dict[tuple, _VJPPlan] = {}

        def adjoint(ct_weights, ct_state=None, wrt=("weights", "state", "raw")):
            outputs, cotangents = list(new_weights), list(ct_weights)
            if ct_state is not None:
                for out, ct in zip(state_leaves, tree_leaves(ct_state)):
                    if out.requires_grad and ct is not None:
                        outputs.append(out)
                        cotangents.append(ct)
            split = "weights" in wrt and not fused
            names = [k for k in wrt if k != "weights"] + (["weights", "grads"] if split else
                                                        ["weights"] if "weights" in wrt else [])
            key = tuple(names)
            if key not in plans:
                plans[key] = _VJPPlan([inputs[k] for k in names])
            got = dict(zip(names, plans[key](outputs, cotangents)))
            if split:
                if gradient.hvp is None:
                    raise ValueError("the gradient entering this update was taken without a graph")
                got["weights"] = _add(got["weights"], gradient.hvp(got["grads"]))
            return tuple(got[k] for k in wrt)
        connected = fused and any(w.grad_fn is not None for w in inputs["weights"])
        return LinearUpdate(new_weights, new_state, adjoint, connected)

    @property
    def chains(self) -> bool:
        """Whether updates may take the previous update's outputs with their graph
        (eager autograd with nothing to reduce): see :attr:`LinearUpdate.connected`."""
        return not self.functional and self.reduce is None

    def _functional_update(self, weights, state, gradient: Gradient, raw) -> LinearUpdate:
        (new_weights, new_state), vjp_fn = torch.func.vjp(self.update, tuple(weights), state,
                                                          tuple(gradient.grads), raw)

        def adjoint(ct_weights, ct_state=None, wrt=("weights", "state", "raw")):
            if ct_state is None:
                ct_state = tree_map(torch.zeros_like, new_state)
            s_w, s_s, s_g, s_r = vjp_fn((tuple(ct_weights), ct_state))
            out = {"state": s_s, "raw": s_r}
            if "weights" in wrt:
                out["weights"] = _add(s_w, gradient.hvp(s_g))   # (∂u/∂w)ᵀ c + ∇²L_T (∂u/∂g)ᵀ c
            return tuple(out[k] for k in wrt)
        return LinearUpdate(new_weights, new_state, adjoint)


class _VJPPlan:
    """``torch.autograd.grad`` into trees of inputs, flattened once: inputs that
    do not require grad (or are unused) get zeros, non-tensors pass through."""

    def __init__(self, inputs: list):
        self.trees = inputs
        self.flat = [tree_leaves(tree) for tree in inputs]
        self.targets = [leaf for leaves in self.flat for leaf in leaves
                        if isinstance(leaf, Tensor) and leaf.requires_grad]

    def __call__(self, outputs, cotangents) -> list:
        if not all(out.requires_grad for out in outputs):   # an output the update left as it was
            kept = [(out, ct) for out, ct in zip(outputs, cotangents) if out.requires_grad]
            outputs, cotangents = [out for out, _ in kept], [ct for _, ct in kept]
        got = iter(torch.autograd.grad(outputs, self.targets, cotangents, retain_graph=True, allow_unused=True)
                   if self.targets and outputs else [None] * len(self.targets))
        results = []
        for tree, leaves in zip(self.trees, self.flat):
            filled = []
            for leaf in leaves:
                if not isinstance(leaf, Tensor):
                    filled.append(leaf)
                    continue
                g = next(got) if leaf.requires_grad else None
                filled.append(torch.zeros_like(leaf) if g is None else g)
            results.append(tree_rebuild(tree, iter(filled)))
        return results


def _differentiable(weights: Sequence[Tensor]) -> Tensors:
    """``weights`` themselves when they require grad (a module's parameters: the
    model is then called directly; or an earlier update's outputs, whose graph
    is kept), else detached copies that do. A graph built on parameters must be
    used before they are committed: the commit swaps their storage."""
    if all(w.requires_grad for w in weights):
        return tuple(weights)
    return tuple(w.detach().requires_grad_() for w in weights)


def _fresh_state(t):
    """A rule-state entry as a new leaf of the graph (floating point only)."""
    return t.detach().requires_grad_() if isinstance(t, Tensor) and t.is_floating_point() else t


def _differentiable_state(t):
    """Like :func:`_fresh_state`, but an entry that carries an earlier update's graph stays connected."""
    return t if isinstance(t, Tensor) and t.requires_grad else _fresh_state(t)



def detach(tree):
    return tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, tree)


def clone(tree):
    return tree_map(lambda t: t.detach().clone() if isinstance(t, Tensor) else t, tree)
