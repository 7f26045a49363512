"""onepass.optim keeps torch.optim's contract (issue #18), checked on values
against the torch.optim namesake for SGD, Adam and AdamW.

Where torch.optim works, onepass.optim works the same way: frozen
parameters, parameters whose ``grad`` is ``None``, ``step(closure)``; with
``tune=()`` it is the namesake bit for bit. A misuse gets one line naming
the fix: sparse gradients, a ``val_loss`` on a copy of the model, a tuned
starting value outside its bounds. A non-finite training gradient is named
by update and parameter (on an accelerator, by update; the parameter where
that update's gradients are at hand). Models as people write them: BatchNorm and dropout
(``model=``), ``torch.compile``, Hugging Face's no-decay group.
"""
from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from torch import nn
from torch.nn.functional import mse_loss

import onepass
import onepass.optim as oo

X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
Y = torch.randn(64, 1, generator=torch.Generator().manual_seed(1))
XV = torch.randn(32, 4, generator=torch.Generator().manual_seed(2))
YV = torch.randn(32, 1, generator=torch.Generator().manual_seed(3))

# name: (onepass class, torch class, kwargs both take)
OPTIMIZERS = {
    "sgd": (oo.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.5, weight_decay=1e-3)),
    "adam": (oo.Adam, torch.optim.Adam, dict(lr=0.01, weight_decay=1e-3)),
    "adamw": (oo.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=1e-2)),
}
NAMES = tuple(OPTIMIZERS)


