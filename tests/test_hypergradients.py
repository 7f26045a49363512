"""The hypergradient estimators against closed forms, autograd and finite differences."""
import math
from functools import partial

import pytest
import torch

from onepass.core import hyperparameters as hp
from onepass.core.estimators.baydin import exact_hypergradient_of as baydin_hypergradient_functional
from onepass.core.estimators.implicit import implicit_hypergradient as implicit_hypergradient_functional
from onepass.core.estimators.unroll import unrolled_hypergradient as unrolled_hypergradient_functional
from onepass.core.rules import get_rule
from onepass.core.solvers import conjugate_gradient, neumann_series

DTYPE = torch.float64
LN10 = math.log(10.0)
SGD = get_rule("sgd").update
NAMES = ("lr", "momentum", "weight_decay")


def _t(x):
    return torch.tensor(x, dtype=DTYPE)


def to_hyper(raw):
    """Raw values (a tensor, or a tuple with one entry per weight tensor) to natural units."""
    return {name: hp.to_natural(name, value) if isinstance(value, torch.Tensor)
            else tuple(hp.to_natural(name, v) for v in value)
            for name, value in raw.items()}


def _raw(lr=0.05, momentum=0.7, weight_decay=0.02):
    natural = dict(lr=lr, momentum=momentum, weight_decay=weight_decay)
    return {name: hp.to_raw(name, _t(value)) for name, value in natural.items()}


# ------------------------------------------------------------- transforms


def test_transforms_round_trip_and_derivatives():
    for name, value in [("lr", 0.03), ("weight_decay", 1e-4), ("eps", 1e-8),
                        ("momentum", 0.9), ("beta1", 0.8), ("beta2", 0.999)]:
        raw = hp.to_raw(name, _t(value))
        torch.testing.assert_close(hp.to_natural(name, raw), _t(value), rtol=1e-14, atol=0)
    a = _t(-1.5).requires_grad_()
    (d,) = torch.autograd.grad(hp.to_natural("lr", a), a)
    torch.testing.assert_close(d, _t(10 ** -1.5 * LN10), rtol=1e-14, atol=0)
    c = _t(0.3).requires_grad_()
    (d,) = torch.autograd.grad(hp.to_natural("momentum", c), c)
    mu = 1 / (1 + math.exp(-0.3))
    torch.testing.assert_close(d, _t(mu * (1 - mu)), rtol=1e-14, atol=0)


# ------------------------------------------------------------- quadratic


class Quadratic:
    """L_T(w) = ½ wᵀAw − bᵀw, L_V(w) = ½ (w−c)ᵀB(w−c), SGD with a momentum buffer."""

    def __init__(self, n=6, seed=0, lr=0.05, momentum=0.7, weight_decay=0.02):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DTYPE))
        eigenvalues = torch.linspace(2.0, 12.0, n, dtype=DTYPE)   # η(λ+ξ) in [0.1, 0.6]
        self.A = q @ torch.diag(eigenvalues) @ q.T
        m = torch.randn(n, n, generator=g, dtype=DTYPE)
        self.B = m @ m.T + torch.eye(n, dtype=DTYPE)
        self.b = torch.randn(n, generator=g, dtype=DTYPE)
        self.c = torch.randn(n, generator=g, dtype=DTYPE)
        self.w = torch.randn(n, generator=g, dtype=DTYPE)
        self.buffer = torch.randn(n, generator=g, dtype=DTYPE)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.n = n

    def train_loss(self, weights, batch):
        (w,) = weights
        return 0.5 * w @ self.A @ w - self.b @ w

    def val_loss(self, weights, batch):
        (w,) = weights
        d = w - self.c
        return 0.5 * d @ self.B @ d

    def closed_form(self, terms):
        """v (Σ_{j<K} J^j) ∂u/∂λ per raw name, and the same with (I − J)^{-1} (terms=None)."""
        eta, mu, xi = self.lr, self.momentum, self.weight_decay
        eye = torch.eye(self.n, dtype=DTYPE)
        J = eye - eta * (self.A + xi * eye)
        grad = self.A @ self.w - self.b + xi * self.w
        b_t = mu * self.buffer + grad
        w_t = self.w - eta * b_t
        v = self.B @ (w_t - self.c)
        if terms is None:
            series = torch.linalg.inv(eye - J)
        else:
            series = sum(torch.linalg.matrix_power(J, j) for j in range(terms))
        du = {
            "lr": -b_t * eta * LN10,                       # ∂w_t/∂η · dη/da
            "momentum": -eta * self.buffer * mu * (1 - mu),  # ∂w_t/∂μ · dμ/dc
            "weight_decay": -eta * self.w * xi * LN10,     # ∂w_t/∂ξ · dξ/db
        }
        return {name: v @ series @ d for name, d in du.items()}, w_t, b_t

    def estimate(self, terms):
        raw = _raw(self.lr, self.momentum, self.weight_decay)
        state = {"momentum_buffer": (self.buffer,)}
        return implicit_hypergradient_functional(
            SGD, self.train_loss, self.val_loss, (self.w,), state, raw, to_hyper, None, None, terms)


