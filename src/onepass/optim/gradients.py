"""Gradients from the user's own ``backward()``: how :mod:`onepass.optim` feeds
the estimators without owning the model or the loss.

A plain update reads ``p.grad`` as the loop left it (accumulated, clipped,
unscaled, all-reduced by DDP). An update whose gradient is differentiated
(:meth:`~onepass.core.estimators.Estimator.graph_at`) needs that gradient as
a function of the weights: the loop calls
``loss.backward(create_graph=optimizer.needs_graph)``, and a hook on every
parameter keeps the graph-carrying gradient of each backward pass and hands
``p.grad`` back as a plain copy, for the loop to clip or unscale in place.

At ``step()`` the two are compared. ``p.grad`` may differ from what the
backward passes produced only by one factor for all tensors: a GradScaler's
``1/scale`` (given to the optimizer) and ``clip_grad_norm_``'s
``min(1, max_norm / (norm + 1e-6))``, whose ``max_norm`` is read off the
factor. The differentiated update then clips inside, as
``Tuner(max_grad_norm=...)`` does. Anything else is refused.

The estimators see this through :class:`LoopOps` and :class:`LoopExecution`,
the :class:`~onepass.core.products.Ops` and
:class:`~onepass.core.execution.Execution` of a loop; they contain no
estimator arithmetic.
"""
from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from ..core.execution import Execution
from ..core.products import Gradient, Ops, Tensors
from ..core.rules import clip_gradients


# Per parameter, the graph-carrying gradients kept since the last step. One
# hook per parameter, however many optimizers were built on it (a notebook
# that rebuilds its optimizer must not leave a stale hook that eats the graph).
# Keyed by id (a tensor's == is elementwise); an entry goes when its parameter does.
_PARTS: dict[int, list[Tensor]] = {}


_HANDED: dict[int, tuple[Tensor, int]] = {}   # the copy handed back as p.grad, and its version
_NO_LOSS = torch.zeros(())


def _keep_graph(p: Tensor) -> None:
    grad = p.grad
    if grad is not None and grad.grad_fn is not None:
        _PARTS[id(p)].append(grad)
        p.grad = grad.detach().clone()
        _HANDED[id(p)] = (p.grad, p.grad._version)


def _untouched(p: Tensor) -> bool:
    handed = _HANDED.get(id(p))
    return handed is not None and p.grad is handed[0] and p.grad._version == handed[1]


def _forget(key: int) -> None:
    _PARTS.pop(key, None)
    _HANDED.pop(key, None)


class GradientCapture:
    """Hooks that keep the graph of every ``backward(create_graph=True)``.

    After each accumulation into ``p.grad`` that carries a graph, the
    graph-carrying tensor is kept (:attr:`parts`) and ``p.grad`` becomes a
    detached copy, so in-place clipping or unscaling never touches the graph
    and no reference cycle ``p → p.grad → graph → p`` is left behind.
    """

    def __init__(self, params: list[Tensor]):
        self.params = params
        for p in params:
            if id(p) not in _PARTS:
                _PARTS[id(p)] = []
                if p.requires_grad:   # a frozen parameter never gets a gradient: torch.optim skips it
                    p.register_post_accumulate_grad_hook(_keep_graph)
                weakref.finalize(p, _forget, id(p))

    @property
    def parts(self) -> dict[int, list[Tensor]]:
        return {id(p): list(_PARTS[id(p)]) for p in self.params if _PARTS[id(p)]}

    @property
    def has_graph(self) -> bool:
        return any(_PARTS[id(p)] for p in self.params)

    def clear(self) -> None:
        """Drop the kept graphs (after a step, or at ``zero_grad``)."""
        for p in self.params:
            _PARTS[id(p)].clear()
            _HANDED.pop(id(p), None)


