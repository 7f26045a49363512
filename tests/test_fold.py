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
        begin = 0
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            fold.load_state_dict(state["fold"])
            begin = fold.steps
        for t in range(begin, 40):
            if t == stop:
                return {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
                        "fold": copy.deepcopy(fold.state_dict())}
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
