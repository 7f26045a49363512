"""Wall time of one full run per algorithm on UCI Energy, and its ratio to Random.

Every run is measured in this one process (one thread, no progress bar, the
run's own logging and TensorBoard on, as a user's run would be), after one
short warm-up run per algorithm that pays the one-off import costs::

    python benchmarks/runs.py [--steps 4000] [--repeats 1] [--json out.json] [--data-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from onepass.data.paths import PACKAGED_DATA_DIR
from onepass.experiment import ALGORITHMS, load_config, run_training


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="weight updates per run (default 4000)")
    parser.add_argument("--data-dir", type=Path, default=PACKAGED_DATA_DIR,
                        help="dataset root (default: the UCI copies shipped with onepass)")
    parser.add_argument("--dataset", default="uci_energy", help="dataset config (default uci_energy)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per algorithm, the fastest counts (default 1)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in ALGORITHMS:  # warm-up: one-off imports and allocator growth
            warm = load_config([args.dataset, algorithm], ["training.steps=20"])
            run_training(warm, Path(tmp) / f"warm-{algorithm}", data_dir=args.data_dir,
                         progress=False)
        for repeat in range(args.repeats):
            for algorithm in ALGORITHMS:
                config = load_config([args.dataset, algorithm], [f"training.steps={args.steps}"])
                start = time.perf_counter()
                summary = run_training(config, Path(tmp) / f"{algorithm}-{repeat}",
                                       data_dir=args.data_dir, progress=False)
                elapsed = time.perf_counter() - start
                seconds[algorithm] = min(seconds.get(algorithm, elapsed), elapsed)
                if summary["status"] != "finished":
                    print(f"warning: {algorithm} {summary['status']}", file=sys.stderr)
    ratios = {name: t / seconds["random"] for name, t in seconds.items()}
    print(f"{args.dataset}, {args.steps} updates, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'algorithm':<26} {'seconds':>8} {'× random':>9}")
    for name in ALGORITHMS:
        print(f"{name:<26} {seconds[name]:8.2f} {ratios[name]:9.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"seconds": seconds, "ratios": ratios}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
