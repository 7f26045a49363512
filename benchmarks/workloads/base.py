"""A workload of the suite, the rows it is trained with, and the plain training loop.

A :class:`Workload` is a name, a kind, a metric, a data builder, a model
builder, a number of updates, a batch size and how the test loss (and
accuracy) is computed. Plain-loop workloads are trained by :func:`run`; a
workload that trains through a framework (Hugging Face ``Trainer``,
Lightning) gives its own ``train`` with the same contract.

Rows (:func:`baseline_optimizer` and :func:`onepass_run`), each at its
published defaults: ``adam`` (lr 1e-3), ``adamw`` (torch's defaults),
``adamw_cosine`` (AdamW, linear warm-up over the first 5% of the updates then
cosine decay to 0), ``prodigy`` (lr 1.0), ``schedulefree``
(``AdamWScheduleFree`` defaults, with ``train()``/``eval()``), ``sgd``
(lr 0.1, momentum 0.9); ``grid`` is Adam at a given lr and weight decay (the
``adam_grid`` row's settings). Baselines train on train+validation (the grid's
search runs train on train and are scored on validation). ``onepass`` is
``onepass.optim.AdamW(params, val_loss=...)`` with nothing else given and the
recipe's loop step (the fold); ``onepass_sgd`` is ``onepass.optim.SGD``'s.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

import onepass
import onepass.optim
from onepass.data.splits import Splits
from onepass.core.budget import MARGIN
from onepass.optim.recipe import recipe

BASELINES = ("adam", "adamw", "adamw_cosine", "prodigy", "schedulefree", "sgd")
WARMUP = 0.05          # adamw_cosine: the fraction of the updates spent warming up


@dataclass
class Data(Splits):
    """The three splits (:class:`onepass.data.splits.Splits`, with its
    ``x_trainval``/``y_trainval``); ``scale`` turns the loss into original units."""

    scale: float = 1.0
    info: dict = field(default_factory=dict)


@dataclass
class Workload:
    """One benchmark problem.

    ``kind`` is ``"regression"`` (MSE), ``"classification"`` (cross-entropy
    and accuracy) or ``"language_model"`` (cross-entropy per token of
    ``(batch, time, vocabulary)`` logits). ``batch`` None is full batch.
    ``train`` (optional) replaces the plain loop: ``train(workload, row, seed,
    steps, options) -> (model, seconds, finite, hyperparameters)``.
    """

    name: str
    kind: str
    build_data: Callable[[], Data]
    build_model: Callable[[int], nn.Module]
    steps: int
    batch: int | None = None
    family: str = ""
    reference: dict | None = None          # published figures to print next to ours
    train: Callable | None = None
    groups: Callable[[nn.Module], list] | None = None   # the optimizers' parameter groups, if not one
    _data: Data | None = field(default=None, repr=False)

    @property
    def metric(self) -> str:
        return "test_mse" if self.kind == "regression" else "test_cross_entropy"

    @property
    def data(self) -> Data:
        if self._data is None:
            self._data = self.build_data()
        return self._data

    def model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return self.build_model(seed)

    def parameters(self, model: nn.Module) -> list:
        """What every row's optimizer is given: ``groups(model)``, or all the parameters."""
        return self.groups(model) if self.groups is not None else list(model.parameters())

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "regression":
            return F.mse_loss(out, y)
        if self.kind == "language_model":
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        return F.cross_entropy(out, y)

    def batches(self, x, y, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Full batch, or shuffled mini-batches (dropping the last partial one), epoch after epoch."""
        if self.batch is None or self.batch >= len(x):
            while True:
                yield x, y
        g = torch.Generator().manual_seed(10_000 + seed)
        while True:
            order = torch.randperm(len(x), generator=g)
            for start in range(0, len(x) - self.batch + 1, self.batch):
                index = order[start:start + self.batch]
                yield x[index], y[index]

    def evaluate(self, model: nn.Module, x, y, chunk: int = 2048) -> tuple[float, float | None]:
        """(loss in original units, accuracy or None), in eval mode, in chunks."""
        was_training = model.training
        model.eval()
        total, correct = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(x), chunk):
                out = model(x[start:start + chunk])
                yb = y[start:start + chunk]
                total += float(self.loss(out, yb)) * len(yb)
                if self.kind == "classification":
                    correct += int((out.argmax(1) == yb).sum())
        model.train(was_training)
        loss = total / len(x) * self.data.scale
        return loss, (correct / len(x) if self.kind == "classification" else None)

    def val_loss(self, model: nn.Module) -> Callable[[], torch.Tensor]:
        """The zero-argument validation loss onepass is given (the whole validation split)."""
        data = self.data
        return lambda: self.loss(model(data.x_val), data.y_val)


# ----------------------------------------------------------------------------- optimizers

def warmup_cosine(steps: int) -> Callable[[int], float]:
    """LambdaLR factor: linear warm-up over WARMUP of the updates, then cosine to 0."""
    warm = max(1, int(round(WARMUP * steps)))

    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (t - warm) / max(1, steps - warm))))
    return factor


SCHEDULES = {"cosine": warmup_cosine}
"""A onepass row's ``schedule`` (an ablation): the LR scheduler its loop runs;
the optimizer learns a factor on it (learned lr x the scheduled factor)."""


def baseline_optimizer(row: str, params, steps: int, *, lr: float | None = None, weight_decay: float = 0.0):
    """(optimizer, LambdaLR factor or None) of a baseline row at its published defaults."""
    params = list(params)
    if row in ("adam", "grid"):
        return torch.optim.Adam(params, lr=1e-3 if lr is None else lr, weight_decay=weight_decay), None
    if row == "adamw":
        return torch.optim.AdamW(params), None
    if row == "adamw_cosine":
        return torch.optim.AdamW(params), warmup_cosine(steps)
    if row == "prodigy":
        from prodigyopt import Prodigy
        return Prodigy(params, lr=1.0), None
    if row == "schedulefree":
        from schedulefree import AdamWScheduleFree
        return AdamWScheduleFree(params), None
    if row == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9), None
    raise ValueError(f"unknown baseline row {row!r}")


def set_mode(opt, training: bool) -> None:
    """Schedule-free keeps two sequences of weights: train() and eval() switch them."""
    switch = getattr(opt, "train" if training else "eval", None)
    if callable(switch) and type(opt).__module__.startswith("schedulefree"):
        switch()


LOOP_KEYS = ("rule", "fold", "keep_best", "val_keep", "average", "guard", "guard_scope", "recipe", "budget_margin", "budget_hyper_step",
             "budget_measure", "schedule")
"""Keys of a onepass row's configuration that are not the optimizer's arguments:
the loop's step, the recipe's fingerprint and how the budget chooses."""


def onepass_config(rule: str = "adamw", **overrides) -> dict:
    """The onepass row's configuration: the optimizer's own defaults (no
    keyword arguments) and the recipe's loop step, plus ablation overrides; its
    ``recipe`` entry fingerprints the recipe's table, so the suite's cache never
    answers a changed recipe with an old run."""
    config = {"rule": rule, **recipe(rule).get("loop", {}), **overrides, "recipe": recipe_fingerprint(rule)}
    if config.get("guard"):   # where the guard acts decides a run (runs from before lack the key)
        config["guard_scope"] = "tuning and fold, the training loss each update"
    if config.get("cost_budget", recipe(rule)["settings"]["cost_budget"]) is not None:
        # how the budget chooses decides a run as much as its ratio: its margin, that a longer
        # window takes a proportionally longer hyper-step, how it measures (runs from before lack the keys)
        config["budget_margin"] = MARGIN
        config["budget_hyper_step"] = "scaled"
        # the measured windows lengthened as their timings ask, then a catch-up window
        config["budget_measure"] = "provisional+catch_up, its step the chosen window's"
    return config


def recipe_fingerprint(rule: str = "adamw") -> str:
    """The recipe table a onepass run used (part of its cache key, so a changed
    recipe never reads an old run)."""
    table = recipe(rule)
    return json.dumps({k: table[k] for k in ("values", "settings", "start") if k in table}, sort_keys=True, default=str)


def optimizer_overrides(config: dict) -> dict:
    """The optimizer's part of a :func:`onepass_config`."""
    return {k: v for k, v in config.items() if k not in LOOP_KEYS}


def integration_loop(config: dict) -> dict:
    """The loop step's settings a framework integration takes (``fold``,
    ``keep_best``), only where an ablation moves them from the recipe's: the
    recipe's own run is the integration's default use, given nothing."""
    loop = recipe(config.get("rule", "adamw")).get("loop", {})
    return {k: config[k] for k in ("fold", "keep_best") if k in config and config[k] != loop.get(k)}


def onepass_optimizer(params, config: dict, val_loss, model: nn.Module, start: dict | None = None):
    """The optimizer of a onepass row: ``config`` is :func:`onepass_config`'s."""
    rule = config.get("rule", "adamw")
    kwargs = {**optimizer_overrides(config), **(start or {})}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    cls = {"adamw": onepass.optim.AdamW, "adam": onepass.optim.Adam, "sgd": onepass.optim.SGD}[rule]
    return cls(list(params), val_loss=val_loss, model=model, **kwargs)


# ----------------------------------------------------------------------------- the plain loop

def _loop(workload: Workload, model, opt, steps: int, next_batch, schedule=None, graph=False,
          after_step=None) -> bool:
    """``steps`` updates on ``next_batch()``; False as soon as the training loss is not finite."""
    model.train()
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule) if schedule else None
    for _ in range(steps):
        xb, yb = next_batch()
        opt.zero_grad()
        loss = workload.loss(model(xb), yb)
        if not torch.isfinite(loss):
            return False
        loss.backward(create_graph=graph and opt.needs_graph)
        opt.step()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step(loss.detach())
    return True


