"""Cost of the one-pass tuner on the paper's full-size models (synthetic data).

For each experiment (Fashion-MNIST MLP 784-50-10, batch 50; Penn Treebank
2-layer LSTM 650/650 over 10,000 words, 40 sequences × 70 tokens, gradient
clipping 0.25; CIFAR-10 ResNet-18, batch 100) it times ``--updates`` weight
updates of

* plain SGD: ``torch.optim.SGD`` (lr, momentum, weight decay) on the same
  model, with ``clip_grad_norm_`` for Penn Treebank;
* the :class:`~onepass.Tuner` with Ours (WD+LR+M): Neumann K=5, one
  hyperparameter update every 10 weight updates, tuning lr, momentum and
  weight decay (scalar values);
* the same Ours (WD+LR+M) through the optimizer front end,
  ``onepass.optim.SGD``, in the plain loop (``backward(create_graph=
  opt.needs_graph)``, ``clip_grad_norm_`` for Penn Treebank, ``opt.step()``;
  the validation loss, like the Tuner's, in train mode with the model's
  buffers left untouched);

on random data of the real shapes (no download), after ``--warmup`` untimed
updates, and prints the seconds per update and the ratios tuner / SGD (the
paper reports 2–3×) and optimizer / SGD. The three front ends are built
together and take their updates in turn (one update each, the order rotating),
so that a drift in machine speed hits them alike. With ``--repeats N`` that is
done N times on fresh models; the table gives medians, the JSON every sample;
``optim/tuner`` is the median of the per-repeat optimizer / tuner ratios and
``by position`` is the ratio of a window's cost built from the median time
of each update position in the window (1st, ..., 10th: the hyperstep), which
discounts bursts of a neighbour's load::

    python benchmarks/full_size.py --updates 100 --json bench.json
    python benchmarks/full_size.py --only cifar10 --updates 10 --repeats 3
    python benchmarks/full_size.py --only fashion_mnist cifar10 --device cuda
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call

import onepass.optim
from onepass.core import Tuner
from onepass.experiment.tasks import HiddenCarrier, lm_batch_loss
from onepass.models import MLP, LSTMLanguageModel, ResNet18

EXPERIMENTS = ("fashion_mnist", "penn_treebank", "cifar10")
HYPER = {"lr": 0.01, "momentum": 0.5, "weight_decay": 1e-4}
VOCAB, BPTT, SEQUENCES = 10_000, 70, 40


def setup(name: str, device, *, small: bool = False, seed: int = 0):
    """``(model, batch_loss, next_batch, next_val_batch, max_grad_norm)`` for one
    experiment on synthetic data; ``small`` shrinks the models (for testing this script)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if name == "fashion_mnist":
        model = MLP(784, [8] if small else [50], 10)

        def batch():
            return (torch.randn(50, 784, generator=g).to(device),
                    torch.randint(0, 10, (50,), generator=g).to(device))

        def batch_loss(forward, b):
            return F.cross_entropy(forward(b[0]), b[1])
        return model.to(device), batch_loss, batch, batch, None
    if name == "penn_treebank":
        vocab = 100 if small else VOCAB
        width = 8 if small else 650
        model = LSTMLanguageModel(vocab, width, width, 2)
        streams = {}

        def stream(key):
            carrier = streams.setdefault(key, HiddenCarrier())

            def next_window():
                tokens = torch.randint(0, vocab, (BPTT + 1, SEQUENCES), generator=g).to(device)
                return tokens[:-1], tokens[1:], carrier
            return next_window
        return model.to(device), lm_batch_loss, stream("train"), stream("valid"), 0.25
    if name == "cifar10":
        model = ResNet18(10, width=4 if small else 64)

        def batch():
            return (torch.randn(100, 3, 32, 32, generator=g).to(device),
                    torch.randint(0, 10, (100,), generator=g).to(device))

        def batch_loss(forward, b):
            return F.cross_entropy(forward(b[0]), b[1])
        return model.to(device), batch_loss, batch, batch, None
    raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")


def make_tuner(model, batch_loss, max_grad_norm, neumann_terms: int = 5) -> Tuner:
    """Ours (WD+LR+M) as in configs/ours_lr_momentum.yaml."""
    return Tuner(model, batch_loss=batch_loss, hyperparameters=dict(HYPER),
                 tune=("lr", "momentum", "weight_decay"), method="neumann",
                 neumann_terms=neumann_terms, update_interval=10, hyper_optimizer="adam",
                 hyper_lr=0.05, max_grad_norm=max_grad_norm)


def make_optimizer(model, batch_loss, val_batch, neumann_terms: int = 5) -> onepass.optim.SGD:
    """Ours (WD+LR+M) through ``onepass.optim.SGD``, with :func:`make_tuner`'s settings.

    The validation loss is the Tuner's: the model in its current (train) mode,
    on a copy of its buffers, so BatchNorm running statistics are not updated."""
    def forward(*args, **kwargs):
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        return functional_call(model, buffers, args, kwargs) if buffers else model(*args, **kwargs)
    return onepass.optim.SGD(model.parameters(), **HYPER, tune=("lr", "momentum", "weight_decay"),
                             method="neumann", neumann_terms=neumann_terms, update_interval=10,
                             hyper_optimizer="adam", hyper_lr=0.05, granularity={}, tune_after=0,
                             val_loss=lambda: batch_loss(forward, val_batch()))


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def sgd_stepper(name, device, small=False) -> Callable[[], None]:
    """One update of plain ``torch.optim.SGD`` on the experiment's model."""
    model, batch_loss, batch, _, clip = setup(name, device, small=small)
    optimizer = torch.optim.SGD(model.parameters(), **HYPER)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(model, batch())
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    return step


