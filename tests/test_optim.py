"""onepass.optim: torch.optim optimizers that tune themselves.

Every check is in float64 against an independent run: the same run through
the Tuner (every pair of rule, method, granularity and a fixed or tuned
second hyperparameter; tests/test_matrix.py holds every cell to an oracle), the
``torch.optim`` namesake when nothing is tuned, one batch against its
micro-batches, clipping against ``Tuner(max_grad_norm=...)``, a GradScaler
against no scaler, a resumed run against an uninterrupted one.
"""
from __future__ import annotations

import gc
import io
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.functional import mse_loss

import onepass
import onepass.optim as oo

REPO = Path(__file__).resolve().parents[1]
DOUBLE = torch.float64

X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=DOUBLE)
Y = torch.randn(64, 1, generator=torch.Generator().manual_seed(1), dtype=DOUBLE)
XV = torch.randn(32, 4, generator=torch.Generator().manual_seed(2), dtype=DOUBLE)
YV = torch.randn(32, 1, generator=torch.Generator().manual_seed(3), dtype=DOUBLE)


def make_model(dtype=DOUBLE) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)


def batch(t: int, size: int = 16):
    start = (t * 8) % (64 - size + 1)
    return X[start:start + size], Y[start:start + size]


def val_loss_of(model):
    return lambda: mse_loss(model(XV), YV)


def train(model, opt, steps, *, clip=None, scheduler=None, after_step=None):
    for t in range(steps):
        x, y = batch(t)
        opt.zero_grad()
        mse_loss(model(x), y).backward(create_graph=opt.needs_graph)
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step(t)


def max_diff(a, b) -> float:
    with torch.no_grad():
        return max(float((p - q).abs().max()) for p, q in zip(a, b))


# ----------------------------------------------------- equal to the Tuner

RULES = {
    # rule: (optimizer class, torch-style kwargs, rule-named values, names tuned besides lr)
    "sgd": (oo.SGD, dict(lr=0.05, momentum=0.5, weight_decay=1e-3), dict(lr=0.05, momentum=0.5,
                                                                         weight_decay=1e-3), ("weight_decay",)),
    "sgd_nesterov": (oo.SGD, dict(lr=0.05, momentum=0.5, weight_decay=1e-3, nesterov=True),
                     dict(lr=0.05, momentum=0.5, weight_decay=1e-3), ("momentum",)),
    "adam": (oo.Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=1e-3),
             dict(lr=0.01, beta1=0.8, beta2=0.99, weight_decay=1e-3), ("beta1",)),
    "adamw": (oo.AdamW, dict(lr=0.01, weight_decay=1e-2), dict(lr=0.01, weight_decay=1e-2), ("weight_decay",)),
}
METHODS = ("neumann", "cg", "unroll", "baydin", "baydin_exact")
GRANULARITIES = ("scalar", "group", "tensor", "weight")


def two_groups(model, lr_first=None, key="lr"):
    first, second = model[0], model[2]
    group = {"params": list(first.parameters())}
    if lr_first is not None:
        group[key] = lr_first
    return [group, {"params": list(second.parameters())}]


OTHERS = ("fixed", "tuned")    # the rule's other hyperparameter (RULES' last column) beside lr


def feasible(method, others) -> bool:
    """Baydin's methods tune lr only."""
    return not (method.startswith("baydin") and others == "tuned")


def pairwise_cases():
    """rule × method × granularity × others in 20 cases that hold every feasible pair
    of values (test_matrix.py holds every rule × method × granularity cell to its
    oracle): each method meets each granularity once, the rule cycles with both
    (a Latin square), and the other hyperparameter is tuned where the pairs ask."""
    rules = list(RULES)
    tuned = {("neumann", "scalar"), ("neumann", "group"), ("cg", "tensor"), ("cg", "weight"),
             ("unroll", "scalar")}
    return [(rules[(m + g) % len(rules)], method, granularity,
             "tuned" if (method, granularity) in tuned else "fixed")
            for m, method in enumerate(METHODS) for g, granularity in enumerate(GRANULARITIES)]


PAIRWISE = pairwise_cases()


