"""Wall time of the UCI Energy experiment: every single-run algorithm × N initialisations.

    python benchmarks/sweep.py                          # 9 algorithms × 200 inits × 4,000 updates
    python benchmarks/sweep.py --inits 20 --json out.json
    python benchmarks/sweep.py --population off --inits 4 --steps 500   # single runs, to compare

Runs :func:`onepass.sweep.run_sweep` into a fresh folder (a temporary one unless
``--root``), then prints the wall time, the cost per member-step (one weight
update of one run: wall time × workers / (runs × steps), in core-microseconds)
the worker-seconds each algorithm took, and the final test MSE table in original units (``onepass.analysis.statistics.
build_tables``). ``--json PATH`` also writes ``{"wall_time_s", "runs", "table":
{algorithm: {"n", "diverged", "mean", "sem", "median", "best",
"mean_without_diverged", "sem_without_diverged"}}, ...}``.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    from onepass.sweep import DEFAULT_POPULATION_SIZE, PAPER_ALGORITHMS, run_sweep

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="uci_energy")
    parser.add_argument("--algorithms", nargs="+", default=list(PAPER_ALGORITHMS))
    parser.add_argument("--inits", type=int, default=200)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--population", choices=("auto", "off"), default="auto")
    parser.add_argument("--population-size", type=int, default=DEFAULT_POPULATION_SIZE)
    parser.add_argument("--no-compile", action="store_true",
                        help="leave training.compile off (default: on, as onepass reproduce does)")
    parser.add_argument("--no-tensorboard", action="store_true",
                        help="set logging.tensorboard=false (default: write events, as a real sweep)")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--root", type=Path, help="sweep folder (must not exist; default: temporary)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    temporary = args.root is None
    root = Path(tempfile.mkdtemp(prefix="onepass-sweep-bench-")) / "sweep" if temporary else args.root
    if not temporary and root.exists():
        parser.error(f"{root} exists; the benchmark needs a fresh folder")
    overrides = ["logging.tensorboard=false"] if args.no_tensorboard else []
    if not args.no_compile:
        overrides.append("training.compile=true")
    try:
        start = time.perf_counter()
        outcome = run_sweep(args.dataset, args.algorithms, args.inits, root, steps=args.steps,
                            workers=args.workers, population=args.population,
                            population_size=args.population_size, overrides=overrides,
                            data_dir=args.data_dir, progress=args.progress)
        wall = time.perf_counter() - start
        from onepass.analysis.runs import load_runs
        from onepass.analysis.statistics import build_tables
        runs = load_runs(root)
        (table,) = build_tables(runs)
        worker_seconds = _worker_seconds(runs)
    finally:
        if temporary:
            shutil.rmtree(root.parent, ignore_errors=True)

    member_steps = outcome.total * args.steps
    per_step_us = wall * args.workers / member_steps * 1e6
    rows = {}
    for row in table.rows:
        finished_mean, finished_sem = row.without_diverged
        rows[row.algorithm] = {"n": row.n, "diverged": row.diverged, "mean": _num(row.mean),
                               "sem": _num(row.sem), "median": _num(row.median),
                               "best": _num(row.best),
                               "mean_without_diverged": _num(finished_mean),
                               "sem_without_diverged": _num(finished_sem)}
    result = {
        "wall_time_s": wall, "runs": outcome.total, "counts": outcome.counts,
        "dataset": args.dataset, "inits": args.inits, "steps": args.steps,
        "workers": args.workers, "population": args.population,
        "population_size": args.population_size, "tensorboard": not args.no_tensorboard,
        "member_steps": member_steps, "core_us_per_member_step": per_step_us,
        "metric": table.metric, "table": rows, "worker_seconds": worker_seconds,
    }
    print(f"{args.dataset}: {outcome.total} runs × {args.steps} updates, {args.workers} workers, "
          f"population {args.population} (size {args.population_size}): {wall:.1f} s wall, "
          f"{per_step_us:.1f} core-µs per member-step; statuses {outcome.counts}")
    print(f"{'algorithm':22s} {'n':>4s} {'div':>4s} {'mean':>10s} {'sem':>9s} {'median':>10s} "
          f"{'best':>10s} {'mean-div':>10s} {'sem-div':>9s}   ({table.metric})")
    for name, r in rows.items():
        print(f"{name:22s} {r['n']:4d} {r['diverged']:4d} {_fmt(r['mean'])} {_fmt(r['sem'], 9)} "
              f"{_fmt(r['median'])} {_fmt(r['best'])} {_fmt(r['mean_without_diverged'])} "
              f"{_fmt(r['sem_without_diverged'], 9)}")
    print("worker-seconds per algorithm (population chunks: their wall time; single runs: theirs): "
          + ", ".join(f"{a} {t:.0f}" for a, t in worker_seconds.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _worker_seconds(runs) -> dict[str, float]:
    """Per algorithm, the time its tasks held a worker: a population chunk's wall
    time is its longest member's (diverged members stop their clocks early)."""
    chunks: dict[tuple, float] = {}
    for run in runs:
        population = run.record.population
        key = (run.algorithm, run.name if population is None
               else (run.init_index - population["member"]))
        chunks[key] = max(chunks.get(key, 0.0), run.wall_time_s or 0.0)
    out: dict[str, float] = {}
    for (algorithm, _), seconds in chunks.items():
        out[algorithm] = out.get(algorithm, 0.0) + seconds
    return out


def _num(value):
    return None if value is None or not math.isfinite(value) else float(value)


def _fmt(value, width=10):
    return f"{'—':>{width}s}" if value is None else f"{value:{width}.4g}"


if __name__ == "__main__":
    sys.exit(main())