def split_validation(data: Data, keep: float):
    """(x_train, y_train, x_val, y_val) with only the last ``keep`` of the
    validation split held out; the rest of it joins the training split."""
    n = len(data.x_val)
    k = max(1, int(round(keep * n)))
    if k >= n:
        return data.x_train, data.y_train, data.x_val, data.y_val
    return (torch.cat([data.x_train, data.x_val[:n - k]]), torch.cat([data.y_train, data.y_val[:n - k]]),
            data.x_val[n - k:], data.y_val[n - k:])


def train_loop(workload: Workload, row: str, seed: int, steps: int, options: dict):
    """Train one row through a plain PyTorch loop: (model, seconds, finite, hyperparameters)."""
    data = workload.data
    model = workload.model(seed)
    start = time.perf_counter()
    hyper = None
    if row in ("onepass", "onepass_sgd"):
        config = options["config"]
        x_train, y_train, x_val, y_val = split_validation(data, config.get("val_keep", 1.0))
        opt = onepass_optimizer(workload.parameters(model), config, lambda: workload.loss(model(x_val), y_val), model,
                                options.get("start"))
        fold = onepass.optim.Fold(opt, steps, fraction=config.get("fold", 0.0),
                                  keep_best=config.get("keep_best", False), model=model,
                                  average=config.get("average", 0.0), guard=config.get("guard"))
        train = workload.batches(x_train, y_train, seed)
        folded = workload.batches(data.x_trainval, data.y_trainval, seed + 1)
        finite = True
        try:
            finite = _loop(workload, model, opt, steps, lambda: next(folded if fold.folded else train),
                           schedule=SCHEDULES[config["schedule"]](steps) if config.get("schedule") else None,
                           graph=True, after_step=fold.step)
        except onepass.NonFiniteError:
            finite = False
        hyper = {**opt.hyperparameters, **({"backoffs": fold.backoffs} if fold.guard is not None else {})}
    else:
        on_train = options.get("on_train", False)
        x, y = (data.x_train, data.y_train) if on_train else (data.x_trainval, data.y_trainval)
        opt, schedule = baseline_optimizer(row, workload.parameters(model), steps, lr=options.get("lr"),
                                           weight_decay=options.get("weight_decay", 0.0))
        set_mode(opt, True)
        batches = workload.batches(x, y, seed)
        finite = _loop(workload, model, opt, steps, lambda: next(batches), schedule)
        set_mode(opt, False)
    return model, time.perf_counter() - start, finite, hyper


def _finite(value):
    return value if value is not None and math.isfinite(value) else None


def run(workload: Workload, row: str, seed: int, steps: int, options: dict | None = None) -> dict:
    """One run's record: test (and validation) loss, accuracy, seconds, learned values."""
    options = options or {}
    torch.set_num_threads(1)
    train = workload.train or train_loop
    model, seconds, finite, hyper = train(workload, row, seed, steps, options)
    data = workload.data
    test, accuracy = workload.evaluate(model, data.x_test, data.y_test)
    val, _ = workload.evaluate(model, data.x_val, data.y_val)
    record = {"test": _finite(test) if finite else None, "val": _finite(val) if finite else None,
              "seconds": seconds}
    if accuracy is not None:
        record["accuracy"] = accuracy if finite else None
    if hyper is not None:
        record["hyperparameters"] = {k: float(v) for k, v in hyper.items()}
    return record