def test_the_pairwise_cases_hold_every_pair():
    factors = (tuple(RULES), METHODS, GRANULARITIES, OTHERS)
    want = {(i, a, j, b) for i in range(4) for j in range(i + 1, 4)
            for a in factors[i] for b in factors[j]}
    want = {p for p in want if not (p[0] == 1 and p[2] == 3 and not feasible(p[1], p[3]))}
    have = {(i, case[i], j, case[j]) for case in PAIRWISE for i in range(4) for j in range(i + 1, 4)}
    assert all(feasible(case[1], case[3]) for case in PAIRWISE)
    assert want - have == set(), sorted(want - have)
    assert len(PAIRWISE) == len(set(PAIRWISE)) == 20


@pytest.mark.parametrize("rule, method, granularity, others", PAIRWISE)
def test_optimizer_equals_tuner_update_by_update(rule, method, granularity, others):
    cls, kwargs, values, extra = RULES[rule]
    tune = ("lr",) + (extra if others == "tuned" else ())
    settings = dict(method=method, update_interval=4, unroll_steps=3, neumann_terms=3,
                    granularity={"lr": granularity})
    lr_first = None if granularity == "scalar" else values["lr"] * 2   # groups differ
    a, b = make_model(), make_model()
    opt = cls(two_groups(a, lr_first), **kwargs, tune=tune, val_loss=val_loss_of(a), **settings)
    tuner = onepass.Tuner(b, mse_loss, rule=rule, params=two_groups(b, lr_first), hyperparameters=values,
                          tune=tune, **settings)
    for t in range(13):
        x, y = batch(t)
        opt.zero_grad()
        mse_loss(a(x), y).backward(create_graph=opt.needs_graph)
        opt.step()
        tuner.step((x, y), (XV, YV))
        assert max_diff(a.parameters(), b.parameters()) < 1e-10, f"update {t + 1}"
    mine, theirs = opt.tuner.hyperparameters, tuner.hyperparameters
    for name in tune:
        got, want = mine[name], theirs[name]
        got = got if isinstance(got, list) else [got]
        want = want if isinstance(want, list) else [want]
        for g, w in zip(got, want):
            assert torch.allclose(torch.as_tensor(g), torch.as_tensor(w), rtol=1e-10, atol=0), name
    initial = values["lr"] * (2 if lr_first else 1)
    moved = opt.tuner.hyperparameters["lr"]
    moved = moved[0] if isinstance(moved, list) else moved
    assert (torch.as_tensor(moved, dtype=DOUBLE) != initial).any()      # it tuned


@pytest.mark.parametrize("rule", ["sgd", "sgd_nesterov", "adam", "adamw"])
def test_nothing_tuned_is_the_torch_optim_namesake(rule):
    cls, kwargs, _, _ = RULES[rule]
    torch_cls = {"sgd": torch.optim.SGD, "sgd_nesterov": torch.optim.SGD, "adam": torch.optim.Adam,
                 "adamw": torch.optim.AdamW}[rule]
    a, b = make_model(), make_model()
    opt = cls(two_groups(a, 0.02), **kwargs, tune=())
    reference = torch_cls(two_groups(b, 0.02), **kwargs)
    for t in range(10):
        for model, o in ((a, opt), (b, reference)):
            x, y = batch(t)
            o.zero_grad()
            mse_loss(model(x), y).backward()
            o.step()
        # Adam's groups take torch.optim's own foreach operations: the same bits
        assert max_diff(a.parameters(), b.parameters()) <= (0 if rule.startswith("adam") else 1e-13)