@dataclass
class StepGradient:
    """The training gradient of one ``step()``, as an estimator's "batch".

    ``plain`` is ``p.grad`` as the loop left it; for a differentiated update
    :meth:`with_graph` gives the gradient with its graph, unscaled, with the
    clipping the loop applied read off as :attr:`max_norm`.
    """

    params: list[Tensor]
    plain: Tensors
    parts: dict[int, list[Tensor]]
    scale: float = 1.0
    loss: Tensor = field(default_factory=lambda: torch.zeros(()))
    max_norm: float | None = None
    untouched: bool = False
    """``p.grad`` is still the copy the hook made, unchanged (no clipping, no unscaling)."""
    missing: tuple[int, ...] = ()
    """Indices of the parameters with no gradient (``p.grad is None``, frozen or
    unused): as in ``torch.optim`` the update leaves them and their state alone."""

    @classmethod
    def read(cls, params: list[Tensor], capture: GradientCapture, scale: float = 1.0,
             loss: Tensor | None = None) -> "StepGradient":
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
            plain.append(grad.detach())
        parts = capture.parts if capture.has_graph else {}
        untouched = bool(parts) and all(_untouched(p) for p in params if id(p) in parts)
        return cls(params, tuple(plain), parts, scale, _NO_LOSS if loss is None else loss.detach(),
                   untouched=untouched, missing=tuple(missing))

    def with_graph(self, reduce: Callable | None, agree_on_max_norm: Callable | None) -> Gradient:
        """The gradient with ``r ↦ ∇²L_T r``, values and products divided by the
        loss scale and, with ``reduce``, averaged across ranks."""
        if not self.parts:
            raise ValueError("this update differentiates its gradient, but backward() kept no graph: "
                             "call loss.backward(create_graph=optimizer.needs_graph) before step()")
        params, scale = self.params, self.scale
        graph, outputs, owners = [], [], []
        for i, p in enumerate(params):
            parts = self.parts.get(id(p))
            if not parts:
                graph.append(torch.zeros_like(p))
                continue
            # Value: the accumulated gradient; graph: every backward pass's own part.
            total = parts[0] if len(parts) == 1 else \
                parts[-1].detach() + sum(part - part.detach() for part in parts)
            graph.append(total / scale if scale != 1.0 else total)
            outputs.extend(parts)
            owners.extend([i] * len(parts))
        self.max_norm = self._max_norm(tuple(g.detach() for g in graph), agree_on_max_norm)

        trainable = [i for i, p in enumerate(params) if p.requires_grad]
        inputs = [params[i] for i in trainable]

        def hvp(r):
            got = dict(zip(trainable, torch.autograd.grad(outputs, inputs, [r[i] for i in owners],
                                                          retain_graph=True, allow_unused=True)))
            products = tuple(torch.zeros_like(p) if got.get(i) is None else
                             (got[i] / scale if scale != 1.0 else got[i]) for i, p in enumerate(params))
            return tuple(reduce(products)) if reduce is not None else products

        graph = tuple(graph)
        if reduce is not None:   # the update takes the averaged gradient; the graph stays local
            return Gradient(tuple(reduce(tuple(g.detach() for g in graph))), self.loss, hvp, None, None)
        return Gradient(tuple(g.detach() for g in graph), self.loss, hvp, tuple(params), graph)

    def _max_norm(self, unscaled: Tensors, agree: Callable | None) -> float | None:
        """The ``max_norm`` of a ``clip_grad_norm_`` applied to ``p.grad``, or ``None``.
        With ``agree`` (data-parallel) the ranks decide together, so that a
        refusal on one rank is a refusal on all, never a hang in a collective."""
        if self.untouched and self.scale == 1.0 and agree is None:
            return None              # p.grad is the gradient backward() produced: nothing to read off
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


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """``module.eval()`` inside the block; every submodule's own mode is put back after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _same_view(a: Tensor, b: Tensor) -> bool:
    return (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype)


def _norm(tensors: Tensors) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.double()) for t in tensors])))


@dataclass
class LoopOps(Ops):
    """:class:`~onepass.core.products.Ops` whose "batch" is a
    :class:`StepGradient` and whose validation batch is the user's
    zero-argument ``val_loss`` callable."""

    execution: "LoopExecution | None" = None

    @property
    def chains(self) -> bool:
        """Each update's gradient graph starts at the parameters themselves, so
        updates never take an earlier update's outputs with their graph."""
        return False

    def gradient(self, weights, batch: StepGradient, graph: bool = False) -> Gradient:
        if graph:
            return batch.with_graph(self.reduce, self.execution.agree_on_max_norm)
        return Gradient(batch.plain, batch.loss)

    def val_gradient(self, weights, batch: Callable) -> tuple[Tensors, Tensor]:
        execution = self.execution
        params = execution.params
        mode = eval_mode(execution.model) if execution.model is not None else contextlib.nullcontext()
        with execution.weights_as([w.detach().to(p.dtype) for w, p in zip(weights, params)]), \
                torch.enable_grad(), mode:
            loss = batch()
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
                raise ValueError(f"val_loss() must return a scalar tensor, got {shape}")
            if not loss.requires_grad:
                raise ValueError("val_loss() returned a loss that does not depend on the optimizer's "
                                 "parameters (was it computed under torch.no_grad()?)")
            trainable = [i for i, p in enumerate(params) if p.requires_grad]
            got = dict(zip(trainable, torch.autograd.grad(loss, [params[i] for i in trainable],
                                                          allow_unused=True)))
        if all(g is None for g in got.values()):
            raise ValueError("val_loss() does not depend on the optimizer's parameters: compute it with "
                             "the model the optimizer trains, not a copy of it (deepcopy, EMA model)")
        v = tuple(torch.zeros_like(p) if got.get(i) is None else got[i] for i, p in enumerate(params))
        return (tuple(self.reduce(v)) if self.reduce is not None else v), loss.detach().float()

    def linear_update(self, weights, state, gradient, raw, state_cotangents=True):
        update = super().linear_update(weights, state, gradient, raw, state_cotangents)
        # A graph from the user's backward saved the parameters themselves, which
        # later commits overwrite: its products run with the weights it was taken at.
        at = [p.data for p in self.execution.params]
        backward = update.backward

        def backward_at(*args, **kwargs):
            with self.execution.weights_as(at):
                return backward(*args, **kwargs)
        update.backward = backward_at
        return update


