"""onepass's recommended recipe against what a practitioner does with no effort.

One process, one run, shipped data. Each baseline starts from its published
defaults and trains on train+validation (it needs no validation set, as the
paper's Random); onepass trains on the training split and tunes on the
validation split, then folds the validation split into training for the last
stretch (the recipe's loop step, ``recipe("adamw")["loop"]``). The Adam grid
search trains each setting on the training split, picks the setting with the
lowest validation loss, and retrains it on train+validation before the test.

    python benchmarks/versus_defaults.py                       # energy, kin8nm, digits; 5 seeds
    python benchmarks/versus_defaults.py --datasets energy --seeds 2 --steps 500
    python benchmarks/versus_defaults.py --json out.json --robustness 50
    python benchmarks/versus_defaults.py --rows onepass --onepass '{"hyper_lr": 0.1, "fold": 0}'

Datasets: any shipped UCI set (the paper's MLP d-50-1, full batch, 4,000
updates, test MSE in original units) and ``digits`` (scikit-learn's bundled
8x8 digits: MLP 64-128-10, mini-batches of 128, 2,000 updates, test
cross-entropy and accuracy). Rows: ``onepass``, ``adam`` (lr 1e-3),
``adamw`` (torch defaults), ``prodigy`` (lr 1.0), ``schedulefree``
(AdamWScheduleFree defaults, with train()/eval()), ``sgd`` (lr 0.1, momentum
0.9), ``adam_grid`` (Adam over 6 learning rates x 2 weight decays).

``--onepass JSON`` overrides the onepass row for ablations: optimizer keyword
arguments (``tune``, ``granularity``, ``method``, ``hyper_lr``, ``lr``, ...),
plus ``rule`` ("adamw", "adam" or "sgd") and ``fold`` (the fraction of the
updates, at the end, trained on train+validation with the hyperparameters
frozen; 0 never folds). ``--robustness N`` also starts the recipe from N of the
paper's random initialisations on Energy and reports the fraction that ends
within 1.2x of Adam's default median.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import onepass.optim
from onepass.data.uci import UCI_DATASETS, load_uci
from onepass.models.mlp import MLP
from onepass.optim.recipe import RECIPES, recipe

ROWS = ("onepass", "adam", "adamw", "prodigy", "schedulefree", "sgd", "adam_grid")
BASELINES = ROWS[1:6]
GRID_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
GRID_WDS = (0.0, 1e-4)
DEFAULT_DATASETS = ("energy", "kin8nm", "digits")
UCI_STEPS, DIGITS_STEPS, DIGITS_BATCH = 4000, 2000, 128
ROBUSTNESS_DATASET = "energy"


# ----------------------------------------------------------------------------- data

class Data:
    """Splits as float32 tensors, the loss, the test metric and the batch sampler."""

    def __init__(self, name: str):
        self.name = name
        if name == "digits":
            from sklearn.datasets import load_digits
            x, y = load_digits(return_X_y=True)
            order = np.random.default_rng(0).permutation(len(x))
            x, y = x[order].astype(np.float32), y[order]
            n_test = n_val = len(x) // 5                 # 359 test, 359 validation, 1079 train
            n_trainval = len(x) - n_test
            mean, std = x[:n_trainval].mean(0), x[:n_trainval].std(0)
            x = (x - mean) / np.where(std > 0, std, 1.0)
            x, y = torch.tensor(x), torch.tensor(y, dtype=torch.int64)
            n_train = n_trainval - n_val
            self.x_train, self.y_train = x[:n_train], y[:n_train]
            self.x_val, self.y_val = x[n_train:n_trainval], y[n_train:n_trainval]
            self.x_test, self.y_test = x[n_trainval:], y[n_trainval:]
            self.classification, self.scale = True, 1.0
            self.metric, self.steps, self.batch = "test_cross_entropy", DIGITS_STEPS, DIGITS_BATCH
        else:
            if name not in UCI_DATASETS:
                raise SystemExit(f"unknown dataset {name!r}: digits or one of {', '.join(UCI_DATASETS)}")
            d = load_uci(name)
            self.x_train, self.y_train, self.x_val, self.y_val = d.x_train, d.y_train, d.x_val, d.y_val
            self.x_test, self.y_test = d.x_test, d.y_test
            self.classification, self.scale = False, float(d.y_std) ** 2
            self.metric, self.steps, self.batch = "test_mse", UCI_STEPS, None
        self.x_trainval = torch.cat([self.x_train, self.x_val])
        self.y_trainval = torch.cat([self.y_train, self.y_val])

    def model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        if self.classification:
            return MLP(64, hidden=(128,), n_outputs=10)
        return MLP(self.x_train.shape[1])

    def loss(self, out, y):
        return F.cross_entropy(out, y) if self.classification else F.mse_loss(out, y)

    def batches(self, x, y, seed: int):
        """Full batch (UCI) or shuffled mini-batches of 128, epoch after epoch (digits)."""
        if self.batch is None:
            while True:
                yield x, y
        g = torch.Generator().manual_seed(10_000 + seed)
        while True:
            order = torch.randperm(len(x), generator=g)
            for start in range(0, len(x) - self.batch + 1, self.batch):
                index = order[start:start + self.batch]
                yield x[index], y[index]

    def evaluate(self, model, x, y) -> tuple[float, float | None]:
        """(loss in original units, accuracy or None)."""
        with torch.no_grad():
            out = model(x)
            loss = float(self.loss(out, y)) * self.scale
            accuracy = float((out.argmax(1) == y).float().mean()) if self.classification else None
        return loss, accuracy


@functools.lru_cache(maxsize=None)
def dataset(name: str) -> Data:
    return Data(name)


# ----------------------------------------------------------------------------- runs

def _finite(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _train(data: Data, model, opt, steps: int, x, y, seed: int, *, on_step=None):
    """Plain loop; returns False when the training loss stops being finite."""
    batches = data.batches(x, y, seed)
    for t in range(steps):
        xb, yb = next(batches)
        opt.zero_grad()
        loss = data.loss(model(xb), yb)
        if not torch.isfinite(loss):
            return False
        loss.backward()
        opt.step()
    return True


def baseline(data: Data, row: str, seed: int, steps: int, *, lr=None, weight_decay=0.0, on_trainval=True):
    """One baseline run; returns its record."""
    model = data.model(seed)
    params = model.parameters()
    if row == "adam":
        opt = torch.optim.Adam(params, lr=1e-3 if lr is None else lr, weight_decay=weight_decay)
    elif row == "adamw":
        opt = torch.optim.AdamW(params)
    elif row == "prodigy":
        from prodigyopt import Prodigy
        opt = Prodigy(params, lr=1.0)
    elif row == "schedulefree":
        from schedulefree import AdamWScheduleFree
        opt = AdamWScheduleFree(params)
    elif row == "sgd":
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    else:
        raise ValueError(row)
    x, y = (data.x_trainval, data.y_trainval) if on_trainval else (data.x_train, data.y_train)
    start = time.perf_counter()
    if row == "schedulefree":
        opt.train()
    finite = _train(data, model, opt, steps, x, y, seed)
    if row == "schedulefree":
        opt.eval()
    seconds = time.perf_counter() - start
    return _record(data, model, seconds, finite)


def _record(data: Data, model, seconds: float, finite: bool, **extra) -> dict:
    test, accuracy = data.evaluate(model, data.x_test, data.y_test)
    val, _ = data.evaluate(model, data.x_val, data.y_val)
    record = {"test": _finite(test) if finite else None, "val": _finite(val) if finite else None,
              "seconds": seconds, **extra}
    if accuracy is not None:
        record["accuracy"] = accuracy if finite else None
    return record


def recipe_config(rule: str = "adamw") -> dict:
    """The onepass row's configuration with nothing overridden: the optimizer's
    own defaults (no keyword arguments) and the recipe's loop step."""
    return {"rule": rule, **recipe(rule).get("loop", {})}


