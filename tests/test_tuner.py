"""onepass.Tuner against the pure estimators, torch.optim, and on problems with known answers."""
import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call

import onepass
from onepass.core import hyperparameters as hp
from onepass.core.estimators.implicit import implicit_hypergradient as implicit_hypergradient_functional

DTYPE = torch.float64
REPO = Path(__file__).resolve().parents[1]
MSE = nn.functional.mse_loss
ALL = ("lr", "momentum", "weight_decay")


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    yield
    torch.set_default_dtype(previous)


def make_mlp(seed=0, batch_norm=False, n_in=3, hidden=8):
    torch.manual_seed(seed)
    layers = [nn.Linear(n_in, hidden)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.Tanh(), nn.Linear(hidden, 1)]
    return nn.Sequential(*layers).to(DTYPE)


def make_batches(n, seed=1, size=16, n_in=3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(size, n_in, generator=g, dtype=DTYPE)
        y = torch.sin(2 * x[:, :1]) + x[:, 1:2] * x[:, 2:3] + 0.1 * torch.randn(size, 1, generator=g, dtype=DTYPE)
        out.append((x, y))
    return out


def functional_loss(model):
    names = [n for n, _ in model.named_parameters()]

    def loss(weights, batch):
        x, y = batch
        return MSE(functional_call(model, dict(zip(names, weights)), (x,)), y)
    return loss


def weights_of(model):
    return tuple(p.detach().clone() for p in model.parameters())


def clone_tree(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: clone_tree(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(clone_tree(v) for v in tree)
    return tree


def flat(tree):
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for k in sorted(tree) for t in flat(tree[k])]
    return [t for v in tree for t in flat(v)]


def raw_of(tuner, names):
    """The tuner's raw hyperparameters, recovered from its public natural-unit readout."""
    return {name: hp.to_raw(name, torch.tensor(tuner.hyperparameters[name], dtype=DTYPE)) for name in names}


def hyper_fn(tuner, tuned):
    fixed = {name: torch.tensor(value, dtype=DTYPE) for name, value in tuner.hyperparameters.items()
             if name not in tuned}

    def to_hyper(raw):
        return {**fixed, **{name: hp.to_natural(name, value) for name, value in raw.items()}}
    return to_hyper


def assert_hypergradient(result, expected, names, rtol=1e-9):
    assert result is not None
    assert set(result) == set(names)
    for name in names:
        assert len(result[name]) == 1
        got = result[name][0]
        torch.testing.assert_close(got, expected[name], rtol=rtol, atol=1e-14)


# -------------------------------------------------- hypersteps equal the estimators


# Every rule × method × granularity hyperstep is held to an autograd oracle in
# tests/test_matrix.py (one window of 3 updates); this one checks 20 windows in a row.
def test_neumann_hyperstep_equals_functional():
    update_interval = 1
    model = make_mlp()
    loss = functional_loss(model)
    batches, val_batches = make_batches(20), make_batches(20, seed=2, size=32)
    tuner = onepass.Tuner(model, MSE, hyperparameters=dict(lr=0.05, momentum=0.8, weight_decay=1e-3),
                          update_interval=update_interval, neumann_terms=5)
    checked = 0
    for t in range(20):
        closes = (t + 1) % update_interval == 0
        if closes:
            weights, state, raw = weights_of(model), clone_tree(tuner.state), raw_of(tuner, ALL)
        result = tuner.step(batches[t], val_batch=val_batches[t])
        if not closes:
            assert result.hypergradient is None and result.val_loss is None
            continue
        expected, new_weights, new_state, val_loss = implicit_hypergradient_functional(
            tuner.rule.update, loss, loss, weights, state, raw, hyper_fn(tuner, ALL),
            batches[t], val_batches[t], 5)
        assert_hypergradient(result.hypergradient, expected, ALL)
        if t == 0:   # the momentum buffer entering the first update is zero: ∂w_1/∂μ = −η b_0 = 0
            assert result.hypergradient["momentum"][0] == 0
        else:
            assert all(result.hypergradient[name][0].abs() > 1e-8 for name in ALL)
        torch.testing.assert_close(result.val_loss, val_loss, rtol=1e-12, atol=0)
        for p, w in zip(model.parameters(), new_weights):
            torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-14)
        checked += 1
    assert checked == 20 // update_interval


def test_paper_baydin_steps_log10_lr_by_the_raw_gradient_dot_product():
    """The paper's Baydin: h = −∇L_T(w_t)·∇L_T(w_{t−1}) (raw gradients: no momentum or
    weight-decay terms), a = log10 η ← a − 0.001 h, every update, then clipped."""
    model = make_mlp()
    batches = make_batches(6)
    tuner = onepass.Tuner(model, MSE, hyperparameters=dict(lr=0.05, momentum=0.9, weight_decay=1e-2),
                          tune=("lr",), method="baydin", lr_bounds=(1e-10, 0.0501))
    assert tuner.hyper_space == "transformed"
    grads = []
    for t in range(6):
        x, y = batches[t]
        grads.append(torch.autograd.grad(MSE(model(x), y), list(model.parameters())))
        a_before = math.log10(tuner.hyperparameters["lr"])
        result = tuner.step(batches[t])
        if t == 0:
            assert result.hypergradient is None
            continue
        dot = sum((a * b).sum() for a, b in zip(grads[t], grads[t - 1])).item()
        assert abs(dot) > 1e-4
        torch.testing.assert_close(result.hypergradient["lr"][0], torch.tensor(-dot), rtol=1e-12, atol=1e-14)
        expected = min(a_before + 0.001 * dot, math.log10(0.0501))
        assert math.isclose(math.log10(tuner.hyperparameters["lr"]), expected, rel_tol=1e-12)
    assert tuner.hyperparameters["lr"] != 0.05


def test_baydin_exact_plain_sgd_is_gradient_dot_product():
    model = make_mlp()
    batches = make_batches(3)
    tuner = onepass.Tuner(model, MSE, hyperparameters=dict(lr=0.05), method="baydin_exact")
    grads = []
    for t in range(3):
        x, y = batches[t]
        grads.append(torch.autograd.grad(MSE(model(x), y), list(model.parameters())))
        lr_used_before = tuner.hyperparameters["lr"]
        result = tuner.step(batches[t])
        if t == 0:
            lr_prev = tuner.hyperparameters["lr"]
            continue
        dot = sum((a * b).sum() for a, b in zip(grads[t], grads[t - 1]))
        torch.testing.assert_close(result.hypergradient["lr"][0],
                                   torch.tensor(-lr_prev * math.log(10) * dot.item()), rtol=1e-9, atol=1e-14)
        # hyper-optimizer: SGD with lr 0.001 on lr itself: η ← η + 0.001 g_t·g_{t-1}
        expected = lr_used_before + 0.001 * dot.item()
        assert math.isclose(tuner.hyperparameters["lr"], expected, rel_tol=1e-9)
        lr_prev = tuner.hyperparameters["lr"]


# -------------------------------------------------- fixed hyperparameters equal torch.optim


@pytest.mark.parametrize("rule, optimizer_cls, hyper, kwargs", [
    ("sgd", torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3),
     dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    ("sgd_nesterov", torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3),
     dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)),
    ("sgd", torch.optim.SGD, dict(lr=0.05), dict(lr=0.05)),
    ("adam", torch.optim.Adam, dict(lr=0.01, weight_decay=1e-2), dict(lr=0.01, weight_decay=1e-2)),
    ("adamw", torch.optim.AdamW, dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6),
     dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6)),
])
def test_untuned_tuner_equals_torch_optim(rule, optimizer_cls, hyper, kwargs):
    model = make_mlp()
    twin = copy.deepcopy(model)
    start = weights_of(model)
    batches = make_batches(20)
    tuner = onepass.Tuner(model, MSE, rule=rule, hyperparameters=hyper, tune=())
    optimizer = optimizer_cls(twin.parameters(), foreach=False, **kwargs)
    for x, y in batches:
        result = tuner.step((x, y))
        optimizer.zero_grad()
        loss = MSE(twin(x), y)
        loss.backward()
        optimizer.step()
        torch.testing.assert_close(result.loss, loss.detach(), rtol=1e-12, atol=0)
        assert result.hypergradient is None
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(start, twin.parameters()))
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)
    assert tuner.steps_taken == 20
    assert tuner.hyperparameters["lr"] == hyper["lr"]


