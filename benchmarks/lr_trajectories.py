"""Why the recipe loses where it loses: the learning rate each method uses, update by update.

For each workload: onepass's learned lr (the recipe, or ``--onepass`` overrides)
with its validation loss at each hyperparameter step, Prodigy's effective rate
(``d x lr``), and Adam at fixed rates (the test loss each ends with, trained on
train+validation as in the suite), so the learned rate can be set against the
rate that works.

    python benchmarks/lr_trajectories.py --workloads mnist1d_cnn digits_cnn --json lr.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workloads import ALL, onepass_config, run  # noqa: E402
from workloads.base import baseline_optimizer, onepass_optimizer  # noqa: E402

FIXED_LRS = (1e-3, 3e-3, 1e-2, 3e-2)


def onepass_trajectory(name: str, seed: int, config: dict, every: int = 20) -> list[tuple[int, float, float]]:
    """(update, learned lr, validation loss) every ``every`` updates of the tuned stretch."""
    w = ALL[name]
    data = w.data
    model = w.model(seed)
    val = w.val_loss(model)
    opt = onepass_optimizer(model.parameters(), config, val, model)
    steps = w.steps - int(round(config.get("fold", 0.0) * w.steps))
    batches = w.batches(data.x_train, data.y_train, seed)
    out = []
    model.train()
    for t in range(steps):
        xb, yb = next(batches)
        opt.zero_grad()
        w.loss(model(xb), yb).backward(create_graph=opt.needs_graph)
        opt.step()
        if (t + 1) % every == 0:
            model.eval()
            with torch.no_grad():
                v = float(val())
            model.train()
            out.append((t + 1, opt.hyperparameters["lr/group0"], v))
    return out


def prodigy_trajectory(name: str, seed: int, every: int = 20) -> list[tuple[int, float]]:
    w = ALL[name]
    data = w.data
    model = w.model(seed)
    opt, _ = baseline_optimizer("prodigy", model.parameters(), w.steps)
    batches = w.batches(data.x_trainval, data.y_trainval, seed)
    out = []
    model.train()
    for t in range(w.steps):
        xb, yb = next(batches)
        opt.zero_grad()
        w.loss(model(xb), yb).backward()
        opt.step()
        if (t + 1) % every == 0:
            group = opt.param_groups[0]
            out.append((t + 1, float(group["d"] * group["lr"])))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", nargs="+", default=["mnist1d_cnn", "digits_cnn"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--onepass", type=json.loads, default={})
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    config = onepass_config(**args.onepass)
    result = {}
    for name in args.workloads:
        start = time.perf_counter()
        onepass = onepass_trajectory(name, args.seed, config)
        prodigy = prodigy_trajectory(name, args.seed)
        fixed = {lr: run(ALL[name], "grid", args.seed, ALL[name].steps, {"lr": lr})["test"] for lr in FIXED_LRS}
        result[name] = {"onepass": onepass, "prodigy": prodigy, "adam_fixed_lr_test": fixed}
        print(f"\n{name} ({time.perf_counter() - start:.0f} s)")
        print("  onepass learned lr / val loss:",
              ", ".join(f"{t}: {lr:.2e}/{v:.3f}" for t, lr, v in onepass[::max(1, len(onepass) // 10)]))
        print("  prodigy d*lr:", ", ".join(f"{t}: {lr:.2e}" for t, lr in prodigy[::max(1, len(prodigy) // 10)]))
        print("  Adam at a fixed lr, test loss:", ", ".join(f"{lr:g}: {v:.4f}" for lr, v in fixed.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
