"""The alternatives for a cheaper hyperparameter step on recurrent models
(``benchmarks/hyperstep_profile.py``), checked against today's estimate in
float64: forward-over-reverse Hessian–vector products on the GRU of the adding
problem and the Penn Treebank LSTM, a whole implicit hypergradient with them,
and the profile's timing hooks, which must leave a run exactly as it is."""
from __future__ import annotations

import importlib.util
import math
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onepass.core import hyperparameters as hp
from onepass.core.estimators.implicit import hyperstep, implicit_hypergradient
from onepass.core.products import Ops
from onepass.core.rules import get_rule
from onepass.core.solvers import neumann_series
from onepass.experiment.tasks import HiddenCarrier

REPO = Path(__file__).resolve().parents[1]
DOUBLE = torch.float64
pytestmark = [pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN:UserWarning"),
              pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")]


def _profile_module():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("hyperstep_profile", REPO / "benchmarks" / "hyperstep_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PROFILE = _profile_module()


def _problem(name: str):
    """``(loss_fn(weights, batch), weights, train batch, validation batch)`` of a
    tiny model of ``full_size.py`` in float64, in eval mode (no dropout); the
    LSTM's carried hidden state is the same at every call."""
    model, loss, batch, val_batch, _ = PROFILE.full_size.setup(name, "cpu", "tiny")
    model = model.to(DOUBLE).eval()

    def fixed(b):
        if name == "gru_adding":
            return tuple(t.to(DOUBLE) for t in b)
        inputs, targets, _ = b
        return inputs, targets, HiddenCarrier()   # every call starts from a zero state

    loss_fn = PROFILE.model_loss(model, loss)

    def restarted(weights, b):
        if len(b) == 3:
            b[2].hidden = None
        return loss_fn(weights, b)
    weights = tuple(p.detach() for p in model.parameters())
    return restarted, weights, fixed(batch()), fixed(val_batch())


@pytest.mark.parametrize("name", ["gru_adding", "penn_treebank"])
def test_forward_over_reverse_is_todays_hessian_vector_product(name):
    loss_fn, weights, batch, _ = _problem(name)
    g = torch.Generator().manual_seed(1)
    vector = tuple(torch.randn(w.shape, generator=g, dtype=DOUBLE) for w in weights)
    gradient, leaves = PROFILE.reverse_over_reverse(loss_fn, weights, batch)
    today = torch.autograd.grad(gradient, leaves, vector)
    forward = PROFILE.forward_over_reverse(loss_fn, weights, batch, vector)
    assert len(forward) == len(today) == len(weights)
    for a, b in zip(forward, today):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert max(float(t.abs().max()) for t in today) > 1e-6   # not a product of zeros


def test_forward_over_reverse_through_mse_loss():
    """Why a plain ``jvp(grad(...))`` failed on the GRU: ``F.mse_loss``'s target
    gets a ``ZeroTensor`` tangent, which its backward writes into; the same
    loss through :func:`forward_over_reverse` (explicit zero tangents) works."""
    torch.manual_seed(0)
    model = nn.Linear(2, 3).to(DOUBLE)
    x, y = torch.randn(4, 2, dtype=DOUBLE), torch.randn(4, 3, dtype=DOUBLE)
    loss_fn = PROFILE.model_loss(model, lambda m, b: F.mse_loss(m(b[0]), b[1]))
    weights = tuple(p.detach() for p in model.parameters())
    vector = tuple(torch.ones_like(w) for w in weights)
    gradient, leaves = PROFILE.reverse_over_reverse(loss_fn, weights, (x, y))
    today = torch.autograd.grad(gradient, leaves, vector)
    for a, b in zip(PROFILE.forward_over_reverse(loss_fn, weights, (x, y), vector), today):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _adamw_state(weights):
    """A state after some updates (moments that are not zero)."""
    g = torch.Generator().manual_seed(2)
    return {"step": torch.tensor(7.0, dtype=DOUBLE),
            "exp_avg": tuple(0.01 * torch.randn(w.shape, generator=g, dtype=DOUBLE) for w in weights),
            "exp_avg_sq": tuple(1e-4 * torch.rand(w.shape, generator=g, dtype=DOUBLE) for w in weights)}


def _to_hyper(raw):
    return {"lr": hp.to_natural("lr", raw["lr"]), "weight_decay": hp.to_natural("weight_decay", raw["weight_decay"]),
            "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}


@pytest.mark.parametrize("name", ["gru_adding", "penn_treebank"])
def test_a_hyperstep_with_forward_over_reverse_products_is_todays_estimate(name):
    """The whole implicit hypergradient (AdamW, K = 5 Neumann terms, lr and
    weight decay), today's against one whose products are forward-over-reverse."""
    loss_fn, weights, batch, val_batch = _problem(name)
    state = _adamw_state(weights)
    raw = {"lr": hp.to_raw("lr", torch.tensor(3e-2, dtype=DOUBLE)),
           "weight_decay": hp.to_raw("weight_decay", torch.tensor(1e-2, dtype=DOUBLE))}
    update = get_rule("adamw").update
    today, w_today, _, val_today = implicit_hypergradient(update, loss_fn, loss_fn, weights, state, raw, _to_hyper,
                                                          batch, val_batch, terms=5)
    part = PROFILE.ForwardOverReverseLosses(loss_fn, loss_fn, functional=True).part(batch, val_batch)
    forward, w_forward, _, _, val_forward = hyperstep(Ops.of_functions(update, _to_hyper), part, weights, state,
                                                      raw, solve=partial(neumann_series, terms=5))
    assert set(forward) == set(today) == {"lr", "weight_decay"}
    for key in today:
        assert math.isfinite(float(today[key])) and float(today[key]) != 0.0
        torch.testing.assert_close(forward[key], today[key], rtol=1e-10, atol=1e-14)
    for a, b in zip(w_forward, w_today):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(val_forward, val_today, rtol=0, atol=0)


def test_the_profile_times_a_run_without_changing_it():
    """The profile's hooks on the estimator's products pass everything through:
    the same weights and learning rate as an untimed run of the same updates;
    its parts, the Neumann terms' decay (the truncation error is 0 at K) and the
    HVP timings are reported."""
    before = {(owner, name): owner.__dict__[name] for owner, name in PROFILE.HOOKED}
    result = PROFILE.profile("gru_adding", "tiny", hypersteps=1, plain_updates=2, repeats=1)
    closing, plain = result["medians"]["closing"], result["medians"]["plain"]
    assert set(closing) >= {"forward", "backward", "step", *PROFILE.PARTS, "total", "hvp_alone", "products_each"}
    assert closing["products_each"] == pytest.approx(closing["products"] / 4)
    assert closing["step"] >= closing["products"] + closing["val_gradient"] > 0
    assert "products" not in plain and plain["total"] > 0
    assert result["neumann_terms"] == 5 and result["interval"] == 20
    (decay,) = result["neumann"]
    assert decay["term_norm_ratio"][0] == 1.0 and len(decay["term_norm_ratio"]) == 5
    assert decay["truncation_error"][-1] == pytest.approx(0.0, abs=1e-6)
    assert all(e > 0 for e in decay["truncation_error"][:-1])
    assert all(v > 0 for v in result["hvp"].values())

    # the same updates, timed and untimed, end at the same weights
    import onepass.optim
    runs = []
    for timed in (True, False):
        model, loss, batch, val_batch, _ = PROFILE.full_size.setup("gru_adding", "cpu", "tiny")
        opt = onepass.optim.AdamW(model.parameters(), lr=1e-2, val_loss=lambda: loss(model, val_batch()),
                                  model=model, update_interval=3)
        for _ in range(7):
            opt.zero_grad()
            loss(model, batch()).backward(create_graph=opt.needs_graph)
            with PROFILE.timed_products(PROFILE.Timer()) if timed and opt.needs_graph else _nothing():
                opt.step()
        runs.append(([p.detach().clone() for p in model.parameters()], opt.hyperparameters["lr/group0"]))
    (w_timed, lr_timed), (w_plain, lr_plain) = runs
    assert lr_timed == lr_plain != 1e-2
    assert all(torch.equal(a, b) for a, b in zip(w_timed, w_plain))
    assert {(owner, name): owner.__dict__[name] for owner, name in PROFILE.HOOKED} == before   # the hooks are gone


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