def test_parameter_groups_with_fixed_values_equal_torch_optim():
    model = make_mlp()
    twin = copy.deepcopy(model)
    groups = [{"params": list(model[0].parameters()), "lr": 0.1},
              {"params": list(model[2].parameters()), "lr": 0.01, "weight_decay": 1e-2}]
    twin_groups = [{"params": list(twin[0].parameters()), "lr": 0.1},
                   {"params": list(twin[2].parameters()), "lr": 0.01, "weight_decay": 1e-2}]
    tuner = onepass.Tuner(model, MSE, params=groups, hyperparameters=dict(momentum=0.9), tune=())
    optimizer = torch.optim.SGD(twin_groups, lr=1.0, momentum=0.9, foreach=False)
    for x, y in make_batches(20):
        tuner.step((x, y))
        optimizer.zero_grad()
        MSE(twin(x), y).backward()
        optimizer.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)
    assert tuner.hyperparameters["lr"] == [0.1, 0.01]
    assert tuner.hyperparameters["weight_decay"] == [0.0, 1e-2]
    assert tuner.granularity["lr"] == "group"


# -------------------------------------------------- batch norm and parameter groups


def test_batch_norm_and_two_groups():
    model = make_mlp(batch_norm=True)
    batches, val_batches = make_batches(30), make_batches(30, seed=2, size=32)
    groups = [{"params": list(model[0].parameters()), "lr": 0.05},
              {"params": list(model[1].parameters()) + list(model[3].parameters()), "lr": 0.01}]
    tuner = onepass.Tuner(model, MSE, params=groups, hyperparameters=dict(momentum=0.5, weight_decay=1e-4),
                          tune=ALL, method="neumann", update_interval=10)
    assert tuner.granularity["lr"] == "group"
    bn = model[1]
    for t in range(30):
        # the buffers after a step are those of one training-mode forward on the training batch
        reference = copy.deepcopy(model)
        reference(batches[t][0])
        mean_before = bn.running_mean.clone()
        result = tuner.step(batches[t], val_batch=val_batches[t])
        assert not torch.equal(bn.running_mean, mean_before)
        torch.testing.assert_close(bn.running_mean, reference[1].running_mean, rtol=1e-14, atol=0)
        torch.testing.assert_close(bn.running_var, reference[1].running_var, rtol=1e-14, atol=0)
        assert bn.num_batches_tracked.item() == t + 1
        if (t + 1) % 10 == 0:
            assert len(result.hypergradient["lr"]) == 2
            assert len(result.hypergradient["momentum"]) == 1
            assert all(torch.isfinite(g).all() for gs in result.hypergradient.values() for g in gs)
    values = tuner.hyperparameters
    assert isinstance(values["lr"], list) and len(values["lr"]) == 2
    assert values["lr"][0] != 0.05 and values["lr"][1] != 0.01
    # each group's learning rate moved by at most 3 Adam(0.05) steps of log10(lr)
    for now, start in zip(values["lr"], (0.05, 0.01)):
        assert 0 < abs(math.log10(now) - math.log10(start)) <= 3 * 0.05 + 1e-9
    assert isinstance(values["momentum"], float) and values["momentum"] != 0.5
    assert isinstance(values["weight_decay"], float)