@pytest.mark.parametrize("rule", ["adam", "adamw"])
@pytest.mark.parametrize("shape", ["two groups", "lr per group", "lr per tensor", "lr per weight"])
def test_adams_plain_update_takes_the_foreach_path_for_every_granularity(rule, shape, monkeypatch):
    """A plain update never falls back to the differentiable rule's per-tensor
    arithmetic (1.4-1.5x torch.optim's, which the cost budget cannot see):
    per-group floats, and an lr per tensor or per weight, take foreach kernels
    (``benchmarks/plain_update.py`` times them)."""
    import onepass.core.rules as rules
    cls, kwargs, _, _ = RULES[rule]
    model = make_model()
    params = two_groups(model, kwargs["lr"] * 2) if shape == "lr per group" else \
        [{"params": list(model[0].parameters()), "weight_decay": 0.0}, {"params": list(model[2].parameters())}] \
        if shape == "two groups" else model.parameters()
    granularity = {"lr per group": "group", "lr per tensor": "tensor", "lr per weight": "weight"}.get(shape)
    opt = cls(params, **kwargs, val_loss=val_loss_of(model), update_interval=3, cost_budget=None,
              **({"granularity": {"lr": granularity}} if granularity else {}))

    def updates(times):
        for t in times:
            x, y = batch(t)
            opt.zero_grad()
            mse_loss(model(x), y).backward(create_graph=opt.needs_graph)
            opt.step()
    updates(range(3))                                        # a window, so that the values differ per slot
    hyper = opt.tuner._execution.hyper_in_place()
    assert not all(isinstance(v, float) for v in hyper.values())      # not the one-group case

    def refuse(*args, **kwargs):
        raise AssertionError("the plain update fell back to the differentiable rule")
    monkeypatch.setattr(rules, "adam_update", refuse)
    before = [p.detach().clone() for p in model.parameters()]
    updates(range(3, 5))                                     # plain updates only
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_the_plain_update_benchmark_covers_every_rule_and_granularity():
    """``benchmarks/plain_update.py`` times each rule with one group, two groups
    and an lr per group, tensor and weight (figures, not asserted: timing
    targets live in the benchmark)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("plain_update", Path(__file__).parents[1] / "benchmarks" /
                                                  "plain_update.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ratios = module.main(["--updates", "2", "--rounds", "1"])
    assert set(ratios) == {f"{r}/{s}" for r in ("adamw", "adam", "sgd") for s in module.SHAPES}
    assert all(math.isfinite(v) and v > 0 for v in ratios.values())


# ----------------------------------------------------- schedulers

def test_a_constant_schedule_factor_equals_the_tuner_at_the_scaled_rate():
    """Effective lr = learned lr x group["lr"] / base_lr: a LambdaLR of 0.5 is a Tuner started at half the rate."""
    a, b = make_model(), make_model()
    opt = oo.SGD(a.parameters(), lr=0.1, momentum=0.5, weight_decay=1e-3, update_interval=4,
                 val_loss=val_loss_of(a))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    tuner = onepass.Tuner(b, mse_loss, hyperparameters=dict(lr=0.05, momentum=0.5, weight_decay=1e-3),
                          update_interval=4)
    for t in range(16):
        x, y = batch(t)
        tuner.step((x, y), (XV, YV))
        opt.zero_grad()
        mse_loss(a(x), y).backward(create_graph=opt.needs_graph)
        opt.step()
        scheduler.step()
        assert max_diff(a.parameters(), b.parameters()) < 1e-10
        assert math.isclose(opt.hyperparameters["lr_in_use/group0"], tuner.hyperparameters["lr"], rel_tol=1e-10)
        assert math.isclose(opt.hyperparameters["lr/group0"], 2 * tuner.hyperparameters["lr"], rel_tol=1e-10)
    assert opt.param_groups[0]["lr"] == 0.05


def test_warmup_then_cosine_multiplies_the_learned_rate_and_never_overwrites_it():
    model, shadow = make_model(), make_model()
    opt = oo.SGD(model.parameters(), lr=0.1, momentum=0.5, update_interval=3, val_loss=val_loss_of(model))
    plain = torch.optim.SGD(shadow.parameters(), lr=0.1, momentum=0.5)

    def schedule(o):
        warmup = torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=5)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=25)
        return torch.optim.lr_scheduler.SequentialLR(o, [warmup, cosine], milestones=[5])
    scheduler, reference = schedule(opt), schedule(plain)
    learned = []

    def check(t):
        plain.step()
        reference.step()
        scheduled = opt.param_groups[0]["lr"]
        assert scheduled == plain.param_groups[0]["lr"]          # the scheduler's own value, untouched
        factor = scheduled / opt.param_groups[0]["base_lr"]
        own = opt.tuner.hyperparameters["lr"]
        learned.append(own)
        assert math.isclose(opt.hyperparameters["lr_in_use/group0"], own * factor, rel_tol=1e-12)
        assert opt.hyperparameters["lr/group0"] == own                  # the learned value, by its own name
    train(model, opt, 30, scheduler=scheduler, after_step=check)
    assert math.isclose(learned[0], 0.1, rel_tol=1e-12)                 # the first window had not closed
    assert not math.isclose(learned[-1], 0.1, rel_tol=1e-3)             # it learned, under the schedule
    assert opt.hyperparameters["lr_in_use/group0"] < 1e-3 * learned[-1]   # and the cosine still decayed it


def test_a_warmup_from_zero_is_a_schedule_not_an_error():
    """transformers' default linear warm-up starts at lr 0: the first update moves nothing."""
    model = make_model()
    opt = oo.AdamW(model.parameters(), lr=1e-2, update_interval=2, val_loss=val_loss_of(model))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, step / 4))
    start = [p.detach().clone() for p in model.parameters()]
    assert opt.hyperparameters["lr_in_use/group0"] == 0
    assert math.isclose(opt.hyperparameters["lr/group0"], 1e-2, rel_tol=1e-12)
    train(model, opt, 1, scheduler=scheduler)
    assert max_diff(start, model.parameters()) == 0
    train(model, opt, 8, scheduler=scheduler)
    assert max_diff(start, model.parameters()) > 0
    assert not math.isclose(opt.tuner.hyperparameters["lr"], 1e-2, rel_tol=1e-6)


