"""Wall time of the tuner's algorithms as ratios to plain ``torch.optim.SGD``.

The paper's UCI setting: an MLP 8→50→1 (ReLU) on UCI Energy (614 training and
78 validation rows), full batch, 4,000 weight updates, float32. Every algorithm
runs in this one process; each figure is the median of ``--repeats`` runs.

    python benchmarks/overhead.py [--steps 4000] [--repeats 3] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import onepass
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


def time_sgd(data, steps: int) -> float:
    torch.manual_seed(0)
    model = MLP(data.n_inputs)
    optimizer = torch.optim.SGD(model.parameters(), **HYPER)
    x, y = data.x_train, data.y_train
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return time.perf_counter() - start


def time_tuner(data, steps: int, **options) -> float:
    torch.manual_seed(0)
    model = MLP(data.n_inputs)
    tuner = onepass.Tuner(model, torch.nn.functional.mse_loss, hyperparameters=HYPER, **options)
    batch, val_batch = (data.x_train, data.y_train), (data.x_val, data.y_val)
    start = time.perf_counter()
    for _ in range(steps):
        tuner.step(batch, val_batch)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000, help="weight updates per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per algorithm (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA),
                        help="folder holding uci/energy.txt (default: the copies shipped with onepass)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_uci("energy", args.data_dir)

    timers = {"sgd": lambda: time_sgd(data, args.steps)}
    timers.update({name: (lambda o=o: time_tuner(data, args.steps, **o)) for name, o in ALGORITHMS.items()})
    samples = {name: [] for name in timers}
    for _ in range(args.repeats):  # interleaved, so drift hits every algorithm alike
        for name, timer in timers.items():
            samples[name].append(timer())
    seconds = {name: statistics.median(s) for name, s in samples.items()}
    ratios = {name: seconds[name] / seconds["sgd"] for name in ALGORITHMS}

    print(f"{args.steps} updates, UCI Energy, MLP 8-50-1, median of {args.repeats}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print(f"{'algorithm':<22}{'seconds':>10}{'× SGD':>8}")
    for name, s in seconds.items():
        print(f"{name:<22}{s:>10.3f}{ratios.get(name, 1.0):>8.2f}")
    result = {"seconds": seconds, "ratios": ratios}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
