"""The cost budget (``cost_budget``): the hyperparameter step's interval is
chosen once from the run's own timings, then fixed, checkpointed, and the same
on every rank.

A fake clock makes every choice deterministic: the loop advances it by a
plain update's cost before each update, and by the extra cost of a
hyperparameter step before the update that closes a window. The real clock
only appears where the budget is so generous that no timing could change it.
"""
from __future__ import annotations

import datetime
import math
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.functional import mse_loss

import onepass
import onepass.optim
from onepass.core.rules import RULES
from onepass.core.budget import CostBudget
from onepass.models.mlp import MLP
from onepass.optim.optimizer import CREATE_GRAPH_WARNING
from onepass.optim.recipe import recipe

pytestmark = pytest.mark.filterwarnings(f"ignore:{CREATE_GRAPH_WARNING}:UserWarning")

DOUBLE = torch.float64


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self):
        self.now, self.reads = 0.0, 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to(DOUBLE)


def batch(t: int, size: int = 16):
    g = torch.Generator().manual_seed(1000 + t)
    return torch.randn(size, 4, generator=g, dtype=DOUBLE), torch.randn(size, 1, generator=g, dtype=DOUBLE)


XV, YV = batch(-1, 32)


def budgeted(ratio: float, clock: FakeClock) -> CostBudget:
    """No margin: the interval planned for the budget itself, easy arithmetic."""
    return CostBudget(ratio, clock=clock, windows=3, margin=0.0)


def train_optimizer(model, opt, steps, clock=None, plain=1.0, extra=9.0, start=0):
    """The documented loop; the fake clock charges ``plain`` per update and
    ``extra`` more for the update that takes the hyperparameter step (the one
    that closes a window)."""
    closing, tuner = [], opt.tuner
    for t in range(start, start + steps):
        x, y = batch(t)
        opt.zero_grad()
        closes = tuner.position(tuner.steps_taken + 1) == tuner.update_interval
        if clock is not None:
            clock.now += plain + (extra if closes else 0.0)
        mse_loss(model(x), y).backward(create_graph=opt.needs_graph)
        opt.step()
        closing.append(closes)
    return closing


def train_tuner(tuner, steps, clock=None, plain=1.0, extra=9.0):
    closing = []
    for t in range(steps):
        closes = tuner.position(tuner.steps_taken + 1) == tuner.update_interval
        if clock is not None:
            clock.now += plain + (extra if closes else 0.0)
        result = tuner.step(batch(t), (XV, YV))
        assert (result.val_loss is not None) == closes
        closing.append(closes)
    return closing


def hyperstep_updates(closing) -> list[int]:
    return [t + 1 for t, c in enumerate(closing) if c]


def same_tensors(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a, b))


# ------------------------------------------------------------------ the choice

def test_the_choice_is_the_shortest_interval_that_keeps_the_budget():
    clock = FakeClock()
    budget = CostBudget(1.5, clock=clock, margin=0.0)
    budget.plain, budget.closing = [1.0, 1.0, 5.0], [10.0, 10.0, 10.0]   # medians: 1 and 10, extra 9
    assert budget.choose(4) == 18            # (18 + 9) / 18 = 1.5
    # the default margin leaves a tenth of the extra 0.5 unplanned: ceil(9 / 0.45) = 20, 1.45
    default = CostBudget(1.5, clock=clock)
    default.plain, default.closing = budget.plain, budget.closing
    assert default.margin == 0.1 and default.planned == pytest.approx(1.45) and default.choose(4) == 20
    assert CostBudget(1.5, margin=0.5).planned == 1.25
    assert budget.choose(20) == 20           # already within: never below the interval asked for
    # the update after a closing one, slowed by it (a graph to free), counts; a burst does not
    budget.first = [5.0, 5.0, 40.0]
    assert budget.choose(4) == 26            # extra 9 + 4 = 13: (26 + 13) / 26 = 1.5
    assert budget.costs() == (1.0, 13.0) and budget.estimate(26) == 1.5 and budget.estimate(13) == 2.0
    assert CostBudget(2.0).choose(4) == 4    # no samples: nothing to go on
    budget.first, budget.plain, budget.closing = [], [1.0], [0.5]   # a closing update cheaper than a plain one
    assert budget.choose(3) == 3
    for ratio in (1.0, 0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"^cost_budget must be a ratio > 1"):
            CostBudget(ratio)
    for margin in (-0.1, 1.0, math.nan):
        with pytest.raises(ValueError, match=r"^margin must be in \[0, 1\)"):
            CostBudget(1.5, margin=margin)


