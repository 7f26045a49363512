"""The products an estimator is written against: the loss's part and the rule's part.

An estimator (:mod:`onepass.core.estimators`) sees one weight update
``w_t = u(w_{t-1}, s_{t-1}, g, λ)`` with ``g = ∇L_T(w_{t-1})`` through two
kinds of products, kept apart:

* the **loss's part**, a value (:class:`LossPart`): the training gradient
  ``g``, the Hessian–vector products ``r ↦ ∇²L_T r`` (a :class:`Gradient`)
  and the validation gradient ``v = ∇L_V(w_t)``. Only these depend on the
  data, so in data-parallel training only these are averaged across ranks.
  Whoever drives the estimator builds it, the way torchopt passes ``solve``:
  the :class:`~onepass.Tuner` from batches on its model
  (:class:`BatchLosses`), the ``torch.optim`` front end from the user's
  ``backward(create_graph=True)`` and ``val_loss``. An estimator never asks
  how it was built;
* the **rule's part** (:meth:`Ops.linear_update`): vector–Jacobian products
  through the update rule itself, with gradient clipping and the
  hyperparameter transforms: ``(∂u/∂w)ᵀ``, ``(∂u/∂s)ᵀ``, ``(∂u/∂g)ᵀ``,
  ``(∂u/∂λ)ᵀ``. Adam's update is not linear in ``g``, so this part must see
  the averaged gradient, never be averaged itself.

So ``Jᵀ s = (∂u/∂w)ᵀ s + ∇²L_T (∂u/∂g)ᵀ s``.

Both are computed with ``torch.autograd`` (eager; on a module's own
parameters when it is given them) or with ``torch.func`` (pure functions of
their tensors, so that a whole estimator step can go through
``torch.compile``). Eager vs compiled and one run vs a population of ``P``
runs are choices made here and in :class:`~onepass.core.execution.Execution`;
the estimators are written once against :class:`LossPart` and :class:`Ops`.
"""
from __future__ import annotations

import functools
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
    """The training gradient at some weights: ``grads = ∇L_T``, the loss, and
    with a graph ``hvp(r) = ∇²L_T r``. ``inputs``/``graph_grads`` are the
    autograd leaves the gradient was taken at and the gradient with its graph
    (the update and the products then run as one backward pass).

    ``max_norm`` is a clipping the caller already applied to ``grads``, to be
    applied inside the differentiated update (``None``: the run's own
    ``max_grad_norm``); ``missing`` are the indices of parameters that have no
    gradient, whose weights and rule state the update leaves alone, as
    ``torch.optim`` does; products through the gradient's graph run inside
    ``around()`` when it is given (the weights that graph was taken at)."""

    grads: Tensors
    loss: Tensor | None
    hvp: Callable[[Tensors], Tensors] | None = None
    inputs: Tensors | None = None
    graph_grads: Tensors | None = None
    max_norm: float | None = None
    missing: tuple[int, ...] = ()
    around: Callable[[], Any] | None = None