def test_validation_pass_leaves_buffers_alone():
    """Two runs that differ only in having hypersteps have the same running stats after one step."""
    batches, val_batches = make_batches(10), make_batches(10, seed=2, size=32)
    models = [make_mlp(batch_norm=True), make_mlp(batch_norm=True)]
    tuners = [onepass.Tuner(models[0], MSE, hyperparameters=dict(lr=0.05, momentum=0.5), tune=(), update_interval=1),
              onepass.Tuner(models[1], MSE, hyperparameters=dict(lr=0.05, momentum=0.5), update_interval=1)]
    tuners[0].step(batches[0])
    result = tuners[1].step(batches[0], val_batch=val_batches[0])
    assert result.hypergradient is not None
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(models[0][1], name), getattr(models[1][1], name))
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-14, atol=1e-15)


# -------------------------------------------------- checkpoints


def _build(method, seed):
    model = make_mlp(seed=seed)
    if method == "baydin":
        tuner = onepass.Tuner(model, MSE, hyperparameters=dict(lr=0.05, momentum=0.5, weight_decay=1e-3),
                              tune=("lr",), method="baydin")
    else:
        tuner = onepass.Tuner(model, MSE, hyperparameters=dict(lr=0.05, momentum=0.5, weight_decay=1e-3),
                              method=method, update_interval=10, unroll_steps=5)
    return model, tuner