def tuner_stepper(name, device, small=False) -> Callable[[], None]:
    """One update of Ours (WD+LR+M) through the :class:`~onepass.Tuner`;
    ``step.steps_taken()`` counts them."""
    model, batch_loss, batch, val_batch, clip = setup(name, device, small=small)
    tuner = make_tuner(model, batch_loss, clip)

    def step():
        tuner.step(batch(), val_batch=val_batch)
    step.steps_taken = lambda: tuner.steps_taken
    return step


def optimizer_stepper(name, device, small=False) -> Callable[[], None]:
    """One update of Ours (WD+LR+M) through ``onepass.optim.SGD`` in the plain loop."""
    model, batch_loss, batch, val_batch, clip = setup(name, device, small=small)
    optimizer = make_optimizer(model, batch_loss, val_batch)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(model, batch())
        loss.backward(create_graph=optimizer.needs_graph)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    step.steps_taken = lambda: optimizer.steps_taken
    return step


STEPPERS = {"sgd": sgd_stepper, "tuner": tuner_stepper, "optimizer": optimizer_stepper}
WINDOW = 10   # make_tuner's update_interval


def measure(name, device, updates, warmup, small=False, fronts=tuple(STEPPERS)) -> dict[str, list[float]]:
    """Seconds of each of ``updates`` updates per front end. All are built
    first and warmed up (``warmup`` updates; the tuned ones then on to a
    window boundary, so whole windows are timed and hypersteps counted
    fairly); then they take their updates in turn, the order rotating by one
    each update, so that a drift in machine speed hits all of them alike."""
    steps = {front: STEPPERS[front](name, device, small) for front in fronts}
    for step in steps.values():
        for _ in range(warmup):
            step()
        while getattr(step, "steps_taken", lambda: 0)() % WINDOW:
            step()
    seconds = {front: [] for front in fronts}
    order = list(fronts)
    for u in range(updates):
        shift = u % len(order)
        for front in order[shift:] + order[:shift]:
            _sync(device)
            start = time.perf_counter()
            steps[front]()
            _sync(device)
            seconds[front].append(time.perf_counter() - start)
    return seconds


def time_sgd(name, device, updates, warmup, small=False) -> float:
    return sum(measure(name, device, updates, warmup, small, ("sgd",))["sgd"]) / updates


def time_tuner(name, device, updates, warmup, small=False) -> float:
    return sum(measure(name, device, updates, warmup, small, ("tuner",))["tuner"]) / updates


def time_optimizer(name, device, updates, warmup, small=False) -> float:
    return sum(measure(name, device, updates, warmup, small, ("optimizer",))["optimizer"]) / updates


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=100, help="timed updates per measurement "
                        "(default 100; a multiple of 10 counts whole tuner windows)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates first (default 2)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measurements of each front end, each on fresh models (default 1; medians)")
    parser.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--small", action="store_true", help="tiny models (to test the script)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    args = parser.parse_args(argv)
    if args.updates < 1:
        parser.error("--updates must be ≥ 1")
    if args.repeats < 1:
        parser.error("--repeats must be ≥ 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from onepass.experiment.run import resolve_device
    device = resolve_device(args.device)
    results = {}
    print(f"{'experiment':15s} {'SGD s/upd':>10s} {'tuner s/upd':>12s} {'ratio':>6s} "
          f"{'optim s/upd':>12s} {'ratio':>6s} {'optim/tuner':>12s} {'by position':>12s}")
    for name in args.only:
        samples = {front: [] for front in STEPPERS}   # seconds per update, one per repeat
        by_position = {front: [[] for _ in range(WINDOW)] for front in STEPPERS}
        updates = {front: [] for front in STEPPERS}   # every update's seconds, per repeat
        for _ in range(args.repeats):
            seconds = measure(name, device, args.updates, args.warmup, args.small)
            for front in STEPPERS:
                updates[front].append(seconds[front])
                samples[front].append(sum(seconds[front]) / args.updates)
                for u, t in enumerate(seconds[front]):   # timing starts on a window boundary
                    by_position[front][u % WINDOW].append(t)
        sgd, tuned, optim = (statistics.median(samples[front]) for front in STEPPERS)
        paired = statistics.median(o / t for o, t in zip(samples["optimizer"], samples["tuner"]))
        window = {front: sum(statistics.median(ts) for ts in positions if ts)
                  for front, positions in by_position.items()}
        each = window["optimizer"] / window["tuner"]
        results[name] = {"sgd_s_per_update": sgd, "tuner_s_per_update": tuned, "ratio": tuned / sgd,
                         "optimizer_s_per_update": optim, "optimizer_ratio": optim / sgd,
                         "optimizer_over_tuner": paired, "optimizer_over_tuner_by_position": each,
                         "samples": samples, "update_seconds": updates}
        print(f"{name:15s} {sgd:10.4f} {tuned:12.4f} {tuned / sgd:6.2f} {optim:12.4f} {optim / sgd:6.2f} "
              f"{paired:12.3f} {each:11.3f}", flush=True)
    if args.json:
        info = {"device": str(device), "threads": torch.get_num_threads(), "updates": args.updates,
                "repeats": args.repeats,
                "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                "small": args.small, "results": results}
        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
