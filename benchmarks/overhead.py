"""Wall time of the tuner's algorithms as ratios to plain ``torch.optim.SGD``.

The paper's UCI setting: an MLP 8→50→1 (ReLU) on UCI Energy (614 training and
78 validation rows), full batch, 4,000 weight updates, float32. Every algorithm
runs in this one process, each on its own model. Their updates are interleaved
one window (``--chunk``, 10 updates) at a time, in an order that rotates from
window to window, so that a drift in machine speed (a neighbour's load) hits
every algorithm alike; an algorithm's time is the sum over its windows, and
each figure is the median of ``--repeats`` such runs.

Besides the :class:`~onepass.Tuner` rows, ``ours_optim`` is Ours (WD+LR+M)
through the optimizer front end, ``onepass.optim.SGD`` in a plain loop
(``backward(create_graph=opt.needs_graph)``, ``opt.step()``), with the same
settings as the ``ours`` row. The two should cost the same: the script checks
that the optimizer's ratio to SGD is within ``--tolerance`` (5%) of the
Tuner's (the median over runs of optimizer seconds / Tuner seconds), and that
both learned the same hyperparameters.

    python benchmarks/overhead.py [--steps 4000] [--repeats 3] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import onepass
import onepass.optim
from onepass.data import PACKAGED_DATA_DIR, load_uci
from onepass.models import MLP

DEFAULT_DATA = PACKAGED_DATA_DIR  # the UCI copies shipped with onepass
HYPER = dict(lr=1e-3, momentum=0.5, weight_decay=1e-5)

ALGORITHMS = {
    "ours": dict(method="neumann", tune=("lr", "momentum", "weight_decay")),
    "ours_per_weight_lr": dict(method="neumann", tune=("lr", "momentum", "weight_decay"),
                               granularity={"lr": "weight"}),
    "lorraine": dict(method="neumann", tune=("weight_decay",)),
    "diff_through_opt": dict(method="unroll", tune=("lr", "momentum", "weight_decay")),
    "baydin": dict(method="baydin", tune=("lr",)),
}
# Through onepass.optim: name -> the Tuner row with the same settings.
OPTIMIZER_ROWS = {"ours_optim": "ours"}
# The Tuner's defaults (the paper's settings), given to onepass.optim explicitly:
# its own defaults follow onepass.optim.recipe, which may move on.
TUNER_SETTINGS = dict(neumann_terms=5, unroll_steps=5, update_interval=10, tune_after=0, granularity={},
                      hyper_optimizer=None, hyper_lr=None, cost_budget=None)

# A runner: ``(step, learned)``; ``step()`` takes one weight update,
# ``learned()`` gives the learned hyperparameters (None for plain SGD).
Runner = tuple[Callable[[], None], Callable[[], "dict | None"]]


def sgd_runner(data) -> Runner:
    torch.manual_seed(0)
    model = MLP(data.n_inputs)
    optimizer = torch.optim.SGD(model.parameters(), **HYPER)
    x, y = data.x_train, data.y_train

    def step():
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        optimizer.step()
    return step, lambda: None


def tuner_runner(data, **options) -> Runner:
    torch.manual_seed(0)
    model = MLP(data.n_inputs)
    tuner = onepass.Tuner(model, F.mse_loss, hyperparameters=HYPER, **options)
    batch, val_batch = (data.x_train, data.y_train), (data.x_val, data.y_val)
    return (lambda: tuner.step(batch, val_batch)), (lambda: dict(tuner.hyperparameters))


def optimizer_runner(data, **options) -> Runner:
    """``onepass.optim.SGD`` with the Tuner's ``options``, in a plain training loop."""
    torch.manual_seed(0)
    model = MLP(data.n_inputs)
    x, y, x_val, y_val = data.x_train, data.y_train, data.x_val, data.y_val
    optimizer = onepass.optim.SGD(model.parameters(), **HYPER, **{**TUNER_SETTINGS, **options},
                                  val_loss=lambda: F.mse_loss(model(x_val), y_val))

    def step():
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward(create_graph=optimizer.needs_graph)
        optimizer.step()
    return step, lambda: dict(optimizer.tuner.hyperparameters)


def _timed(runner: Runner, steps: int) -> float:
    step, _ = runner
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def time_sgd(data, steps: int) -> float:
    return _timed(sgd_runner(data), steps)


def time_tuner(data, steps: int, **options) -> float:
    return _timed(tuner_runner(data, **options), steps)


def time_optimizer(data, steps: int, **options) -> float:
    return _timed(optimizer_runner(data, **options), steps)


