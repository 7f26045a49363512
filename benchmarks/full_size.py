"""What onepass costs at its default budget, per model, against the bare optimizer.

For each model it builds ``torch.optim.AdamW`` (the bare optimizer) and
``onepass.optim.AdamW`` with the recipe's settings (tuning lr, the recipe's
``cost_budget``, 1.5 unless ``--budget``), on the same initial weights and
synthetic data of the real shapes (no download), each in the plain loop
(``zero_grad``, ``backward(create_graph=opt.needs_graph)``, ``clip_grad_norm_``
for Penn Treebank, ``step``). ``--rule sgd`` compares ``onepass.optim.SGD``
(Ours WD+LR+M: lr, momentum and weight decay tuned) with ``torch.optim.SGD``.

The models:

=================  ==============================================================
``fashion_mnist``  MLP 784-50-10, batch 50
``cifar10``        ResNet-18 on 3×32×32 images, batch 100 (``--size cpu``: width 16, batch 32)
``penn_treebank``  2-layer LSTM LM, 10,000 words, 40 sequences × 70 tokens, clip 0.25
                   (``cpu``: width 200, 20 × 35)
``gru_adding``     GRU (hidden 32) on the adding problem, length 40, batch 64
``gpt2_lm``        ``benchmarks/language_model.py``'s GPT-2-style LM, 4 × 256 tokens
                   (``cpu``: 2 layers, width 128, context 64, 2,048 words)
=================  ==============================================================

Per model: first the bare optimizer takes ``--warmup`` updates and onepass
runs alone until its budget has made its choice (its first windows are timed
by itself; running alone, nothing else in the loop inflates its own timings),
then on to a window boundary. Then both take ``--windows`` of onepass's
chosen windows of updates in turn, one update each, the order alternating,
so that a drift in machine speed hits both alike. Reported: seconds per
update of each, their ratio (onepass ÷ bare, to hold ≤ the budget), the
same ratio from medians (a window built from the median plain and closing
update of onepass over the bare optimizer's median update: it discounts a
neighbour's bursts on a shared machine), the interval chosen (the recipe's is
the least; shown chosen/recipe), the budget's own estimate of the ratio
from what it measured, and the run's start (its first window, the measured
windows and the catch-up, timed while running alone, less ``--warmup``
updates as the bare step's) as seconds per update over the bare step's, with
its number of updates::

    python benchmarks/full_size.py                         # every model, --size cpu on a CPU
    python benchmarks/full_size.py --only gru_adding --windows 5 --json out.json
    python benchmarks/full_size.py --device cuda --size full
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import onepass.optim
from onepass.experiment.tasks import HiddenCarrier, lm_batch_loss
from onepass.models import MLP, LSTMLanguageModel, ResNet18

sys.path.insert(0, str(Path(__file__).resolve().parent))
import language_model  # noqa: E402  (the GPT-2-style LM, one definition)

MODELS = ("fashion_mnist", "cifar10", "penn_treebank", "gru_adding", "gpt2_lm")
SIZES = ("full", "cpu", "tiny")
SGD_HYPER = {"lr": 0.01, "momentum": 0.5, "weight_decay": 1e-4}
ADAMW_HYPER = {"lr": 1e-3, "weight_decay": 1e-2}


class AddingGRU(nn.Module):
    """The adding problem's GRU: a sequence of (value, marker) pairs → the sum of
    the two marked values, read from the last hidden state."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.gru = nn.GRU(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.gru(x)[0][:, -1])