def test_a_scheduler_writing_a_tuned_momentum_is_refused_and_a_fixed_one_followed():
    model = make_model()
    opt = oo.SGD(model.parameters(), lr=0.1, momentum=0.5, update_interval=3, val_loss=val_loss_of(model))
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=20)     # cycles momentum
    with pytest.raises(ValueError, match="momentum is tuned.*cycle_momentum=False"):
        train(model, opt, 1)
    model = make_model()
    opt = oo.SGD(model.parameters(), lr=0.1, momentum=0.5, tune=("lr",), update_interval=3,
                 val_loss=val_loss_of(model))
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=20)
    train(model, opt, 5)
    assert opt.hyperparameters["momentum/group0"] == opt.param_groups[0]["momentum"] != 0.5


@pytest.mark.parametrize("rule", ["sgd", "sgd_nesterov", "adam", "adamw"])
def test_frozen_continues_with_the_torch_optim_namesake_at_the_learned_values(rule):
    """The recipe's last stretch: after 12 tuned updates, one update of ``frozen()``
    equals the optimizer's own next (plain) update."""
    cls, kwargs, _, extra = RULES[rule]
    runs = []
    for freeze in (False, True):
        model = make_model()
        opt = cls(two_groups(model, kwargs["lr"] * 2), **kwargs, tune=("lr",) + extra, update_interval=4,
                  granularity={"lr": "tensor"}, val_loss=val_loss_of(model))
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
        train(model, opt, 12, scheduler=scheduler)
        plain = opt.frozen() if freeze else opt
        x, y = batch(12)
        plain.zero_grad()
        mse_loss(model(x), y).backward()
        plain.step()
        runs.append([p.detach().clone() for p in model.parameters()])
    assert max_diff(*runs) < 1e-13
    assert type(plain).__module__.startswith("torch.optim")
    with pytest.raises(ValueError, match="per-weight values have no torch.optim form"):
        cls(make_model().parameters(), **kwargs, granularity={"lr": "weight"}).frozen()


# ----------------------------------------------------- accumulation, clipping, scaling

@pytest.mark.parametrize("cls,kwargs", [(oo.SGD, dict(lr=0.05, momentum=0.5, weight_decay=1e-3)),
                                        (oo.Adam, dict(lr=0.01, weight_decay=1e-3))])
