"""Cost of one window of updates of a compiled UCI population, per algorithm, interleaved.

    python benchmarks/population_steps.py [--population 50] [--windows 40] [--data-dir DIR]

Builds one ``Tuner(population=P, compile=True)`` per method on UCI Energy's
training split (the sweep's 8-50-1 MLPs), warms them up, then times windows of
10 updates round-robin over the methods, so a slow spell of this shared
machine hits every method alike. Prints, per method, the minimum and the
median window time and core-µs per member-step (min), and ratios to Random.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

METHODS = {
    "random": dict(tune=()),
    "ours_lr_momentum": dict(tune=("lr", "momentum", "weight_decay")),
    "ours_hdlr_momentum": dict(tune=("lr", "momentum", "weight_decay"), granularity={"lr": "weight"}),
    "diff_through_opt": dict(tune=("lr", "momentum", "weight_decay"), method="unroll"),
    "baydin": dict(tune=("lr",), method="baydin"),
    "baydin_exact": dict(tune=("lr",), method="baydin_exact"),
}


def main(argv=None) -> int:
    from onepass import Tuner
    from onepass.data.paths import PACKAGED_DATA_DIR
    from onepass.data.uci import load_uci
    from onepass.models import MLP, PopulationMLP, member_mse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--population", type=int, default=50)
    parser.add_argument("--windows", type=int, default=40, help="timed windows per method")
    parser.add_argument("--data-dir", type=Path, default=PACKAGED_DATA_DIR,
                        help="dataset root (default: the UCI copies shipped with onepass)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    P = args.population
    data = load_uci("energy", args.data_dir)
    batch, val_batch = (data.x_train, data.y_train), (data.x_val, data.y_val)
    torch.manual_seed(0)
    models = [MLP(data.n_inputs, (50,)) for _ in range(P)]
    start = dict(lr=[1e-2] * P, momentum=[0.5] * P, weight_decay=[1e-5] * P)
    tuners = {}
    for name, options in METHODS.items():
        tuner = Tuner(PopulationMLP.from_models(models), member_mse, hyperparameters=start,
                      population=P, compile=True, **options)
        for _ in range(20):   # compiles every path
            tuner.step(batch, val_batch)
        tuners[name] = tuner
    times: dict[str, list[float]] = {name: [] for name in tuners}
    for _ in range(args.windows):
        for name, tuner in tuners.items():
            t0 = time.perf_counter()
            for _ in range(10):
                tuner.step(batch, val_batch)
            times[name].append(time.perf_counter() - t0)
    base = min(times["random"])
    print(f"UCI Energy train split, P={P}, {args.windows} windows of 10 updates per method, "
          f"1 thread, torch {torch.__version__}")
    print(f"{'method':20s} {'min ms':>8s} {'median ms':>10s} {'core-µs/member-step':>20s} {'× random':>9s}")
    for name, values in times.items():
        low = min(values)
        print(f"{name:20s} {low * 1e3:8.2f} {statistics.median(values) * 1e3:10.2f} "
              f"{low / (10 * P) * 1e6:20.1f} {low / base:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
