"""The benchmark suite: onepass's default use against what a practitioner runs anyway.

Eleven workloads of different kinds (``benchmarks/workloads``: UCI Energy,
Kin8nm, Power, Naval with the paper's MLP; digits MLP and CNN; MNIST-1D MLP and
CNN; a byte-level transformer LM on the Python standard library's source; a
tiny BERT through Hugging Face's ``Trainer`` + ``tune()``; an MLP through
Lightning with ``OnepassCallback``), on shipped or locally generated data.
Rows, each at its published defaults: ``onepass`` (``onepass.optim.AdamW``
with nothing given, plus the recipe's fold), ``onepass_sgd``
(``onepass.optim.SGD``), ``adam``, ``adamw``, ``adamw_cosine``, ``prodigy``,
``schedulefree``, ``sgd``, and ``adam_grid`` (on request: Adam over 6 lr x 2
weight decays, chosen on validation, retrained on train+validation). Baselines
train on train+validation. On request, the equal-time rows ``adam_eqtime``,
``adamw_eqtime``, ``adamw_cosine_eqtime``: the baseline given onepass's
wall-clock instead of its number of updates (updates x the ratio of the onepass
row's median seconds to the baseline's; the cosine stretched to them), a
separate comparison ("at equal wall-clock onepass wins on X/N"), not a default.

    python benchmarks/suite.py --seeds 3 --runs runs.jsonl --json suite.json --markdown --plot suite.png
    python benchmarks/suite.py --workloads uci_energy digits_cnn --rows onepass adam --seeds 1 --steps 0.1
    python benchmarks/suite.py --workloads heldout --runs runs.jsonl        # the held-out check
    python benchmarks/suite.py --rows onepass --onepass '{"hyper_lr": 0.1}' --runs runs.jsonl   # an ablation
    python benchmarks/suite.py --rows onepass --onepass '{"schedule": "cosine"}' --runs runs.jsonl   # a learned factor on warm-up + cosine
    python benchmarks/suite.py --rows adam_eqtime adamw_eqtime adamw_cosine_eqtime --seeds 3 --runs runs.jsonl
    python benchmarks/suite.py --from-json suite.json --markdown --plot suite.png                # re-render

``--runs`` caches every finished run as a line of JSON keyed by everything
that determines it (workload, row, seed, updates, configuration), so an
interrupted suite loses nothing and ablations reuse the baselines' runs.
``--robustness N`` starts the recipe from N learning rates 10^U(-6,-1) on
Energy and the digits CNN and reports the fraction that ends within 1.2x of
Adam's default median.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workloads import ALL, BASELINES, HELDOUT, SUITE, onepass_config  # noqa: E402

ROWS = ("onepass", "onepass_sgd", "adam", "adamw", "adamw_cosine", "prodigy", "schedulefree", "sgd", "adam_grid")
DEFAULT_ROWS = ROWS[:-1]
DEFAULTS = ("adam", "adamw", "adamw_cosine", "prodigy", "schedulefree")   # "the best single default"
ONEPASS_ROWS = ("onepass", "onepass_sgd")
GRID_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
GRID_WDS = (0.0, 1e-4)
ROBUSTNESS_WORKLOADS = ("uci_energy", "digits_cnn")
WITHIN = 1.2
# Equal-time rows: a baseline given onepass's wall-clock rather than its number of updates
# (a separate comparison, never among DEFAULTS).
EQTIME = {"adam_eqtime": "adam", "adamw_eqtime": "adamw", "adamw_cosine_eqtime": "adamw_cosine"}
EQTIME_ROWS = tuple(EQTIME)


# ----------------------------------------------------------------------------- jobs and the cache

def job(workload: str, row: str, seed: int, steps: int, **options) -> dict:
    return {"workload": workload, "row": row, "seed": seed, "steps": steps, "options": options}


def key(j: dict) -> str:
    return json.dumps(j, sort_keys=True)


def _quiet() -> None:
    import logging
    import warnings
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _work(j: dict) -> tuple[dict, dict]:
    import contextlib
    import io

    import torch
    from workloads import run
    _quiet()
    torch.set_num_threads(1)
    _warm(torch)
    with contextlib.redirect_stdout(io.StringIO()):   # the frameworks print their summaries
        record = run(ALL[j["workload"]], j["row"], j["seed"], j["steps"], j["options"])
    return j, record


def _warm(torch) -> None:
    """Pay a worker process's one-time costs before any run is timed: the first
    ``add_param_group`` of any ``torch.optim`` optimizer imports ``torch._dynamo``
    (~1–2 s, sympy included), which the first run in a process would otherwise
    count as its own time, whichever row it is."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


