"""A population of P runs trained as one computation equals P single runs."""
import math

import pytest
import torch

import onepass
from onepass.models import MLP, PopulationMLP, member_mse

P, STEPS = 4, 40
METHODS = {
    "fixed": dict(tune=()),
    "neumann": dict(method="neumann", tune=("lr", "momentum", "weight_decay")),
    "neumann_per_weight_lr": dict(method="neumann", tune=("lr", "momentum", "weight_decay"),
                                  granularity={"lr": "weight"}),
    "unroll": dict(method="unroll", tune=("lr", "momentum", "weight_decay")),
    "cg": dict(method="cg", tune=("lr", "momentum", "weight_decay")),
    "baydin": dict(method="baydin", tune=("lr",)),
    "baydin_exact": dict(method="baydin_exact", tune=("lr",)),
    "adam_neumann_per_tensor": dict(rule="adam", method="neumann", tune=("lr", "weight_decay"),
                                    granularity={"lr": "tensor"}),
    "adamw_unroll": dict(rule="adamw", method="unroll", tune=("lr", "weight_decay")),
}


def _starts_for(starts, options):
    """The SGD starting values, less momentum for Adam's rules."""
    if options.get("rule", "sgd").startswith("adam"):
        return {k: v for k, v in starts.items() if k != "momentum"}
    return starts


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True))
    xv = torch.randn(15, 5, generator=g, dtype=torch.float64)
    yv = torch.sin(xv.sum(1, keepdim=True))
    starts = dict(lr=[0.05, 0.01, 0.2, 1e-3], momentum=[0.5, 0.9, 0.1, 0.7],
                  weight_decay=[1e-4, 1e-6, 1e-3, 1e-5])
    models = []
    for m in range(P):
        torch.manual_seed(m)
        models.append(MLP(5, (7,)).double())
    return (x, y), (xv, yv), starts, models


