"""Linear solves for the implicit estimator: ``p ≈ (I − Jᵀ)^{-1} v``.

Each takes ``transposed_jacobian: s ↦ Jᵀ s`` (one vector–Jacobian product
through the update) and ``v``, and returns ``p``; the implicit estimator
(:mod:`onepass.core.estimators.implicit`) does not care which it is given,
as with torchopt's ``linear_solve``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Tensors = tuple[Tensor, ...]


def neumann_series(transposed_jacobian: Callable[[Tensors], Tensors], v: Tensors, terms: int) -> Tensors:
    """``p = Σ_{j=0}^{K-1} (Jᵀ)^j v``, the paper's truncated Neumann series.

    Args:
        transposed_jacobian: ``s ↦ Jᵀ s``.
        v: the validation-loss gradient at the new weights.
        terms: ``K ≥ 1``; ``K − 1`` products are taken.
    """
    if terms < 1:
        raise ValueError(f"the Neumann series needs at least one term, got neumann_terms={terms}")
    p, s = v, v
    for _ in range(terms - 1):
        s = transposed_jacobian(s)                    # s ← Jᵀ s
        p = tuple(a + b for a, b in zip(p, s))        # p ← p + s
    return p


def conjugate_gradient(transposed_jacobian: Callable[[Tensors], Tensors], v: Tensors, iterations: int,
                       *, members: int | None = None) -> Tensors:
    """Solve ``(I − Jᵀ) p = v`` by ``iterations`` steps of conjugate gradients from ``p = v``.

    Exact for symmetric positive definite ``I − J``: SGD's ``J = I − η(∇²L_T + ξI)``
    (the momentum buffer is a constant of the update) at a minimum with
    ``η(λ_max + ξ) < 2``. For Adam's non-symmetric ``J`` it is a heuristic.
    With ``members`` the leading dimension indexes independent runs of a
    population, each solved with its own inner products.
    """
    if iterations < 1:
        raise ValueError(f"conjugate gradients need at least one iteration, got {iterations}")

    def dot(a: Tensors, b: Tensors) -> Tensor:
        if members is None:
            return sum((x * y).sum() for x, y in zip(a, b))
        return sum((x * y).reshape(members, -1).sum(1) for x, y in zip(a, b))

    def scale(alpha: Tensor, t: Tensor) -> Tensor:
        return alpha if members is None else alpha.view(-1, *[1] * (t.dim() - 1))

    def apply(s: Tensors) -> Tensors:                  # (I − Jᵀ) s
        return tuple(a - b for a, b in zip(s, transposed_jacobian(s)))

    p = v
    r = tuple(a - b for a, b in zip(v, apply(p)))
    d, rr = r, dot(r, r)
    for _ in range(iterations):
        ad = apply(d)
        alpha = torch.where(rr > 0, rr / dot(d, ad), torch.zeros_like(rr))
        p = tuple(x + scale(alpha, x) * y for x, y in zip(p, d))
        r = tuple(x - scale(alpha, x) * y for x, y in zip(r, ad))
        rr_new = dot(r, r)
        beta = torch.where(rr > 0, rr_new / rr, torch.zeros_like(rr))
        d = tuple(x + scale(beta, x) * y for x, y in zip(r, d))
        rr = rr_new
    return p