def test_the_tuner_measures_then_catches_up_then_keeps_to_its_choice():
    clock, syncs = FakeClock(), []
    tuner = onepass.Tuner(make_model(), mse_loss, hyperparameters=dict(lr=0.05, momentum=0.5),
                          update_interval=4, neumann_terms=3, cost_budget=budgeted(1.5, clock))
    tuner.cost_budget.sync = lambda: syncs.append(tuner.steps_taken)
    intervals, hyper_lrs = [], []
    closing = []
    for t in range(120):
        closing += train_tuner(tuner, 1, clock)
        intervals.append(tuner.update_interval)
        hyper_lrs.append(tuner.state_dict()["hyper_optimizer"]["param_groups"][0]["lr"])
    # window 0 (updates 1-4) is not timed; window 1 (5-8) is, and from its samples (plain 1, extra 9:
    # 9 / 0.5 = 18) the measured windows 2 and 3 are 18 long (9-26, 27-44). They and the first two
    # spent 4 × 9 extra over 44 updates, 14 more than 44 × 0.5: the catch-up window (45-90) is
    # 46 long, 46 × 0.5 - 9 = 14 back; then 18 for good
    assert hyperstep_updates(closing) == [4, 8, 26, 44, 90, 108]
    assert intervals[7] == 18 and intervals[43] == 46 and intervals[89] == 18 == tuner.update_interval
    assert tuner.cost_budget.chosen == 18
    # the run so far keeps the budget at every hyperparameter step from the catch-up's end on
    for end in (90, 108):
        spent = end + 9 * sum(1 for u in hyperstep_updates(closing) if u <= end)
        assert spent <= 1.5 * end
    assert tuner.cost_budget.first == [1.0] * 3 and tuner.cost_budget.plain == [1.0] * 34
    assert tuner.cost_budget.closing == [10.0] * 3
    # the clock (and the device synchronisation) only while measuring: from update 4 to 44
    assert clock.reads == 41 and syncs == list(range(4, 45))
    state = tuner.state_dict()
    assert state["update_interval"] == 18 and state["cost_budget"]["chosen"] == 18
    # the hyper-step grows with the window (18 / 4): as far per weight update as before
    asked = onepass.Tuner(make_model(), mse_loss, hyperparameters=dict(lr=0.05, momentum=0.5), update_interval=4)
    hyper_lr = asked.state_dict()["hyper_optimizer"]["param_groups"][0]["lr"]
    assert state["hyper_optimizer"]["param_groups"][0]["lr"] == pytest.approx(hyper_lr * 18 / 4)
    # ... from the end of update 8 on (windows of 18 follow); the catch-up window of 46 takes the
    # same step, not 46 / 4
    assert hyper_lrs[:7] == [hyper_lr] * 7
    assert hyper_lrs[7:] == pytest.approx([hyper_lr * 18 / 4] * 113)


def test_the_catch_up_wins_back_what_the_measurement_overspent():
    """The budget's own arithmetic: no catch-up where the windows kept the plan."""
    budget = CostBudget(1.5, margin=0.0)
    budget.plain, budget.closing, budget.first = [1.0] * 5, [10.0] * 3, [1.0] * 3   # extra 9
    budget.closed, budget.updates = 4, 44
    assert budget.catch_up_length(18) == 46            # (4 × 9 - 44 × 0.5 + 9) / 0.5
    budget.updates = 4 * 18                            # every window as long as the choice: nothing to win back
    assert budget.catch_up_length(18) == 18
    budget.updates = 200
    assert budget.catch_up_length(18) == 18
    assert CostBudget(1.5).catch_up_length(7) == 7     # no samples


def test_a_cheap_hyperstep_keeps_the_interval_and_tune_after_shifts_the_windows():
    clock = FakeClock()
    tuner = onepass.Tuner(make_model(), mse_loss, hyperparameters=dict(lr=0.05), update_interval=4,
                          tune_after=3, cost_budget=budgeted(1.5, clock))
    closing = train_tuner(tuner, 40, clock, plain=1.0, extra=1.5)   # (4 + 1.5) / 4 ≤ 1.5
    assert hyperstep_updates(closing) == list(range(7, 41, 4))
    assert tuner.cost_budget.chosen == 4 and tuner.update_interval == 4