def onepass_run(data: Data, seed: int, steps: int, config: dict, start_values: dict | None = None) -> dict:
    """The onepass row: tune on the validation split for the first (1 - fold)
    of the updates, then train on train+validation with the values frozen."""
    config = dict(config)
    rule = config.pop("rule", "adamw")
    fold = float(config.pop("fold", 0.0))
    kwargs = {**config, **(start_values or {})}
    model = data.model(seed)
    params = list(model.parameters())
    cls = {"adamw": onepass.optim.AdamW, "adam": onepass.optim.Adam, "sgd": onepass.optim.SGD}[rule]
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    opt = cls(params, val_loss=lambda: data.loss(model(data.x_val), data.y_val), **kwargs)
    tuned_steps = steps - int(round(fold * steps))
    batches = data.batches(data.x_train, data.y_train, seed)
    finite = True
    start = time.perf_counter()
    try:
        for t in range(tuned_steps):
            xb, yb = next(batches)
            opt.zero_grad()
            loss = data.loss(model(xb), yb)
            if not torch.isfinite(loss):
                finite = False
                break
            loss.backward(create_graph=opt.needs_graph)
            opt.step()
    except onepass.NonFiniteError:
        finite = False
    hyper = opt.hyperparameters
    if finite and tuned_steps < steps:
        plain = opt.frozen()
        del opt
        finite = _train(data, model, plain, steps - tuned_steps, data.x_trainval, data.y_trainval, seed + 1)
    seconds = time.perf_counter() - start
    return _record(data, model, seconds, finite, hyperparameters=hyper)


