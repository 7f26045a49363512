"""How many onepass calls one hyperparameter step makes, and across which files.

Profiles (``sys.setprofile``) one update that closes a window, i.e. one
weight update with its hyperparameter step, in two front ends on the same
small MLP: ``onepass.optim.SGD.step()`` (the user's ``backward`` is outside
the profile) and ``Tuner.step()``. It counts

* **calls**: every call of a function defined in the ``onepass`` package;
* **cross-file**: calls whose caller is a onepass function in another file;
* **core → optim**: calls from a function in ``onepass/core`` into one in
  ``onepass/optim`` (the core must not know its front ends: the target is 0).

    python benchmarks/call_graph.py [--json PATH]
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.functional import mse_loss

import onepass
import onepass.optim

PACKAGE = str(Path(onepass.__file__).resolve().parent) + "/"
HYPER = dict(lr=1e-2, momentum=0.5, weight_decay=1e-4)
INTERVAL = 4


def _relative(filename: str) -> str | None:
    path = str(Path(filename).resolve()) if not filename.startswith("<") else filename
    return path[len(PACKAGE):] if path.startswith(PACKAGE) else None


class Counter:
    """Counts onepass calls under ``sys.setprofile``."""

    def __init__(self):
        self.calls = 0
        self.cross = 0
        self.core_to_optim = 0
        self.edges: collections.Counter = collections.Counter()
        self._files: dict[str, str | None] = {}

    def _file(self, code) -> str | None:
        name = code.co_filename
        if name not in self._files:
            self._files[name] = _relative(name)
        return self._files[name]

    def __call__(self, frame, event, arg):
        if event != "call":
            return
        callee = self._file(frame.f_code)
        if callee is None:
            return
        self.calls += 1
        back = frame.f_back
        caller = self._file(back.f_code) if back is not None else None
        if caller is None or caller == callee:
            return
        self.cross += 1
        self.edges[(caller, callee)] += 1
        if caller.startswith("core/") and callee.startswith("optim/"):
            self.core_to_optim += 1

    def result(self) -> dict:
        return {"calls": self.calls, "cross_file": self.cross, "core_to_optim": self.core_to_optim,
                "edges": {f"{a} -> {b}": n for (a, b), n in self.edges.most_common()}}


def _profiled(fn) -> dict:
    counter = Counter()
    sys.setprofile(counter)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return counter.result()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


def _data():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g),
            torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g))


def optimizer_step() -> dict:
    """One closing update of ``onepass.optim.SGD`` (after a first, unprofiled window)."""
    model = _model()
    x, y, xv, yv = _data()
    opt = onepass.optim.SGD(model.parameters(), **HYPER, tune=("lr", "momentum", "weight_decay"),
                            method="neumann", update_interval=INTERVAL, cost_budget=None,
                            val_loss=lambda: mse_loss(model(xv), yv))
    for t in range(2 * INTERVAL):
        opt.zero_grad()
        mse_loss(model(x), y).backward(create_graph=opt.needs_graph)
        if t == 2 * INTERVAL - 1:
            return _profiled(opt.step)
        opt.step()
    raise AssertionError("unreachable")


def tuner_step() -> dict:
    """One closing update of ``Tuner.step`` (after a first, unprofiled window)."""
    model = _model()
    x, y, xv, yv = _data()
    tuner = onepass.Tuner(model, mse_loss, hyperparameters=HYPER, method="neumann", update_interval=INTERVAL)
    for t in range(2 * INTERVAL):
        if t == 2 * INTERVAL - 1:
            return _profiled(lambda: tuner.step((x, y), (xv, yv)))
        tuner.step((x, y), (xv, yv))
    raise AssertionError("unreachable")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="PATH", help="also write the counts (with every cross-file edge)")
    parser.add_argument("--edges", type=int, default=10, help="cross-file edges to print per front end")
    args = parser.parse_args(argv)
    result = {"onepass.optim.SGD.step": optimizer_step(), "Tuner.step": tuner_step()}
    print("one hyperparameter step (the closing update of a window), onepass calls:")
    print(f"{'front end':<24}{'calls':>8}{'cross-file':>12}{'core->optim':>13}")
    for name, counts in result.items():
        print(f"{name:<24}{counts['calls']:>8}{counts['cross_file']:>12}{counts['core_to_optim']:>13}")
    for name, counts in result.items():
        print(f"\n{name}: most frequent cross-file edges")
        for edge, n in list(counts["edges"].items())[:args.edges]:
            print(f"  {n:>4}  {edge}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