def assert_same_choice_and_run(a, opt, clock_a, b, tuner, clock_b, tolerance):
    """60 updates each under fake clocks (a hyperparameter step costs 5 extra):
    the optimizer and the Tuner take their steps at the same updates, choose
    an interval of 10 and end with the same weights and learned lr."""
    closing_a = train_optimizer(a, opt, 60, clock_a, extra=5.0)
    closing_b = train_tuner(tuner, 60, clock_b, extra=5.0)
    assert closing_a == closing_b
    # extra 5 / (1 × 0.5) = 10 from window 1 on; a catch-up of (4 × 5 - 28 × 0.5 + 5) / 0.5 = 22
    assert hyperstep_updates(closing_a) == [4, 8, 18, 28, 50, 60]
    assert opt.hyperparameters["interval"] == 10.0 == tuner.update_interval
    assert max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters())) < tolerance
    assert opt.tuner.hyperparameters["lr"] == pytest.approx(tuner.hyperparameters["lr"], rel=tolerance)


def test_the_optimizer_and_the_tuner_make_the_same_choice_and_the_same_run():
    a, b = make_model(), make_model()
    clock_a, clock_b = FakeClock(), FakeClock()
    settings = dict(tune=("lr", "momentum"), update_interval=4, neumann_terms=3)
    opt = onepass.optim.SGD(a.parameters(), lr=0.05, momentum=0.5, val_loss=lambda: mse_loss(a(XV), YV),
                            cost_budget=budgeted(1.5, clock_a), **settings)
    tuner = onepass.Tuner(b, mse_loss, hyperparameters=dict(lr=0.05, momentum=0.5, weight_decay=0.0),
                          cost_budget=budgeted(1.5, clock_b), **settings)
    assert_same_choice_and_run(a, opt, clock_a, b, tuner, clock_b, 1e-10)


@pytest.mark.parametrize("granularity", ["scalar", "tensor"])
@pytest.mark.parametrize("method", ["neumann", "cg", "unroll"])
@pytest.mark.parametrize("rule", ["sgd", "adam", "adamw"])
def test_every_rule_method_and_granularity_the_budget_serves_chooses_and_trains_as_the_tuner(
        rule, method, granularity):
    """Each update rule × each method the budget accepts × a scalar or per-tensor
    lr: the optimizer and the Tuner choose the same intervals (the catch-up
    included) under the same fake clock and end with the same weights and
    learned lr. ``"unroll"`` differentiates through the closing update only, so
    the fake clock charges the same update as for the other methods."""
    a, b = make_model(), make_model()
    clock_a, clock_b = FakeClock(), FakeClock()
    settings = dict(tune=("lr",), update_interval=4, neumann_terms=3, unroll_steps=1, method=method,
                    granularity={"lr": granularity})
    cls = {"sgd": onepass.optim.SGD, "adam": onepass.optim.Adam, "adamw": onepass.optim.AdamW}[rule]
    opt = cls(a.parameters(), lr=0.01, val_loss=lambda: mse_loss(a(XV), YV),
              cost_budget=budgeted(1.5, clock_a), **settings)
    values = {**RULES[rule].defaults, "lr": 0.01}
    tuner = onepass.Tuner(b, mse_loss, rule=rule, hyperparameters=values,
                          cost_budget=budgeted(1.5, clock_b), **settings)
    assert_same_choice_and_run(a, opt, clock_a, b, tuner, clock_b, 1e-6)