@dataclass
class LossPart:
    """The loss's part of one weight update, as a value.

    The training gradient at the weights the update starts from comes as
    values (``plain`` without a graph; ``graph`` with ``r ↦ ∇²L_T r``, given
    when the update's gradient is differentiated) or, for a part built from
    batches, computed at given weights by ``compute(weights, graph)``.

    Attributes:
        plain: ``∇L_T`` without a graph.
        graph: ``∇L_T`` with its Hessian–vector products.
        val_gradient: ``val_gradient(weights) -> (v, L_V)``: the validation
            gradient at the update's new weights, or ``None`` when this update
            has no validation data.
        compute: ``compute(weights, graph) -> Gradient``, instead of ``plain``/``graph``.
        chains: :meth:`gradient` may take an earlier update's outputs with their
            graph (eager unrolling then keeps one graph through a stretch).
        data: what the builder rebuilds the part from inside a compiled
            function (:meth:`~onepass.core.execution.Execution.run`); estimators never read it.
    """

    plain: Gradient | None = None
    graph: Gradient | None = None
    val_gradient: Callable[[Tensors], tuple[Tensors, Tensor]] | None = None
    compute: Callable[[Tensors, bool], Gradient] | None = None
    chains: bool = True
    data: Any = None

    def gradient(self, weights: Tensors, graph: bool) -> Gradient:
        """``∇L_T`` at ``weights`` (the update's starting weights); with ``graph``
        also its Hessian–vector products."""
        if self.compute is not None:
            return self.compute(weights, graph)
        got = self.graph if graph else self.plain
        if got is None:
            raise ValueError("this update differentiates its training gradient, but its loss's part has "
                             "no graph" if graph else "this update's loss's part has no training gradient")
        return got


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
class BatchLosses:
    """The loss's part from batches: :class:`LossPart`\\ s for loss functions of
    explicit weights, by autograd (eager) or ``torch.func``.

    Args:
        loss: ``loss(weights, batch)`` → the training loss, a scalar or one value per member.
        val_loss: the same for the validation loss (running statistics left alone).
        frozen: population members whose gradients are zeroed, or ``None``.
        functional: use ``torch.func`` (compilable) instead of ``torch.autograd``.
        plain_gradient: optional ``(weights, batch) -> (grads, loss)`` for
            gradients without a graph (a compiled one).
    """

    loss: Callable
    val_loss: Callable
    frozen: Tensor | None = None
    functional: bool = False
    plain_gradient: Callable | None = None

    def part(self, batch, val_batch=None, validated: bool | None = None) -> LossPart:
        """The loss's part of an update on ``batch``, validated on ``val_batch``
        (when ``validated``; default: when it is not ``None``)."""
        validated = val_batch is not None if validated is None else validated
        val = functools.partial(self.val_gradient, batch=val_batch) if validated else None
        return LossPart(val_gradient=val, compute=functools.partial(self._gradient_on, batch),
                        chains=not self.functional, data=(batch, val_batch))

    def _gradient_on(self, batch, weights: Tensors, graph: bool) -> Gradient:
        return self.gradient(weights, batch, graph)

    def gradient(self, weights: Tensors, batch, graph: bool = False) -> Gradient:
        """``∇L_T`` at ``weights``; with ``graph`` also ``r ↦ ∇²L_T r``."""
        if not graph and self.plain_gradient is not None:
            grads, loss = self.plain_gradient(tuple(w.detach() for w in weights), batch)
            return Gradient(grads, loss)
        if self.functional:
            def grads_of(w):
                grads, loss = torch.func.grad(_with_total(self.loss, batch), has_aux=True)(w)
                return mask_members(grads, self.frozen), loss
            if not graph:
                grads, loss = grads_of(weights)
                return Gradient(grads, loss)
            grads, hvp_fn, loss = torch.func.vjp(grads_of, tuple(weights), has_aux=True)
            return Gradient(grads, loss, lambda r: mask_members(hvp_fn(tuple(r))[0], self.frozen))
        weights = _differentiable(weights)
        with torch.enable_grad():
            loss = self.loss(weights, batch)
            grads = torch.autograd.grad(_total(loss), weights, create_graph=graph)
            grads = mask_members(grads, self.frozen)
        if not graph:
            return Gradient(grads, loss)

        def hvp(r):
            return mask_members(torch.autograd.grad(grads, weights, tuple(r), retain_graph=True), self.frozen)
        return Gradient(tuple(g.detach() for g in grads), loss, hvp, weights, grads)

    def val_gradient(self, weights: Tensors, batch) -> tuple[Tensors, Tensor]:
        """``(v, L_V)``: the validation gradient at ``weights`` (per member)."""
        if self.functional:
            v, loss = torch.func.grad(_with_total(self.val_loss, batch), has_aux=True)(tuple(weights))
            return mask_members(v, self.frozen), loss
        weights = tuple(w.detach().requires_grad_() for w in weights)
        with torch.enable_grad():
            loss = self.val_loss(weights, batch)
            v = torch.autograd.grad(_total(loss), weights)
        return mask_members(v, self.frozen), loss.detach()