class _Holder(nn.Module):
    """The optimizer's parameters as a module (names ``"0"``, ``"1"``, ...)."""

    def __init__(self, params: list[Tensor]):
        super().__init__()
        self._tensors = params

    def named_parameters(self, *args, **kwargs):
        return ((str(i), p) for i, p in enumerate(self._tensors))

    def parameters(self, recurse: bool = True):
        return iter(self._tensors)


class LoopExecution(Execution):
    """An :class:`~onepass.core.execution.Execution` on gradients the loop
    computed: plain updates take ``p.grad``; the learning rate is scaled per
    parameter group by an LR scheduler's factor; clipping inside a
    differentiated update is the one the loop applied; parameters with no
    gradient are left alone (``torch.optim``'s rule); ``pinned`` values
    (``{name: tensor indices}``) stay 0 for those tensors while the name is
    tuned for the others; ``val_loss`` runs with ``eval_model`` in eval mode."""

    def __init__(self, params, rule, slots, *, reduce=None, agree_on_max_norm=None, pinned=None,
                 eval_model=None):
        super().__init__(_Holder(params), params, None, rule, slots, max_grad_norm=None, population=None,
                         compile=False)
        self.model = eval_model
        self.reduce = reduce
        self.agree_on_max_norm = agree_on_max_norm
        self.pinned: dict[str, frozenset[int]] = {k: frozenset(v) for k, v in (pinned or {}).items() if v}
        self.lr_factors: tuple[float, ...] | None = None   # per group; None: all 1
        self.exact: dict = {}
        self.current: StepGradient | None = None
        self._unscaled: dict | None = None

    def _ops_for(self, functional, fixed, frozen, skip):
        def update(weights, state, grads, raw):
            return self.rule_update(weights, state, grads, raw, fixed, frozen, skip)
        return LoopOps(None, None, update, frozen, False, self.reduce, execution=self)

    def gradient_now(self, batch: StepGradient, step: int):
        return batch.loss, batch.plain   # the optimizer's step() made it self.current

    def clip(self, grads):
        max_norm = self.current.max_norm if self.current is not None else None
        return tuple(grads) if max_norm is None else clip_gradients(grads, max_norm)

    def _missing(self) -> tuple[int, ...]:
        return self.current.missing if self.current is not None else ()

    def rule_update(self, weights, state, grads, raw, fixed, frozen, skip):
        """The differentiated update; a parameter with no gradient keeps its weights and state."""
        new_weights, new_state = super().rule_update(weights, state, grads, raw, fixed, frozen, skip)
        missing = self._missing()
        if not missing:
            return new_weights, new_state
        n = len(self.params)
        keep = set(missing)

        def merge(old, new):
            if isinstance(new, (tuple, list)) and len(new) == n:
                return type(new)(o if i in keep else x for i, (o, x) in enumerate(zip(old, new)))
            return new
        new_weights = merge(tuple(weights), tuple(new_weights))
        return new_weights, {k: merge(state[k], v) for k, v in new_state.items()}

    def update_without_graph(self, grads) -> None:
        """The plain update on the parameters that have a gradient (all of them, usually)."""
        missing = self._missing()
        if not missing:
            return super().update_without_graph(grads)
        keep = set(missing)
        n = len(self.params)
        present = [i for i in range(n) if i not in keep]
        if not present:
            return
        grads = self.clip(grads)

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

    def hyper_of(self, raw, fixed, frozen, skip) -> dict:
        return self._pin(self._scale_lr(self.slots.hyper(raw, fixed, frozen, skip)))

    def _pin(self, hyper: dict) -> dict:
        """Pinned values are 0 for their tensors (a group that keeps weight decay off)."""
        if not self.pinned:
            return hyper
        hyper = dict(hyper)
        n = len(self.params)
        for name, indices in self.pinned.items():
            if name not in hyper:
                continue
            value = hyper[name]
            values = [value if isinstance(value, (Tensor, float, int)) else value[i] for i in range(n)]
            hyper[name] = tuple(v * 0 if i in indices else v for i, v in enumerate(values))
        return hyper

    def _scale_lr(self, hyper: dict) -> dict:
        """The learning rate times each group's schedule factor (one value when
        every group has the same factor, so Adam keeps its fast path)."""
        factors = self.lr_factors
        if factors is None or "lr" not in hyper:
            return hyper
        lr, group_of = hyper["lr"], self.slots.group_of
        hyper = dict(hyper)
        if isinstance(lr, Tensor) and len(set(factors)) == 1:
            hyper["lr"] = lr * factors[0]
        else:
            hyper["lr"] = tuple((lr if isinstance(lr, Tensor) else lr[i]) * factors[group_of[i]]
                                for i in range(len(group_of)))
        return hyper

    def hyper(self) -> dict:
        """As :meth:`Execution.hyper`; a new schedule factor rescales the cached
        values instead of recomputing them from the slots."""
        if self._hyper_cache is None:
            if self._unscaled is None:
                with torch.no_grad():
                    self._unscaled = self._pin(self.slots.hyper(self.slots.raw, self.slots.fixed, self.frozen(),
                                                                self.slots.zero_fixed()))
            with torch.no_grad():
                self._hyper_cache = self._scale_lr(self._unscaled)
        return self._hyper_cache

    def invalidate(self) -> None:
        super().invalidate()
        self._unscaled = None

    def set_lr_factors(self, factors: tuple[float, ...]) -> None:
        factors = None if all(f == 1.0 for f in factors) else tuple(factors)
        if factors != self.lr_factors:
            self.lr_factors = factors
            self._hyper_cache = self._hyper_floats = None

    def set_exact(self, exact: dict) -> None:
        """The fixed hyperparameters as the Python floats of ``param_groups``
        (``{name: value per tensor}``): the plain updates use them, not their
        float32 slots, so that ``tune=()`` is ``torch.optim`` bit for bit."""
        exact = {name: values[0] if len(set(values)) == 1 else tuple(values) for name, values in exact.items()}
        if exact != self.exact:
            self.exact = exact
            self._hyper_floats = None

    def hyper_in_place(self) -> dict:
        if self._hyper_floats is None:
            out = {}
            for name, value in self.hyper().items():
                value = self.exact.get(name, value)
                out[name] = value.item() if isinstance(value, Tensor) else value
            self._hyper_floats = out
        return self._hyper_floats

    @contextlib.contextmanager
    def weights_as(self, tensors):
        """The parameters hold ``tensors`` inside the block (storage swapped, not copied)."""
        saved = [p.data for p in self.params]
        try:
            for p, t, now in zip(self.params, tensors, saved):
                if not _same_view(t, now):
                    p.data = t
            yield
        finally:
            for p, t in zip(self.params, saved):
                if not _same_view(t, p.data):
                    p.data = t