def test_the_recipe_sets_the_default_budget_and_none_turns_it_off():
    assert recipe("adamw")["settings"]["cost_budget"] == recipe("sgd")["settings"]["cost_budget"] == 1.5
    model = make_model()
    default = onepass.optim.AdamW(model.parameters()).tuner.cost_budget
    assert default.ratio == 1.5 and default.planned == pytest.approx(1.45)
    assert onepass.optim.AdamW(model.parameters(), cost_budget=1.5).tuner.cost_budget.ratio == 1.5
    assert onepass.optim.AdamW(model.parameters(), cost_budget=None).tuner.cost_budget is None
    assert onepass.optim.SGD(model.parameters(), cost_budget=3).tuner.cost_budget.ratio == 3.0
    assert "interval" not in onepass.optim.SGD(model.parameters(), tune=()).hyperparameters   # nothing tuned
    # a hyperparameter step every update has no interval to choose
    assert onepass.optim.SGD(model.parameters(), method="baydin").tuner.cost_budget is None
    with pytest.raises(ValueError, match=r"^cost_budget needs windows of updates: 'baydin' has a fixed"):
        onepass.Tuner(model, mse_loss, hyperparameters=dict(lr=0.1), method="baydin", cost_budget=1.5)
    with pytest.raises(ValueError, match=r"^cost_budget must be a ratio > 1"):
        onepass.optim.SGD(model.parameters(), cost_budget=1.0)


# ------------------------------------------------------------------ today's runs unchanged