def adding_batch(batch: int, length: int, g: torch.Generator):
    values = torch.rand(batch, length, generator=g)
    marks = torch.zeros(batch, length)
    first = torch.randint(0, length // 2, (batch,), generator=g)
    second = torch.randint(length // 2, length, (batch,), generator=g)
    rows = torch.arange(batch)
    marks[rows, first] = marks[rows, second] = 1.0
    return torch.stack([values, marks], dim=-1), (values * marks).sum(1, keepdim=True)


def setup(name: str, device, size: str = "cpu", seed: int = 0):
    """``(model, loss, next_batch, next_val_batch, max_grad_norm)`` on synthetic data;
    ``loss(model, batch)`` is the training loss."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tiny, full = size == "tiny", size == "full"

    def on_device(*tensors):
        return tuple(t.to(device) for t in tensors)

    def cross_entropy(model, b):
        return F.cross_entropy(model(b[0]), b[1])

    if name == "fashion_mnist":
        model = MLP(784, [8] if tiny else [50], 10)

        def batch():
            return on_device(torch.randn(50, 784, generator=g), torch.randint(0, 10, (50,), generator=g))
        return model.to(device), cross_entropy, batch, batch, None
    if name == "cifar10":
        width, rows = (4, 8) if tiny else (64, 100) if full else (16, 32)
        model = ResNet18(10, width=width)

        def batch():
            return on_device(torch.randn(rows, 3, 32, 32, generator=g), torch.randint(0, 10, (rows,), generator=g))
        return model.to(device), cross_entropy, batch, batch, None
    if name == "penn_treebank":
        vocab, width, bptt, sequences = (100, 8, 10, 4) if tiny else (10_000, 650, 70, 40) if full \
            else (10_000, 200, 35, 20)
        model = LSTMLanguageModel(vocab, width, width, 2)
        streams = {}

        def stream(key):
            carrier = streams.setdefault(key, HiddenCarrier())

            def next_window():
                tokens = torch.randint(0, vocab, (bptt + 1, sequences), generator=g).to(device)
                return tokens[:-1], tokens[1:], carrier
            return next_window
        return model.to(device), lm_batch_loss, stream("train"), stream("valid"), 0.25
    if name == "gru_adding":
        length, hidden, rows = (10, 8, 16) if tiny else (40, 32, 64)
        model = AddingGRU(hidden)

        def batch():
            return on_device(*adding_batch(rows, length, g))

        def mse(model, b):
            return F.mse_loss(model(b[0]), b[1])
        return model.to(device), mse, batch, batch, None
    if name == "gpt2_lm":
        sizes = dict(n_layer=1, n_embd=32, n_head=2, n_positions=16, vocab_size=128) if tiny else {} if full \
            else dict(n_layer=2, n_embd=128, n_head=4, n_positions=64, vocab_size=2048)
        model = language_model.model(seed, **sizes)
        context, vocab = model.config.n_positions, model.config.vocab_size

        def batch():
            return torch.randint(0, vocab, (4, context), generator=g).to(device)

        def lm_loss(model, tokens):
            return model(tokens, labels=tokens).loss
        return model.to(device), lm_loss, batch, batch, None
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def stepper(name, device, size, rule, tuned: bool, budget):
    """One update of the bare optimizer or of onepass, in the plain loop; the
    returned function has ``.optimizer``."""
    model, loss, batch, val_batch, clip = setup(name, device, size)
    hyper = SGD_HYPER if rule == "sgd" else ADAMW_HYPER
    if not tuned:
        optimizer = (torch.optim.SGD if rule == "sgd" else torch.optim.AdamW)(model.parameters(), **hyper)
    else:
        cls = onepass.optim.SGD if rule == "sgd" else onepass.optim.AdamW
        extra = {} if budget is None else {"cost_budget": budget}
        optimizer = cls(model.parameters(), **hyper, val_loss=lambda: loss(model, val_batch()), model=model,
                        **extra)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss(model, batch()).backward(create_graph=getattr(optimizer, "needs_graph", False))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    step.optimizer = optimizer
    return step


def measure(name, device, size="cpu", rule="adamw", windows=3, warmup=3, budget=None) -> dict:
    """One interleaved run of the bare optimizer and onepass on model ``name``."""
    bare = stepper(name, device, size, rule, False, None)
    tuned = stepper(name, device, size, rule, True, budget)
    tuner = tuned.optimizer.tuner
    asked = tuner.update_interval
    for _ in range(warmup):
        bare()
    start_seconds, seen = 0.0, 0
    while tuner.cost_budget is not None and tuner.cost_budget.measuring:   # alone: its own timings
        _sync(device)
        began = time.perf_counter()
        tuned()
        _sync(device)
        seen += 1
        if seen > warmup:   # its first updates are its warm-up, as the bare step's are
            start_seconds += time.perf_counter() - began
    start_updates = max(seen - warmup, 0)
    while tuner.steps_taken == 0 or tuner.position(tuner.steps_taken) != tuner.update_interval:
        tuned()
    interval = tuner.update_interval
    seconds = {"bare": [], "onepass": []}
    fronts = (("bare", bare), ("onepass", tuned))
    for u in range(windows * interval):
        for front, step in (fronts if u % 2 == 0 else fronts[::-1]):
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            seconds[front].append(time.perf_counter() - start)
    assert tuner.update_interval == interval, "the budget's interval moved after its choice"
    bare_s, tuned_s = (sum(seconds[f]) / len(seconds[f]) for f in ("bare", "onepass"))
    # robust to a neighbour's bursts: a window from the medians of its plain and closing updates
    closes = [(u + 1) % interval == 0 for u in range(windows * interval)]
    tuned_plain = statistics.median(t for t, c in zip(seconds["onepass"], closes) if not c)
    tuned_closing = statistics.median(t for t, c in zip(seconds["onepass"], closes) if c)
    by_medians = ((interval - 1) * tuned_plain + tuned_closing) / (interval * statistics.median(seconds["bare"]))
    cost = tuner.cost_budget
    costs = None if cost is None else cost.costs()
    estimate = None if cost is None else cost.estimate(interval)
    measured = None if costs is None else {"plain_s": costs[0], "extra_s": costs[1]}
    # the run's start (the budget's first window, measured windows and catch-up, less as many
    # warm-up updates as the bare step had) against the bare step's interleaved cost: what the
    # catch-up keeps within the budget
    start_ratio = start_seconds / start_updates / bare_s if start_updates else None
    return {"bare_s_per_update": bare_s, "onepass_s_per_update": tuned_s, "ratio": tuned_s / bare_s,
            "start_updates": start_updates, "start_ratio": start_ratio,
            "ratio_by_medians": by_medians, "budget": None if cost is None else cost.ratio, "interval": interval,
            "recipe_interval": asked, "budget_estimate": estimate, "budget_measured": measured,
            "update_seconds": seconds, "hyperparameters": tuned.optimizer.hyperparameters}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--size", choices=SIZES, default=None,
                        help="full: the papers' sizes; cpu: smaller ones (default on a CPU); tiny: to test the script")
    parser.add_argument("--rule", choices=("adamw", "sgd"), default="adamw",
                        help="adamw (the recipe, default) or sgd (Ours WD+LR+M)")
    parser.add_argument("--budget", type=float, default=None, help="cost_budget (default: the recipe's)")
    parser.add_argument("--windows", type=int, default=3, help="timed windows of the chosen interval (default 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates of the bare optimizer first")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    args = parser.parse_args(argv)
    if args.windows < 1:
        parser.error("--windows must be ≥ 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from onepass.experiment.run import resolve_device
    device = resolve_device(args.device)
    size = args.size or ("cpu" if torch.device(device).type == "cpu" else "full")
    results = {}
    print(f"{'model':14s} {'bare s/upd':>11s} {'onepass s/upd':>14s} {'ratio':>6s} {'medians':>8s} {'budget':>7s} "
          f"{'interval':>8s} {'estimate':>9s} {'start':>13s}")
    for name in args.only:
        r = measure(name, device, size, args.rule, args.windows, args.warmup, args.budget)
        results[name] = r
        estimate = "-" if r["budget_estimate"] is None else f"{r['budget_estimate']:.2f}"
        budget = "-" if r["budget"] is None else f"{r['budget']:.2f}"
        start = "-" if r["start_ratio"] is None else f"{r['start_ratio']:.2f} ({r['start_updates']})"
        print(f"{name:14s} {r['bare_s_per_update']:11.4f} {r['onepass_s_per_update']:14.4f} {r['ratio']:6.2f} "
              f"{r['ratio_by_medians']:8.2f} {budget:>7s} {r['interval']:5d}/{r['recipe_interval']:<2d} {estimate:>9s} "
              f"{start:>13s}", flush=True)
    if args.json:
        info = {"device": str(device), "threads": torch.get_num_threads(), "size": size, "rule": args.rule,
                "windows": args.windows, "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(), "results": results}
        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