@pytest.mark.parametrize("method", ["neumann", "baydin", "unroll"])
def test_checkpoint_resumes_exactly(method):
    batches, val_batches = make_batches(60), make_batches(60, seed=2, size=32)
    model, tuner = _build(method, seed=0)
    for t in range(30):
        tuner.step(batches[t], val_batch=val_batches[t])
    checkpoint = copy.deepcopy((tuner.state_dict(), model.state_dict()))
    at_checkpoint = tuner.hyperparameters
    for t in range(30, 60):
        tuner.step(batches[t], val_batch=val_batches[t])

    fresh_model, fresh_tuner = _build(method, seed=123)
    fresh_model.load_state_dict(checkpoint[1])
    fresh_tuner.load_state_dict(checkpoint[0])
    assert fresh_tuner.steps_taken == 30
    assert fresh_tuner.hyperparameters == at_checkpoint
    for t in range(30, 60):
        fresh_tuner.step(batches[t], val_batch=val_batches[t])
    assert fresh_tuner.steps_taken == 60
    for p, q in zip(model.parameters(), fresh_model.parameters()):
        assert torch.equal(p, q)
    assert fresh_tuner.hyperparameters == tuner.hyperparameters
    assert tuner.hyperparameters["lr"] != at_checkpoint["lr"]
    for a, b in zip(flat(tuner.state), flat(fresh_tuner.state)):
        assert torch.equal(a, b)


def test_checkpoint_inside_unroll_window_is_refused():
    batches, val_batches = make_batches(7), make_batches(7, seed=2, size=32)
    _, tuner = _build("unroll", seed=0)
    for t in range(7):
        tuner.step(batches[t], val_batch=val_batches[t])
    with pytest.raises(RuntimeError, match="middle of an unrolled window"):
        tuner.state_dict()


# -------------------------------------------------- errors


def test_unknown_hyperparameter_name_suggests_lr():
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'learning_rate'.*did you mean 'lr'"):
        onepass.Tuner(make_mlp(), MSE, hyperparameters=dict(learning_rate=0.1))


def test_unknown_hyperparameter_close_misspelling():
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'momentun'; did you mean 'momentum'"):
        onepass.Tuner(make_mlp(), MSE, hyperparameters=dict(momentun=0.9))


def test_hyperparameter_the_rule_lacks():
    with pytest.raises(ValueError, match=r"update rule 'adam' has no hyperparameter 'momentum'"):
        onepass.Tuner(make_mlp(), MSE, rule="adam", hyperparameters=dict(momentum=0.9))