def test_micro_batches_equal_one_batch(cls, kwargs):
    a, b = make_model(), make_model()
    tune = ("lr", "weight_decay")
    opt_a = cls(a.parameters(), **kwargs, tune=tune, update_interval=3, val_loss=val_loss_of(a))
    opt_b = cls(b.parameters(), **kwargs, tune=tune, update_interval=3, val_loss=val_loss_of(b))
    for t in range(12):
        x, y = batch(t)
        opt_a.zero_grad()
        mse_loss(a(x), y).backward(create_graph=opt_a.needs_graph)
        opt_a.step()
        opt_b.zero_grad()
        graph = opt_b.needs_graph
        for part in range(2):
            mse_loss(b(x[part * 8:part * 8 + 8]), y[part * 8:part * 8 + 8]).div(2).backward(create_graph=graph)
        opt_b.step()
        assert max_diff(a.parameters(), b.parameters()) < 1e-10
    for key, value in opt_a.hyperparameters.items():
        assert math.isclose(value, opt_b.hyperparameters[key], rel_tol=1e-10), key
    assert opt_a.hyperparameters["weight_decay/group0"] != 1e-3


@pytest.mark.parametrize("method", ["neumann", "unroll"])
def test_clip_grad_norm_is_seen_by_the_hyperparameter_step(method):
    a, b = make_model(), make_model()
    settings = dict(update_interval=4, unroll_steps=3, method=method)
    opt = oo.SGD(a.parameters(), lr=0.05, momentum=0.5, weight_decay=1e-3, val_loss=val_loss_of(a), **settings)
    tuner = onepass.Tuner(b, mse_loss, hyperparameters=dict(lr=0.05, momentum=0.5, weight_decay=1e-3),
                          max_grad_norm=0.2, **settings)
    norms = []
    for t in range(12):
        x, y = batch(t)
        opt.zero_grad()
        mse_loss(a(x), y).backward(create_graph=opt.needs_graph)
        norms.append(float(nn.utils.clip_grad_norm_(a.parameters(), 0.2)))
        opt.step()
        tuner.step((x, y), (XV, YV))
        assert max_diff(a.parameters(), b.parameters()) < 1e-10
    assert max(norms) > 0.2                      # it did clip


def test_a_grad_scaler_is_divided_out():
    a, b = make_model(), make_model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    opt_a = oo.SGD(a.parameters(), lr=0.05, momentum=0.5, weight_decay=1e-3, update_interval=3,
                   val_loss=val_loss_of(a), grad_scaler=scaler, skip_non_finite=False)
    opt_b = oo.SGD(b.parameters(), lr=0.05, momentum=0.5, weight_decay=1e-3, update_interval=3,
                   val_loss=val_loss_of(b))
    for t in range(9):
        x, y = batch(t)
        opt_a.zero_grad()
        scaler.scale(mse_loss(a(x), y)).backward(create_graph=opt_a.needs_graph)
        scaler.unscale_(opt_a)
        nn.utils.clip_grad_norm_(a.parameters(), 10.0)
        scaler.step(opt_a)
        scaler.update()
        opt_b.zero_grad()
        mse_loss(b(x), y).backward(create_graph=opt_b.needs_graph)
        opt_b.step()
        assert max_diff(a.parameters(), b.parameters()) < 1e-10
    assert opt_a.hyperparameters == opt_b.hyperparameters
    assert opt_a.hyperparameters["lr/group0"] != 0.05


def test_a_gradient_changed_otherwise_is_refused():
    model = make_model()
    opt = oo.SGD(model.parameters(), lr=0.05, momentum=0.5, update_interval=1, val_loss=val_loss_of(model))
    x, y = batch(0)
    mse_loss(model(x), y).backward(create_graph=opt.needs_graph)
    nn.utils.clip_grad_value_(model.parameters(), 1e-3)
    with pytest.raises(ValueError, match="other than clip_grad_norm_"):
        opt.step()


# ----------------------------------------------------- mixed precision