def paper_initialisation(index: int, rule: str) -> dict:
    """The paper's random start: lr 10^U(-6,-1), weight decay 10^U(-7,-2),
    momentum (or beta1) U(0, 1) kept strictly inside."""
    rng = np.random.default_rng(1_000 + index)
    lr, wd = 10 ** rng.uniform(-6, -1), 10 ** rng.uniform(-7, -2)
    first = float(np.clip(rng.uniform(0, 1), 1e-3, 1 - 1e-3))
    if rule == "sgd":
        return {"lr": lr, "weight_decay": wd, "momentum": first}
    return {"lr": lr, "weight_decay": wd, "betas": (first, 0.999)}


# ----------------------------------------------------------------------------- the pool

def _job(job: tuple) -> tuple:
    kind, name, key, seed, steps, extra = job
    torch.set_num_threads(1)
    data = dataset(name)
    steps = steps or data.steps
    if kind == "onepass":
        return job, onepass_run(data, seed, steps, extra["config"], extra.get("start"))
    if kind == "grid":
        return job, baseline(data, "adam", seed, steps, lr=extra["lr"], weight_decay=extra["wd"],
                             on_trainval=False)
    if kind == "grid_final":
        return job, baseline(data, "adam", seed, steps, lr=extra["lr"], weight_decay=extra["wd"])
    return job, baseline(data, kind, seed, steps)


def run_pool(jobs: list, workers: int, progress: bool = True) -> list:
    if workers <= 1:
        return [_job(j) for j in jobs]
    out = []
    with cf.ProcessPoolExecutor(max_workers=workers) as pool:
        for i, result in enumerate(pool.map(_job, jobs, chunksize=1)):
            out.append(result)
            if progress and (i + 1) % 10 == 0:
                print(f"  {i + 1}/{len(jobs)} runs", file=sys.stderr, flush=True)
    return out


def summarise(values: list, seconds: list, adam_seconds: float | None, **extra) -> dict:
    clean = [math.inf if v is None else v for v in values]
    median = statistics.median(clean)
    finite = [v for v in values if v is not None]
    mean = statistics.fmean(finite) if len(finite) == len(values) else None
    sem = (statistics.stdev(finite) / math.sqrt(len(finite))) if mean is not None and len(finite) > 1 else \
        (0.0 if mean is not None else None)
    ratio = statistics.median(seconds) / adam_seconds if adam_seconds else None
    return {"median": _finite(median), "mean": mean, "sem": sem, "time_ratio": ratio, "values": values,
            "seconds": seconds, **extra}


def benchmark(names, rows, seeds, steps, config, workers) -> dict:
    jobs = []
    for name in names:
        for seed in range(seeds):
            for row in rows:
                if row == "onepass":
                    jobs.append(("onepass", name, "onepass", seed, steps, {"config": config}))
                elif row == "adam_grid":
                    jobs += [("grid", name, "adam_grid", seed, steps, {"lr": lr, "wd": wd})
                             for lr in GRID_LRS for wd in GRID_WDS]
                else:
                    jobs.append((row, name, row, seed, steps, {}))
            if "adam_grid" in rows and "adam" not in rows:
                jobs.append(("adam", name, "adam", seed, steps, {}))
    results = run_pool(jobs, workers)
    chosen = {}
    for (kind, name, key, seed, _, extra), rec in results:
        if kind == "grid":
            val = math.inf if rec["val"] is None else rec["val"]
            best = chosen.get((name, seed))
            if best is None or val < best[0]:
                chosen[(name, seed)] = (val, extra, (best[2] if best else 0.0) + rec["seconds"])
            else:
                chosen[(name, seed)] = (best[0], best[1], best[2] + rec["seconds"])
    finals = [("grid_final", name, "adam_grid", seed, steps, extra) for (name, seed), (_, extra, _) in chosen.items()]
    results += run_pool(finals, workers, progress=False)
    out = {}
    for name in names:
        data = dataset(name)
        per_row = {}
        for (kind, n, key, seed, _, extra), rec in results:
            if n != name or kind == "grid":
                continue
            per_row.setdefault(key, {})[seed] = (rec, extra)
        adam_seconds = statistics.median(rec["seconds"] for rec, _ in per_row["adam"].values())
        table = {}
        for row in rows:
            recs = [per_row[row][s] for s in range(seeds)]
            values = [rec["test"] for rec, _ in recs]
            seconds = [rec["seconds"] + (chosen[(name, s)][2] if row == "adam_grid" else 0.0)
                       for s, (rec, _) in enumerate(recs)]
            extra = {}
            if data.classification:
                accuracy = [rec["accuracy"] for rec, _ in recs]
                extra["accuracy"] = accuracy
                extra["accuracy_median"] = statistics.median(a if a is not None else 0.0 for a in accuracy)
            if row == "onepass":
                hypers = [rec["hyperparameters"] for rec, _ in recs]
                extra["hyperparameters"] = hypers
                extra["hyperparameters_median"] = {k: statistics.median(h[k] for h in hypers) for k in hypers[0]}
            if row == "adam_grid":
                extra["chosen"] = [{"lr": chosen[(name, s)][1]["lr"], "weight_decay": chosen[(name, s)][1]["wd"]}
                                   for s in range(seeds)]
            table[row] = summarise(values, seconds, adam_seconds, **extra)
        out[name] = {"metric": data.metric, "steps": steps or data.steps, "rows": table}
    return out


