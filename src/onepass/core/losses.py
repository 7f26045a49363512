"""Where the loss's part of an update comes from, as
:class:`~onepass.core.products.LossPart` values.

* The :class:`~onepass.Tuner`'s: forward and backward passes of its model on
  batches (:class:`ModelLosses`). A compiled population's step function
  rebuilds the part from the batches inside ``torch.compile``
  (:meth:`ModelLosses.rebuild`).
* A training loop's own: the gradient its ``backward(create_graph=True)``
  left (:func:`kept_graph_gradient`) and the gradient of a zero-argument
  validation loss (:func:`closure_val_gradient`). The ``torch.optim`` front
  end assembles its parts from these.

The estimators never see a model or a batch: only the part.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .products import BatchLosses, Gradient, LossPart, Tensors, weights_as


class ModelLosses:
    """``batch_loss(forward, batch)`` on ``model`` with explicit weights for ``params``.

    With ``compile`` the gradients of plain updates go through one
    ``torch.compile``\\ d ``torch.func`` gradient.
    """

    def __init__(self, model: nn.Module, params: list[Tensor], batch_loss: Callable, *, compile: bool):
        self.model = model
        self.params = params
        names = {id(p): n for n, p in model.named_parameters()}
        self.names = [names[id(p)] for p in params]
        self.buffer_names = [n for n, _ in model.named_buffers()]
        self.batch_loss = batch_loss
        self._compiled_gradient = self._compile_gradient() if compile else None

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

    def part(self, batch, val_batch=None, frozen: Tensor | None = None) -> LossPart:
        """The loss's part of an eager update on ``batch`` (validated on
        ``val_batch``, if given); ``frozen`` members' gradients are zeroed."""
        return BatchLosses(self.train_loss, self.val_loss, frozen, False, self._compiled_gradient).part(
            batch, val_batch)

    def rebuild(self, data, frozen: Tensor | None) -> LossPart:
        """:meth:`part` from its ``data``, on ``torch.func`` (inside a compiled function)."""
        batch, val_batch = data
        return BatchLosses(self.train_loss, self.val_loss, frozen, True).part(batch, val_batch)

    def _compile_gradient(self) -> Callable:
        """``(weights, batch) -> (grads, loss)`` through ``torch.compile``."""
        def grads_and_loss(weights, batch):
            gradient = BatchLosses(self.train_loss, self.val_loss, functional=True).gradient(weights, batch)
            return gradient.grads, gradient.loss
        return torch.compile(grads_and_loss, dynamic=False)


# ---------------------------------------------------------------- from a loop's own backward

def kept_graph_gradient(params: Sequence[Tensor], parts: dict[int, list[Tensor]], loss: Tensor, *,
                        scale: float = 1.0, reduce: Callable | None = None, max_norm: float | None = None,
                        missing: tuple[int, ...] = ()) -> Gradient:
    """The training gradient that backward passes with ``create_graph=True``
    left, with its Hessian–vector products: ``parts[id(p)]`` are the
    graph-carrying gradients of ``p`` from each backward pass (accumulated),
    divided by a loss ``scale``. With ``reduce`` (data parallelism) the value
    and every product are averaged; the graph stays local. ``max_norm`` and
    ``missing`` are as in :class:`~onepass.core.products.Gradient`.

    The graph saved the parameters themselves, which a later commit
    overwrites: its products run with the weights it was taken at."""
    graph, outputs, owners = [], [], []
    for i, p in enumerate(params):
        kept = parts.get(id(p))
        if not kept:
            graph.append(torch.zeros_like(p))
            continue
        # Value: the accumulated gradient; graph: every backward pass's own part.
        total = kept[0] if len(kept) == 1 else kept[-1].detach() + sum(part - part.detach() for part in kept)
        graph.append(total / scale if scale != 1.0 else total)
        outputs.extend(kept)
        owners.extend([i] * len(kept))
    trainable = [i for i, p in enumerate(params) if p.requires_grad]
    inputs = [params[i] for i in trainable]

    def hvp(r):
        got = dict(zip(trainable, torch.autograd.grad(outputs, inputs, [r[i] for i in owners],
                                                      retain_graph=True, allow_unused=True)))
        products = tuple(torch.zeros_like(p) if got.get(i) is None else
                         (got[i] / scale if scale != 1.0 else got[i]) for i, p in enumerate(params))
        return tuple(reduce(products)) if reduce is not None else products

    at = [p.data for p in params]
    around = functools.partial(weights_as, params, at)
    graph = tuple(graph)
    common = dict(max_norm=max_norm, missing=missing, around=around)
    if reduce is not None:
        return Gradient(tuple(reduce(tuple(g.detach() for g in graph))), loss, hvp, None, None, **common)
    return Gradient(tuple(g.detach() for g in graph), loss, hvp, tuple(params), graph, **common)


def closure_val_gradient(params: Sequence[Tensor], val_loss: Callable, weights: Sequence[Tensor], *,
                         reduce: Callable | None = None, model: nn.Module | None = None) -> tuple[Tensors, Tensor]:
    """``(v, L_V)``: the gradient of a zero-argument ``val_loss()`` with the
    parameters holding ``weights`` (``model``, if given, in eval mode), averaged by ``reduce``."""
    mode = eval_mode(model) if model is not None else contextlib.nullcontext()
    with weights_as(params, [w.detach().to(p.dtype) for w, p in zip(weights, params)]), \
            torch.enable_grad(), mode:
        loss = val_loss()
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
    return (tuple(reduce(v)) if reduce is not None else v), loss.detach().float()


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