def test_autocast_keeps_hyperparameters_in_float32_and_skips_a_non_finite_hyperstep():
    model = make_model(torch.float32)
    x, y = (t.float() for t in batch(0))
    xv, yv = XV.float(), YV.float()
    bad = {"on": False}

    def val_loss():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = mse_loss(model(xv), yv)
        return loss * math.inf if bad["on"] else loss
    opt = oo.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2, update_interval=2, val_loss=val_loss)
    for t in range(6):
        bad["on"] = t == 3                       # the second window's validation loss is infinite
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = mse_loss(model(x), y)
            graph = opt.needs_graph
        loss.backward(create_graph=graph)
        before = dict(opt.hyperparameters), [p.detach().clone() for p in model.parameters()]
        if t == 3:
            with pytest.warns(RuntimeWarning, match="skipped the hyperparameter step"):
                opt.step()
            after = opt.hyperparameters
            assert after["lr/group0"] == before[0]["lr/group0"]                    # not tuned...
            assert max_diff(before[1], model.parameters()) > 0                   # ...but trained
        else:
            opt.step()
    assert opt.skipped_hypersteps == 1 and opt.hyperparameters["skipped_hypersteps"] == 1
    assert opt.hyperparameters["lr/group0"] != 1e-2
    slots = opt.tuner.slots
    assert all(leaf.dtype == torch.float32 for leaf in slots.leaves())
    state = opt.tuner._hyper_optimizer.state
    assert state and all(v.dtype == torch.float32 for s in state.values() for v in s.values()
                         if isinstance(v, torch.Tensor) and v.is_floating_point())


def test_bfloat16_weights_get_float32_hyperparameters():
    model = make_model(torch.bfloat16)
    x, y = (t.bfloat16() for t in batch(0))
    opt = oo.SGD(model.parameters(), lr=0.05, momentum=0.5, update_interval=2,
                 val_loss=lambda: mse_loss(model(XV.bfloat16()), YV.bfloat16()).float())
    for _ in range(4):
        opt.zero_grad()
        mse_loss(model(x), y).backward(create_graph=opt.needs_graph)
        opt.step()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(leaf.dtype == torch.float32 for leaf in opt.tuner.slots.leaves())
    assert opt.hyperparameters["lr/group0"] != 0.05


def test_outside_amp_a_non_finite_hypergradient_raises():
    model = make_model()
    opt = oo.SGD(model.parameters(), lr=0.05, momentum=0.5, update_interval=1,
                 val_loss=lambda: mse_loss(model(XV), YV) * math.inf)
    with pytest.raises(onepass.NonFiniteError):
        train(model, opt, 1)


# ----------------------------------------------------- rails

def test_per_group_lr_bounds_max_hyper_step_and_tune_after():
    model = make_model()
    groups = two_groups(model)
    groups[0]["lr_bounds"] = (1e-4, 0.06)
    opt = oo.SGD(groups, lr=0.05, momentum=0.5, granularity={"lr": "group"}, update_interval=2,
                 hyper_optimizer="sgd", hyper_lr=100.0, max_hyper_step=0.05, tune_after=4,
                 val_loss=val_loss_of(model))
    history = []
    train(model, opt, 12, after_step=lambda t: history.append(opt.tuner.hyperparameters))
    assert all(math.isclose(v, 0.05, rel_tol=1e-12) for h in history[:4] for v in h["lr"])   # tune_after
    raw = [[math.log10(v) for v in h["lr"]] for h in history]
    steps = [abs(b - a) for before, after in zip(raw, raw[1:]) for a, b in zip(before, after)]
    assert max(steps) <= 0.05 + 1e-12 and max(steps) > 0.01              # capped, not frozen
    assert all(h["lr"][0] <= 0.06 + 1e-12 for h in history)               # the group's own bounds


# ----------------------------------------------------- memory, checkpoints

def test_memory_does_not_grow_with_windows():
    model = make_model()
    opt = oo.SGD(model.parameters(), lr=0.05, momentum=0.5, weight_decay=1e-3, update_interval=2,
                 val_loss=val_loss_of(model))
    counts = []

    def live_tensors(t):
        if t + 1 in (100, 600):                                  # after 50 and after 300 windows
            gc.collect()
            counts.append(sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor)))
            assert not opt._capture.parts
            assert all(p.grad is None or p.grad.grad_fn is None for p in model.parameters())
    train(model, opt, 600, after_step=live_tensors)
    assert counts[0] == counts[1], counts


