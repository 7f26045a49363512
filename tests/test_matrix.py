"""Every rule × method × granularity, tuned and fixed hyperparameters mixed,
against an oracle built with plain autograd through the updates (float64).

The oracle maps raw values to the rule's hyperparameters itself (one slot,
one per group, one per tensor or one per weight) and differentiates the
composed update ``u(w, ∇L_T(w), λ)`` as one graph; it shares no code with
the Tuner beyond the update rules (themselves held to ``torch.optim``).
"""
import math
from functools import partial

import pytest
import torch
from torch import nn

import onepass
from onepass.core import hyperparameters as hp
from onepass.core.rules import get_rule
from onepass.core.solvers import conjugate_gradient, neumann_series

DTYPE = torch.float64
RULES = ("sgd", "sgd_nesterov", "adam", "adamw")
GRANULARITIES = ("scalar", "group", "tensor", "weight")
# Natural starting values, with hyperparameters tuned (T) and fixed (the rest) mixed.
START = {
    "sgd": (dict(lr=0.05, momentum=0.6, weight_decay=1e-3), ("lr", "weight_decay")),
    "sgd_nesterov": (dict(lr=0.05, momentum=0.6, weight_decay=1e-3), ("lr", "momentum")),
    "adam": (dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=1e-3), ("lr", "beta1")),
    "adamw": (dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=1e-2), ("lr", "weight_decay")),
}
MSE = nn.functional.mse_loss


def _problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1)).to(DTYPE)
    g = torch.Generator().manual_seed(seed + 1)

    def batch(n):
        x = torch.randn(n, 3, generator=g, dtype=DTYPE)
        return x, torch.sin(x.sum(1, keepdim=True))
    return model, [batch(12) for _ in range(8)], batch(20)


def _groups(model):
    params = list(model.parameters())
    return [dict(params=params[:2]), dict(params=params[2:])]


GROUP_OF = [0, 0, 1, 1]


def _to_hyper(rule, natural, tuned, kind, weights):
    """``raw ↦ hyper`` for the oracle, and the raw leaves it starts from."""
    raw = {}
    for name in tuned:
        if kind == "scalar":
            slots = [torch.tensor(natural[name], dtype=DTYPE)]
        elif kind == "group":
            slots = [torch.tensor(natural[name], dtype=DTYPE) for _ in range(2)]
        elif kind == "tensor":
            slots = [torch.tensor(natural[name], dtype=DTYPE) for _ in weights]
        else:
            slots = [torch.full_like(w, natural[name]) for w in weights]
        raw[name] = [hp.to_raw(name, s) for s in slots]

    def to_hyper(r):
        hyper = {}
        for name in get_rule(rule).hyperparameter_names:
            if name in r:
                values = [hp.to_natural(name, t) for t in r[name]]
                per_tensor = {"scalar": lambda i: 0, "group": lambda i: GROUP_OF[i]}.get(kind, lambda i: i)
                hyper[name] = tuple(values[per_tensor(i)] for i in range(len(weights)))
            elif natural.get(name, 0.0) != 0.0 or name not in ("momentum", "weight_decay"):
                hyper[name] = torch.tensor(natural[name], dtype=DTYPE)
        return hyper
    return raw, to_hyper


def _loss(model, weights, batch):
    x, y = batch
    names = [n for n, _ in model.named_parameters()]
    return MSE(torch.func.functional_call(model, dict(zip(names, weights)), (x,)), y)


def _leaves(raw):
    return {k: [t.clone().requires_grad_() for t in v] for k, v in raw.items()}


def _flat(raw):
    return [t for k in raw for t in raw[k]]


def _oracle_implicit(model, update, to_hyper, raw, weights, state, batch, val_batch, solve):
    """(∂u/∂λ)ᵀ solve(Jᵀ, v) with one autograd graph through the whole update."""
    leaves = _leaves(raw)
    w = tuple(t.clone().requires_grad_() for t in weights)
    grads = torch.autograd.grad(_loss(model, w, batch), w, create_graph=True)
    new_w, _ = update(w, state, grads, to_hyper(leaves))
    at_new = tuple(t.detach().requires_grad_() for t in new_w)
    v = torch.autograd.grad(_loss(model, at_new, val_batch), at_new)
    p = solve(lambda s: torch.autograd.grad(new_w, w, s, retain_graph=True), v)
    return torch.autograd.grad(new_w, _flat(leaves), p, allow_unused=True), new_w


def _oracle_unroll(model, update, to_hyper, raw, weights, state, batches, val_batch):
    leaves = _leaves(raw)
    w, s = tuple(t.clone() for t in weights), state
    for k, batch in enumerate(batches):
        w_in = tuple(t if k else t.requires_grad_() for t in w)
        grads = torch.autograd.grad(_loss(model, w_in, batch), w_in, create_graph=k > 0)
        w, s = update(w_in, s, grads, to_hyper(leaves))
    val = _loss(model, w, val_batch)
    return torch.autograd.grad(val, _flat(leaves), allow_unused=True), w


