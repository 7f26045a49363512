"""The one training loop of the paper's runs, and the one config → Tuner mapping.

Single runs (:func:`onepass.experiment.run.run_training`), population members
(:func:`onepass.sweep.population.train_population`) and search trials
(:class:`onepass.search.trainable.TrainingSession`) all build their
:class:`~onepass.core.Tuner` with :func:`tuner_from_config` and train with
:class:`TrainingLoop`, which follows a batch from data to loss to update to log::

    for step in steps_done+1 .. stop:
        result = tuner.step(train_batch, val_batch)   # weight update (+ hyper update)
        [divergence: a single run stops; a population member is frozen and recorded]
        [stepped lr: lr *= multiplier at the end of each window, clipped]
        [log step (every logging.interval, and at stop): losses, hyperparameters, clock]
        [checkpoint step: the caller's checkpoint function]

A loop trains one run, or ``P`` members of one population (the Tuner then
steps all of them at once); each member has its own run folder, logger and
:class:`~onepass.experiment.record.RunRecord`. The clock is
:class:`TrainClock` (what it measures: :data:`onepass.experiment.record.CLOCK`).
"""
from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from onepass.core import NonFiniteError, Tuner
from onepass.experiment.config import LR_CLIP
from onepass.experiment.logging import LOSS_COLUMNS, RunLogger, hyperparameter_summary, versions
from onepass.experiment.record import RunRecord, write_record

FINAL_KEYS = ("train_loss", "val_loss", "test_loss", "test_loss_unnormalised")


# ------------------------------------------------------------ config → tuner

def tuner_from_config(config: Mapping, model: torch.nn.Module, loss: Mapping[str, Any], *,
                      members: Sequence[Mapping] | None = None) -> Tuner:
    """The :class:`~onepass.core.Tuner` a resolved ``config`` describes.

    Args:
        config: a resolved config (for a population: the members' shared part).
        model: the model (for a population: the stacked population model).
        loss: the Tuner's loss keyword (``{"loss_fn": ...}`` or ``{"batch_loss": ...}``,
            e.g. :meth:`onepass.experiment.tasks.Task.tuner_loss`).
        members: for a population, the members' configs: the Tuner gets
            ``population=len(members)`` and per-member initial hyperparameters.
    """
    algo, training = config["algorithm"], config["training"]
    if members is None:
        hyperparameters, population = dict(config["hyperparameters"]), None
    else:
        hyperparameters = {k: [m["hyperparameters"][k] for m in members]
                           for k in config["hyperparameters"]}
        population = len(members)
    method = algo["method"]
    return Tuner(
        model, **loss, rule=training["rule"], hyperparameters=hyperparameters,
        tune=tuple(algo["tune"]), granularity=dict(algo["granularity"]) or None,
        method="neumann" if method == "none" else method, neumann_terms=algo["neumann_terms"],
        unroll_steps=algo["unroll_steps"], update_interval=algo["update_interval"],
        hyper_optimizer=algo["hyper_optimizer"], hyper_lr=algo["hyper_lr"], lr_bounds=LR_CLIP,
        max_grad_norm=training["max_grad_norm"], reset_each_window=algo["reset_each_window"],
        reset_optimizer_state=algo["reset_optimizer_state"], compile=training["compile"],
        population=population, cost_budget=algo["cost_budget"])


def step_learning_rate(tuner: Tuner, multipliers: Sequence[float],
                       frozen: Sequence[bool] | None = None) -> None:
    """The stepped learning rate: ``lr ← clip(lr × multiplier, 1e-10, 1)``, called
    at the end of each window; one multiplier per member (a single run: one),
    frozen (diverged) members keep theirs."""
    def stepped(lr, multiplier):
        return min(max(lr * multiplier, LR_CLIP[0]), LR_CLIP[1])

    if tuner.population is None:
        tuner.set_hyperparameters(lr=stepped(tuner.hyperparameters["lr"], multipliers[0]))
        return
    tuner.set_hyperparameters(lr=[
        lr if frozen is not None and frozen[m] else stepped(lr, multipliers[m])
        for m, lr in enumerate(tuner.hyperparameters["lr"])])


# --------------------------------------------------------------------- clock

