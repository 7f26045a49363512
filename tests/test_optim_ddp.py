"""``onepass.optim`` under DistributedDataParallel: two gloo ranks on CPU, float64.

Each training case runs twice: on 2 ranks, each on its half of every batch and
of the validation set, and in one process on the whole batches. The loop is
the documented one: the differentiated update runs through
``ddp_model.module``, ``val_loss`` uses the unwrapped module, and
``clip_grad_norm_`` runs before every ``step()`` at a threshold that clips some
updates (plain and differentiated) and not others. The ranks must hold
bit-identical weights and hyperparameters, equal to the single process's to
1e-10, and the hyperparameters must have moved.

The refusals (ranks that build the optimizer differently, a DDP model with a
trainable parameter the optimizer lacks, a sharded parameter) must each be one
clear ``ValueError``.

Starting two processes costs more than what they run, so one spawn (a
module-scoped fixture) runs every two-rank scenario in turn on one process
group; each rank writes what it got to a file per scenario, and the tests
assert in the parent. Children's code lives at module level so that spawn can
pickle it.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import onepass.optim
from onepass.optim.optimizer import CREATE_GRAPH_WARNING
from onepass.optim.recipe import RECIPES

# onepass.optim silences this torch warning at import (its hook leaves no cycle); pytest resets filters per test
pytestmark = pytest.mark.filterwarnings(f"ignore:{CREATE_GRAPH_WARNING}:UserWarning")

WORLD = 2
STEPS, BATCH, INTERVAL = 16, 16, 4
DTYPE = torch.float64

# name -> (optimizer class, its arguments, clip threshold). The thresholds sit
# inside the range of the gradient norms of the differentiated updates, so
# some of those are clipped and some are not (the plain updates likewise);
# the test asserts it.
CASES = {
    "sgd_neumann": ("SGD", dict(lr=0.05, momentum=0.5, weight_decay=1e-3,
                                tune=("lr", "momentum", "weight_decay"), method="neumann"), 0.55),
    "adam_neumann": ("Adam", dict(lr=0.01, weight_decay=1e-3, tune=("lr", "weight_decay"),
                                  method="neumann"), 0.58),
    # unroll_steps=3 of an update_interval of 4: two differentiated updates in a row
    "sgd_unroll": ("SGD", dict(lr=0.05, momentum=0.5, weight_decay=1e-3,
                               tune=("lr", "momentum", "weight_decay"), method="unroll", unroll_steps=3),
                   0.55),
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return model.to(DTYPE)


def _data():
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(n, d, generator=g, dtype=DTYPE) for n, d in ((64, 4), (64, 1), (32, 4), (32, 1)))


def train(case: str, rank: int = 0, world: int = 1) -> dict:
    """The loop of the docs; with ``world > 1`` (process group initialised) each
    rank takes its shard of every batch and of the validation set."""
    name, kwargs, max_norm = CASES[case]
    x, y, x_val, y_val = _data()
    model = _model()
    net = DistributedDataParallel(model) if world > 1 else model
    loss_fn = torch.nn.functional.mse_loss
    val = slice(rank * len(x_val) // world, (rank + 1) * len(x_val) // world)
    opt = getattr(onepass.optim, name)(model.parameters(), update_interval=INTERVAL, model=net,
                                       val_loss=lambda: loss_fn(model(x_val[val]), y_val[val]), **kwargs)
    norms = []
    for t in range(STEPS):
        start = (t * BATCH) % len(x)
        shard = slice(start + rank * BATCH // world, start + (rank + 1) * BATCH // world)
        opt.zero_grad()
        graph = opt.needs_graph
        forward = model if graph else net        # the differentiated update: the unwrapped module
        loss_fn(forward(x[shard]), y[shard]).backward(create_graph=graph)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)   # the norm before clipping
        norms.append((graph, float(norm)))
        opt.step()
    return {"weights": [p.detach().clone() for p in model.parameters()], "hyper": opt.hyperparameters,
            "norms": norms}


# ------------------------------------------------------------------ the two ranks

def _build_with_rank_dependent_interval(rank: int) -> None:
    model = _model()
    onepass.optim.SGD(model.parameters(), lr=0.1, update_interval=4 + rank,
                      val_loss=lambda: model(torch.zeros(1, 4, dtype=DTYPE)).sum())


def _build_ddp_missing_a_parameter(rank: int) -> None:
    model = _model()
    net = DistributedDataParallel(model)
    onepass.optim.Adam(model[2].parameters(), lr=0.01, model=net)   # model[0] is trainable but left out


def _differentiate_through_the_wrapper(rank: int) -> None:
    """The mistake the docs warn of: the differentiated update through DDP itself."""
    x, y, x_val, y_val = _data()
    model = _model()
    net = DistributedDataParallel(model)
    opt = onepass.optim.SGD(model.parameters(), lr=0.05, momentum=0.5, update_interval=1, model=net,
                            val_loss=lambda: torch.nn.functional.mse_loss(model(x_val), y_val))
    shard = slice(rank * 8, rank * 8 + 8)
    torch.nn.functional.mse_loss(net(x[shard]), y[shard]).backward(create_graph=opt.needs_graph)
    opt.step()


REFUSALS = {"disagree": _build_with_rank_dependent_interval, "missing_param": _build_ddp_missing_a_parameter,
            "through_wrapper": _differentiate_through_the_wrapper}


def _refusal(out: Path, scenario: str, rank: int) -> None:
    """Write what building raised (or that it raised nothing) for the parent."""
    try:
        REFUSALS[scenario](rank)
        got = {"type": None, "message": ""}
    except Exception as error:   # noqa: BLE001 - the parent checks the type
        got = {"type": type(error).__name__, "message": str(error)}
    (out / f"{scenario}_rank{rank}.json").write_text(json.dumps(got))


def _rank(rank: int, world: int, port: int, out: str) -> None:
    """Every two-rank scenario in turn, on one process group."""
    torch.set_num_threads(1)
    for table in RECIPES.values():   # as tests/conftest.py: no schedule that depends on the clock
        table["settings"]["cost_budget"] = None
    out = Path(out)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        for scenario in REFUSALS:
            _refusal(out, scenario, rank)
        for case in CASES:
            torch.save(train(case, rank, world), out / f"{case}_rank{rank}.pt")
    except BaseException:
        (out / f"failed_rank{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """The folder where the two ranks left their results."""
    out = tmp_path_factory.mktemp("ddp")
    try:
        mp.spawn(_rank, args=(WORLD, free_port(), str(out)), nprocs=WORLD, join=True)
    except Exception:   # noqa: BLE001 - each test reports the failure that concerns it
        pass
    return out


def _results(out: Path, scenario: str, suffix: str) -> list:
    results = []
    for rank in range(WORLD):
        path = out / f"{scenario}_rank{rank}.{suffix}"
        if not path.exists():
            failures = "\n".join(p.read_text() for p in sorted(out.glob("failed_rank*.txt")))
            pytest.fail(f"rank {rank} left no result for {scenario}:\n{failures}")
        results.append(torch.load(path) if suffix == "pt" else json.loads(path.read_text()))
    return results


# ------------------------------------------------------------------ training

@pytest.mark.parametrize("case", list(CASES))
def test_ranks_agree_and_equal_one_process(case, two_ranks):
    a, b = _results(two_ranks, case, "pt")
    single = train(case)
    name, kwargs, max_norm = CASES[case]

    # clipping happened, on the differentiated updates as well as the plain ones, but not always
    graph_norms = [n for g, n in single["norms"] if g]
    plain_norms = [n for g, n in single["norms"] if not g]
    assert any(n > max_norm for n in graph_norms), graph_norms
    assert any(n > max_norm for n in plain_norms), plain_norms
    assert any(n < max_norm for n in graph_norms + plain_norms), single["norms"]
    # DDP all-reduced the plain updates' gradients: both ranks clipped by the global norm
    for rank in (a, b):
        assert [g for g, _ in rank["norms"]] == [g for g, _ in single["norms"]]
        for (g, n), (_, n1) in zip(rank["norms"], single["norms"]):
            if not g:
                assert n == pytest.approx(n1, rel=1e-10, abs=1e-12)

    # the ranks agree bit for bit
    assert all(torch.equal(p, q) for p, q in zip(a["weights"], b["weights"]))
    assert a["hyper"] == b["hyper"]

    # and equal the single process on the concatenated batches
    assert a["hyper"].keys() == single["hyper"].keys()
    for key, value in single["hyper"].items():
        assert a["hyper"][key] == pytest.approx(value, rel=1e-10, abs=1e-12), key
    for p, q in zip(a["weights"], single["weights"]):
        assert float((p - q).abs().max()) <= 1e-10

    # the tuned hyperparameters moved
    for tuned in kwargs["tune"]:
        start = kwargs[tuned]
        assert abs(a["hyper"][f"{tuned}/group0"] - start) > 1e-3 * start, (tuned, a["hyper"])


# ------------------------------------------------------------------ refusals

def test_ranks_that_disagree_on_update_interval_all_raise(two_ranks):
    for rank, got in enumerate(_results(two_ranks, "disagree", "json")):
        other = 1 - rank
        assert got["type"] == "ValueError", got
        assert re.fullmatch(rf"ranks disagree on update_interval: this rank has {4 + rank}, rank {other} has "
                            rf"{4 + other}; every rank must build the optimizer alike", got["message"]), got


def test_ddp_model_with_a_parameter_missing_from_the_optimizer_is_refused(two_ranks):
    for got in _results(two_ranks, "missing_param", "json"):
        assert got["type"] == "ValueError", got
        assert re.fullmatch(r"model parameter module\.0\.weight requires grad but is not in the optimizer "
                            r"\(2 such\): give the optimizer every trainable parameter, or freeze them",
                            got["message"]), got


def test_a_differentiated_update_through_the_ddp_wrapper_is_refused_on_every_rank(two_ranks):
    """Every rank raises the same line (no rank left waiting in a collective)."""
    for got in _results(two_ranks, "through_wrapper", "json"):
        assert got["type"] == "ValueError", got
        assert "run the update where optimizer.needs_graph is True through ddp_model.module" in got["message"]
        assert "\n" not in got["message"]


def test_model_with_frozen_parameters_left_out_is_accepted():
    """The counterpart of the refusal: frozen parameters need not be in the optimizer."""
    model = _model()
    for p in model[0].parameters():
        p.requires_grad_(False)
    onepass.optim.SGD(model[2].parameters(), lr=0.1, model=model)


def test_fsdp_flat_parameter_is_refused():
    params = list(_model().parameters())
    params[1]._is_flat_param = True
    with pytest.raises(ValueError, match=r"^onepass\.optim does not support sharded parameters \(FSDP or "
                                         r"DTensor\); use DistributedDataParallel$"):
        onepass.optim.SGD(params, lr=0.1)