class Runs:
    """Records by job key, appended to ``path`` (JSON lines) as they finish."""

    def __init__(self, path: Path | None):
        self.path, self.records = path, {}
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.records[key(entry["job"])] = entry["record"]

    def run(self, jobs: list[dict], workers: int, progress: bool = True) -> list[dict]:
        todo, seen = [], set()
        for j in jobs:
            k = key(j)
            if k not in self.records and k not in seen:
                todo.append(j)
                seen.add(k)
        if todo:
            bar = _progress(len(todo), progress)
            if workers <= 1:
                results = map(_work, todo)
                for j, record in results:
                    self._keep(j, record)
                    bar.update(1)
            else:
                with cf.ProcessPoolExecutor(max_workers=workers, initializer=_quiet) as pool:
                    futures = [pool.submit(_work, j) for j in todo]
                    for future in cf.as_completed(futures):
                        j, record = future.result()
                        self._keep(j, record)
                        bar.update(1)
            bar.close()
        return [self.records[key(j)] for j in jobs]

    def _keep(self, j: dict, record: dict) -> None:
        self.records[key(j)] = record
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps({"job": j, "record": record}) + "\n")


def _progress(total: int, enabled: bool):
    try:
        from tqdm import tqdm
        return tqdm(total=total, disable=not enabled, file=sys.stderr, desc="runs", smoothing=0)
    except ImportError:   # pragma: no cover
        class Bar:
            def update(self, n):
                pass

            def close(self):
                pass
        return Bar()


# ----------------------------------------------------------------------------- the suite

def steps_of(name: str, scale: float) -> int:
    return max(2, int(round(ALL[name].steps * scale)))


def onepass_job(name: str, seed: int, steps: int, config: dict) -> dict:
    """The onepass row's run; through a framework integration it also names the
    integration's loop step (runs from before the integrations folded lack it)."""
    if ALL[name].family == "frameworks":
        return job(name, "onepass", seed, steps, config=config, integration_loop="fold")
    return job(name, "onepass", seed, steps, config=config)


def row_jobs(name: str, row: str, seed: int, steps: int, config: dict, sgd_config: dict) -> list[dict]:
    if row == "onepass":
        return [onepass_job(name, seed, steps, config)]
    if row == "onepass_sgd":
        return [job(name, row, seed, steps, config=sgd_config)]
    return [job(name, row, seed, steps)]


def grid_search(name: str, seed: int, steps: int) -> list[dict]:
    return [job(name, "grid", seed, steps, lr=lr, weight_decay=wd, on_train=True)
            for lr in GRID_LRS for wd in GRID_WDS]


def supports(name: str, row: str) -> bool:
    """The HF workload has no SGD front end (``tune(trainer)`` gives AdamW)."""
    return not (name == "hf_bert" and row == "onepass_sgd")


def _summary(values, seconds, adam_seconds, **extra) -> dict:
    clean = [math.inf if v is None else v for v in values]
    median = statistics.median(clean)
    finite = [v for v in values if v is not None]
    mean = statistics.fmean(finite) if len(finite) == len(values) else None
    sem = (statistics.stdev(finite) / math.sqrt(len(finite)) if len(finite) > 1 else 0.0) \
        if mean is not None else None
    return {"median": median if math.isfinite(median) else None, "mean": mean, "sem": sem,
            "time_ratio": statistics.median(seconds) / adam_seconds if adam_seconds else None,
            "values": values, "seconds": seconds, **extra}


