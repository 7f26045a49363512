"""Hypergradient estimators, as functions of explicit tensors.

Notation of ``method.md``: ``w_t = u(w_{t-1}, λ)`` is one weight update,
``J = ∂u/∂w`` and ``v = ∂L_V/∂w`` at ``w_t``.

* :func:`neumann_series` and :func:`implicit_hypergradient` are the paper's
  estimator, written over vector–Jacobian products so that any autodiff
  back end can drive them (``torch.autograd`` in :class:`onepass.Tuner`,
  ``torch.func`` below).
* The ``*_functional`` functions are pure ``torch.func`` versions: given loss
  functions ``loss(weights, batch)`` they compute one estimate from scratch.
  They hold no state and branch on no tensor value, so a population of runs
  can be batched with ``torch.func.vmap``; the tests use them as oracles.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

Tensors = tuple[Tensor, ...]
VJP = Callable[[Tensors], Tensors]


def neumann_series(vjp_weights: VJP, v: Tensors, terms: int) -> Tensors:
    """``p = Σ_{j=0}^{K-1} (Jᵀ)^j v``, the truncated Neumann series of ``(I − Jᵀ)^{-1} v``.

    Args:
        vjp_weights: ``s ↦ Jᵀ s``, one vector–Jacobian product through the update.
        v: the validation-loss gradient at the new weights.
        terms: ``K ≥ 1``; ``K − 1`` products are taken.
    """
    if terms < 1:
        raise ValueError(f"the Neumann series needs at least one term, got neumann_terms={terms}")
    p, s = v, v
    for _ in range(terms - 1):
        s = vjp_weights(s)
        p = tuple(a + b for a, b in zip(p, s))
    return p


def implicit_hypergradient(vjp_weights: VJP, vjp_hyper: VJP, v: Tensors, terms: int) -> Tensors:
    """The paper's estimate ``(∂u/∂λ)ᵀ Σ_{j<K} (Jᵀ)^j v`` of ``dL_V/dλ``."""
    return vjp_hyper(neumann_series(vjp_weights, v, terms))


def implicit_hypergradient_functional(
    update: Callable, train_loss: Callable, val_loss: Callable,
    weights: Tensors, state, raw, to_hyper: Callable,
    train_batch, val_batch, terms: int,
):
    """One implicit-function-theorem estimate with ``torch.func``.

    Args:
        update: a rule's ``update(weights, state, grads, hyper)``.
        train_loss, val_loss: ``loss(weights, batch) -> scalar``.
        weights, state: ``w_{t-1}`` and the optimiser state entering the update
            (treated as a constant).
        raw: the raw (transformed-space) hyperparameters, any pytree.
        to_hyper: maps ``raw`` to the rule's ``hyper`` mapping (natural units).
        terms: Neumann terms ``K``.

    Returns:
        ``(hypergradient, new_weights, new_state, val_loss)``; the hypergradient
        has the structure of ``raw``.
    """
    def step(w, r):
        grads = torch.func.grad(train_loss)(w, train_batch)
        new_w, new_state = update(w, state, grads, to_hyper(r))
        return new_w, new_state

    new_weights, vjp_fn, new_state = torch.func.vjp(step, weights, raw, has_aux=True)
    v, loss = torch.func.grad_and_value(val_loss)(new_weights, val_batch)
    p = neumann_series(lambda s: vjp_fn(s)[0], v, terms)
    return vjp_fn(p)[1], new_weights, new_state, loss


def unrolled_hypergradient_functional(
    update: Callable, train_loss: Callable, val_loss: Callable,
    weights: Tensors, state, raw, to_hyper: Callable,
    train_batches: Sequence, val_batch,
):
    """Exact ``dL_V/dλ`` by differentiating through ``len(train_batches)`` updates.

    The weights and state entering the first update are constants. Returns
    ``(hypergradient, (new_weights, new_state), val_loss)``.
    """
    def unrolled(r):
        w, s = weights, state
        for batch in train_batches:
            w, s = update(w, s, torch.func.grad(train_loss)(w, batch), to_hyper(r))
        loss = val_loss(w, val_batch)
        return loss, (loss, (w, s))

    hypergradient, (loss, end) = torch.func.grad(unrolled, has_aux=True)(raw)
    return hypergradient, end, loss


def baydin_hypergradient_functional(
    update: Callable, weights: Tensors, state, grads: Tensors, raw, to_hyper: Callable,
    next_grads: Tensors,
):
    """Hypergradient descent (Baydin et al. 2018): ``∇L_T(w_t) · ∂w_t/∂λ``.

    ``weights, state, grads`` are the inputs of the previous update
    ``w_t = u(w_{t-1}, λ)``; ``next_grads`` is the training gradient at ``w_t``.
    For plain SGD this is ``−η ln10 · g_{t+1}·g_t`` for ``lr = 10^a``.
    """
    _, vjp_fn = torch.func.vjp(lambda r: update(weights, state, grads, to_hyper(r))[0], raw)
    return vjp_fn(tuple(next_grads))[0]