def _uci_mlp_run(cost_budget, steps=200):
    """The recipe (AdamW) on the paper's UCI MLP, 8→50→1, on Energy-sized data."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(614, 8, generator=g), torch.randn(614, 1, generator=g)
    xv, yv = torch.randn(78, 8, generator=g), torch.randn(78, 1, generator=g)
    torch.manual_seed(0)
    model = MLP(8, [50], 1)
    opt = onepass.optim.AdamW(model.parameters(), val_loss=lambda: mse_loss(model(xv), yv),
                              cost_budget=cost_budget)
    clock = cost_budget.clock if isinstance(cost_budget, CostBudget) else None
    # what the recipe's loop costs there (this machine, 2026-12-06): 0.65 ms a plain
    # update, 6.3 ms the one with the hyperparameter step, 1.44x over a window of 20
    for _ in range(steps):
        opt.zero_grad()
        graph = opt.needs_graph
        if isinstance(clock, FakeClock):
            clock.now += 0.65e-3 + (5.65e-3 if graph else 0.0)
        mse_loss(model(x), y).backward(create_graph=graph)
        opt.step()
    return [p.detach().clone() for p in model.parameters()], opt.hyperparameters


def test_on_the_uci_mlp_a_budget_of_1_5_keeps_todays_interval_and_values():
    today, today_hyper = _uci_mlp_run(None)
    budget = CostBudget(1.5, clock=FakeClock())
    weights, hyper = _uci_mlp_run(budget)
    assert budget.chosen == 20 == recipe("adamw")["settings"]["update_interval"]
    assert same_tensors(weights, today)
    assert hyper == today_hyper
    assert hyper["lr/group0"] != 1e-3   # it tuned


def test_a_generous_budget_on_the_real_clock_is_todays_run_bit_for_bit():
    today, today_hyper = _uci_mlp_run(None, steps=120)
    weights, hyper = _uci_mlp_run(1000.0, steps=120)
    assert same_tensors(weights, today)
    assert hyper == today_hyper and hyper["interval"] == 20.0


# ------------------------------------------------------------------ checkpoints

@pytest.mark.parametrize("resume_at", [8, 30, 60, 100])   # measuring, provisional, catching up, chosen
def test_resume_from_state_dict_equals_the_uninterrupted_run(resume_at):
    def build(model, clock):
        return onepass.optim.Adam(model.parameters(), lr=0.01, tune=("lr", "weight_decay"), weight_decay=1e-3,
                                  update_interval=4, neumann_terms=3, cost_budget=budgeted(1.5, clock),
                                  val_loss=lambda: mse_loss(model(XV), YV))
    whole, clock = make_model(), FakeClock()
    opt = build(whole, clock)
    closing = train_optimizer(whole, opt, 110, clock)

    first, clock = make_model(), FakeClock()
    opt1 = build(first, clock)
    train_optimizer(first, opt1, resume_at, clock)
    saved_model = {k: v.clone() for k, v in first.state_dict().items()}
    saved_opt = opt1.state_dict()
    resumed, clock = make_model(seed=5), FakeClock()
    resumed.load_state_dict(saved_model)
    opt2 = build(resumed, clock)
    opt2.load_state_dict(saved_opt)
    closing2 = train_optimizer(resumed, opt2, 110 - resume_at, clock, start=resume_at)

    assert hyperstep_updates(closing) == [4, 8, 26, 44, 90, 108]
    assert closing2 == closing[resume_at:]
    assert same_tensors(whole.parameters(), resumed.parameters())
    assert opt.hyperparameters == opt2.hyperparameters


def test_a_state_dict_without_the_budget_goes_on_at_its_fixed_interval():
    """A checkpoint from before the budget (or with none) resumes exactly: no measurement."""
    old, new = make_model(), make_model()
    plain = onepass.Tuner(old, mse_loss, hyperparameters=dict(lr=0.05), update_interval=4)
    train_tuner(plain, 8)
    clock = FakeClock()
    tuner = onepass.Tuner(new, mse_loss, hyperparameters=dict(lr=0.05), update_interval=4,
                          cost_budget=budgeted(1.5, clock))
    new.load_state_dict(old.state_dict())
    tuner.load_state_dict(plain.state_dict())
    assert tuner.cost_budget.chosen == 4
    for t in range(8, 40):
        clock.now += 10.0
        plain.step(batch(t), (XV, YV))
        tuner.step(batch(t), (XV, YV))
    assert clock.reads == 0 and tuner.update_interval == 4
    assert same_tensors(old.parameters(), new.parameters())


# ------------------------------------------------------------------ experiment configs

def test_the_config_key_reaches_the_tuner():
    from onepass.experiment.config import ConfigError, resolve_config
    from onepass.experiment.loop import tuner_from_config
    base = {"dataset": {"name": "energy"}, "algorithm": {"method": "neumann", "tune": ["lr"]}}
    config = resolve_config({**base, "algorithm": {**base["algorithm"], "cost_budget": 2.0}})
    assert config["algorithm"]["cost_budget"] == 2.0
    assert resolve_config(base)["algorithm"]["cost_budget"] is None
    tuner = tuner_from_config(config, make_model(), {"loss_fn": mse_loss})
    assert tuner.cost_budget.ratio == 2.0
    with pytest.raises(ConfigError, match="cost_budget"):
        resolve_config({**base, "algorithm": {**base["algorithm"], "cost_budget": 0.9}})
    with pytest.raises(ConfigError, match="cost_budget"):
        resolve_config({**base, "algorithm": {"method": "baydin", "tune": ["lr"], "cost_budget": 1.5}})


def test_onepass_train_logs_the_chosen_interval_with_the_hyperparameters(uci_data_dir, tmp_path, monkeypatch):
    """``onepass train`` with ``algorithm.cost_budget``: metrics.csv, TensorBoard and
    the run's summary carry ``interval``: the asked-for one, then each the budget sets."""
    import csv

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from onepass.experiment import load_config, run_training

    interval, reads = 4, []

    def clock() -> float:
        # read once per update from the end of the first window (update 4); plain 1, extra 9: window 1
        # (5-8) asks for ceil(9 / (1 × 0.45)) = 20 from then on, so windows close at 8, 28, 48, 68, 88
        update = len(reads) + interval
        reads.append(1.0 + (9.0 if update == 8 or (update > 8 and (update - 8) % 20 == 0) else 0.0))
        return sum(reads)
    monkeypatch.setitem(CostBudget.__init__.__kwdefaults__, "clock", clock)
    config = load_config(["uci_energy", "ours_lr"], ["training.steps=150", "logging.interval=5",
                                                     "logging.tensorboard=true", "algorithm.cost_budget=1.5",
                                                     f"algorithm.update_interval={interval}"])
    summary = run_training(config, tmp_path, data_dir=uci_data_dir, progress=False)
    # the measurement ends at update 88 with 6 × 9 extra over 88 updates, 14.4 over the plan (88 × 0.45):
    # a catch-up window of ceil((14.4 + 9) / 0.45) = 52 (89-140), then 20 for good
    assert summary["status"] == "finished" and summary["hyperparameters"]["interval"] == 20.0
    with (tmp_path / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    expected = [(s, 4.0 if s < 8 else 20.0 if s < 88 else 52.0 if s < 140 else 20.0) for s in range(5, 151, 5)]
    assert [(int(r["step"]), float(r["interval"])) for r in rows] == expected
    assert all(float(r["lr"]) > 0 for r in rows)
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("Hyperparameters/interval")] == \
        [(int(r["step"]), float(r["interval"])) for r in rows]

    # without a budget nothing is added
    plain = run_training(load_config(["uci_energy", "ours_lr"], ["training.steps=10", "logging.tensorboard=false"]),
                         tmp_path / "plain", data_dir=uci_data_dir, progress=False)
    assert "interval" not in plain["hyperparameters"]
    with (tmp_path / "plain" / "metrics.csv").open(newline="") as f:
        assert "interval" not in next(csv.reader(f))


