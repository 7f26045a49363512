"""Search baselines against Ours (WD+LR+M) on UCI Energy, one repetition each.

    .venv/bin/python benchmarks/search.py [--budget-scale 1] [--trial-scale 1] [--json out.json]
        [--methods bayesopt asha pbt ours] [--long-dto-memory]

The paper's budget: Bayesian optimisation 5 random + 25 guided full runs of 4,000
updates; ASHA 100 trials and PBT a population of 20 (onepass defaults; the
protocol gives no counts), at most 4,000 updates a trial; Ours one run of 4,000
updates from a random initialisation drawn from the same ranges (seed --seed).
``--budget-scale`` multiplies the updates per run, ``--trial-scale`` the number
of evaluations / trials. Prints each method's final test MSE in original units
(the best trial by final validation loss, for the searches) and wall time (the
whole search: the sum of its runs' times, and the elapsed time with Ray's
parallel trials). ``--long-dto-memory`` also measures the peak RSS of long
Diff-through-Opt "Full" on UCI Energy (2 hyperparameter steps of 4,000 updates,
in a subprocess).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "onepass" / "data" / "files"  # the UCI copies shipped with onepass

MEMORY_SCRIPT = """
import resource, sys, time, torch
torch.set_num_threads(1)
from onepass.experiment.config import load_config
from onepass.experiment.run import run_training
n, k, data, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = load_config(["uci_energy", "long_dto_full"], [f"algorithm.update_interval={n}",
    f"algorithm.unroll_steps={n}", f"training.steps={n * k}", "logging.tensorboard=false"],
    random_init=0)
t = time.perf_counter()
s = run_training(c, out, data_dir=data, progress=False)
print(s["status"], time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-scale", type=float, default=1.0)
    p.add_argument("--trial-scale", type=float, default=1.0)
    p.add_argument("--methods", nargs="+", default=["ours", "bayesopt", "asha", "pbt"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=DATA)
    p.add_argument("--root", type=Path, help="keep the run folders here (default: a temp dir)")
    p.add_argument("--num-cpus", type=int, help="CPUs for Ray (default: all)")
    p.add_argument("--json", type=Path)
    p.add_argument("--long-dto-memory", action="store_true")
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    steps = max(10, int(round(4000 * args.budget_scale / 10)) * 10)
    count = lambda n: max(2, int(round(n * args.trial_scale)))  # noqa: E731
    root = args.root or Path(tempfile.mkdtemp(prefix="onepass-search-"))
    results = {"dataset": "energy", "updates_per_run": steps, "seed": args.seed, "methods": {}}

    def record(name, test, val, wall, elapsed, extra=None):
        results["methods"][name] = {"test_mse_unnormalised": test, "val_loss": val,
                                    "wall_time_s": wall, "elapsed_s": elapsed, **(extra or {})}
        print(f"{name:10s} test MSE {test:10.4g}   val loss {val:.4g}   runs' time {wall:8.1f} s"
              f"   elapsed {elapsed:8.1f} s", flush=True)

    if "ours" in args.methods:
        from onepass.experiment import load_config, run_training
        config = load_config(["uci_energy", "ours_lr_momentum"],
                             [f"training.steps={steps}", "logging.tensorboard=false"],
                             random_init=args.seed)
        t = time.perf_counter()
        s = run_training(config, root / "ours", data_dir=args.data_dir, progress=False)
        record("ours", s["final"]["test_loss_unnormalised"], s["final"]["val_loss"],
               s["wall_time_s"], time.perf_counter() - t, {"status": s["status"]})
    if "bayesopt" in args.methods:
        from onepass.search.bayesopt import run_bayesopt
        t = time.perf_counter()
        study = run_bayesopt(["uci_energy"], root / "bayesopt", init_points=count(5),
                             iterations=count(25), seed=args.seed,
                             overrides=[f"training.steps={steps}"], data_dir=args.data_dir)
        b = study["best"]
        record("bayesopt", b["test_loss_unnormalised"], b["val_loss"], study["wall_time_s"],
               time.perf_counter() - t, {"evaluations": study["completed"]})
    for method, n in (("asha", 100), ("pbt", 20)):
        if method not in args.methods:
            continue
        from onepass.search.ray_tune import run_ray_search
        t = time.perf_counter()
        study = run_ray_search(method, "uci_energy", root / method, num_samples=count(n),
                               max_steps=steps, seed=args.seed, data_dir=args.data_dir,
                               num_cpus=args.num_cpus,
                               perturbation_interval=max(10, steps // 40 // 10 * 10))
        b = study["best"]
        record(method, b["test_loss_unnormalised"], b["val_loss"], study["wall_time_s"],
               time.perf_counter() - t, {"trials": study["completed"], "updates": study["updates"],
                                         "errors": len(study["errors"])})
    if args.long_dto_memory:
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, "4000", "2", str(args.data_dir),
                              str(root / "long_dto_full")], capture_output=True, text=True, check=True)
        status, wall, rss_kib = out.stdout.split()
        results["long_dto_full_2x4000"] = {"status": status, "wall_time_s": float(wall),
                                           "peak_rss_gib": int(rss_kib) / 2 ** 20}
        print(f"long DTO Full, 2 x 4000 updates: {status}, {float(wall):.1f} s, peak RSS "
              f"{int(rss_kib) / 2 ** 20:.2f} GiB", flush=True)
    print(f"run folders under {root}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