@pytest.mark.parametrize("kwargs, message", [
    (dict(update_interval=0), r"update_interval must be an integer ≥ 1, got 0"),
    (dict(neumann_terms=0), r"neumann_terms must be an integer ≥ 1, got 0"),
    (dict(method="unroll", unroll_steps=11, update_interval=10), r"unroll_steps=11 exceeds update_interval=10"),
    (dict(method="newman"), r"unknown method 'newman'; did you mean 'neumann'"),
    (dict(hyperparameters=dict(lr=0.1, weight_decay=0.0)), r"cannot tune weight_decay=0\.0"),
    (dict(hyperparameters=dict(lr=0.1, momentum=1.0)), r"cannot tune momentum=1\.0"),
    (dict(granularity={"lr": "layer"}), r"unknown granularity 'layer' for lr"),
])
def test_constructor_errors(kwargs, message):
    kwargs = {"hyperparameters": dict(lr=0.1), **kwargs}
    with pytest.raises(ValueError, match=message):
        onepass.Tuner(make_mlp(), MSE, **kwargs)


def test_fixed_zero_weight_decay_is_allowed():
    tuner = onepass.Tuner(make_mlp(), MSE, hyperparameters=dict(lr=0.1, weight_decay=0.0), tune=("lr",))
    assert tuner.tuned == ("lr",)


def test_validation_batch_of_wrong_feature_shape():
    tuner = onepass.Tuner(make_mlp(), MSE, hyperparameters=dict(lr=0.1), update_interval=2)
    batches = make_batches(2)
    tuner.step(batches[0])
    weights = weights_of(tuner.model)
    bad = (torch.randn(32, 4, dtype=DTYPE), torch.randn(32, 1, dtype=DTYPE))
    with pytest.raises(ValueError, match=r"validation batch part 0 has shape \(32, 4\).*\(batch, 3\)"):
        tuner.step(batches[1], val_batch=bad)
    assert tuner.steps_taken == 1
    for p, w in zip(tuner.model.parameters(), weights):
        assert torch.equal(p, w)


def test_missing_validation_batch():
    tuner = onepass.Tuner(make_mlp(), MSE, hyperparameters=dict(lr=0.1), update_interval=1)
    with pytest.raises(ValueError, match="pass a validation batch"):
        tuner.step(make_batches(1)[0])


# -------------------------------------------------- non-finite values


def _snapshot(tuner):
    return (weights_of(tuner.model), clone_tree(tuner.state), tuner.hyperparameters, tuner.steps_taken)


def _assert_unchanged(tuner, snapshot):
    weights, state, hyper, steps = snapshot
    for p, w in zip(tuner.model.parameters(), weights):
        assert torch.equal(p, w)
    for a, b in zip(flat(tuner.state), flat(state)):
        assert torch.equal(a, b)
    assert tuner.hyperparameters == hyper
    assert tuner.steps_taken == steps


@pytest.mark.parametrize("method", ["neumann", "unroll", "baydin"])
def test_nan_training_loss_changes_nothing(method):
    batches, val_batches = make_batches(12), make_batches(12, seed=2, size=32)
    tuner = onepass.Tuner(make_mlp(), MSE, hyperparameters=dict(lr=0.05, momentum=0.5),
                          tune=("lr",), method=method, update_interval=5, unroll_steps=3)
    for t in range(3):
        tuner.step(batches[t], val_batch=val_batches[t])
    x, y = batches[3]
    bad = (x.clone(), y)
    bad[0][0, 0] = float("nan")
    for step in (4, 5):   # a plain step (or an unrolled one), then the step closing the window
        snapshot = _snapshot(tuner)
        with pytest.raises(onepass.NonFiniteError, match=f"non-finite training loss at update {step}") as info:
            tuner.step(bad, val_batch=val_batches[3])
        assert info.value.quantity == "training loss" and info.value.step == step
        _assert_unchanged(tuner, snapshot)
        tuner.step(batches[step - 1], val_batch=val_batches[step - 1])
    assert tuner.steps_taken == 5
    assert all(torch.isfinite(p).all() for p in tuner.model.parameters())


