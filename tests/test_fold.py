"""onepass.optim.Fold: the recipe's loop step (best-validation weights, then the
fold with the optimizer frozen in place)."""
import copy

import pytest
import torch

import onepass.optim
from onepass.optim.fold import BestWeights
from onepass.optim.recipe import recipe


def _problem(seed=0):
    torch.manual_seed(seed)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    x_val, y_val = torch.randn(32, 4), torch.randn(32, 1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 1))
    return model, (x, y), (x_val, y_val)


def _checkpoint(model, opt, fold) -> dict:
    return {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
            "fold": copy.deepcopy(fold.state_dict())}


def _resume(model, opt, fold, state) -> int:
    """Load a :func:`_checkpoint` (if any); the update to go on from."""
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    fold.load_state_dict(state["fold"])
    return fold.steps


def test_best_weights_keep_the_lowest_finite_loss_on_the_device():
    t = torch.zeros(3)
    best = BestWeights([t])
    for value, loss in [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, float("nan")), (5.0, float("inf"))]:
        t.fill_(value)
        best.observe(torch.tensor(loss))
    assert best.restore() and torch.equal(t, torch.full((3,), 2.0))
    state = copy.deepcopy(best.state_dict())
    other = BestWeights([torch.zeros(3)])
    other.load_state_dict(state)
    assert other.restore() and torch.equal(other.tensors[0], torch.full((3,), 2.0))
    never = BestWeights([torch.zeros(1)])
    never.observe(torch.tensor(float("nan")))
    assert not never.restore() and not BestWeights([torch.zeros(1)]).restore()