@dataclass
class Ops:
    """The rule's part: the update and its adjoint, by autograd (eager) or ``torch.func``.

    Args:
        update: ``update(weights, state, grads, raw, max_norm=None, missing=()) ->
            (weights, state)``: clipping, the hyperparameter transforms and the
            rule, a pure function (``max_norm`` and ``missing`` as in :class:`Gradient`).
        frozen: population members whose gradients are zeroed, or ``None``.
        functional: use ``torch.func`` (compilable) instead of ``torch.autograd``.
    """

    update: Callable
    frozen: Tensor | None = None
    functional: bool = False

    @classmethod
    def of_functions(cls, update: Callable, to_hyper: Callable) -> "Ops":
        """``torch.func`` ops for a rule's ``update(weights, state, grads, hyper)``
        with ``to_hyper(raw)`` giving its natural values: how tests, ``vmap`` and
        other front ends call an estimator directly (with
        :meth:`BatchLosses.part` for the loss's part)."""
        def rule(weights, state, grads, raw, max_norm=None, missing=()):
            return update(weights, state, grads, to_hyper(raw))
        return cls(rule, functional=True)

    def linear_update(self, weights: Tensors, state, gradient: Gradient, raw,
                      state_cotangents: bool = True) -> LinearUpdate:
        """The update at ``(weights, state, gradient.grads, raw)`` and its adjoint.

        The rule's part is a VJP through the update alone; the loss's part,
        ``∇²L_T (∂u/∂g)ᵀ c``, comes from ``gradient.hvp``. Eagerly, when the
        gradient carries its graph (``graph_grads``), autograd takes both in
        one backward pass through the update and the gradient's graph.
        Without ``state_cotangents`` the state entering the update is a
        constant (the implicit estimator), and ``"state"`` may not be asked for.
        """
        update_fn = self.update
        if gradient.max_norm is not None or gradient.missing:
            update_fn = functools.partial(update_fn, max_norm=gradient.max_norm, missing=gradient.missing)
        if self.functional:
            return self._functional_update(update_fn, weights, state, gradient, raw)
        fused = gradient.graph_grads is not None
        inputs = {
            "weights": gradient.inputs if fused else tuple(w.detach().requires_grad_() for w in weights),
            "state": (tree_map(_differentiable_state if fused else _fresh_state, state)
                      if state_cotangents else state),
            "grads": gradient.graph_grads if fused else tuple(g.detach().requires_grad_() for g in gradient.grads),
            "raw": raw,
        }
        with torch.enable_grad():
            new_weights, new_state = update_fn(inputs["weights"], inputs["state"], inputs["grads"], inputs["raw"])
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
        if gradient.around is not None:
            bare = adjoint

            def adjoint(*args, **kwargs):
                with gradient.around():
                    return bare(*args, **kwargs)
        connected = fused and any(w.grad_fn is not None for w in inputs["weights"])
        return LinearUpdate(new_weights, new_state, adjoint, connected)

    @property
    def chains(self) -> bool:
        """Whether updates may take the previous update's outputs with their graph
        (eager autograd; the loss's part must allow it too, :attr:`LossPart.chains`):
        see :attr:`LinearUpdate.connected`."""
        return not self.functional

    def _functional_update(self, update_fn, weights, state, gradient: Gradient, raw) -> LinearUpdate:
        (new_weights, new_state), vjp_fn = torch.func.vjp(update_fn, tuple(weights), state,
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


class weights_as:
    """Context manager: the parameters hold ``tensors`` inside the block
    (storage swapped, not copied; a parameter already holding its tensor is left alone)."""

    def __init__(self, params: Sequence[Tensor], tensors):
        self.params, self.tensors = params, tensors

    def __enter__(self):
        self.saved = saved = [p.data for p in self.params]
        for p, t, now in zip(self.params, self.tensors, saved):
            if not (t.data_ptr() == now.data_ptr() and t.shape == now.shape and t.stride() == now.stride()
                    and t.dtype == now.dtype):
                p.data = t

    def __exit__(self, *exc):
        for p, t in zip(self.params, self.saved):
            now = p.data
            if not (t.data_ptr() == now.data_ptr() and t.shape == now.shape and t.stride() == now.stride()
                    and t.dtype == now.dtype):
                p.data = t
        return False