def _clone(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    return type(tree)(_clone(v) for v in tree)


def _compare(result, expected, names, tuner):
    got = [g for name in names for g in result.hypergradient[name]]
    expected = [torch.zeros_like(g) if e is None else e for g, e in zip(got, expected)]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-13)
    assert any(g.abs().max() > 1e-8 for g in got)


def _natural_now(tuner, names):
    """Scalar natural values (the window's hyperparameters are still uniform across slots
    before the first hyperparameter update)."""
    out = {}
    for name, value in tuner.hyperparameters.items():
        while isinstance(value, list):
            value = value[0]
        out[name] = float(value.flatten()[0]) if isinstance(value, torch.Tensor) else float(value)
    return out


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("method", ["neumann", "cg", "unroll"])
@pytest.mark.parametrize("rule", RULES)
def test_validation_methods(rule, method, granularity):
    natural, tuned = START[rule]
    model, batches, val_batch = _problem()
    interval = 3
    tuner = onepass.Tuner(model, MSE, params=_groups(model), rule=rule, hyperparameters=natural, tune=tuned,
                          granularity={n: granularity for n in tuned}, method=method, update_interval=interval,
                          unroll_steps=2, neumann_terms=3)
    update = get_rule(rule).update
    snapshots = []
    for t in range(interval):
        snapshots.append((tuple(p.detach().clone() for p in model.parameters()), _clone(tuner.state)))
        result = tuner.step(batches[t], val_batch)
    assert result.hypergradient is not None
    weights = tuple(p.detach().clone() for p in model.parameters())
    raw, to_hyper = _to_hyper(rule, natural, tuned, granularity, snapshots[0][0])
    if method == "unroll":
        expected, end = _oracle_unroll(model, update, to_hyper, raw, *snapshots[1], batches[1:3], val_batch)
    else:
        solve = (partial(neumann_series, terms=3) if method == "neumann"
                 else partial(conjugate_gradient, iterations=3))
        expected, end = _oracle_implicit(model, update, to_hyper, raw, *snapshots[2], batches[2], val_batch,
                                         solve)
    _compare(result, expected, tuned, tuner)
    for a, b in zip(weights, end):
        torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-13)
    # the hyperparameters moved, keeping their granularity
    values = tuner.hyperparameters
    for name in tuned:
        value = values[name]
        if granularity == "weight":
            assert [v.shape for v in value] == [w.shape for w in weights]
        elif granularity in ("group", "tensor"):
            assert len(value) == (2 if granularity == "group" else 4)
        else:
            assert isinstance(value, float)
    # the next window's plain steps run with the tuned (now per-slot) values
    for t in range(interval, 2 * interval):
        tuner.step(batches[t], val_batch)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("method", ["baydin", "baydin_exact"])
@pytest.mark.parametrize("rule", RULES)
def test_baydin_methods(rule, method, granularity):
    natural, _ = START[rule]
    model, batches, _ = _problem(seed=3)
    tuner = onepass.Tuner(model, MSE, params=_groups(model), rule=rule, hyperparameters=natural, tune=("lr",),
                          granularity={"lr": granularity}, method=method, hyper_lr=0.0)
    update = get_rule(rule).update
    before = (tuple(p.detach().clone() for p in model.parameters()), _clone(tuner.state))
    tuner.step(batches[0])
    result = tuner.step(batches[1])
    w0, s0 = before
    raw, to_hyper = _to_hyper(rule, natural, ("lr",), granularity, w0)
    w0_ = tuple(t.clone().requires_grad_() for t in w0)
    g0 = torch.autograd.grad(_loss(model, w0_, batches[0]), w0_)
    w1 = tuple(p.detach().clone() for p in model.parameters())
    # (the second update has been taken too: recompute w1 from the first)
    leaves = _leaves(raw)
    w1_graph, _ = update(w0, s0, g0, to_hyper(leaves))
    w1_ = tuple(t.detach().requires_grad_() for t in w1_graph)
    g1 = torch.autograd.grad(_loss(model, w1_, batches[1]), w1_)
    if method == "baydin":
        products = [-(a * b) for a, b in zip(g1, g0)]
        if granularity == "weight":
            expected = products
        elif granularity == "tensor":
            expected = [p.sum() for p in products]
        elif granularity == "group":
            expected = [products[0].sum() + products[1].sum(), products[2].sum() + products[3].sum()]
        else:
            expected = [sum(p.sum() for p in products)]
    else:
        expected = torch.autograd.grad(w1_graph, _flat(leaves), g1)
    _compare(result, expected, ("lr",), tuner)
    assert not torch.equal(w1[0], w1_graph[0].detach())   # the tuner is one update further
    assert math.isfinite(result.loss.item())