def test_fold_restores_the_best_validation_weights_then_freezes_in_place():
    model, (x, y), (x_val, y_val) = _problem()
    loss_fn = torch.nn.functional.mse_loss
    seen = []

    def val_loss():
        value = loss_fn(model(x_val), y_val)
        seen.append((float(value.detach()), copy.deepcopy(model.state_dict())))
        return value
    opt = onepass.optim.AdamW(model.parameters(), lr=3e-2, val_loss=val_loss, model=model, update_interval=5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 ** (t // 10))
    steps = 60
    fold = onepass.optim.Fold(opt, steps, fraction=0.25, keep_best=True)
    assert fold.fold_at == 45
    for t in range(steps):
        if t == fold.fold_at:
            assert fold.folded and opt.is_frozen and not opt.needs_graph
            best_loss, best_state = min(seen, key=lambda s: s[0])
            assert best_loss < seen[-1][0]          # the run had moved past its best: a real restore
            for name, value in model.state_dict().items():
                assert torch.equal(value, best_state[name]), name
            calls = len(seen)
            lr_before = opt.in_use()[0]["lr"]
        else:
            assert fold.folded == (t >= fold.fold_at)
        opt.zero_grad()
        loss_fn(model(x), y).backward(create_graph=opt.needs_graph)
        opt.step()
        scheduler.step()
        fold.step()
    assert len(seen) == calls                        # frozen: val_loss no longer called
    assert opt.in_use()[0]["lr"] == pytest.approx(lr_before * 0.25)   # the scheduler still drives it: 0.5^4 → 0.5^6


def test_fold_defaults_come_from_the_recipe_and_bad_input_is_one_line():
    model, _, (x_val, y_val) = _problem()
    opt = onepass.optim.AdamW(model.parameters(), val_loss=lambda: model(x_val).pow(2).mean(), model=model)
    fold = onepass.optim.Fold(opt, 100)
    loop = recipe("adamw")["loop"]
    assert fold.fraction == loop["fold"] and (fold.best is not None) == bool(loop.get("keep_best", False))
    with pytest.raises(ValueError, match="fraction"):
        onepass.optim.Fold(opt, 100, fraction=1.0)
    with pytest.raises(ValueError, match="total_steps"):
        onepass.optim.Fold(opt, 0)


def test_fold_without_a_fold_keeps_tuning_and_restores_on_request():
    model, (x, y), (x_val, y_val) = _problem(1)
    loss_fn = torch.nn.functional.mse_loss
    opt = onepass.optim.SGD(model.parameters(), lr=0.05, val_loss=lambda: loss_fn(model(x_val), y_val),
                            model=model, update_interval=4)
    fold = onepass.optim.Fold(opt, 20, fraction=0.0, keep_best=True)
    for _ in range(20):
        opt.zero_grad()
        loss_fn(model(x), y).backward(create_graph=opt.needs_graph)
        opt.step()
        fold.step()
        assert not fold.folded and not opt.is_frozen
    best = float(fold.best.loss)
    assert fold.restore_best()
    model.eval()
    with torch.no_grad():
        assert float(loss_fn(model(x_val), y_val)) == pytest.approx(best, rel=1e-6)


def test_fold_state_dict_resumes_exactly():
    def run(stop=None, state=None):
        model, (x, y), (x_val, y_val) = _problem(2)
        loss_fn = torch.nn.functional.mse_loss
        opt = onepass.optim.Adam(model.parameters(), lr=1e-2, val_loss=lambda: loss_fn(model(x_val), y_val),
                                 model=model, update_interval=5)
        fold = onepass.optim.Fold(opt, 40, fraction=0.25, keep_best=True)
        begin = _resume(model, opt, fold, state)
        for t in range(begin, 40):
            if t == stop:
                return _checkpoint(model, opt, fold)
            opt.zero_grad()
            loss_fn(model(x), y).backward(create_graph=opt.needs_graph)
            opt.step()
            fold.step()
        return model.state_dict()
    whole = run()
    resumed = run(state=run(stop=17))
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name


def test_fold_average_puts_in_the_mean_of_the_last_updates_weights_and_buffers():
    model, (x, y), (x_val, y_val) = _problem(1)
    loss_fn = torch.nn.functional.mse_loss
    opt = onepass.optim.AdamW(model.parameters(), lr=1e-2, model=model, update_interval=5,
                              val_loss=lambda: loss_fn(model(x_val), y_val))
    steps = 40
    fold = onepass.optim.Fold(opt, steps, fraction=0.25, keep_best=False, average=0.1)
    assert fold.average_from == 36
    floats = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    history = []
    for t in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward(create_graph=opt.needs_graph)
        opt.step()
        if t + 1 >= fold.average_from:
            history.append([f.detach().clone() for f in floats])
        fold.step()
    assert len(history) == 5
    for i, f in enumerate(floats):
        expected = torch.stack([h[i] for h in history]).mean(0)
        assert torch.allclose(f, expected, atol=1e-6), i
        assert not torch.equal(f, history[-1][i])   # the last update's weights were replaced
    assert int(model[1].num_batches_tracked) == steps   # integer buffers are not averaged
    with pytest.raises(ValueError, match=r"^average must lie in \[0, 1\)"):
        onepass.optim.Fold(opt, steps, average=1.0)


@pytest.mark.parametrize("rule", ["SGD", "Adam", "AdamW"])
@pytest.mark.parametrize("granularity", [None, {"lr": "tensor"}, {"lr": "weight"}])
def test_back_off_scales_the_learned_rate_and_restarts_both_states(rule, granularity):
    model, (x, y), (x_val, y_val) = _problem(3)
    loss_fn = torch.nn.functional.mse_loss
    extra = {"momentum": 0.9} if rule == "SGD" else {}
    opt = getattr(onepass.optim, rule)(model.parameters(), lr=1e-2, val_loss=lambda: loss_fn(model(x_val), y_val),
                                       model=model, update_interval=3, granularity=granularity, cost_budget=None,
                                       **extra)
    for _ in range(6):
        opt.zero_grad()
        loss_fn(model(x), y).backward(create_graph=opt.needs_graph)
        opt.step()
    def learned():
        value = opt.tuner.hyperparameters["lr"]
        return torch.cat([torch.as_tensor(v, dtype=torch.float64).reshape(-1)
                          for v in (value if isinstance(value, list) else [value])])
    before = learned()
    assert (len(set(before.tolist())) == 1) == (granularity is None) and not torch.allclose(before, torch.tensor(1e-2, dtype=torch.float64))
    assert opt.tuner._hyper_optimizer.state
    opt.back_off(0.25)
    torch.testing.assert_close(learned(), 0.25 * before, rtol=1e-5, atol=0)   # every slot, its own value
    if granularity != {"lr": "weight"}:                                       # what the update uses
        assert opt.in_use()[0]["lr"] == pytest.approx(0.25 * before[0].item(), rel=1e-5)
    state = opt.tuner.state
    for key, value in state.items():
        for t in (value if isinstance(value, tuple) else (value,)):
            assert not t.any(), key                                             # the rule's state from zero
    assert not opt.tuner._hyper_optimizer.state                                # so is the hyper-optimiser's
    opt.zero_grad()
    loss_fn(model(x), y).backward(create_graph=opt.needs_graph)
    opt.step()                                                                  # and it goes on
    with pytest.raises(ValueError, match="factor"):
        opt.back_off(1.0)


@pytest.mark.parametrize("method", ["neumann", "cg", "unroll"])
def test_back_off_inside_a_window_goes_on_with_the_rest_of_it(method):
    model, (x, y), (x_val, y_val) = _problem(3)
    loss_fn = torch.nn.functional.mse_loss
    opt = onepass.optim.SGD(model.parameters(), lr=1e-2, momentum=0.5, val_loss=lambda: loss_fn(model(x_val), y_val),
                            model=model, update_interval=4, unroll_steps=4, method=method, cost_budget=None)
    lrs = []
    for t in range(14):
        opt.zero_grad()
        loss_fn(model(x), y).backward(create_graph=opt.needs_graph)
        opt.step()
        lrs.append(opt.tuner.hyperparameters["lr"])
        if t == 5:                                   # the second window's second update
            before = lrs[-1]
            opt.back_off(0.5)
            assert opt.tuner.hyperparameters["lr"] == pytest.approx(before / 2, rel=1e-5)
    assert lrs[7] != lrs[6] and lrs[11] != lrs[10]   # that window's and the next one's hyper-steps are taken
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _guarded_run(spike_at, guard=2.0, loss_given=False, stop=None, state=None):
    """SGD on the toy problem; at update ``spike_at`` the weights are blown up by hand."""
    model, (x, y), (x_val, y_val) = _problem(4)
    loss_fn = torch.nn.functional.mse_loss
    opt = onepass.optim.SGD(model.parameters(), lr=1e-3, momentum=0.5, val_loss=lambda: loss_fn(model(x_val), y_val),
                            model=model, update_interval=4, cost_budget=None)
    fold = onepass.optim.Fold(opt, 40, fraction=0.25, keep_best=True, guard=guard)
    begin = _resume(model, opt, fold, state)
    events = []
    for t in range(begin, 40):
        if t == stop:
            return _checkpoint(model, opt, fold)
        if t == spike_at:
            with torch.no_grad():
                model[3].weight.mul_(10.0)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward(create_graph=opt.needs_graph)
        opt.step()
        backoffs, lr = fold.backoffs, opt.tuner.hyperparameters["lr"]
        fold.step(loss if loss_given else None)
        if fold.backoffs != backoffs:
            restored = all(torch.equal(a, b) for a, b in zip(fold.best.tensors, fold.best.copies))
            events.append((t, lr, opt.tuner.hyperparameters["lr"], restored))
    return model, fold, events


def test_guard_puts_the_best_weights_back_and_halves_the_rate_when_validation_blows_up():
    model, fold, events = _guarded_run(spike_at=13)
    assert fold.backoffs == 1 and len(events) == 1
    t, lr_before, lr_after, restored = events[0]
    assert t == 15                                       # the window closing after the spike (updates 12-15)
    assert lr_after == pytest.approx(lr_before / 2, rel=1e-5)
    assert restored                                      # the best weights and buffers are back in place
    calm_model, calm_fold, calm_events = _guarded_run(spike_at=None)
    assert calm_fold.backoffs == 0 and not calm_events   # no blow-up, no back-off: the same run as without
    plain_model, _, _ = _guarded_run(spike_at=None, guard=0)
    for a, b in zip(calm_model.state_dict().values(), plain_model.state_dict().values()):
        assert torch.equal(a, b)


def test_guard_given_the_training_loss_acts_inside_the_window():
    _, fold, events = _guarded_run(spike_at=13, loss_given=True)
    assert events[0][0] == 13 and events[0][3] and fold.backoffs == 1     # at once, not at the window's end


def test_guard_given_the_training_loss_acts_in_the_fold_on_the_frozen_update():
    model, fold, events = _guarded_run(spike_at=33, loss_given=True)
    assert fold.folded and fold.optimizer.is_frozen and fold.backoffs == 1
    t, lr_before, lr_after, restored = events[0]
    assert t == 33 and restored and lr_after == pytest.approx(lr_before / 2, rel=1e-5)
    assert fold.optimizer.in_use()[0]["lr"] == pytest.approx(lr_before / 2, rel=1e-5)
    _, spiked_no_loss, no_events = _guarded_run(spike_at=33)
    assert spiked_no_loss.backoffs == 0 and not no_events   # without the loss the fold has no validation to watch
    # the frozen update after a back-off: torch.optim.SGD's at half the rate, its momentum buffer from zero
    model, (x, y), (x_val, y_val) = _problem(5)
    loss_fn = torch.nn.functional.mse_loss
    opt = onepass.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, val_loss=lambda: loss_fn(model(x_val), y_val),
                            model=model, update_interval=2, cost_budget=None)
    for _ in range(4):
        opt.zero_grad()
        loss_fn(model(x), y).backward(create_graph=opt.needs_graph)
        opt.step()
    opt.freeze()
    rate = opt.in_use()[0]["lr"]
    opt.back_off(0.5)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    opt.step()
    for p, w, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), w - 0.5 * rate * g)