# ------------------------------------------------------------------ data parallel

WORLD, STEPS = 2, 60


def _ddp_train(rank: int, world: int) -> dict:
    """Rank r's fake clock charges a hyperparameter step 5 + 10·r plain updates:
    on its own rank 1 would choose 30, rank 0 chooses 10; both must take 10."""
    model = make_model()
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    clock = FakeClock()
    val = slice(rank * 32 // world, (rank + 1) * 32 // world)
    opt = onepass.optim.SGD(model.parameters(), lr=0.05, momentum=0.5, weight_decay=1e-3,
                            tune=("lr", "momentum", "weight_decay"), update_interval=4, neumann_terms=3,
                            model=net, cost_budget=budgeted(1.5, clock),
                            val_loss=lambda: mse_loss(model(XV[val]), YV[val]))
    closing = []
    for t in range(STEPS):
        x, y = batch(t)
        shard = slice(rank * 16 // world, (rank + 1) * 16 // world)
        opt.zero_grad()
        graph = opt.needs_graph
        clock.now += 1.0 + ((5.0 + 10.0 * rank) if graph else 0.0)
        (model if graph else net)(x[shard]).sub(y[shard]).pow(2).mean().backward(create_graph=graph)
        opt.step()
        closing.append(graph)
    return {"weights": [p.detach().clone() for p in model.parameters()], "hyper": opt.hyperparameters,
            "closing": closing, "own_choice": opt.tuner.cost_budget.choose(4)}


def _ddp_rank(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        torch.save(_ddp_train(rank, world), Path(out) / f"rank{rank}.pt")
    except BaseException:
        (Path(out) / f"failed_rank{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_ranks_take_rank_zeros_choice_and_stay_bit_identical(tmp_path):
    try:
        mp.spawn(_ddp_rank, args=(WORLD, _free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    except Exception:   # noqa: BLE001 - the files say what failed
        pass
    failures = "\n".join(p.read_text() for p in sorted(tmp_path.glob("failed_rank*.txt")))
    assert not failures, failures
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    assert (a["own_choice"], b["own_choice"]) == (10, 30)
    assert a["hyper"]["interval"] == b["hyper"]["interval"] == 10.0
    assert a["closing"] == b["closing"]
    assert hyperstep_updates(a["closing"]) == [4, 8, 18, 28, 50, 60]   # rank 0's, its catch-up too
    assert same_tensors(a["weights"], b["weights"])
    assert a["hyper"] == b["hyper"]
    single = _ddp_train(0, 1)   # one process on the whole batches, rank 0's clock
    assert single["closing"] == a["closing"]
    for p, q in zip(a["weights"], single["weights"]):
        assert float((p - q).abs().max()) <= 1e-10


# ------------------------------------------------------------------ the benchmark

def test_full_size_benchmark_reports_the_chosen_interval_and_the_ratio():
    """benchmarks/full_size.py keeps working (tiny sizes; a budget no timing can move)."""
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "full_size.py"
    spec = importlib.util.spec_from_file_location("full_size", path)
    full_size = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(full_size)
    result = full_size.measure("gru_adding", "cpu", "tiny", windows=1, warmup=1, budget=1000.0)
    assert result["interval"] == result["recipe_interval"] == 20
    assert len(result["update_seconds"]["bare"]) == len(result["update_seconds"]["onepass"]) == 20
    assert math.isfinite(result["ratio"]) and result["ratio"] > 0 and result["budget"] == 1000.0
    assert 1 <= result["budget_estimate"] < 1000
    assert result["hyperparameters"]["interval"] == 20.0
    # the run's start: the first window and 5 measured ones at 20 (no catch-up under such a budget),
    # less the one warm-up update
    assert result["start_updates"] == 119 and math.isfinite(result["start_ratio"]) and result["start_ratio"] > 0