def benchmark(names, rows, seeds, scale, config, sgd_config, runs: Runs, workers: int,
              cached_only: bool = False, time_ratios: dict | None = None) -> dict:
    """Run (or, ``cached_only``, only read from the cache) every row on every
    workload; with ``cached_only`` each workload keeps the seeds whose runs are
    all cached, and a workload with none is left out."""
    eqtime = [r for r in EQTIME_ROWS if r in rows]
    rows = [r for r in ROWS if r in rows]
    plan = []
    for seed in range(seeds):          # seed by seed: an interrupted suite has whole seeds cached
        for name in names:
            steps = steps_of(name, scale)
            for row in rows:
                if not supports(name, row):
                    continue
                plan += grid_search(name, seed, steps) if row == "adam_grid" else \
                    row_jobs(name, row, seed, steps, config, sgd_config)
    if cached_only:
        if "adam_grid" in rows:
            raise SystemExit("--cached-only does not take the adam_grid row")
    else:
        runs.run(plan, workers)
    chosen = {}
    if "adam_grid" in rows:
        finals = []
        for name in names:
            steps = steps_of(name, scale)
            for seed in range(seeds):
                search = grid_search(name, seed, steps)
                records = runs.run(search, 1, progress=False)
                best = min(range(len(search)),
                           key=lambda i: math.inf if records[i]["val"] is None else records[i]["val"])
                options = search[best]["options"]
                final = job(name, "grid", seed, steps, lr=options["lr"], weight_decay=options["weight_decay"])
                chosen[(name, seed)] = (options, sum(r["seconds"] for r in records), final)
                finals.append(final)
        runs.run(finals, workers)
    out = {}
    for name in names:
        w, steps = ALL[name], steps_of(name, scale)
        table = {}
        per_row = {}
        kept = list(range(seeds))
        if cached_only:
            kept = [s for s in kept if all(key(row_jobs(name, row, s, steps, config, sgd_config)[0]) in runs.records
                                           for row in rows if supports(name, row))]
            if not kept:
                continue
        for row in rows:
            if not supports(name, row):
                continue
            if row == "adam_grid":
                per_row[row] = [runs.records[key(chosen[(name, s)][2])] for s in kept]
            else:
                per_row[row] = [runs.records[key(row_jobs(name, row, s, steps, config, sgd_config)[0])]
                                for s in kept]
        adam_seconds = statistics.median(r["seconds"] for r in per_row["adam"]) if "adam" in per_row else None
        for row, records in per_row.items():
            seconds = [r["seconds"] + (chosen[(name, s)][1] if row == "adam_grid" else 0.0)
                       for s, r in enumerate(records)]
            extra = _accuracy(w, records)
            if row in ONEPASS_ROWS:
                hypers = [r.get("hyperparameters") or {} for r in records]
                extra["hyperparameters_median"] = {k: statistics.median(h[k] for h in hypers if k in h)
                                                   for k in hypers[0]}
                extra["hyperparameters"] = hypers
            if row == "adam_grid":
                extra["chosen"] = [{"lr": chosen[(name, s)][0]["lr"],
                                    "weight_decay": chosen[(name, s)][0]["weight_decay"]} for s in range(seeds)]
            table[row] = _summary([r["test"] for r in records], seconds, adam_seconds, **extra)
        entry = {"metric": w.metric, "kind": w.kind, "family": w.family, "steps": steps, "seeds": len(kept),
                 "rows": table}
        if w.reference:
            entry["reference"] = dict(w.reference)
        if w.data.info:
            entry["info"] = {k: v for k, v in w.data.info.items() if k != "files"} | (
                {"files": w.data.info["files"]} if "files" in w.data.info else {})
        entry.update(compare(table))
        out[name] = entry
    if eqtime:
        equal_time(out, names, eqtime, seeds, scale, config, runs, workers, cached_only, time_ratios)
    return out


def _accuracy(w, records) -> dict:
    if w.kind != "classification":
        return {}
    accuracy = [r.get("accuracy") for r in records]
    return {"accuracy": accuracy, "accuracy_median": statistics.median(0.0 if a is None else a for a in accuracy)}


def equal_time_updates(steps: int, onepass_seconds, baseline_seconds) -> int:
    """A baseline's updates at onepass's wall-clock: ``steps`` x the ratio of the
    median seconds (never fewer than ``steps``: a time ratio under 1 is the
    machine's load, not onepass being cheaper than its own plain updates)."""
    ratio = statistics.median(onepass_seconds) / statistics.median(baseline_seconds)
    return max(steps, int(round(steps * ratio)))