class TrainClock:
    """``train_seconds`` and ``wall_time_s`` of a run (see :data:`~onepass.experiment.record.CLOCK`).

    :meth:`start_step` / :meth:`end_step` bracket one training step; a step
    is not counted when it is the first of its kind (weight update only, or
    with a hyperparameter update) in this process, which holds compilation
    and warm-up. The counted time is divided by ``share`` (a population's
    members). On CUDA the device is synchronised at both ends.
    """

    def __init__(self, device: torch.device, *, share: int = 1, train_before: float = 0.0,
                 wall_before: float = 0.0, paused: bool = False):
        self.cuda = device if device.type == "cuda" else None
        self.share = share
        self.train_before, self.wall_before = train_before, wall_before
        self.measured = 0.0
        self.seen: set[bool] = set()
        self.started = None if paused else time.perf_counter()

    def pause(self) -> None:
        """Stop the wall clock (a search trial between two of its scheduler's calls)."""
        if self.started is not None:
            self.wall_before += time.perf_counter() - self.started
            self.started = None

    def resume(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def _now(self) -> float:
        if self.cuda is not None:
            torch.cuda.synchronize(self.cuda)
        return time.perf_counter()

    def start_step(self) -> float:
        return self._now()

    def end_step(self, started: float, result) -> None:
        kind = result.hypergradient is not None
        elapsed = self._now() - started
        if kind in self.seen:
            self.measured += elapsed
        self.seen.add(kind)

    @property
    def train_seconds(self) -> float:
        return self.train_before + self.measured / self.share

    def wall(self) -> float:
        running = 0.0 if self.started is None else time.perf_counter() - self.started
        return self.wall_before + running


# --------------------------------------------------------------------- loop

@dataclass
class Member:
    """One run inside a loop: its folder, logger, record and progress."""

    run_dir: Path
    logger: RunLogger
    record: RunRecord
    last_row: dict | None = None
    outcome: dict | None = None   # a diverged member's final record fields


def logged_hyperparameters(tuner: Tuner, hyperparameters: Mapping) -> dict:
    """What a run logs with its hyperparameters: ``hyperparameters``, plus the
    hyperparameter step's ``interval`` (in updates, as the cost budget chose
    it; the asked-for one until then) when the tuner has a cost budget."""
    if getattr(tuner, "cost_budget", None) is None:
        return dict(hyperparameters)
    return {**hyperparameters, "interval": float(tuner.update_interval)}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def start_record(config: Mapping, run_dir: Path, device, **fields) -> RunRecord:
    """A ``running`` record for ``config``'s run in ``run_dir``."""
    return RunRecord(status="running", algorithm=config["algorithm"]["name"],
                     dataset=config["dataset"]["name"], seed=config["seed"],
                     steps_planned=config["training"]["steps"], started_at=now(),
                     run_dir=str(run_dir), device=str(device), versions=versions(), **fields)


class TrainingLoop:
    """The schedule of one run or one population (see the module docs).

    Args:
        config: the resolved config (a population: the members' shared part).
        task: its :class:`~onepass.experiment.tasks.Task` (data, batches, evaluation).
        model, tuner: as built by ``task.build_model`` and :func:`tuner_from_config`.
        members: one :class:`Member` per run (a single run: one).
        clock: the run's :class:`TrainClock`.
        multipliers: per member ``algorithm.lr_multiplier`` (``None``: no stepped lr).
        log_every: updates between log rows (``None``: rows only where :meth:`run` stops).
        checkpoint_every, checkpoint: call ``checkpoint()`` every so many updates
            (before the last).
        bar: a tqdm bar (or ``None``).
    """

    def __init__(self, config: Mapping, task, model, tuner: Tuner, members: list[Member],
                 clock: TrainClock, *, multipliers: Sequence[float] | None = None,
                 log_every: int | None = None, checkpoint_every: int | None = None,
                 checkpoint: Callable[[], None] | None = None, bar=None):
        self.config, self.task, self.model, self.tuner = config, task, model, tuner
        self.members, self.clock = members, clock
        self.multipliers = multipliers
        self.log_every = log_every
        self.checkpoint_every, self.checkpoint = checkpoint_every, checkpoint
        self.bar = bar
        self.population = tuner.population
        self.frozen = torch.zeros(len(members), dtype=torch.bool)
        self.metric_columns = [m for m in task.metrics if m not in LOSS_COLUMNS]

    @property
    def live(self) -> bool:
        return not bool(self.frozen.all())

    def run(self, stop: int) -> None:
        """Train up to update ``stop`` (or until every member diverged). The row at
        ``stop`` evaluates the whole training set (the others take the batch's loss)."""
        tuner, task, window = self.tuner, self.task, self.tuner.update_interval
        for step in range(tuner.steps_taken + 1, stop + 1):
            started = self.clock.start_step()
            try:
                result = tuner.step(task.sampler.next(), val_batch=task.val_batch)
            except NonFiniteError as err:  # a single run: recorded, the loop ends
                self.diverge(0, err.step, err.quantity, str(err), steps=tuner.steps_taken)
                return
            if self.population is not None and not self._check_members(result, step):
                return
            if self.multipliers is not None and step % window == 0:
                step_learning_rate(tuner, self.multipliers, self.frozen)
            self.clock.end_step(started, result)
            if step == stop or (self.log_every is not None and step % self.log_every == 0):
                self.log(step, None if step == stop else result.loss)
            if self.checkpoint is not None and step % self.checkpoint_every == 0 \
                    and step < self.config["training"]["steps"]:
                self.checkpoint()
            if self.bar is not None:
                self.bar.update(1)

    def log(self, step: int, batch_loss) -> None:
        """One log row per live member at the current weights; ``batch_loss`` ``None``
        evaluates the whole training set."""
        train = None if batch_loss is None else (
            batch_loss.item() if self.population is None else batch_loss.tolist())
        losses = self.task.losses_now(self.model, train)
        hyper = self.hyperparameters()
        for m, member in enumerate(self.members):
            if self.frozen[m]:
                continue
            row = {"step": step, **{k: _member_value(v, m, self.population)
                                    for k, v in losses.items()},
                   "train_seconds": self.clock.train_seconds}
            row = member.logger.log(row, hyper[m])
            if all(v is None or math.isfinite(v) for v in row.values()):
                member.last_row = row
        if self.bar is not None and self.population is None and self.members[0].last_row:
            self.bar.set_postfix(_postfix(self.members[0].last_row, hyper[0]), refresh=False)

    def hyperparameters(self) -> list[dict]:
        """Per member, the tuner's hyperparameters as its run records them."""
        if self.population is None:
            return [logged_hyperparameters(self.tuner, self.tuner.hyperparameters)]
        return [logged_hyperparameters(self.tuner, h)
                for h in per_member(self.tuner, self.tuner.hyperparameters, self.population)]

    def _check_members(self, result, step: int) -> bool:
        """Record members that diverged at ``step``; ``False`` once all have."""
        diverged = self.tuner.diverged.cpu()
        newly = diverged & ~self.frozen
        if not bool(newly.any()):
            return True
        loss = result.loss.detach().cpu()
        val = None if result.val_loss is None else result.val_loss.detach().cpu()
        for m in torch.nonzero(newly).flatten().tolist():
            if not math.isfinite(loss[m]):
                quantity = "training loss"
            elif val is not None and not math.isfinite(val[m]):
                quantity = "validation loss"
            else:
                quantity = "hypergradient"
            self.diverge(m, step, quantity, str(NonFiniteError(quantity, step)), steps=step - 1)
        return self.live

    def diverge(self, m: int, step: int, quantity: str, error: str, *, steps: int) -> None:
        """Record member ``m`` as diverged at update ``step`` (after ``steps`` updates) and freeze it."""
        member = self.members[m]
        member.outcome = self.final_fields(member, "diverged", error, steps=steps,
                                            hyperparameters=self.hyperparameters()[m])
        member.outcome["diverged"] = {"step": step, "quantity": quantity}
        self.frozen[m] = True

    def final_fields(self, member: Member, status: str, error: str | None, *, steps: int,
                      hyperparameters: Mapping) -> dict:
        """The record fields a run ends with: ``final`` from its last finite row, the clocks now."""
        row = member.last_row
        keys = (*FINAL_KEYS, *(k for k in self.task.metrics if k not in FINAL_KEYS))
        return {"status": status, "error": error, "diverged": None, "steps": steps,
                "final": {k: None if row is None else row.get(k) for k in keys},
                "final_step": None if row is None else int(row["step"]),
                "hyperparameters": hyperparameter_summary(hyperparameters),
                "train_seconds": self.clock.train_seconds, "wall_time_s": self.clock.wall(),
                "finished_at": now()}

    def finish(self, status: str, error: str | None = None) -> list[RunRecord]:
        """Every member's final record (a diverged member's as it was when it
        diverged), stored in ``member.record`` (not written)."""
        hyper = self.hyperparameters()
        for m, member in enumerate(self.members):
            fields = member.outcome or self.final_fields(
                member, status, error, steps=self.tuner.steps_taken, hyperparameters=hyper[m])
            member.record = member.record.replace(**fields)
        return [member.record for member in self.members]

    def write_records(self) -> None:
        for member in self.members:
            write_record(member.run_dir, member.record)

    def close(self) -> None:
        for member in self.members:
            member.logger.close()


def _member_value(value, m: int, population: int | None):
    return value[m] if population is not None and isinstance(value, list) else value


def per_member(tuner: Tuner, values: Mapping[str, Any], P: int) -> list[dict]:
    """Per member, a population tuner's hyperparameter ``values`` as its run
    records them (a float, a list per group or tensor, and per-weight values
    as one flat tensor: logs and records keep statistics and histograms,
    which do not depend on the layout), sliced from one batched copy."""
    out: list[dict] = [{} for _ in range(P)]
    for name, value in values.items():
        kind = tuner.granularity[name]
        if kind == "scalar":
            values_m = [float(v) for v in value]
        elif kind == "weight":
            values_m = list(torch.cat([t.detach().reshape(P, -1) for t in value], 1).double().cpu())
        else:
            values_m = [[float(v[m]) for v in value] for m in range(P)]
        for m in range(P):
            out[m][name] = values_m[m]
    return out


def _postfix(row: Mapping, hyper: Mapping) -> dict:
    out = {"loss": f"{row['train_loss']:.3g}"}
    if row.get("val_loss") is not None:
        out["val"] = f"{row['val_loss']:.3g}"
    out["test"] = f"{row['test_loss']:.3g}"
    for name, value in hyperparameter_summary(hyper).items():
        out[name] = f"{value['mean'] if isinstance(value, dict) else value:.3g}"
    return out


@contextmanager
def sigterm_raises_keyboard_interrupt():
    """While running, SIGTERM raises KeyboardInterrupt (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["Member", "TrainClock", "TrainingLoop", "per_member", "sigterm_raises_keyboard_interrupt",
           "start_record",
           "step_learning_rate", "tuner_from_config"]