class WithHead(nn.Module):
    """A body and two heads; only ``head`` enters the loss (``unused`` is an
    auxiliary head that this task never calls)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.head = nn.Linear(8, 1)
        self.unused = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.body(x))


def batch(t: int, size: int = 16):
    start = (t * 8) % (64 - size + 1)
    return X[start:start + size], Y[start:start + size]


def run(model, opt, steps, t0=0):
    for t in range(t0, t0 + steps):
        x, y = batch(t)
        opt.zero_grad()
        mse_loss(model(x), y).backward(create_graph=getattr(opt, "needs_graph", False))
        opt.step()


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def val_loss_of(model):
    return lambda: mse_loss(model(XV), YV)


# ----------------------------------------------------- parameters torch.optim skips

@pytest.mark.parametrize("name", NAMES)
def test_tune_nothing_is_the_namesake_bit_for_bit_with_an_unused_head_and_a_frozen_layer(name):
    cls, torch_cls, kwargs = OPTIMIZERS[name]
    a, b = WithHead(), WithHead()
    for model in (a, b):
        model.body[0].weight.requires_grad_(False)          # fine-tuning: a frozen tensor in the optimizer
    opt, reference = cls(a.parameters(), **kwargs, tune=()), torch_cls(b.parameters(), **kwargs)
    start = snapshot(a)
    for t in range(25):
        run(a, opt, 1, t)
        run(b, reference, 1, t)
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(p, q), (name, t, n)
    after = snapshot(a)
    for n in ("body.0.weight", "unused.weight", "unused.bias"):
        assert torch.equal(after[n], start[n]), n
    assert not torch.equal(after["head.weight"], start["head.weight"])


@pytest.mark.parametrize("name", NAMES)
def test_tuned_parameters_without_a_gradient_never_move(name):
    cls, _, kwargs = OPTIMIZERS[name]
    model = WithHead()
    model.body[0].bias.requires_grad_(False)
    opt = cls(model.parameters(), **kwargs, tune=("lr", "weight_decay"), update_interval=3,
              val_loss=val_loss_of(model))
    start = snapshot(model)
    run(model, opt, 12)                                     # four hyperparameter steps
    after = snapshot(model)
    for n in ("body.0.bias", "unused.weight", "unused.bias"):
        assert torch.equal(after[n], start[n]), n
    assert opt.hyperparameters["lr/group0"] != pytest.approx(kwargs["lr"])    # it tuned


@pytest.mark.parametrize("name", NAMES)
def test_step_without_backward_moves_nothing_as_in_torch_optim(name):
    cls, torch_cls, kwargs = OPTIMIZERS[name]
    a, b = WithHead(), WithHead()
    opt, reference = cls(a.parameters(), **kwargs, update_interval=2, val_loss=val_loss_of(a)), \
        torch_cls(b.parameters(), **kwargs)
    run(a, opt, 1)
    run(b, reference, 1)
    before, reference_before = snapshot(a), snapshot(b)
    opt.zero_grad()
    reference.zero_grad()
    opt.step()                                              # momentum and weight decay would move them
    reference.step()
    assert all(torch.equal(p, before[n]) for n, p in a.named_parameters())
    assert all(torch.equal(p, reference_before[n]) for n, p in b.named_parameters())


@pytest.mark.parametrize("name", NAMES)
def test_step_with_a_closure_returns_its_loss_like_torch_optim(name):
    cls, torch_cls, kwargs = OPTIMIZERS[name]
    a, b = WithHead(), WithHead()
    opt, reference = cls(a.parameters(), **kwargs, tune=()), torch_cls(b.parameters(), **kwargs)
    tuned_model = WithHead()
    tuned = cls(tuned_model.parameters(), **kwargs, update_interval=2, val_loss=val_loss_of(tuned_model))
    for t in range(6):
        x, y = batch(t)
        losses = []
        for model, o in ((a, opt), (b, reference), (tuned_model, tuned)):
            def closure():
                o.zero_grad()
                loss = mse_loss(model(x), y)
                loss.backward(create_graph=getattr(o, "needs_graph", False))
                return loss
            losses.append(o.step(closure))
        assert torch.equal(losses[0], losses[1]) and losses[2].shape == ()
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert tuned.steps_taken == 6 and tuned.hyperparameters["lr/group0"] != pytest.approx(kwargs["lr"])


# ----------------------------------------------------- misuse: one line naming the fix

@pytest.mark.parametrize("name", NAMES)
def test_sparse_gradients_are_refused_with_one_line(name):
    cls, _, kwargs = OPTIMIZERS[name]
    embedding = nn.Embedding(10, 3, sparse=True)
    opt = cls(embedding.parameters(), **kwargs)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"^onepass.optim does not support sparse gradients .* use sparse=False$"):
        opt.step()


@pytest.mark.parametrize("name", NAMES)
def test_a_val_loss_on_a_copy_of_the_model_is_refused(name):
    cls, _, kwargs = OPTIMIZERS[name]
    model = WithHead()
    shadow = copy.deepcopy(model)                           # an EMA model, say
    opt = cls(model.parameters(), **kwargs, update_interval=2, val_loss=lambda: mse_loss(shadow(XV), YV))
    run(model, opt, 1)
    with pytest.raises(ValueError, match=r"does not depend on the optimizer's parameters: compute it with the "
                                         r"model the optimizer trains, not a copy"):
        run(model, opt, 1, 1)


@pytest.mark.parametrize("name", NAMES)
def test_a_tuned_lr_starting_outside_its_bounds_is_refused(name):
    cls, torch_cls, kwargs = OPTIMIZERS[name]
    model = WithHead()
    with pytest.raises(ValueError, match=r"param_groups\[0\] lr=10.0 is outside its lr_bounds=\(1e-10, 1.0\)"):
        cls(model.parameters(), **{**kwargs, "lr": 10.0})
    with pytest.raises(ValueError, match=r"lr=0.05 is outside its lr_bounds=\(0.1, 1.0\)"):
        cls(model.parameters(), **{**kwargs, "lr": 0.05}, lr_bounds=(0.1, 1.0))
    cls(model.parameters(), **{**kwargs, "lr": 10.0}, tune=())      # nothing tuned: torch.optim takes it too
    cls(model.parameters(), **{**kwargs, "lr": 10.0}, lr_bounds=(1e-3, 20.0))


@pytest.mark.parametrize("name", NAMES)
def test_a_non_finite_training_gradient_is_named_by_update_and_parameter(name):
    cls, _, kwargs = OPTIMIZERS[name]
    model = WithHead()
    opt = cls(model.parameters(), **kwargs, update_interval=5, val_loss=val_loss_of(model))
    run(model, opt, 6)                                      # one window, and into the next
    x, y = batch(6)
    opt.zero_grad()
    mse_loss(model(x), y).backward()
    model.head.bias.grad[0] = math.nan                      # a NaN in the training batch of update 7
    opt.step()                                              # no host sync here: nothing is raised yet
    assert opt.steps_taken == 7
    run(model, opt, 2, 7)
    hyper = opt.hyperparameters
    x, y = batch(9)
    opt.zero_grad()
    mse_loss(model(x), y).backward(create_graph=opt.needs_graph)
    before = snapshot(model)
    with pytest.raises(onepass.NonFiniteError,
                       match=r"^non-finite training gradient at update 7 in param_groups\[0\]\['params'\]\[3\] "
                             r"\(shape \(1,\)\); updates 7-9 were applied with it, as torch.optim would, .*"
                             r"update 10 and the hyperparameters were left as they were: reload a checkpoint$") \
            as caught:
        opt.step()
    assert caught.value.quantity == "training gradient" and caught.value.step == 7
    assert opt.steps_taken == 9 and opt.hyperparameters == hyper       # what the message says
    assert all(torch.equal(p, before[n]) or torch.isnan(p).any() for n, p in model.named_parameters())
    assert not torch.isfinite(model.head.bias).all()


def _off_the_host(name, interval: int, updates: int, graph: bool):
    """An optimizer that reads its non-finite flags as off the CPU, after
    ``updates`` updates and the next one's backward (``create_graph`` if ``graph``)."""
    cls, _, kwargs = OPTIMIZERS[name]
    model = WithHead()
    opt = cls(model.parameters(), **kwargs, update_interval=interval, val_loss=val_loss_of(model))
    opt._watch._host = False
    run(model, opt, updates)
    x, y = batch(updates)
    opt.zero_grad()
    mse_loss(model(x), y).backward(create_graph=graph and opt.needs_graph)
    return model, opt


