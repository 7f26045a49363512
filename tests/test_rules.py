"""The update rules agree with their ``torch.optim`` twins, are pure and vmap-able."""
import copy

import pytest
import torch
from torch import nn

from onepass.core.rules import RULES, get_rule, sgd_update

DTYPE = torch.float64
STEPS = 20


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).to(DTYPE)


def _batches(n=STEPS, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, generator=g, dtype=DTYPE), torch.randn(8, 2, generator=g, dtype=DTYPE))
            for _ in range(n)]


def _grads(model, batch):
    x, y = batch
    loss = nn.functional.mse_loss(model(x), y)
    return torch.autograd.grad(loss, list(model.parameters()))


def _run_rule(rule_name, hyper, model, batches):
    rule = get_rule(rule_name)
    weights = tuple(p.detach().clone() for p in model.parameters())
    state = rule.init(weights)
    for batch in batches:
        # gradients at the rule's current weights
        with torch.no_grad():
            for p, w in zip(model.parameters(), weights):
                p.copy_(w)
        grads = _grads(model, batch)
        weights, state = rule.update(weights, state, grads, hyper)
    return weights, state


def _run_torch(optimizer_cls, kwargs, model, batches):
    optimizer = optimizer_cls(model.parameters(), **kwargs)
    for batch in batches:
        optimizer.zero_grad()
        x, y = batch
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return tuple(p.detach() for p in model.parameters())


def _t(x):
    return torch.tensor(x, dtype=DTYPE)


def _assert_weights_close(ours, theirs, rtol=1e-12, atol=1e-14):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def _assert_moved(before, after):
    # the comparison is meaningful only if training actually changed the weights
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(before, after))


# ----------------------------------------------------------------- SGD


@pytest.mark.parametrize("rule_name, kwargs", [
    ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=1e-3)),
    ("sgd_nesterov", dict(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)),
    ("sgd", dict(lr=0.1, weight_decay=1e-3)),              # momentum 0 (absent from hyper)
    ("sgd", dict(lr=0.1, momentum=0.9)),                   # no weight decay
])
def test_sgd_matches_torch_optim(rule_name, kwargs):
    model = _mlp()
    twin = copy.deepcopy(model)
    batches = _batches()
    start = tuple(p.detach().clone() for p in model.parameters())
    hyper = {k: _t(v) for k, v in kwargs.items() if k != "nesterov"}
    ours, state = _run_rule(rule_name, hyper, model, batches)
    theirs = _run_torch(torch.optim.SGD, kwargs, twin, batches)
    _assert_moved(start, theirs)
    _assert_weights_close(ours, theirs)
    assert set(state) == {"momentum_buffer"}


def test_sgd_momentum_zero_equals_plain_gradient_step():
    """Without momentum the buffer is the gradient itself: w - lr (g + wd w)."""
    torch.manual_seed(3)
    weights = (torch.randn(3, 2, dtype=DTYPE), torch.randn(2, dtype=DTYPE))
    grads = (torch.randn(3, 2, dtype=DTYPE), torch.randn(2, dtype=DTYPE))
    state = {"momentum_buffer": (torch.randn(3, 2, dtype=DTYPE), torch.randn(2, dtype=DTYPE))}
    new_weights, new_state = sgd_update(weights, state, grads, {"lr": _t(0.3), "weight_decay": _t(0.01)})
    for w, g, nw, b in zip(weights, grads, new_weights, new_state["momentum_buffer"]):
        torch.testing.assert_close(nw, w - 0.3 * (g + 0.01 * w), rtol=1e-15, atol=1e-15)
        torch.testing.assert_close(b, g + 0.01 * w, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("rule_name", ["sgd", "sgd_nesterov", "adam", "adamw"])
def test_per_tensor_hyperparameters_equal_scalar(rule_name):
    model = _mlp()
    batches = _batches()
    n = len(list(model.parameters()))
    scalar = {"lr": _t(0.05), "weight_decay": _t(1e-2)}
    if rule_name.startswith("sgd"):
        scalar["momentum"] = _t(0.9)
    else:
        scalar.update(beta1=_t(0.8), beta2=_t(0.99), eps=_t(1e-6))
    per_tensor = {k: tuple(v.clone() for _ in range(n)) for k, v in scalar.items()}
    per_weight = {k: tuple(torch.full_like(p, v.item()) for p in model.parameters())
                  for k, v in scalar.items()}
    a, _ = _run_rule(rule_name, scalar, copy.deepcopy(model), batches)
    b, _ = _run_rule(rule_name, per_tensor, copy.deepcopy(model), batches)
    c, _ = _run_rule(rule_name, per_weight, copy.deepcopy(model), batches)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y)
        torch.testing.assert_close(x, z, rtol=1e-13, atol=1e-15)