def test_guard_resumes_exactly_and_refuses_bad_settings():
    whole, _, _ = _guarded_run(spike_at=13)
    resumed, _, _ = _guarded_run(spike_at=13, state=_guarded_run(spike_at=13, stop=8))
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    model, _, (x_val, _) = _problem()
    opt = onepass.optim.SGD(model.parameters(), lr=1e-2, val_loss=lambda: model(x_val).pow(2).mean(), model=model)
    with pytest.raises(ValueError, match="guard"):
        onepass.optim.Fold(opt, 10, keep_best=False, guard=10.0)
    with pytest.raises(ValueError, match="guard"):
        onepass.optim.Fold(opt, 10, keep_best=True, guard=0.5)


def test_sgd_default_use_starts_from_the_recipe_and_any_value_given_keeps_torch_defaults():
    model, _, (x_val, y_val) = _problem()
    val = lambda: model(x_val).pow(2).mean()   # noqa: E731
    start = recipe("sgd")["start"]
    default = onepass.optim.SGD(model.parameters(), val_loss=val, model=model)
    values = default.in_use()[0]
    assert values["lr"] == pytest.approx(start["lr"]) and values["momentum"] == pytest.approx(start["momentum"])
    assert set(default.tuner.slots.tuned) == {"lr", "momentum"}
    fold = onepass.optim.Fold(default, 100)
    assert fold.guard == recipe("sgd")["loop"]["guard"] and fold.best is not None and fold.fraction == 0.25
    assert onepass.optim.Fold(default, 100, keep_best=False).guard is None   # the recipe's guard needs its best weights
    torch_defaults = torch.optim.SGD(model.parameters()).defaults
    for kwargs in ({"lr": 0.1}, {"momentum": 0.5}, {"tune": ()}, {"method": "baydin"}):
        opt = onepass.optim.SGD(model.parameters(), val_loss=val, model=model, **kwargs)
        values = opt.in_use()[0]
        for name in ("lr", "momentum"):
            assert values[name] == pytest.approx(kwargs.get(name, torch_defaults[name])), (kwargs, name)
    assert onepass.optim.Fold(onepass.optim.AdamW(model.parameters(), val_loss=val, model=model), 100).guard is None