def _a_nan_named_at_the_window_end(name, interval: int, at: int):
    """Off the host, a NaN in update ``at``'s gradients, then the updates to
    the window's end: (the optimizer, the error its closing update raised)."""
    model, opt = _off_the_host(name, interval=interval, updates=at - 1, graph=False)
    model.head.bias.grad[0] = math.nan
    opt.step()
    end = (at - 1) // interval * interval + interval
    run(model, opt, end - at - 1, at)
    x, y = batch(end - 1)
    opt.zero_grad()
    mse_loss(model(x), y).backward(create_graph=opt.needs_graph)
    with pytest.raises(onepass.NonFiniteError) as caught:
        opt.step()
    return opt, caught.value


@pytest.mark.parametrize("name", NAMES)
def test_on_an_accelerator_the_window_end_names_the_update(name):
    """Off the CPU no flag is read before the window's last update (no host sync
    per update): the update is named, and the parameter where that update's
    gradients are at hand. Simulated on the CPU by reading the flags as there."""
    opt, error = _a_nan_named_at_the_window_end(name, interval=5, at=7)
    assert re.match(r"^non-finite training gradient at update 7; updates 7-9 were applied with it, as torch.optim "
                    r"would, .*", str(error))
    assert error.step == 7 and error.where is None and opt.steps_taken == 9
    model, opt = _off_the_host(name, interval=2, updates=1, graph=True)
    model.head.bias.grad[0] = math.inf                      # the window's last update: its gradients are here
    before = snapshot(model)
    with pytest.raises(onepass.NonFiniteError, match=r"^non-finite training gradient at update 2 in "
                                                     r"param_groups\[0\]\['params'\]\[3\] .*; weights and "
                                                     r"hyperparameters were left as they were$"):
        opt.step()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters()) and opt.steps_taken == 1


