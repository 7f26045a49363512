"""Gradients from the user's own ``backward()``: how :mod:`onepass.optim` feeds
the estimators without owning the model or the loss.

A plain update reads ``p.grad`` as the loop left it (accumulated, clipped,
unscaled, all-reduced by DDP). An update whose gradient is differentiated
(:meth:`~onepass.core.estimators.Estimator.graph_at`) needs that gradient as
a function of the weights: the loop calls
``loss.backward(create_graph=optimizer.needs_graph)``, and for that update
only (:class:`GradientCapture`) a hook on every parameter's gradient
accumulator keeps the graph-carrying gradient of each backward pass and hands
``p.grad`` back as a plain copy, for the loop to clip or unscale in place.

At ``step()`` the two are compared. ``p.grad`` may differ from what the
backward passes produced only by one factor for all tensors: a GradScaler's
``1/scale`` (given to the optimizer) and ``clip_grad_norm_``'s
``min(1, max_norm / (norm + 1e-6))``, whose ``max_norm`` is read off the
factor. The differentiated update then clips inside, as
``Tuner(max_grad_norm=...)`` does. Anything else is refused.

The estimators see one value per update: :meth:`StepGradient.part` is the
update's :class:`~onepass.core.products.LossPart` (the training gradient, its
Hessian–vector products and the validation gradient of the user's
``val_loss``, assembled with :mod:`onepass.core.losses`), which the
:class:`~onepass.Tuner` takes in :meth:`~onepass.Tuner.step_on`. Nothing
here holds estimator arithmetic, and the core calls nothing defined here.
"""
from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ..core.losses import closure_val_gradient, eval_mode, kept_graph_gradient
from ..core.products import Gradient, LossPart, Tensors

__all__ = ["GradientCapture", "StepGradient", "eval_mode"]   # eval_mode: for the integrations


# Per parameter, the graph-carrying gradients kept since the last step, shared
# by every optimizer built on it (a notebook that rebuilds its optimizer: the
# first armed hook keeps the graph and hands on a detached gradient, so another
# finds nothing to keep). Keyed by id (a tensor's == is elementwise); an entry
# goes when its parameter does.
_PARTS: dict[int, list[Tensor]] = {}
_KEPT: set[int] = set()   # the parameters with an entry in _PARTS: plain updates find it empty


def _part_hook(p: Tensor) -> Callable:
    """The hook on ``p``'s gradient accumulator, before it accumulates: a
    gradient with a graph is kept as it arrives and handed on detached, so
    that ``p.grad`` never carries the graph (no reference cycle ``p → p.grad →
    graph → p``; in-place clipping or unscaling of ``p.grad`` never touches
    the graph) and the kept graph has no copy node of torch's accumulation in
    it (every Hessian–vector product runs through it). It sits on the
    accumulator, not on the tensor: a tensor hook would also see, and detach,
    a user's own ``autograd.grad(..., create_graph=True)``, which never
    reaches the accumulator."""
    key, ref = id(p), weakref.ref(p)

    def hook(grad_outputs):
        grad = grad_outputs[0]
        if grad is None or grad.grad_fn is None:
            return None
        prev = ref().grad
        # A pass after the first: the accumulated value, as torch's own accumulation makes it.
        _PARTS[key].append(grad if prev is None else prev + grad)
        _KEPT.add(key)
        return (grad.detach(),)
    return hook


def _remove(handles: list) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


def _forget(key: int) -> None:
    _PARTS.pop(key, None)
    _KEPT.discard(key)


class GradientCapture:
    """Hooks that keep the graph of every ``backward(create_graph=True)``
    (:attr:`parts`), on the backward passes of the updates whose gradient is
    differentiated only.

    The optimizer :attr:`armed` them before such an update and takes them off
    after it. A hook left on would cost every plain update's backward a
    Python call per parameter, and so would its empty shell: torch keeps a
    hook's wrapper on its accumulator for the accumulator's life. So the
    accumulators are fetched when the hooks go on and let go when they come
    off; once nothing holds an accumulator, torch makes a new, bare one.
    """

    def __init__(self, params: list[Tensor]):
        self.params = params
        for p in params:
            if id(p) not in _PARTS:
                _PARTS[id(p)] = []
                weakref.finalize(p, _forget, id(p))
        # A frozen parameter (or a non-leaf) has no accumulator: torch.optim skips it, and so do the hooks.
        self._hooked = [(p, _part_hook(p)) for p in params if p.requires_grad and p.grad_fn is None]
        self._handles: list = []
        self._accumulators: list = []   # held while armed: an accumulator lives while something holds it
        weakref.finalize(self, _remove, self._handles)

    @property
    def armed(self) -> bool:
        """Whether the hooks are on: set it before the update's backward passes."""
        return bool(self._handles)

    @armed.setter
    def armed(self, on: bool) -> None:
        if on == bool(self._handles):
            return
        if not on:
            _remove(self._handles)
            self._accumulators.clear()
            return
        with torch.enable_grad():
            for p, hook in self._hooked:
                accumulator = p.view_as(p).grad_fn.next_functions[0][0]   # torch's own, now
                self._accumulators.append(accumulator)
                self._handles.append(accumulator.register_prehook(hook))

    @property
    def parts(self) -> dict[int, list[Tensor]]:
        return {id(p): list(_PARTS[id(p)]) for p in self.params if _PARTS[id(p)]}

    @property
    def has_graph(self) -> bool:
        return bool(_KEPT) and any([id(p) in _KEPT for p in self.params])

    def clear(self) -> None:
        """Drop the kept graphs (after a step, or at ``zero_grad``)."""
        if not _KEPT:
            return
        for p in self.params:
            key = id(p)
            if key in _KEPT:
                _PARTS[key].clear()
                _KEPT.discard(key)