def test_per_tensor_values_apply_to_their_own_tensor():
    """Different per-tensor learning rates: tensor i moves by lr_i * g_i."""
    weights = (torch.ones(2, dtype=DTYPE), torch.ones(3, dtype=DTYPE))
    grads = (torch.full((2,), 2.0, dtype=DTYPE), torch.full((3,), 4.0, dtype=DTYPE))
    rule = get_rule("sgd")
    new, _ = rule.update(weights, rule.init(weights), grads, {"lr": (_t(0.1), _t(0.01))})
    torch.testing.assert_close(new[0], torch.full((2,), 0.8, dtype=DTYPE), rtol=0, atol=1e-15)
    torch.testing.assert_close(new[1], torch.full((3,), 0.96, dtype=DTYPE), rtol=0, atol=1e-15)


# ----------------------------------------------------------------- Adam


@pytest.mark.parametrize("rule_name, optimizer_cls, kwargs", [
    ("adam", torch.optim.Adam, dict(lr=0.01, weight_decay=1e-2)),
    ("adamw", torch.optim.AdamW, dict(lr=0.01, weight_decay=1e-2)),
    ("adam", torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)),
    ("adamw", torch.optim.AdamW, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)),
    ("adam", torch.optim.Adam, dict(lr=0.01)),
])
def test_adam_matches_torch_optim(rule_name, optimizer_cls, kwargs):
    model = _mlp()
    twin = copy.deepcopy(model)
    batches = _batches()
    start = tuple(p.detach().clone() for p in model.parameters())
    beta1, beta2 = kwargs.get("betas", (0.9, 0.999))
    hyper = {"lr": _t(kwargs["lr"]), "beta1": _t(beta1), "beta2": _t(beta2), "eps": _t(kwargs.get("eps", 1e-8))}
    if "weight_decay" in kwargs:
        hyper["weight_decay"] = _t(kwargs["weight_decay"])
    ours, state = _run_rule(rule_name, hyper, model, batches)
    theirs = _run_torch(optimizer_cls, dict(kwargs, foreach=False), twin, batches)
    _assert_moved(start, theirs)
    _assert_weights_close(ours, theirs)
    assert state["step"].item() == STEPS


def test_adamw_defaults_match_torch():
    assert RULES["adamw"].defaults["weight_decay"] == torch.optim.AdamW([torch.zeros(1)]).defaults["weight_decay"]
    assert RULES["adam"].defaults["lr"] == 1e-3
    assert set(RULES["sgd"].hyperparameter_names) == {"lr", "momentum", "weight_decay"}


def test_get_rule_unknown_name():
    with pytest.raises(ValueError, match="unknown update rule 'rmsprop'"):
        get_rule("rmsprop")
    assert get_rule(RULES["adam"]) is RULES["adam"]


# ----------------------------------------------------------------- purity


def _random_inputs(seed=5):
    torch.manual_seed(seed)
    weights = (torch.randn(3, 4, dtype=DTYPE), torch.randn(4, dtype=DTYPE))
    grads = (torch.randn(3, 4, dtype=DTYPE), torch.randn(4, dtype=DTYPE))
    return weights, grads


def _hyper_for(rule_name):
    if rule_name.startswith("sgd"):
        return {"lr": _t(0.1), "momentum": _t(0.9), "weight_decay": _t(1e-3)}
    return {"lr": _t(0.01), "beta1": _t(0.9), "beta2": _t(0.999), "eps": _t(1e-8), "weight_decay": _t(1e-2)}


def _clone_tree(tree):
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, dict):
        return {k: _clone_tree(v) for k, v in tree.items()}
    return tuple(_clone_tree(v) for v in tree)


def _flat(tree):
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for k in sorted(tree) for t in _flat(tree[k])]
    return [t for v in tree for t in _flat(v)]