def equal_time(out: dict, names, eqtime, seeds, scale, config, runs: Runs, workers: int,
               cached_only: bool = False, time_ratios: dict | None = None) -> None:
    """Add the equal-time rows to ``out``'s workloads: each baseline rerun for
    :func:`equal_time_updates` updates (a cosine schedule stretched to them),
    from the onepass row's and the baseline's own seconds at the workload's
    updates. The onepass runs are read from the cache wherever any seed is
    cached (the time reference is never rerun); only a workload without any is run.
    ``time_ratios`` (workload -> onepass's time over Adam's, measured apart on a
    quiet machine: ``--time-ratios``) replaces the cached seconds, which mix
    runs made under different loads, for the workloads it names."""
    time_ratios = time_ratios or {}
    reference, plan = {}, []
    need = []
    for name in names:
        steps = steps_of(name, scale)
        onepass = [onepass_job(name, s, steps, config) for s in range(seeds)]
        cached = [j for j in onepass if key(j) in runs.records]
        bases = {r: [job(name, r, s, steps) for s in range(seeds)] for r in {"adam"} | {EQTIME[e] for e in eqtime}}
        if cached_only:
            bases = {r: [j for j in js if key(j) in runs.records] for r, js in bases.items()}
            if not cached or not all(bases.values()):
                continue
        reference[name] = (cached or onepass, bases)
        need += (cached or onepass) + [j for js in bases.values() for j in js]
    if not cached_only:
        runs.run(need, workers)
    updates = {}
    for name, (onepass, bases) in reference.items():
        steps = steps_of(name, scale)
        seconds = [runs.records[key(j)]["seconds"] for j in onepass]
        for row in eqtime:
            base = [runs.records[key(j)]["seconds"] for j in bases[EQTIME[row]]]
            updates[(name, row)] = equal_time_updates(steps, seconds, base) if name not in time_ratios else \
                max(steps, int(round(steps * time_ratios[name])))
    for seed in range(seeds):             # seed by seed, as the suite
        for (name, row), n in updates.items():
            plan.append(job(name, EQTIME[row], seed, n))
    if not cached_only:
        runs.run(plan, workers)
    for name, (onepass, bases) in reference.items():
        if name not in out:            # --cached-only left the workload out
            continue
        w, entry = ALL[name], out[name]
        onepass_records = [runs.records[key(j)] for j in onepass]
        adam_seconds = statistics.median(runs.records[key(j)]["seconds"] for j in bases["adam"])
        onepass_seconds = [r["seconds"] for r in onepass_records]
        for row in eqtime:
            n = updates[(name, row)]
            jobs = [j for j in (job(name, EQTIME[row], s, n) for s in range(seeds)) if key(j) in runs.records]
            if not jobs:
                continue
            records = [runs.records[key(j)] for j in jobs]
            entry["rows"][row] = _summary(
                [r["test"] for r in records], [r["seconds"] for r in records], adam_seconds,
                **_accuracy(w, records), baseline=EQTIME[row], updates=n,
                reference={"onepass_seconds": onepass_seconds, "onepass_seeds": [j["seed"] for j in onepass],
                           "baseline_seconds": [runs.records[key(j)]["seconds"] for j in bases[EQTIME[row]]]})
        medians = {r: entry["rows"][r]["median"] for r in eqtime if r in entry["rows"]}
        if not medians:
            continue
        best = min(medians, key=lambda r: math.inf if medians[r] is None else medians[r])
        onepass_median = statistics.median(math.inf if r["test"] is None else r["test"] for r in onepass_records)
        entry.update({"best_eqtime": best, "best_eqtime_median": medians[best],
                      "onepass_eqtime_median": onepass_median if math.isfinite(onepass_median) else None})
        if medians[best] and math.isfinite(onepass_median):
            entry["onepass_eqtime_ratio"] = onepass_median / medians[best]


def summarise_equal_time(workloads: dict) -> dict:
    """Where onepass is at or below the best equal-time baseline (its median
    test loss at the same wall-clock), over the workloads that have them."""
    ratios = {n: e["onepass_eqtime_ratio"] for n, e in workloads.items() if "onepass_eqtime_ratio" in e}
    if not ratios:
        return {}
    return {"workloads": len(ratios), "wins": sum(1 for r in ratios.values() if r <= 1.0),
            "geomean_ratio": math.exp(statistics.fmean(math.log(r) for r in ratios.values())),
            "max_ratio": max(ratios.values()), "min_ratio": min(ratios.values()), "ratios": ratios}