@pytest.mark.parametrize("name", METHODS)
def test_members_equal_single_runs(problem, name):
    batch, val_batch, starts, models = problem
    options = METHODS[name]
    starts = _starts_for(starts, options)
    population = PopulationMLP.from_models(models)
    pop_tuner = onepass.Tuner(population, member_mse, hyperparameters=starts, population=P, **options)
    for _ in range(STEPS):
        pop_tuner.step(batch, val_batch)
    for m, model in enumerate(models):
        single = onepass.Tuner(model, torch.nn.functional.mse_loss,
                               hyperparameters={k: v[m] for k, v in starts.items()}, **options)
        for _ in range(STEPS):
            single.step(batch, val_batch)
        member = population.member(m)
        for a, b in zip(member.parameters(), model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        for key, value in single.hyperparameters.items():
            pop_value = pop_tuner.hyperparameters[key]
            if isinstance(value, float):
                assert pop_value[m] == pytest.approx(value, rel=1e-9)
            elif isinstance(value[0], float):  # per tensor: one list of members per tensor
                assert [v[m] for v in pop_value] == pytest.approx(value, rel=1e-9)
            else:  # per weight: list of tensors, member m is slice m of each
                for a, b in zip(PopulationMLP.to_member_layout(pop_value, m), value):
                    torch.testing.assert_close(a, b, rtol=1e-9, atol=0)
    assert not pop_tuner.diverged.any()


DIVERGED_CASES = [(method, False) for method in ("neumann", "unroll", "baydin", "baydin_exact")]
# Compiled: each compiled function with a frozen member; baydin's only compiled function,
# the gradient, is in all three.
DIVERGED_CASES += [(method, True) for method in ("neumann", "unroll", "baydin_exact")]


@pytest.mark.parametrize("method, compile", DIVERGED_CASES)
def test_diverged_member_is_frozen_and_others_go_on(problem, compile, method):
    batch, val_batch, starts, models = problem
    starts = dict(starts, lr=[0.05, 0.01, 50.0, 1e-3])   # member 2 blows up
    population = PopulationMLP.from_models(models)
    tuner = onepass.Tuner(population, member_mse, hyperparameters=starts, population=P,
                          tune=("lr",) if method.startswith("baydin") else ("lr", "momentum", "weight_decay"),
                          lr_bounds=(1e-10, 100.0), method=method, compile=compile)
    frozen_at = None
    for step in range(STEPS):
        tuner.step(batch, val_batch)
        if tuner.diverged[2] and frozen_at is None:
            frozen_at = ([w[2].clone() for w in population.parameters()], tuner.hyperparameters["lr"][2])
    assert tuner.diverged.tolist() == [False, False, True, False]
    weights, lr = frozen_at
    for w, w_frozen in zip(population.parameters(), weights):
        assert torch.equal(w[2], w_frozen)
    assert tuner.hyperparameters["lr"][2] == lr
    # the healthy members are exactly what they would have been alone
    single = onepass.Tuner(models[0], torch.nn.functional.mse_loss,
                           hyperparameters={k: v[0] for k, v in starts.items()}, lr_bounds=(1e-10, 100.0),
                           method=method, tune=tuner.tuned)
    for _ in range(STEPS):
        single.step(batch, val_batch)
    for a, b in zip(population.member(0).parameters(), models[0].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert all(math.isfinite(v) for m, v in enumerate(tuner.hyperparameters["lr"]) if m != 2)


def test_population_shape_errors():
    model = MLP(3)
    with pytest.raises(ValueError, match="leading dimension of 4"):
        onepass.Tuner(model, member_mse, hyperparameters=dict(lr=0.1), population=4)
    population = PopulationMLP(4, 3)
    with pytest.raises(ValueError, match="population=3"):
        onepass.Tuner(population, member_mse, hyperparameters=dict(lr=[0.1, 0.2, 0.3]), population=4)


def test_member_round_trip():
    torch.manual_seed(0)
    models = [MLP(3, (4, 6), 2) for _ in range(3)]
    population = PopulationMLP.from_models(models)
    x = torch.randn(9, 3)
    out = population(x)
    for m, model in enumerate(models):
        torch.testing.assert_close(out[m], model(x))
        torch.testing.assert_close(population(x.expand(3, 9, 3))[m], model(x))
        for a, b in zip(population.member(m).parameters(), model.parameters()):
            assert torch.equal(a, b)


# The functions compile=True compiles: the undifferentiated steps' gradient (every
# method), Neumann's and CG's hyperstep, the replayed unrolled window and
# baydin_exact's hypergradient. test_diverged_member_is_frozen_and_others_go_on
# [compile=True] compares SGD runs of neumann, unroll (5 of 10 updates) and
# baydin_exact, compiled, with eager single runs; these three cover the rest: CG,
# both Adam rules, per-tensor and per-weight rates and a window unrolled whole.
COMPILED_AGAINST_EAGER = {
    "adam_neumann_per_tensor": METHODS["adam_neumann_per_tensor"],
    "cg_per_weight_lr": dict(METHODS["cg"], granularity={"lr": "weight"}),
    # the whole window unrolled (no plain step before the replay), in a short window: the
    # compile time grows with the updates replayed (10 of 10 took 4x the others)
    "adamw_unroll_whole_window": dict(METHODS["adamw_unroll"], update_interval=4, unroll_steps=4),
}


@pytest.mark.parametrize("name", COMPILED_AGAINST_EAGER)
def test_compiled_gradients_agree_with_eager_ones(problem, name):
    """``compile=True`` (torch.compile of the undifferentiated steps' gradient,
    of the hyperstep and of the replayed unrolled window) gives the same
    population run as the eager path, to rounding."""
    batch, val_batch, starts, models = problem
    options = COMPILED_AGAINST_EAGER[name]
    runs = []
    for compile in (False, True):
        population = PopulationMLP.from_models(models)
        tuner = onepass.Tuner(population, member_mse, hyperparameters=_starts_for(starts, options),
                              population=P, compile=compile, **options)
        for _ in range(25):
            tuner.step(batch, val_batch)
        runs.append((list(population.parameters()), _flat(tuner.hyperparameters["lr"])))
    (eager, eager_lr), (compiled, compiled_lr) = runs
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(compiled_lr, eager_lr, rtol=1e-10, atol=0)


def test_compiled_unroll_refuses_hyperparameter_changes_inside_a_window(problem):
    batch, val_batch, starts, models = problem
    tuner = onepass.Tuner(PopulationMLP.from_models(models), member_mse, hyperparameters=starts,
                          population=P, compile=True, **METHODS["unroll"])
    for _ in range(10):
        tuner.step(batch, val_batch)
    tuner.set_hyperparameters(lr=0.01)            # between windows
    for _ in range(6):                            # inside the unrolled half of the next window
        tuner.step(batch, val_batch)
    with pytest.raises(RuntimeError, match="between windows"):
        tuner.set_hyperparameters(lr=0.02)


def _flat(value) -> torch.Tensor:
    if isinstance(value[0], torch.Tensor):
        return torch.cat([v.reshape(-1) for v in value])
    return torch.tensor(value, dtype=torch.float64)