@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_rules_are_pure(rule_name):
    rule = get_rule(rule_name)
    weights, grads = _random_inputs()
    state = rule.init(weights)
    # a non-trivial state: one update first
    _, state = rule.update(weights, state, grads, _hyper_for(rule_name))
    hyper = _hyper_for(rule_name)
    saved = _clone_tree((weights, state, grads, hyper))
    new_weights, new_state = rule.update(weights, state, grads, hyper)
    for a, b in zip(_flat((weights, state, grads, hyper)), _flat(saved)):
        assert torch.equal(a, b)
    # the outputs are new tensors, not views of the inputs
    for w, nw in zip(weights, new_weights):
        assert nw.data_ptr() != w.data_ptr()
    # and the same call gives the same answer again
    again_weights, again_state = rule.update(weights, state, grads, hyper)
    for a, b in zip(_flat((new_weights, new_state)), _flat((again_weights, again_state))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_rules_vmap_over_weight_sets(rule_name):
    rule = get_rule(rule_name)
    batch = 4
    torch.manual_seed(11)
    weights = (torch.randn(batch, 3, 4, dtype=DTYPE), torch.randn(batch, 4, dtype=DTYPE))
    hyper = _hyper_for(rule_name)

    def two_steps(w, g1, g2):
        s = rule.init(w)
        w, s = rule.update(w, s, g1, hyper)
        return rule.update(w, s, g2, hyper)

    g1 = tuple(torch.randn_like(w) for w in weights)
    g2 = tuple(torch.randn_like(w) for w in weights)
    batched_weights, batched_state = torch.func.vmap(two_steps)(weights, g1, g2)
    for k in range(batch):
        w_k, s_k = two_steps(tuple(w[k] for w in weights), tuple(g[k] for g in g1), tuple(g[k] for g in g2))
        for a, b in zip(w_k, batched_weights):
            torch.testing.assert_close(a, b[k], rtol=1e-14, atol=1e-15)
        for a, b in zip(_flat(s_k), _flat(batched_state)):
            torch.testing.assert_close(a, b[k], rtol=1e-14, atol=1e-15)


def test_vmap_over_learning_rates():
    """A population of learning rates on the same weights."""
    rule = get_rule("sgd")
    weights, grads = _random_inputs()
    lrs = torch.tensor([0.1, 0.01, 1.0], dtype=DTYPE)

    def one(lr):
        return rule.update(weights, rule.init(weights), grads, {"lr": lr, "momentum": _t(0.5)})[0]

    batched = torch.func.vmap(one)(lrs)
    for k, lr in enumerate(lrs):
        for w, g, b in zip(weights, grads, batched):
            torch.testing.assert_close(b[k], w - lr * g, rtol=1e-15, atol=1e-15)


# ----------------------------------------------------------------- in-place twins


def _float_hyper(rule_name):
    return {k: v.item() for k, v in _hyper_for(rule_name).items()}


@pytest.mark.parametrize("rule_name", sorted(RULES))
@pytest.mark.parametrize("form", ["floats", "per_group_floats", "per_weight_lr", "per_tensor"])
def test_update_in_place_matches_update(rule_name, form):
    """The no-grad fast path writes the same numbers as the pure rule, in place."""
    rule = get_rule(rule_name)
    assert rule.update_in_place is not None
    torch.manual_seed(7)
    start = (torch.randn(3, 4, dtype=DTYPE), torch.randn(4, dtype=DTYPE), torch.randn(2, 3, dtype=DTYPE))
    n = len(start)
    tensors = _hyper_for(rule_name)
    if form == "floats":
        fast_hyper = _float_hyper(rule_name)
        pure_hyper = tensors
    elif form == "per_group_floats":
        # one float per weight tensor, as parameter groups give: the first two tensors share theirs
        scale = (1.0, 1.0, 0.5)
        pure_hyper = {k: tuple(v * s if k in ("lr", "weight_decay") else v.clone() for s in scale)
                      for k, v in tensors.items()}
        fast_hyper = {k: tuple(x.item() for x in v) for k, v in pure_hyper.items()}
    elif form == "per_weight_lr":
        # a learning rate per weight (the "weight" granularity), the rest per-group floats
        lr = tensors["lr"]
        pure_hyper = {k: tuple(v.clone() * (1.0 if i < 2 else 0.5) for i in range(n)) for k, v in tensors.items()}
        pure_hyper["lr"] = tuple(lr * torch.exp(torch.randn_like(w)) for w in start)
        fast_hyper = {k: v if k == "lr" else tuple(x.item() for x in v) for k, v in pure_hyper.items()}
    else:
        # one value per weight tensor, different between tensors
        scale = (1.0, 0.5, 2.0)
        pure_hyper = {k: tuple(v * s if k == "lr" else v.clone() for s in scale) for k, v in tensors.items()}
        fast_hyper = pure_hyper
    weights, state = start, rule.init(start)
    fast_weights = tuple(w.clone() for w in start)
    fast_state = rule.init(fast_weights)
    ids = [id(w) for w in fast_weights]
    for _ in range(20):
        grads = tuple(torch.randn_like(w) for w in start)
        saved_grads = tuple(g.clone() for g in grads)
        weights, state = rule.update(weights, state, grads, pure_hyper)
        fast_state = rule.update_in_place(fast_weights, fast_state, grads, fast_hyper)
        for g, s in zip(grads, saved_grads):
            assert torch.equal(g, s)       # the gradients are inputs, not scratch space
    assert [id(w) for w in fast_weights] == ids
    assert n == len(weights)
    for a, b in zip(fast_weights, weights):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert not torch.equal(fast_weights[0], start[0])
    for a, b in zip(_flat(fast_state), _flat(state)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_sgd_in_place_without_momentum_or_decay():
    rule = get_rule("sgd")
    weights = (torch.ones(3, dtype=DTYPE),)
    grads = (torch.full((3,), 2.0, dtype=DTYPE),)
    state = rule.update_in_place(weights, rule.init(weights), grads, {"lr": 0.25})
    assert torch.equal(weights[0], torch.full((3,), 0.5, dtype=DTYPE))
    assert torch.equal(grads[0], torch.full((3,), 2.0, dtype=DTYPE))
    assert torch.equal(state["momentum_buffer"][0], torch.full((3,), 2.0, dtype=DTYPE))