def interleaved(builders: dict[str, Callable[[], Runner]], steps: int, chunk: int):
    """Seconds per runner for ``steps`` updates, taken ``chunk`` updates at a
    time round-robin (the order rotating by one each round); also each
    runner's per-chunk seconds and its learned hyperparameters."""
    runners = {name: build() for name, build in builders.items()}
    names = list(runners)
    chunks = {name: [] for name in names}
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        shift = (done // chunk) % len(names)
        for name in names[shift:] + names[:shift]:
            step = runners[name][0]
            start = time.perf_counter()
            for _ in range(n):
                step()
            chunks[name].append(time.perf_counter() - start)
        done += n
    return ({name: sum(c) for name, c in chunks.items()}, chunks,
            {name: learned() for name, (_, learned) in runners.items()})


def _same(a: dict, b: dict) -> bool:
    def value(v):   # scalars as they are; per-tensor or per-weight values by their mean
        if isinstance(v, (list, tuple)):
            return statistics.fmean(value(x) for x in v)
        return float(v.double().mean()) if isinstance(v, torch.Tensor) else float(v)
    return a.keys() == b.keys() and all(math.isclose(value(a[k]), value(b[k]), rel_tol=1e-5, abs_tol=1e-12)
                                        for k in a)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000, help="weight updates per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per algorithm (median reported)")
    parser.add_argument("--chunk", type=int, default=10,
                        help="updates each algorithm takes in turn (default 10: one tuner window)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA),
                        help="folder holding uci/energy.txt (default: the copies shipped with onepass)")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="target: the optimizer front end's ratio within this fraction of the Tuner's")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1 or args.chunk < 1:
        parser.error("--steps, --repeats and --chunk must be ≥ 1")
    torch.set_num_threads(args.threads)
    data = load_uci("energy", args.data_dir)

    # Each optimizer row is listed right after its Tuner row.
    builders = {"sgd": lambda: sgd_runner(data)}
    for tuner_name, options in ALGORITHMS.items():
        builders[tuner_name] = lambda o=options: tuner_runner(data, **o)
        for name in (n for n, t in OPTIMIZER_ROWS.items() if t == tuner_name):
            builders[name] = lambda o=options: optimizer_runner(data, **o)
    samples = {name: [] for name in builders}
    chunk_ratios = {name: [] for name in OPTIMIZER_ROWS}
    for _ in range(args.repeats):
        seconds, chunks, learned = interleaved(builders, args.steps, args.chunk)
        for name, s in seconds.items():
            samples[name].append(s)
        for name, tuner in OPTIMIZER_ROWS.items():
            chunk_ratios[name].extend(o / t for o, t in zip(chunks[name], chunks[tuner]))
    seconds = {name: statistics.median(s) for name, s in samples.items()}
    ratios = {name: seconds[name] / seconds["sgd"] for name in builders if name != "sgd"}

    print(f"{args.steps} updates, UCI Energy, MLP 8-50-1, median of {args.repeats}, interleaved every "
          f"{args.chunk} updates, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'algorithm':<22}{'seconds':>10}{'min':>10}{'× SGD':>8}")
    for name, s in seconds.items():
        print(f"{name:<22}{s:>10.3f}{min(samples[name]):>10.3f}{ratios.get(name, 1.0):>8.2f}")

    checks = {}
    for name, tuner in OPTIMIZER_ROWS.items():
        paired = [o / t for o, t in zip(samples[name], samples[tuner])]
        relative = statistics.median(paired)
        per_chunk = statistics.median(chunk_ratios[name])
        met = abs(relative - 1) <= args.tolerance
        same = _same(learned[name], learned[tuner])
        checks[name] = {"tuner_row": tuner, "optimizer_ratio": ratios[name], "tuner_ratio": ratios[tuner],
                        "optimizer_over_tuner": relative, "paired": paired,
                        "per_chunk_median": per_chunk, "tolerance": args.tolerance, "met": met,
                        "same_hyperparameters": same}
        print(f"target: {name} (onepass.optim.SGD) {ratios[name]:.2f}× SGD vs {tuner} (Tuner) "
              f"{ratios[tuner]:.2f}× SGD: optimizer/Tuner {relative:.3f} (median of {len(paired)} runs, "
              f"min {min(paired):.3f}, max {max(paired):.3f}; median per window {per_chunk:.3f}); "
              f"within {args.tolerance:.0%}: {'yes' if met else 'NO'}; "
              f"same learned hyperparameters: {'yes' if same else 'NO'}")
    result = {"seconds": seconds, "ratios": ratios, "samples": samples, "optimizer_check": checks,
              "steps": args.steps, "repeats": args.repeats, "chunk": args.chunk, "threads": args.threads,
              "torch": torch.__version__}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