def test_a_non_finite_gradient_at_the_hyperparameter_step_leaves_everything():
    model = WithHead()
    opt = oo.SGD(model.parameters(), lr=0.05, momentum=0.5, update_interval=2, val_loss=val_loss_of(model))
    run(model, opt, 1)
    x, y = batch(1)
    opt.zero_grad()
    (mse_loss(model(x), y) * math.inf).backward(create_graph=opt.needs_graph)
    before, hyper = snapshot(model), opt.hyperparameters
    with pytest.raises(onepass.NonFiniteError, match=r"^non-finite training gradient at update 2 in "
                                                     r"param_groups\[0\]\['params'\]\[0\] .*; weights and "
                                                     r"hyperparameters were left as they were$"):
        opt.step()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert opt.hyperparameters == hyper and opt.steps_taken == 1


# ----------------------------------------------------- models as people write them

class WithNorm(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("name", NAMES)
def test_model_argument_evaluates_val_loss_in_eval_mode_and_restores_the_mode(name):
    cls, _, kwargs = OPTIMIZERS[name]
    model = WithNorm()
    norm = model.net[1]
    seen = []

    def val_loss():
        seen.append((model.training, norm.training, norm.running_mean.clone(), norm.num_batches_tracked.clone()))
        return mse_loss(model(XV), YV)
    opt = cls(model.parameters(), **kwargs, update_interval=2, val_loss=val_loss, model=model)
    model.net[3].eval()                                     # a submodule's own mode is kept
    for t in range(6):
        x, y = batch(t)
        opt.zero_grad()
        mse_loss(model(x), y).backward(create_graph=opt.needs_graph)
        opt.step()
        if t % 2:                                           # the step just called val_loss
            training, norm_training, mean, count = seen[-1]
            assert not training and not norm_training
            assert torch.equal(norm.running_mean, mean) and torch.equal(norm.num_batches_tracked, count)
        assert model.training and norm.training and not model.net[3].training
    assert len(seen) == 3 and int(norm.num_batches_tracked) == 6     # the six training batches only


@pytest.mark.parametrize("name", NAMES)
def test_torch_compile_pattern_the_eager_module_for_the_differentiated_update(name):
    """The documented pattern (docs/contract.md): the compiled module for plain updates, the eager
    one where ``opt.needs_graph`` (aot_autograd has no double backward)."""
    cls, _, kwargs = OPTIMIZERS[name]
    a, b = WithHead(), WithHead()
    compiled = torch.compile(a, backend="aot_eager")
    opt_a = cls(a.parameters(), **kwargs, update_interval=3, val_loss=val_loss_of(a))
    opt_b = cls(b.parameters(), **kwargs, update_interval=3, val_loss=val_loss_of(b))
    for t in range(9):
        x, y = batch(t)
        forward = a if opt_a.needs_graph else compiled
        opt_a.zero_grad()
        mse_loss(forward(x), y).backward(create_graph=opt_a.needs_graph)
        opt_a.step()
        run(b, opt_b, 1, t)
    assert all(torch.allclose(p, q, rtol=0, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))
    assert opt_a.hyperparameters == pytest.approx(opt_b.hyperparameters, rel=1e-4)
    assert opt_a.hyperparameters["lr/group0"] != pytest.approx(kwargs["lr"])


def no_decay_groups(model, decay):
    """Hugging Face's usual groups: no weight decay on biases."""
    return [{"params": [p for n, p in model.named_parameters() if not n.endswith("bias")], "weight_decay": decay},
            {"params": [p for n, p in model.named_parameters() if n.endswith("bias")], "weight_decay": 0.0}]


@pytest.mark.parametrize("name", NAMES)
def test_a_group_with_weight_decay_0_keeps_it_while_the_other_tunes_it(name):
    cls, torch_cls, kwargs = OPTIMIZERS[name]
    a, b = WithHead(), WithHead()
    decay = kwargs["weight_decay"]
    rest = {k: v for k, v in kwargs.items() if k != "weight_decay"}
    opt = cls(no_decay_groups(a, decay), **rest, tune=("lr", "weight_decay"), update_interval=4,
              val_loss=val_loss_of(a))
    reference = torch_cls(no_decay_groups(b, decay), **rest)
    for t in range(3):                                      # before the first hyperparameter step: the namesake
        run(a, opt, 1, t)
        run(b, reference, 1, t)                             # (to float32 hyperparameters: Adam's 1 - beta1)
        assert all(torch.allclose(p, q, rtol=0, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))
    run(a, opt, 9, 3)
    hyper = opt.hyperparameters
    assert hyper["weight_decay/group1"] == 0.0 and hyper["weight_decay/group0"] != pytest.approx(decay)
    frozen = opt.frozen()                                   # the namesake at the values in use
    biases = {id(p) for n, p in a.named_parameters() if n.endswith("bias")}
    assert all(g["weight_decay"] == 0.0 for g in frozen.param_groups if id(g["params"][0]) in biases)
    assert all(g["weight_decay"] == pytest.approx(hyper["weight_decay/group0"])
               for g in frozen.param_groups if id(g["params"][0]) not in biases)


@pytest.mark.parametrize("name", NAMES)
def test_the_pinned_group_takes_the_update_a_weight_decay_of_0_gives(name):
    """A differentiated update too: the bias group's step is the namesake's with weight decay 0."""
    cls, torch_cls, kwargs = OPTIMIZERS[name]
    model = WithHead()
    decay = kwargs["weight_decay"]
    rest = {k: v for k, v in kwargs.items() if k != "weight_decay"}
    opt = cls(no_decay_groups(model, decay), **rest, tune=("lr", "weight_decay"), update_interval=1,
              val_loss=val_loss_of(model))
    twin = copy.deepcopy(model)
    reference = torch_cls(no_decay_groups(twin, decay), **rest)
    run(model, opt, 1)                                      # update 1 is differentiated (update_interval=1)
    run(twin, reference, 1)
    assert all(torch.allclose(p, q, rtol=0, atol=1e-7) for p, q in zip(model.parameters(), twin.parameters()))


# ----------------------------------------------------- logging

@pytest.mark.parametrize("name", NAMES)
def test_logged_names_say_learned_value_and_rate_in_use(name):
    cls, _, kwargs = OPTIMIZERS[name]
    model = WithHead()
    opt = cls(model.parameters(), **kwargs, update_interval=2, val_loss=val_loss_of(model))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1 - step / 6))
    for t in range(6):
        run(model, opt, 1, t)
        scheduler.step()
    hyper = opt.hyperparameters
    learned = opt.tuner.hyperparameters["lr"]
    assert hyper["lr/group0"] == pytest.approx(learned, rel=1e-12) and learned != pytest.approx(kwargs["lr"])
    assert hyper["lr_in_use/group0"] == 0.0                 # the end of the schedule