def test_state_dict_resumes_exactly_with_a_scheduler():
    def build(model):
        opt = oo.Adam(model.parameters(), lr=0.01, weight_decay=1e-3, update_interval=3,
                      val_loss=val_loss_of(model))
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30)
    model = make_model()
    opt, scheduler = build(model)
    train(model, opt, 9, scheduler=scheduler)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": scheduler.state_dict()}, buffer)
    reference, ref_opt, ref_scheduler = model, opt, scheduler

    def continue_from(t0, model, opt, scheduler):
        for t in range(t0, 20):
            x, y = batch(t)
            opt.zero_grad()
            mse_loss(model(x), y).backward(create_graph=opt.needs_graph)
            opt.step()
            scheduler.step()
    continue_from(9, reference, ref_opt, ref_scheduler)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model = make_model()
    model.load_state_dict(saved["model"])
    opt, scheduler = build(model)
    opt.load_state_dict(saved["opt"])
    scheduler.load_state_dict(saved["sched"])
    continue_from(9, model, opt, scheduler)
    assert max_diff(model.parameters(), reference.parameters()) == 0
    assert opt.hyperparameters == ref_opt.hyperparameters
    other = oo.Adam(make_model().parameters(), lr=0.01, weight_decay=1e-3, update_interval=5)
    with pytest.raises(ValueError, match="different configuration: update_interval was 3"):
        other.load_state_dict(saved["opt"])


# ----------------------------------------------------- bad input: one clear line

def test_bad_input_gets_one_clear_line():
    model = make_model()
    opt = oo.SGD(model.parameters(), lr=0.05, momentum=0.5, update_interval=1)
    x, y = batch(0)
    mse_loss(model(x), y).backward(create_graph=True)
    with pytest.raises(ValueError, match="closes a window of update_interval=1: give the optimizer val_loss="):
        opt.step()
    opt = oo.SGD(model.parameters(), lr=0.05, momentum=0.5, update_interval=1,
                 val_loss=lambda: (model(XV) - YV) ** 2)
    opt.zero_grad()
    mse_loss(model(x), y).backward(create_graph=True)
    with pytest.raises(ValueError, match=r"val_loss\(\) must return a scalar tensor, got \(32, 1\)"):
        opt.step()
    opt = oo.SGD(model.parameters(), lr=0.05, momentum=0.5, update_interval=1, val_loss=val_loss_of(model))
    opt.zero_grad()
    mse_loss(model(x), y).backward()
    with pytest.raises(ValueError, match=r"create_graph=optimizer.needs_graph"):
        opt.step()
    with pytest.raises(ValueError, match="has no hyperparameter 'beta1'"):
        oo.SGD(model.parameters(), tune=("beta1",))
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.0"):
        oo.SGD(model.parameters(), lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match=r"lr must be in \(0, inf\), got 0.0"):
        oo.SGD(model.parameters(), lr=0.0)
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0, 1\), got 1.5"):
        oo.Adam(model.parameters(), betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="not written by a onepass.optim optimizer"):
        opt.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())


# ----------------------------------------------------- the README

@pytest.mark.parametrize("page", ["README.md", "docs/index.md", "docs/plain-loop.md"])
def test_readme_example_runs(page):
    """The first Python block of the README and of the site's two pages that show a loop."""
    text = (REPO / page).read_text(encoding="utf-8")
    match = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert match, f"{page} has no ```python fenced block"
    code = match.group(1)
    assert "onepass.optim" in code and "needs_graph" in code
    torch.set_default_dtype(torch.float32)   # as a reader's fresh interpreter has it
    namespace = {"__name__": "__readme__"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # what a user sees: no warning at all,
        warnings.filterwarnings("ignore", message=oo.optimizer.CREATE_GRAPH_WARNING)  # ours included
        exec(compile(code, page, "exec"), namespace)
    opt = namespace["opt"]
    assert opt.hyperparameters["lr/group0"] != 1e-3