def robustness(n: int, seeds_adam: int, steps, config, workers) -> dict:
    name = ROBUSTNESS_DATASET
    rule = config.get("rule", "adamw")
    jobs = [("onepass", name, "onepass", i % 5, steps, {"config": config, "start": paper_initialisation(i, rule)})
            for i in range(n)]
    jobs += [("adam", name, "adam", s, steps, {}) for s in range(seeds_adam)]
    results = run_pool(jobs, workers)
    ends = [rec["test"] for (kind, *_), rec in results if kind == "onepass"]
    adam = statistics.median(math.inf if rec["test"] is None else rec["test"]
                             for (kind, *_), rec in results if kind == "adam")
    within = sum(1 for v in ends if v is not None and v <= 1.2 * adam)
    return {"dataset": name, "initialisations": n, "adam_median": adam, "threshold": 1.2 * adam,
            "fraction_within": within / n, "values": ends,
            "starts": [j[5]["start"] for (j, _) in results if j[0] == "onepass"]}


# ----------------------------------------------------------------------------- output

def _fmt(v, digits=4):
    return "—" if v is None else f"{v:.{digits}g}"


def print_table(result: dict) -> None:
    for name, entry in result["datasets"].items():
        print(f"\n{name}: {entry['metric']} ({entry['steps']} updates), "
              f"{len(next(iter(entry['rows'].values()))['values'])} seeds")
        print(f"  {'row':<13}{'median':>11}{'mean ± s.e.':>24}{'time×Adam':>11}  extra")
        for row, r in entry["rows"].items():
            mean = "—" if r["mean"] is None else f"{r['mean']:.4g} ± {r['sem']:.2g}"
            extra = ""
            if "accuracy_median" in r:
                extra += f"acc {r['accuracy_median']:.4f}  "
            if "hyperparameters_median" in r:
                extra += " ".join(f"{k.split('/')[0]}={v:.3g}" for k, v in r["hyperparameters_median"].items()
                                  if k.split("/")[0] in ("lr", "weight_decay", "momentum", "beta1"))
            if "chosen" in r:
                extra += "chosen " + ", ".join(f"{c['lr']:g}/{c['weight_decay']:g}" for c in r["chosen"])
            print(f"  {row:<13}{_fmt(r['median']):>11}{mean:>24}{_fmt(r['time_ratio'], 3):>11}  {extra}")
    if "robustness" in result:
        rb = result["robustness"]
        print(f"\nrobustness on {rb['dataset']}: {rb['fraction_within']:.0%} of {rb['initialisations']} paper "
              f"initialisations end within 1.2x of Adam's default median ({rb['adam_median']:.4g})")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS))
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="updates per run (default 4000 UCI, 2000 digits)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--onepass", type=json.loads, default={}, help="JSON overrides of the onepass row (ablations)")
    p.add_argument("--robustness", type=int, nargs="?", const=50, default=0,
                   help="also N paper initialisations of the recipe on Energy (default 50)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    rule = args.onepass.get("rule", "adamw")
    config = {**recipe_config(rule), **args.onepass}
    rows = [r for r in ROWS if r in args.rows]
    if "adam" not in rows:
        rows.append("adam")    # every ratio is to Adam's time
    start = time.perf_counter()
    result = {"datasets": benchmark(args.datasets, rows, args.seeds, args.steps, config, args.workers),
              "recipe": {"rule": rule, "config": config,
                         "values": dict(RECIPES[rule if not rule.startswith("sgd") else "sgd"]["values"]),
                         "settings": dict(recipe(rule)["settings"]), "loop": dict(recipe(rule).get("loop", {}))},
              "command": " ".join(sys.argv)}
    if args.robustness:
        result["robustness"] = robustness(args.robustness, args.seeds, args.steps, config, args.workers)
    result["seconds"] = time.perf_counter() - start
    print_table(result)
    print(f"\n{result['seconds']:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