# ----------------------------------------------------- public attributes (what the integrations set)

@pytest.mark.parametrize("name", NAMES)
def test_val_loss_grad_scaler_and_skip_non_finite_are_public_settable_attributes(name):
    """``val_loss`` set after construction is the constructor's ``val_loss=``, update for update."""
    cls, _, kwargs = OPTIMIZERS[name]
    a, b = WithHead(), WithHead()
    opt_a = cls(a.parameters(), **kwargs, update_interval=3, val_loss=val_loss_of(a))
    opt_b = cls(b.parameters(), **kwargs, update_interval=3)
    assert opt_b.val_loss is None and opt_b.grad_scaler is None and opt_b.skip_non_finite is None
    opt_b.val_loss = val_loss_of(b)
    run(a, opt_a, 7)
    run(b, opt_b, 7)
    for n, p in snapshot(a).items():
        assert torch.equal(p, snapshot(b)[n]), n
    assert opt_a.hyperparameters == opt_b.hyperparameters
    with pytest.raises(ValueError, match="^val_loss must be a zero-argument callable"):
        opt_b.val_loss = 1.0
    with pytest.raises(ValueError, match="^grad_scaler must be a torch.amp.GradScaler"):
        opt_b.grad_scaler = 2.0
    opt_b.grad_scaler = torch.amp.GradScaler("cpu")
    opt_b.skip_non_finite = True
    assert "skipped_hypersteps" in opt_b.hyperparameters    # AMP mode: a bad hyperparameter step is skipped