@pytest.mark.parametrize("method", ["neumann", "unroll"])
def test_infinite_validation_batch_raises_at_window_end(method):
    batches, val_batches = make_batches(6), make_batches(6, seed=2, size=32)
    tuner = onepass.Tuner(make_mlp(), MSE, hyperparameters=dict(lr=0.05, momentum=0.5, weight_decay=1e-3),
                          method=method, update_interval=5, unroll_steps=3)
    x, y = val_batches[0]
    bad = (x, y.clone())
    bad[1][0, 0] = float("inf")
    for t in range(4):    # the bad validation batch is not used before the window closes
        tuner.step(batches[t], val_batch=bad)
    snapshot = _snapshot(tuner)
    with pytest.raises(onepass.NonFiniteError, match="non-finite validation loss at update 5") as info:
        tuner.step(batches[4], val_batch=bad)
    assert info.value.quantity == "validation loss" and info.value.step == 5
    _assert_unchanged(tuner, snapshot)
    result = tuner.step(batches[4], val_batch=val_batches[4])
    assert result.hypergradient is not None and tuner.steps_taken == 5
    assert tuner.hyperparameters["lr"] != 0.05


# -------------------------------------------------- tuning behaviour on least squares


def _regression(seed=0, d=5, n=256):
    """Data whose mean-squared-error Hessian 2 XᵀX/n is exactly Q diag(h) Qᵀ, h in [0.5, 4.4]."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DTYPE))
    h = torch.linspace(0.5, 4.4, d, dtype=DTYPE)
    w_star = torch.randn(d, 1, generator=g, dtype=DTYPE)

    def draw():
        z, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=DTYPE))
        x = math.sqrt(n) * z @ torch.diag((h / 2).sqrt()) @ q.T
        return x, x @ w_star + 0.1 * torch.randn(n, 1, generator=g, dtype=DTYPE)

    train, val = draw(), draw()
    hessian = 2 * train[0].T @ train[0] / n
    torch.testing.assert_close(torch.linalg.eigvalsh(hessian), h, rtol=1e-10, atol=1e-12)
    return train, val, h


def _least_squares(lr, tune, steps=300):
    train, val, _ = _regression()
    torch.manual_seed(0)
    model = nn.Linear(5, 1, bias=False).to(DTYPE)
    tuner = onepass.Tuner(model, MSE, hyperparameters=dict(lr=lr), tune=tune)
    for _ in range(steps):
        tuner.step(train, val_batch=val)
    with torch.no_grad():
        return MSE(model(val[0]), val[1]).item(), tuner.hyperparameters["lr"]


def test_tuner_raises_a_learning_rate_that_is_too_small():
    fixed_loss, _ = _least_squares(1e-5, ())
    tuned_loss, tuned_lr = _least_squares(1e-5, ("lr",))
    assert tuned_lr > 10 * 1e-5
    assert tuned_loss < 0.9 * fixed_loss


def test_tuner_lowers_a_learning_rate_that_diverges():
    _, _, h = _regression()
    assert 0.5 > 2 / h.max()          # a fixed step of 0.5 diverges on this problem
    fixed_loss, _ = _least_squares(0.5, ())
    tuned_loss, tuned_lr = _least_squares(0.5, ("lr",))
    assert not math.isfinite(fixed_loss) or fixed_loss > 1e10
    assert math.isfinite(tuned_loss)
    assert tuned_lr < 2 / h.max().item()          # below the stability limit
    assert tuned_loss < 0.05                      # near the noise floor (0.01) of the problem


def test_reset_each_window_restarts_every_window_from_the_initial_weights():
    """Long Diff-through-Opt ("Standalone"): each window trains from the same start,
    so with hyperparameters held fixed every window ends at the same weights."""
    torch.manual_seed(0)
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.randn(30, 1, dtype=torch.float64)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()
    initial = [p.detach().clone() for p in model.parameters()]
    tuner = onepass.Tuner(model, torch.nn.functional.mse_loss, method="unroll", update_interval=8,
                          unroll_steps=8, reset_each_window=True, reset_optimizer_state=True,
                          hyperparameters=dict(lr=0.05, momentum=0.5, weight_decay=1e-4), hyper_lr=0.0)
    ends = []
    for step in range(1, 25):
        tuner.step((x, y), (x, y))
        if step % 8 == 0:
            ends.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(ends[0], ends[2]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    assert not torch.equal(ends[0][0], initial[0])
    # With hyperparameter learning on, the next window starts from `initial` again.
    tuner = onepass.Tuner(model, torch.nn.functional.mse_loss, method="unroll", update_interval=8,
                          unroll_steps=8, reset_each_window=True,
                          hyperparameters=dict(lr=0.05, momentum=0.5, weight_decay=1e-4))
    start = [p.detach().clone() for p in model.parameters()]
    for _ in range(8):
        tuner.step((x, y), (x, y))
    tuner._reset_weights()
    for a, b in zip(model.parameters(), start):
        assert torch.equal(a, b)


def test_reset_each_window_carries_the_momentum_buffer_by_default():
    """As the reference code does: only the weights go back; the momentum buffer of the
    window's end enters the next window's first update, b = μ b_prev + g + ξ w_0."""
    torch.manual_seed(0)
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.randn(30, 1, dtype=torch.float64)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()
    initial = [p.detach().clone() for p in model.parameters()]
    lr, mu, xi = 0.05, 0.5, 1e-4
    tuner = onepass.Tuner(model, torch.nn.functional.mse_loss, method="unroll", update_interval=4,
                          unroll_steps=4, reset_each_window=True,
                          hyperparameters=dict(lr=lr, momentum=mu, weight_decay=xi), hyper_lr=0.0)
    assert tuner.reset_optimizer_state is False
    for _ in range(4):
        tuner.step((x, y), (x, y))
    carried = [b.clone() for b in tuner.state["momentum_buffer"]]
    assert all(b.abs().max() > 0 for b in carried)
    tuner.step((x, y), (x, y))   # first update of window 2: from the initial weights
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p, w in zip(reference.parameters(), initial):
            p.copy_(w)
    g0 = torch.autograd.grad(torch.nn.functional.mse_loss(reference(x), y), list(reference.parameters()))
    for p, w, g, b in zip(model.parameters(), initial, g0, carried):
        expected_buffer = mu * b + g + xi * w
        torch.testing.assert_close(p.detach(), w - lr * expected_buffer, rtol=1e-12, atol=1e-15)


def test_max_grad_norm_matches_clip_grad_norm_and_enters_the_hypergradient():
    torch.manual_seed(0)
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    xv, yv = torch.randn(9, 3, dtype=torch.float64), torch.randn(9, 1, dtype=torch.float64)
    make = lambda: torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()
    torch.manual_seed(1)
    reference, model = make(), make()
    model.load_state_dict(reference.state_dict())
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.3, momentum=0.9)
    tuner = onepass.Tuner(model, torch.nn.functional.mse_loss, tune=(), max_grad_norm=0.05,
                          hyperparameters=dict(lr=0.3, momentum=0.9))
    for _ in range(20):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(reference(x), y).backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05)
        optimizer.step()
        tuner.step((x, y))
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)

    # K = 1: the hypergradient is the exact derivative through one clipped update.
    tuner = onepass.Tuner(model, torch.nn.functional.mse_loss, max_grad_norm=0.05, neumann_terms=1,
                          update_interval=1, tune=("lr",), hyperparameters=dict(lr=0.3))
    start = [p.detach().clone().requires_grad_() for p in model.parameters()]
    a = torch.tensor(math.log10(0.3), dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in model.named_parameters()]
    call = lambda w, inputs: torch.func.functional_call(model, dict(zip(names, w)), (inputs,))
    g = torch.autograd.grad(torch.nn.functional.mse_loss(call(start, x), y), start, create_graph=True)
    g = onepass.core.rules.clip_gradients(g, 0.05)
    new = [w - 10 ** a * gi for w, gi in zip(start, g)]
    (exact,) = torch.autograd.grad(torch.nn.functional.mse_loss(call(new, xv), yv), a)
    result = tuner.step((x, y), (xv, yv))
    torch.testing.assert_close(result.hypergradient["lr"][0], exact, rtol=1e-10, atol=0)