@pytest.mark.parametrize("terms", [1, 3, 5])
def test_neumann_equals_closed_form_on_quadratic(terms):
    problem = Quadratic()
    hypergradient, new_weights, new_state, loss = problem.estimate(terms)
    expected, w_t, b_t = problem.closed_form(terms)
    assert set(hypergradient) == set(NAMES)
    for name in NAMES:
        torch.testing.assert_close(hypergradient[name], expected[name], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(new_weights[0], w_t, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(new_state["momentum_buffer"][0], b_t, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(loss, problem.val_loss((w_t,), None), rtol=1e-14, atol=0)


def test_neumann_terms_change_the_estimate():
    """K matters: the quadratic has J far from 0 and from I, so K=1, 3, 5 all differ."""
    problem = Quadratic()
    estimates = [problem.estimate(k)[0]["lr"] for k in (1, 3, 5)]
    assert abs(estimates[0] - estimates[1]) > 1e-3 * abs(estimates[1])
    assert abs(estimates[1] - estimates[2]) > 1e-4 * abs(estimates[2])


def test_neumann_approaches_inverse_as_terms_grow():
    problem = Quadratic()
    exact, _, _ = problem.closed_form(None)
    # J's eigenvalues lie in [0.4, 0.9]; 0.9^200 ≈ 7e-10
    hypergradient = problem.estimate(200)[0]
    for name in NAMES:
        torch.testing.assert_close(hypergradient[name], exact[name], rtol=1e-7, atol=1e-12)
    # and the error shrinks monotonically with K
    errors = [abs(problem.estimate(k)[0]["lr"] - exact["lr"]).item() for k in (5, 20, 50)]
    assert errors[0] > errors[1] > errors[2]


def test_neumann_series_with_explicit_matrix():
    torch.manual_seed(2)
    J = 0.3 * torch.randn(4, 4, dtype=DTYPE)
    v = (torch.randn(4, dtype=DTYPE),)
    p = neumann_series(lambda s: (J.T @ s[0],), v, 4)
    expected = sum(torch.linalg.matrix_power(J.T, j) for j in range(4)) @ v[0]
    torch.testing.assert_close(p[0], expected, rtol=1e-14, atol=1e-14)
    with pytest.raises(ValueError, match="at least one term"):
        neumann_series(lambda s: s, v, 0)


def test_conjugate_gradient_solves_a_symmetric_system_exactly():
    """n iterations of CG give (I − Jᵀ)^{-1} v for symmetric J with ‖J‖ < 1, per member too."""
    torch.manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=DTYPE))
    J = q @ torch.diag(torch.linspace(-0.5, 0.9, 5, dtype=DTYPE)) @ q.T
    v = (torch.randn(5, dtype=DTYPE),)
    exact = torch.linalg.solve(torch.eye(5, dtype=DTYPE) - J.T, v[0])
    p = conjugate_gradient(lambda s: (J.T @ s[0],), v, 5)
    torch.testing.assert_close(p[0], exact, rtol=1e-10, atol=1e-12)
    assert (conjugate_gradient(lambda s: (J.T @ s[0],), v, 2)[0] - exact).abs().max() > 1e-6
    # two members with their own systems, solved side by side
    J2 = torch.stack([J, 0.5 * J])
    v2 = (torch.randn(2, 5, dtype=DTYPE),)
    p2 = conjugate_gradient(lambda s: (torch.einsum("mji,mj->mi", J2, s[0]),), v2, 5, members=2)
    for m in range(2):
        expected = torch.linalg.solve(torch.eye(5, dtype=DTYPE) - J2[m].T, v2[0][m])
        torch.testing.assert_close(p2[0][m], expected, rtol=1e-10, atol=1e-12)


def test_cg_estimate_equals_inverse_closed_form_on_quadratic():
    """On the quadratic (symmetric J), the implicit estimate with a 6-step CG solve is the exact inverse."""
    problem = Quadratic()
    exact, _, _ = problem.closed_form(None)
    raw = _raw(problem.lr, problem.momentum, problem.weight_decay)
    state = {"momentum_buffer": (problem.buffer,)}
    hypergradient = implicit_hypergradient_functional(
        SGD, problem.train_loss, problem.val_loss, (problem.w,), state, raw, to_hyper, None, None, 0,
        solve=partial(conjugate_gradient, iterations=problem.n))[0]
    for name in NAMES:
        torch.testing.assert_close(hypergradient[name], exact[name], rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------- a small MLP


def _mlp_problem(seed=0, n_in=3, hidden=5):
    g = torch.Generator().manual_seed(seed)
    weights = (
        0.7 * torch.randn(hidden, n_in, generator=g, dtype=DTYPE),
        0.1 * torch.randn(hidden, generator=g, dtype=DTYPE),
        0.7 * torch.randn(1, hidden, generator=g, dtype=DTYPE),
        0.1 * torch.randn(1, generator=g, dtype=DTYPE),
    )
    state = {"momentum_buffer": tuple(0.5 * torch.randn(w.shape, generator=g, dtype=DTYPE) for w in weights)}

    def data(n):
        x = torch.randn(n, n_in, generator=g, dtype=DTYPE)
        return x, torch.sin(x.sum(1, keepdim=True)) + 0.1 * torch.randn(n, 1, generator=g, dtype=DTYPE)

    train_batches = [data(16) for _ in range(5)]
    val_batch = data(32)
    return weights, state, train_batches, val_batch


def _forward(weights, x):
    w1, b1, w2, b2 = weights
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


def mlp_loss(weights, batch):
    x, y = batch
    return ((_forward(weights, x) - y) ** 2).mean()


def test_one_term_equals_autograd_through_one_update():
    weights, state, train_batches, val_batch = _mlp_problem()
    raw = _raw(0.1, 0.8, 0.01)
    hypergradient, new_weights, _, loss = implicit_hypergradient_functional(
        SGD, mlp_loss, mlp_loss, weights, state, raw, to_hyper, train_batches[0], val_batch, 1)

    leaves = {k: v.clone().requires_grad_() for k, v in raw.items()}
    w = tuple(t.clone().requires_grad_() for t in weights)
    grads = torch.autograd.grad(mlp_loss(w, train_batches[0]), w, create_graph=True)
    updated, _ = SGD(w, state, grads, to_hyper(leaves))
    val = mlp_loss(updated, val_batch)
    expected = torch.autograd.grad(val, [leaves[k] for k in NAMES])
    for name, e in zip(NAMES, expected):
        assert e.abs() > 1e-6
        torch.testing.assert_close(hypergradient[name], e, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(loss, val.detach(), rtol=1e-14, atol=0)
    for a, b in zip(new_weights, updated):
        torch.testing.assert_close(a, b.detach(), rtol=1e-14, atol=1e-15)


def _unrolled_val_loss(weights, state, raw, train_batches, val_batch):
    hyper = to_hyper(raw)
    w, s = weights, state
    for batch in train_batches:
        w_leaf = tuple(t.detach().requires_grad_() for t in w)
        with torch.enable_grad():
            grads = torch.autograd.grad(mlp_loss(w_leaf, batch), w_leaf)
        w, s = SGD(w, s, grads, hyper)
    return mlp_loss(w, val_batch)


@pytest.mark.parametrize("name", NAMES)
def test_unrolled_equals_finite_differences(name):
    weights, state, train_batches, val_batch = _mlp_problem(seed=1)
    raw = _raw(0.1, 0.8, 0.01)
    hypergradient, (end_weights, end_state), loss = unrolled_hypergradient_functional(
        SGD, mlp_loss, mlp_loss, weights, state, raw, to_hyper, train_batches, val_batch)
    h = 1e-6
    plus = dict(raw, **{name: raw[name] + h})
    minus = dict(raw, **{name: raw[name] - h})
    fd = (_unrolled_val_loss(weights, state, plus, train_batches, val_batch)
          - _unrolled_val_loss(weights, state, minus, train_batches, val_batch)) / (2 * h)
    assert fd.abs() > 1e-5
    torch.testing.assert_close(hypergradient[name], fd, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(loss, _unrolled_val_loss(weights, state, raw, train_batches, val_batch),
                               rtol=1e-13, atol=0)


def test_unrolled_one_step_equals_one_term_neumann():
    weights, state, train_batches, val_batch = _mlp_problem(seed=2)
    raw = _raw(0.1, 0.8, 0.01)
    unrolled, (w1, s1), loss_u = unrolled_hypergradient_functional(
        SGD, mlp_loss, mlp_loss, weights, state, raw, to_hyper, train_batches[:1], val_batch)
    implicit, w2, s2, loss_i = implicit_hypergradient_functional(
        SGD, mlp_loss, mlp_loss, weights, state, raw, to_hyper, train_batches[0], val_batch, 1)
    for name in NAMES:
        torch.testing.assert_close(unrolled[name], implicit[name], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(loss_u, loss_i, rtol=1e-14, atol=0)


def test_per_weight_learning_rates_sum_to_scalar():
    weights, state, train_batches, val_batch = _mlp_problem(seed=3)
    scalar = _raw(0.1, 0.8, 0.01)
    per_weight = dict(scalar, lr=tuple(torch.full_like(w, scalar["lr"].item()) for w in weights))
    h_scalar = implicit_hypergradient_functional(
        SGD, mlp_loss, mlp_loss, weights, state, scalar, to_hyper, train_batches[0], val_batch, 5)[0]
    h_weight = implicit_hypergradient_functional(
        SGD, mlp_loss, mlp_loss, weights, state, per_weight, to_hyper, train_batches[0], val_batch, 5)[0]
    assert [g.shape for g in h_weight["lr"]] == [w.shape for w in weights]
    total = sum(g.sum() for g in h_weight["lr"])
    assert h_scalar["lr"].abs() > 1e-6
    torch.testing.assert_close(total, h_scalar["lr"], rtol=1e-12, atol=1e-15)
    for name in ("momentum", "weight_decay"):
        torch.testing.assert_close(h_weight[name], h_scalar[name], rtol=1e-12, atol=1e-15)
    # the entries are not all equal: the hypergradient really is per weight
    flat = torch.cat([g.flatten() for g in h_weight["lr"]])
    assert flat.std() > 1e-3 * flat.abs().mean()


@pytest.mark.parametrize("weight_decay", [None, 0.01])
def test_baydin_equals_gradient_dot_product(weight_decay):
    weights, _, train_batches, _ = _mlp_problem(seed=4)
    eta = 0.1
    raw = {"lr": hp.to_raw("lr", _t(eta))}
    if weight_decay is None:
        def hyper_of(r):
            return {"lr": hp.to_natural("lr", r["lr"])}
    else:
        def hyper_of(r):
            return {"lr": hp.to_natural("lr", r["lr"]), "weight_decay": _t(weight_decay)}
    state = get_rule("sgd").init(weights)
    grads = torch.func.grad(mlp_loss)(weights, train_batches[0])
    new_weights, _ = SGD(weights, state, grads, hyper_of(raw))
    next_grads = torch.func.grad(mlp_loss)(new_weights, train_batches[1])
    hypergradient = baydin_hypergradient_functional(SGD, weights, state, grads, raw, hyper_of, next_grads)
    direction = grads if weight_decay is None else tuple(g + weight_decay * w for g, w in zip(grads, weights))
    dot = sum((a * b).sum() for a, b in zip(next_grads, direction))
    assert dot.abs() > 1e-6
    torch.testing.assert_close(hypergradient["lr"], -eta * LN10 * dot, rtol=1e-12, atol=1e-15)


def test_functionals_vmap_over_a_population():
    """The pure estimators batch over a population of learning rates."""
    weights, state, train_batches, val_batch = _mlp_problem(seed=5)
    lrs = torch.tensor([0.02, 0.1, 0.3], dtype=DTYPE)

    def estimate(a):
        raw = dict(_raw(0.1, 0.8, 0.01), lr=a)
        return implicit_hypergradient_functional(
            SGD, mlp_loss, mlp_loss, weights, state, raw, to_hyper, train_batches[0], val_batch, 3)[0]["lr"]

    batched = torch.func.vmap(estimate)(torch.log10(lrs))
    for k, lr in enumerate(lrs):
        torch.testing.assert_close(batched[k], estimate(torch.log10(lr)), rtol=1e-12, atol=1e-15)