# ----------------------------------------------------- freeze(): the namesake from here on

def namesake_like(frozen: torch.optim.Optimizer, torch_cls, model: nn.Module) -> torch.optim.Optimizer:
    """``torch_cls`` on ``model``'s parameters with ``frozen``'s groups and state (moments)."""
    params = list(model.parameters())
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [params[i]]}
              for i, g in enumerate(frozen.param_groups)]
    reference = torch_cls(groups)
    reference.load_state_dict(frozen.state_dict())
    return reference


@pytest.mark.parametrize("name", NAMES)
def test_freeze_then_steps_are_the_namesake_at_the_learned_values_bit_for_bit(name):
    cls, torch_cls, kwargs = OPTIMIZERS[name]
    a = WithHead()
    calls = []

    def val_loss():
        calls.append(1)
        return mse_loss(a(XV), YV)
    opt = cls(a.parameters(), **kwargs, update_interval=4, val_loss=val_loss)
    run(a, opt, 10)
    assert len(calls) == 2
    b = copy.deepcopy(a)
    reference = namesake_like(opt.frozen(), torch_cls, b)
    learned = opt.hyperparameters
    opt.freeze()
    assert opt.is_frozen and opt.needs_graph is False
    for t in range(10, 22):
        run(a, opt, 1, t)
        run(b, reference, 1, t)
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(p, q), (name, t, n)
    assert len(calls) == 2 and opt.hyperparameters == learned      # no hyperparameter step, no val_loss
    assert opt.steps_taken == 22
    c = WithHead()
    resumed = cls(c.parameters(), **kwargs, update_interval=4, val_loss=val_loss)
    resumed.load_state_dict(opt.state_dict())
    assert resumed.is_frozen and resumed.needs_graph is False


@pytest.mark.parametrize("name", NAMES)
def test_a_scheduler_built_before_freeze_still_scales_the_learned_lr(name):
    cls, torch_cls, kwargs = OPTIMIZERS[name]
    a = WithHead()
    opt = cls(a.parameters(), **kwargs, update_interval=4, val_loss=val_loss_of(a))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.9 ** step)
    for t in range(8):
        run(a, opt, 1, t)
        scheduler.step()
    b = copy.deepcopy(a)
    reference = namesake_like(opt.frozen(), torch_cls, b)
    opt.freeze()
    learned = opt.hyperparameters["lr/group0"]
    rates = set()
    for t in range(8, 14):
        group = opt.param_groups[0]
        rate = learned * (group["lr"] / group["base_lr"])             # learned × the scheduler's factor
        for g in reference.param_groups:
            g["lr"] = rate
        rates.add(rate)
        run(a, opt, 1, t)
        run(b, reference, 1, t)
        scheduler.step()
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(p, q), (name, t, n)
    assert len(rates) == 6 and opt.hyperparameters["lr/group0"] == learned


@pytest.mark.parametrize("name", NAMES)
def test_a_long_window_keeps_its_flags_without_allocating_the_window(name):
    """The non-finite flags grow with the window, not with ``update_interval``:
    a window of a billion updates allocates nothing for the updates it has not
    reached, and a NaN at update 70 of a long window (past the first buffer) is
    still named at the window's end off the CPU."""
    cls, _, kwargs = OPTIMIZERS[name]
    model = WithHead()
    opt = cls(model.parameters(), **kwargs, update_interval=10 ** 9, val_loss=val_loss_of(model))
    run(model, opt, 3)
    assert max(flags.numel() for flags, _ in opt._watch._flags.values()) <= 64
    opt, error = _a_nan_named_at_the_window_end(name, interval=80, at=70)     # past the first 64 flags
    assert re.match(r"^non-finite training gradient at update 70; updates 70-79 were applied with it", str(error))
    assert error.step == 70 and opt.steps_taken == 79