def summarise_defaults(workloads: dict) -> dict:
    """Each default held to onepass's bar, without itself: its median over the
    best of the other defaults, per workload (wins, within 1.03x, geometric
    mean and worst over the finite medians; a diverged one is a loss, listed
    under ``diverged``)."""
    out = {}
    for row in DEFAULTS:
        ratios, diverged = {}, []
        for n, e in workloads.items():
            others = [e["rows"][r]["median"] for r in DEFAULTS if r != row and r in e["rows"]]
            others = [m for m in others if m is not None]
            if row not in e["rows"] or not others:
                continue
            if e["rows"][row]["median"] is None:
                diverged.append(n)
            else:
                ratios[n] = e["rows"][row]["median"] / min(others)
        if ratios or diverged:
            out[row] = {"workloads": len(ratios) + len(diverged), "wins": sum(1 for r in ratios.values() if r <= 1.0),
                        "within_1.03": sum(1 for r in ratios.values() if r <= 1.03),
                        "geomean_ratio": math.exp(statistics.fmean(math.log(r) for r in ratios.values())) if ratios
                        else None, "max_ratio": max(ratios.values()) if ratios else None, "diverged": diverged,
                        "ratios": ratios}
    return out


def summarise_grid(workloads: dict) -> dict:
    """The moonshot: where onepass's median is at or below the Adam grid's, and
    onepass's median time over the grid's (all 13 runs), per workload."""
    both = {n: e["rows"] for n, e in workloads.items()
            if "adam_grid" in e["rows"] and "onepass" in e["rows"] and e["rows"]["adam_grid"]["median"]
            and e["rows"]["onepass"]["median"] is not None}
    if not both:
        return {}
    ratios = {n: r["onepass"]["median"] / r["adam_grid"]["median"] for n, r in both.items()}
    times = {n: r["onepass"]["time_ratio"] / r["adam_grid"]["time_ratio"] for n, r in both.items()
             if r["onepass"]["time_ratio"] and r["adam_grid"]["time_ratio"]}
    return {"workloads": len(ratios), "at_or_below": sum(1 for r in ratios.values() if r <= 1.0),
            "ratios": ratios, "time_over_grid": times,
            "max_time_over_grid": max(times.values()) if times else None}


def summaries(workloads: dict) -> dict:
    """The result's ``summary``: each onepass row and each default against the
    best default, and, where the workloads ran them, the grid (also against
    onepass) and the equal-time rows."""
    present = {r for e in workloads.values() for r in e["rows"]}
    out = {r: summarise(workloads, r) for r in ONEPASS_ROWS} | {"defaults": summarise_defaults(workloads)}
    if "adam_grid" in present:
        out |= {"adam_grid": summarise(workloads, "adam_grid"), "grid": summarise_grid(workloads)}
    if present & set(EQTIME):
        out["equal_time"] = summarise_equal_time(workloads)
    return out


def compare(table: dict) -> dict:
    """The best single default's row and median, and each onepass row's ratio to it."""
    defaults = {r: table[r]["median"] for r in DEFAULTS if r in table}
    if not defaults:
        return {}
    best = min(defaults, key=lambda r: math.inf if defaults[r] is None else defaults[r])
    out = {"best_default": best, "best_default_median": defaults[best]}
    for row in ONEPASS_ROWS + ("adam_grid",):
        if row in table and table[row]["median"] is not None and defaults[best]:
            out[f"{row}_ratio"] = table[row]["median"] / defaults[best]
            interval = ratio_interval(table[row]["values"], table[best]["values"])
            if interval is not None:
                out[f"{row}_ratio_interval"] = interval
    return out


def ratio_interval(values, best_values, level: float = 0.9, draws: int = 2000) -> list[float] | None:
    """A paired bootstrap interval of median(values) / median(best_values):
    seeds resampled jointly (seed i of both rows shares its initial weights and
    batch order), a fixed generator. None without at least 5 common seeds. It
    says how far the seeds alone move the ratio: a loss whose interval lies
    wholly above 1 is not the seeds' lottery."""
    n = min(len(values), len(best_values))
    if n < 5:
        return None
    a = np.array([math.inf if v is None else v for v in values[:n]])
    b = np.array([math.inf if v is None else v for v in best_values[:n]])
    index = np.random.default_rng(0).integers(0, n, size=(draws, n))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.median(a[index], axis=1) / np.median(b[index], axis=1)
    low, high = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return [float(low), float(high)]