@dataclass
class StepGradient:
    """The training gradient of one ``step()``, the source of its loss's part (:meth:`part`).

    ``plain`` is ``p.grad`` as the loop left it; for a differentiated update
    :meth:`with_graph` gives the gradient with its graph, unscaled, with the
    clipping the loop applied read off as :attr:`max_norm`.
    """

    params: list[Tensor]
    plain: Tensors
    parts: dict[int, list[Tensor]]
    scale: float = 1.0
    loss: Tensor | None = None
    """The loop's own training loss is not the optimizer's to check: a
    non-finite gradient is found at the window's end (``_check_window``)."""
    max_norm: float | None = None
    missing: tuple[int, ...] = ()
    """Indices of the parameters with no gradient (``p.grad is None``, frozen or
    unused): as in ``torch.optim`` the update leaves them and their state alone."""

    @classmethod
    def read(cls, params: list[Tensor], capture: GradientCapture, scale: float = 1.0) -> "StepGradient":
        plain, missing = [], []
        for i, p in enumerate(params):
            grad = p.grad
            if grad is None:
                missing.append(i)
                plain.append(torch.zeros_like(p))
                continue
            if grad.is_sparse:
                raise RuntimeError("onepass.optim does not support sparse gradients (nn.Embedding(sparse=True), "
                                   "nn.EmbeddingBag(sparse=True)): use sparse=False")
            if grad.requires_grad:   # backward(create_graph=True) with the hooks off, or p.grad set by hand
                grad = p.grad = grad.detach()   # no graph needed here: and none left in a cycle through p
            plain.append(grad)
        parts = capture.parts if capture.has_graph else {}
        return cls(params, tuple(plain), parts, scale, missing=tuple(missing))

    def part(self, val_loss: Callable | None, *, graph: bool, reduce: Callable | None = None,
             agree_on_max_norm: Callable | None = None, model: nn.Module | None = None) -> LossPart:
        """This update's loss's part: ``p.grad`` as the loop left it, with
        ``graph`` also the gradient with its graph (:meth:`with_graph`), and,
        with ``val_loss``, its gradient at the update's new weights. ``reduce``
        averages every vector across ranks; ``model`` is put in eval mode for ``val_loss``."""
        val = None if val_loss is None else functools.partial(closure_val_gradient, self.params, val_loss,
                                                             reduce=reduce, model=model)
        return LossPart(Gradient(self.plain, self.loss, missing=self.missing),
                        self.with_graph(reduce, agree_on_max_norm) if graph else None, val, chains=False)

    def with_graph(self, reduce: Callable | None, agree_on_max_norm: Callable | None) -> Gradient:
        """The gradient with ``r ↦ ∇²L_T r``, values and products divided by the
        loss scale and, with ``reduce``, averaged across ranks; a clipping the
        loop applied is read off as :attr:`max_norm` and done inside the update."""
        if not self.parts:
            raise ValueError("this update differentiates its gradient, but backward() kept no graph: "
                             "call loss.backward(create_graph=optimizer.needs_graph) before step()")
        self.max_norm = self._max_norm(agree_on_max_norm)
        return kept_graph_gradient(self.params, self.parts, self.loss, scale=self.scale, reduce=reduce,
                                   max_norm=self.max_norm, missing=self.missing)

    def _max_norm(self, agree: Callable | None) -> float | None:
        """The ``max_norm`` of a ``clip_grad_norm_`` applied to ``p.grad``, or ``None``.
        With ``agree`` (data-parallel) the ranks decide together, so that a
        refusal on one rank is a refusal on all, never a hang in a collective."""
        scale, parts = self.scale, self.parts
        if scale == 1.0 and agree is None and all(torch.equal(g, parts[id(p)][-1]) for p, g in
                                                  zip(self.params, self.plain) if id(p) in parts):
            return None              # p.grad is the gradient backward() produced: nothing to read off
        unscaled = tuple(torch.zeros_like(p) if not parts.get(id(p)) else
                         parts[id(p)][-1].detach() / scale if scale != 1.0 else parts[id(p)][-1].detach()
                         for p in self.params)
        norm = _norm(unscaled)
        now = _norm(self.plain)
        factor = now / norm if norm > 0 else 1.0
        if not math.isfinite(factor):
            factor = 1.0
        problem = None
        if factor > 1 + 1e-6:
            problem = (f"p.grad at step() is {factor:.4g} times the gradient backward() produced; "
                       "with a GradScaler give it to the optimizer (grad_scaler=scaler)")
        clipped = factor < 1 - 1e-6
        if clipped and problem is None:
            deviation = max(float((q - factor * g).abs().max()) for q, g in zip(self.plain, unscaled))
            if deviation > 1e-5 * max(now, 1e-30) + 1e-30:
                problem = ("p.grad was changed between backward() and step() by something other than "
                           "clip_grad_norm_ or a GradScaler: onepass.optim cannot differentiate that")
        max_norm = factor * (norm + 1e-6) if clipped else math.inf
        if agree is not None:
            max_norm, any_problem = agree(max_norm, problem is not None)
            if any_problem:
                raise ValueError("p.grad differs from the gradient backward() kept on some rank: under DDP, "
                                 "run the update where optimizer.needs_graph is True through ddp_model.module "
                                 "(DDP all-reduces p.grad), or see the rank's own error"
                                 + (f" (here: {problem})" if problem else ""))
        elif problem is not None:
            raise ValueError(problem)
        return None if math.isinf(max_norm) else max_norm


def _norm(tensors: Tensors) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.double()) for t in tensors])))