def summarise(workloads: dict, row: str = "onepass") -> dict:
    """Wins (median at or below the best default), the geometric mean and the
    worst of the ratios, and the largest time ratio, over the workloads."""
    ratios = {n: e[f"{row}_ratio"] for n, e in workloads.items() if f"{row}_ratio" in e}
    missing = [n for n, e in workloads.items() if row in e["rows"] and f"{row}_ratio" not in e]
    if not ratios:
        return {}
    times = [e["rows"][row]["time_ratio"] for n, e in workloads.items()
             if n in ratios and e["rows"][row]["time_ratio"] is not None]
    return {"row": row, "workloads": len(ratios) + len(missing),
            "wins": sum(1 for r in ratios.values() if r <= 1.0),
            "within_1.03": sum(1 for r in ratios.values() if r <= 1.03),
            "geomean_ratio": math.exp(statistics.fmean(math.log(r) for r in ratios.values())),
            "max_ratio": max(ratios.values()), "max_time_ratio": max(times) if times else None, "diverged": missing,
            "ratios": ratios,
            "clear_losses": [n for n, e in workloads.items() if e.get(f"{row}_ratio_interval", (0, 0))[0] > 1.0],
            "clear_wins": [n for n, e in workloads.items() if e.get(f"{row}_ratio_interval", (2, 2))[1] < 1.0]}


# ----------------------------------------------------------------------------- robustness

def robustness(n: int, seeds: int, scale: float, config: dict, runs: Runs, workers: int) -> dict:
    """The recipe from ``n`` learning rates 10^U(-6,-1) (seed i % 5), per workload."""
    lrs = [float(10 ** np.random.default_rng(1_000 + i).uniform(-6, -1)) for i in range(n)]
    plan = {}
    for name in ROBUSTNESS_WORKLOADS:
        steps = steps_of(name, scale)
        plan[name] = ([job(name, "onepass", i % 5, steps, config=config, start={"lr": lr})
                       for i, lr in enumerate(lrs)], [job(name, "adam", s, steps) for s in range(seeds)])
    runs.run([j for starts, adam in plan.values() for j in starts + adam], workers)
    out = {}
    for name, (starts, adam) in plan.items():
        ends = [runs.records[key(j)]["test"] for j in starts]
        adam_median = statistics.median(math.inf if runs.records[key(j)]["test"] is None
                                        else runs.records[key(j)]["test"] for j in adam)
        within = [v is not None and v <= WITHIN * adam_median for v in ends]
        out[name] = {"starts": lrs, "values": ends, "adam_median": adam_median,
                     "threshold": WITHIN * adam_median, "fraction_within": sum(within) / n,
                     "missed_starts": [lr for lr, ok in zip(lrs, within) if not ok]}
    return out


# ----------------------------------------------------------------------------- output

def _fmt(v, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}g}"


def _ratio_text(ratio, interval) -> str:
    """onepass's ratio to the best default, with its interval where there is one."""
    if ratio is None:
        return "—"
    return f"{ratio:.3f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def markdown(result: dict) -> str:
    """The suite's table: each row's median (time x Adam), the best default in
    bold, and onepass's ratio to it."""
    workloads = result["workloads"]
    rows = [r for r in ROWS + EQTIME_ROWS if any(r in e["rows"] for e in workloads.values())]
    eq = any("onepass_eqtime_ratio" in e for e in workloads.values())
    head = ["workload", "metric", "seeds"] + rows + ["onepass / best default [90% interval]"] + (
        ["onepass / best equal-time"] if eq else []) + ["onepass acc. (published)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in workloads.items():
        cells = [name, e["metric"].replace("test_", ""), str(e["seeds"])]
        for row in rows:
            r = e["rows"].get(row)
            if r is None:
                cells.append("—")
                continue
            text = f"{_fmt(r['median'])} ({r['time_ratio']:.2f}×)" if r["time_ratio"] else _fmt(r["median"])
            if row in EQTIME:
                text += f" [{r['updates']}]"
            cells.append(f"**{text}**" if row == e.get("best_default") else text)
        cells.append(_ratio_text(e.get("onepass_ratio"), e.get("onepass_ratio_interval")))
        if eq:
            cells.append("—" if e.get("onepass_eqtime_ratio") is None else f"{e['onepass_eqtime_ratio']:.3f}")
        acc = e["rows"].get("onepass", {}).get("accuracy_median")
        published = (e.get("reference") or {}).get("published_accuracy")
        cells.append("—" if acc is None else f"{acc:.1%}" + (f" ({published:.0%})" if published else ""))
        lines.append("| " + " | ".join(cells) + " |")
    for row in ONEPASS_ROWS + ("adam_grid",):    # the grid too: how far 13 runs get against the same bar
        s = summarise(workloads, row)
        if s:
            lines.append(f"\n{row}: at or below the best default on {s['wins']}/{s['workloads']} workloads, "
                         f"within 1.03x on {s['within_1.03']}/{s['workloads']}; geometric mean of the ratios "
                         f"{s['geomean_ratio']:.3f}, worst {s['max_ratio']:.3f}" + (
                             f"; time at most {s['max_time_ratio']:.2f}x Adam's." if s["max_time_ratio"] else ".")
                         + (f" Beyond the seeds' spread (90% paired bootstrap interval of the ratio wholly "
                            f"below / above 1): wins {', '.join(s['clear_wins']) or 'none'}; losses "
                            f"{', '.join(s['clear_losses']) or 'none'}." if row == "onepass" else ""))
    s = summarise_defaults(workloads)
    if len(s) > 1:
        lines.append("\nthe same bar for each default, against the best of the others: " + "; ".join(
            f"{row} {d['wins']}/{d['workloads']} (within 1.03x {d['within_1.03']}, worst "
            + (f"{d['max_ratio']:.3f}" if d["max_ratio"] is not None else "—")
            + (f", diverged on {', '.join(d['diverged'])}" if d["diverged"] else "") + ")"
            for row, d in s.items()) + ".")
    s = summarise_grid(workloads)
    if s:
        lines.append(f"\nagainst the Adam grid: onepass at or below it on {s['at_or_below']}/{s['workloads']} "
                     f"workloads ({', '.join(f'{n} {r:.3f}' for n, r in s['ratios'].items())}); its time over "
                     f"the grid's at most {s['max_time_over_grid']:.3f}." if s["max_time_over_grid"] else ".")
    s = summarise_equal_time(workloads)
    if s:
        lines.append(f"\nat equal wall-clock onepass wins on {s['wins']}/{s['workloads']} (at or below the best of "
                     f"{', '.join(r for r in EQTIME_ROWS if r in rows)}, each given onepass's median seconds; "
                     f"[updates] in their cells); geometric mean of the ratios {s['geomean_ratio']:.3f}, "
                     f"worst {s['max_ratio']:.3f}.")
    for name, rb in (result.get("robustness") or {}).items():
        lines.append(f"\nrobustness on {name}: {rb['fraction_within']:.0%} of {len(rb['starts'])} starts at lr "
                     f"10^U(-6,-1) end within {WITHIN}x of Adam's default median ({rb['adam_median']:.4g}).")
    return "\n".join(lines)


def readme_table(result: dict, time_ratios: dict | None = None) -> str:
    """The README's compact table: onepass against the best default, per workload;
    the time column from ``time_ratios`` (measured apart, quiet) where given."""
    head = "time × Adam (quiet)" if time_ratios else "time × Adam"
    lines = [f"| workload | onepass | best default | onepass / best [90% interval] | {head} |", "|---|---|---|---|---|"]
    for name, e in result["workloads"].items():
        r = e["rows"]["onepass"]
        time_ratio = time_ratios.get(name) if time_ratios else r["time_ratio"]
        shown = _ratio_text(e.get("onepass_ratio"), e.get("onepass_ratio_interval"))
        lines.append(f"| {name} | {_fmt(r['median'])} | {e.get('best_default', '—')} {_fmt(e.get('best_default_median'))}"
                     f" | {shown} | {_fmt(time_ratio, 3)} |")
    s = result["summary"]["onepass"]
    lines.append(f"\nAt or below the best default on {s['wins']}/{s['workloads']} workloads; geometric mean "
                 f"of the ratios {s['geomean_ratio']:.3f}, worst {s['max_ratio']:.3f} "
                 f"({result['seeds']} seeds, median test loss)." + (
                     f" Beyond the seeds' spread: wins {', '.join(s['clear_wins']) or 'none'}; losses "
                     f"{', '.join(s['clear_losses']) or 'none'}." if "clear_wins" in s else ""))
    d = result["summary"].get("defaults") or {}
    if len(d) > 1:
        lines.append("Each default held to the same bar, against the best of the other defaults: " + ", ".join(
            f"{row} {v['wins']}/{v['workloads']}" for row, v in d.items()) + ".")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Each row's median test loss divided by the best default's, per workload (log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    workloads = result["workloads"]
    names = list(workloads)
    rows = [r for r in ROWS + EQTIME_ROWS if any(r in e["rows"] for e in workloads.values())]
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(names) + 2), 4.5))
    markers = dict(zip(ROWS + EQTIME_ROWS, "o^sv<>DxpP*h"))
    for k, row in enumerate(rows):
        xs, ys = [], []
        for i, name in enumerate(names):
            e = workloads[name]
            r = e["rows"].get(row)
            if r is None or r["median"] is None or not e.get("best_default_median"):
                continue
            xs.append(i + (k - len(rows) / 2) * 0.06)
            ys.append(r["median"] / e["best_default_median"])
        style = dict(color="black", markersize=9, zorder=3) if row == "onepass" else dict(alpha=0.75, markersize=5)
        if row in EQTIME:
            style["fillstyle"] = "none"
        ax.plot(xs, ys, linestyle="none", marker=markers[row], label=row, **style)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
    ax.set_ylabel("median test loss / best default's")
    ax.set_title("onepass's default use against optimizer defaults (lower is better)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main

def _names(selection: list[str]) -> list[str]:
    names = []
    for s in selection:
        group = {"suite": SUITE, "heldout": HELDOUT, "all": tuple(ALL)}.get(s, (s,))
        for n in group:
            if n not in ALL:
                raise SystemExit(f"unknown workload {n!r}: suite, heldout, all or one of {', '.join(ALL)}")
            if n not in names:
                names.append(n)
    return names


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", nargs="+", default=["suite"], help="names, or suite / heldout / all")
    p.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=ROWS + EQTIME_ROWS,
                   help="default: every row but adam_grid and the equal-time rows (time ratios are to adam's, "
                        "when it is among them; the equal-time rows' are always to adam's)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=float, default=1.0, help="scale of every workload's number of updates")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--runs", type=Path, default=None, help="JSON-lines cache of finished runs (resume, reuse)")
    p.add_argument("--onepass", type=json.loads, default={}, help="JSON overrides of the onepass row (ablations)")
    p.add_argument("--onepass-sgd", type=json.loads, default={}, help="the same for the onepass_sgd row")
    p.add_argument("--robustness", type=int, default=0, help="N starts at lr 10^U(-6,-1) on Energy, digits CNN")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", nargs="?", const="-", default=None, help="write the table (to stdout: -)")
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--readme", type=Path, default=None, help="write the README's compact table")
    p.add_argument("--from-json", type=Path, default=None, help="re-render a --json result, running nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--time-ratios", type=Path, default=None,
                   help="a --json result whose onepass time_ratio per workload (measured apart, quiet) sets the "
                        "equal-time rows' updates and the --readme table's time column")
    p.add_argument("--cached-only", action="store_true",
                   help="run nothing: summarise the seeds whose runs are all in --runs")
    args = p.parse_args(argv)
    time_ratios = None
    if args.time_ratios:
        timed = json.loads(args.time_ratios.read_text())["workloads"]
        time_ratios = {n: e["rows"]["onepass"]["time_ratio"] for n, e in timed.items()
                       if e["rows"].get("onepass", {}).get("time_ratio")}
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        for entry in result["workloads"].values():   # results written before the intervals gain them
            entry.update(compare(entry["rows"]))
        result["summary"].update(summaries(result["workloads"]))
    else:
        config = onepass_config(**args.onepass)
        sgd_config = onepass_config("sgd", **args.onepass_sgd)
        rows = list(args.rows)
        runs = Runs(args.runs)
        start = time.perf_counter()
        names = _names(args.workloads)
        workloads = benchmark(names, rows, args.seeds, args.steps, config, sgd_config, runs, args.workers,
                              cached_only=args.cached_only, time_ratios=time_ratios)
        import platform

        import torch
        result = {"workloads": workloads, "summary": summaries(workloads),
                  "recipe": {"adamw": config, "sgd": sgd_config, "overrides": args.onepass,
                             "sgd_overrides": args.onepass_sgd},
                  "seeds": args.seeds, "steps_scale": args.steps, "python": platform.python_version(),
                  "torch": torch.__version__, "command": "python benchmarks/suite.py " + " ".join(
                      sys.argv[1:] if argv is None else argv)}
        if args.robustness:
            result["robustness"] = robustness(args.robustness, args.seeds, args.steps, config, runs, args.workers)
        result["seconds"] = time.perf_counter() - start
    table = markdown(result)
    if args.markdown in (None, "-"):
        print(table)
    else:
        Path(args.markdown).write_text(table + "\n")
    if args.json and not args.from_json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, args.plot)
    if args.readme:
        args.readme.write_text(readme_table(result, time_ratios) + "\n")
    return result


if __name__ == "__main__":
    main()
