"""One training run that a search method drives window by window.

:class:`TrainingSession` is :func:`onepass.experiment.run.run_training` cut
into pieces a scheduler can call: :meth:`~TrainingSession.advance` takes a
number of weight updates and returns the losses at the end of them (the
validation loss on the WHOLE validation set), :meth:`~TrainingSession.state`
and :meth:`~TrainingSession.load_state` move the model, the tuner (optimiser
state and hyperparameters) and the batch order between trials, and
:meth:`~TrainingSession.set_hyperparameters` applies an explore step. It keeps a
run folder in the same format as ``run_training`` (``config.yaml``,
``metrics.csv``, ``summary.json``), so :mod:`onepass.analysis` reads a search's
trials like any other run.

It imports neither Ray nor any optimisation library: the Ray Tune trainable in
:mod:`onepass.search.ray_tune` wraps it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping


from onepass.experiment.checkpoint import loop_state, to_device
from onepass.experiment.config import LR_CLIP, load_config, resolve_config
from onepass.experiment.logging import METRICS, RunLogger, hyperparameter_summary, read_metrics
from onepass.experiment.loop import Member, TrainClock, TrainingLoop
from onepass.experiment.record import atomic_write_bytes, write_record
from onepass.experiment.runner import build_run, open_run, resolve_device

BASES = ("random_training_set_only", "ours_lr_momentum")
"""Algorithms a search may run inside each trial (the paper ran both)."""

SEARCH_SPACE = {"lr": (-6.0, -1.0), "weight_decay": (-7.0, -2.0), "momentum": (0.0, 1.0)}
"""The protocol's ranges: log10 lr, log10 weight decay, momentum (natural)."""

MOMENTUM_MAX = 1.0 - 1e-6
"""PBT clips momentum to [0, MOMENTUM_MAX]; a tuned momentum must also stay above 0."""

DIVERGED_SCORE = 1e6
"""The finite score of a diverged run (standardised targets: a sane MSE is O(1))."""


def trial_config(dataset: str, base: str, hyperparameters: Mapping[str, float], *, name: str,
                 steps: int, seed: int = 0, overrides=()) -> dict:
    """The resolved config of one trial: ``dataset`` + ``base`` algorithm, the
    trial's hyperparameters, ``algorithm.name = name`` (``bayesopt``, ``asha``, ``pbt``)."""
    hyper = clip_hyperparameters(hyperparameters, tuned=base != "random_training_set_only")
    return load_config([dataset, base], [
        (("algorithm", "name"), name), (("training", "steps"), int(steps)), (("seed",), int(seed)),
        (("logging", "tensorboard"), False),
        *[(("hyperparameters", k), float(v)) for k, v in hyper.items()], *overrides])


def clip_hyperparameters(hyperparameters: Mapping[str, float], *, tuned: bool) -> dict:
    """Keep values inside what a run accepts: lr in [1e-10, 1], weight decay ≥ 0
    (> 0 when tuned), momentum in [0, 1 − 1e-6] (> 0 when tuned)."""
    out = {}
    for name, value in hyperparameters.items():
        value = float(value)
        if name == "lr":
            value = min(max(value, LR_CLIP[0]), LR_CLIP[1])
        elif name == "momentum":
            value = min(max(value, 1e-6 if tuned else 0.0), MOMENTUM_MAX)
        elif name == "weight_decay":
            value = max(value, 1e-16 if tuned else 0.0)
        out[name] = value
    return out


def score(summary_or_loss) -> float:
    """A search's score of a run (lower is better): its final validation loss,
    or :data:`DIVERGED_SCORE` when it diverged or has no finite loss."""
    if isinstance(summary_or_loss, Mapping):
        if summary_or_loss.get("status") != "finished":
            return DIVERGED_SCORE
        summary_or_loss = (summary_or_loss.get("final") or {}).get("val_loss")
    try:
        value = float(summary_or_loss)
    except (TypeError, ValueError):
        return DIVERGED_SCORE
    return min(value, DIVERGED_SCORE) if math.isfinite(value) else DIVERGED_SCORE


class TrainingSession:
    """One trial's training run, advanced by a scheduler.

    Built like a single run (:func:`~onepass.experiment.loop.tuner_from_config`)
    and trained by the same :class:`~onepass.experiment.loop.TrainingLoop`; a
    log row is written where each :meth:`advance` stops.

    Args:
        config: a resolved config (see :func:`trial_config`); ``training.steps``
            is the most updates the trial may take.
        run_dir: its run folder.
        data_dir: dataset root.
        extra_summary: fields of the run record (e.g. ``search``, ``session``).
    """

    def __init__(self, config: Mapping, run_dir: str | os.PathLike, *, data_dir=None,
                 device: str = "cpu", extra_summary: Mapping | None = None):
        self.config = config = resolve_config(config)
        self.run_dir = Path(run_dir)
        self.device = resolve_device(device)
        if config["dataset"]["kind"] not in ("uci", "python"):
            raise ValueError("the search baselines run on the UCI datasets and on your own data "
                             "(dataset.kind python) only (for now)")
        if config["algorithm"]["validation"] != "split":
            raise ValueError("a search needs the validation split: use a base algorithm with "
                             "algorithm.validation: split")
        run = build_run(config, data_dir, self.device)
        self.task, self.model, self.tuner = run.task, run.model, run.tuner
        self.max_steps = config["training"]["steps"]
        self.events: list[dict] = []
        self.summary: dict[str, Any] = dict(extra_summary or {})
        """Record fields this session adds (``search``, ``session``, ...)."""
        member = open_run(config, self.run_dir, self.tuner.hyperparameters, self.device,
                          tensorboard=False)
        self._start = member.record
        self._open_loop(member, TrainClock(self.device, paused=True))
        self.write_summary()

    def _open_loop(self, member: Member, clock: TrainClock) -> None:
        multiplier = self.config["algorithm"]["lr_multiplier"]
        self.loop = TrainingLoop(self.config, self.task, self.model, self.tuner, [member], clock,
                                 multipliers=None if multiplier is None else [multiplier])

    # ------------------------------------------------------------ training

    @property
    def logger(self) -> RunLogger:
        return self.loop.members[0].logger

    @property
    def last_row(self) -> dict | None:
        return self.loop.members[0].last_row

    @property
    def status(self) -> str:
        outcome = self.loop.members[0].outcome
        if outcome is not None:
            return outcome["status"]
        return "finished" if self.steps >= self.max_steps else "running"

    @property
    def steps(self) -> int:
        return self.tuner.steps_taken

    @property
    def done(self) -> bool:
        return self.status != "running"

    def advance(self, updates: int) -> dict:
        """Take up to ``updates`` weight updates (never past ``training.steps``),
        log a row and return it: ``step``, losses (``val_loss`` on the whole
        validation set), ``train_seconds``, ``wall_time_s``, ``score`` and
        ``done``. After a divergence the row repeats the last finite losses
        with the bad score."""
        if self.status == "running":
            stop = min(self.steps + updates, self.max_steps)
            self.loop.clock.resume()
            try:
                self.loop.run(stop)
            finally:
                self.loop.clock.pause()
            member = self.loop.members[0]
            if member.outcome is None and (member.last_row or {}).get("step") != stop:
                self.loop.diverge(0, stop, "evaluation loss",
                                   f"non-finite loss at update {stop}", steps=stop)
            self.write_summary()
        row = dict(self.last_row or {"step": self.steps})
        row["wall_time_s"] = self.loop.clock.wall()
        row["score"] = score(row.get("val_loss")) if self.status in ("running", "finished") \
            else score(None)
        row["done"] = self.done
        return row

    def set_hyperparameters(self, **values: float) -> None:
        tuned = bool(self.tuner.tuned)
        self.tuner.set_hyperparameters(**clip_hyperparameters(values, tuned=tuned))

    # ---------------------------------------------------------- checkpoints

    def state(self) -> dict:
        """Model, tuner (optimiser state, hyperparameters), batch order, the
        metrics so far and the clocks: what a PBT exploit copies."""
        # Copied: Tuner.state_dict() shares the hyper-optimiser's tensors, and SGD
        # updates the weights in place, so an uncopied state would drift with this run.
        return {**loop_state(self.loop, copy=True),
                "hyperparameters": hyperparameter_summary(self.tuner.hyperparameters),
                "outcome": self.loop.members[0].outcome, "metrics": self._metrics_so_far(),
                "run_dir": str(self.run_dir), "events": list(self.events)}

    def _metrics_so_far(self) -> list:
        self.logger.flush()
        return read_metrics(self.run_dir) if (self.run_dir / METRICS).is_file() else []

    def load_state(self, state: Mapping, *, note: Mapping | None = None) -> None:
        """Continue from ``state`` (this trial's or another's): weights,
        optimiser state, hyperparameters, batch order, clocks, and the
        metrics history up to that point (``metrics.csv`` is rewritten)."""
        self.model.load_state_dict(state["model"])
        self.tuner.load_state_dict(to_device(state["tuner"], self.device))
        self.task.sampler.load_state_dict(state["sampler"])
        self.events = list(state.get("events", []))
        if note is not None:
            self.events.append(dict(note))
        self.logger.close()
        _write_metrics(self.run_dir / METRICS, self.logger.columns, state.get("metrics", []))
        logger = RunLogger(self.run_dir, self.tuner.hyperparameters, tensorboard=False,
                           resume_step=int(state["steps"]))
        clock = TrainClock(self.device, train_before=float(state["train_seconds"]),
                           wall_before=float(state["wall_time_s"]), paused=True)
        self._open_loop(Member(self.run_dir, logger, self._start, last_row=state["last_row"]), clock)
        self.loop.members[0].outcome = state.get("outcome")
        if state.get("outcome") is not None:
            self.loop.frozen[0] = True
        self.write_summary()

    # -------------------------------------------------------------- record

    def write_summary(self, **extra) -> dict:
        """Write the run record (status, final values, this session's fields and
        ``extra``); returns it as written."""
        self.summary.update(extra)
        if self.events:
            self.summary["events"] = self.events
        status = self.status
        (record,) = self.loop.finish(status, None)
        if status == "running":
            record = record.replace(finished_at=None)
        return write_record(self.run_dir, record.replace(**self.summary))

    def close(self, status: str | None = None) -> dict:
        """Finish the run folder. A trial stopped early by its scheduler is
        recorded as ``finished`` at the step it reached (``stopped_early``)."""
        stopped = self.status == "running"
        if stopped and status not in (None, "finished"):
            self.loop.members[0].outcome = {**self.loop.final_fields(
                self.loop.members[0], status, None, steps=self.steps,
                hyperparameters=self.tuner.hyperparameters)}
        elif stopped:
            self.max_steps = self.steps  # the scheduler's stop is this trial's end
        self.logger.close()
        return self.write_summary(stopped_early=stopped and status in (None, "finished"))


def _write_metrics(path: Path, columns, rows) -> None:
    lines = [",".join(columns)]
    for row in rows:
        values = []
        for c in columns:
            v = row.get(c)
            values.append("" if v is None else (str(int(v)) if c == "step" else repr(float(v))))
        lines.append(",".join(values))
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


__all__ = ["BASES", "DIVERGED_SCORE", "MOMENTUM_MAX", "SEARCH_SPACE", "TrainingSession",
           "clip_hyperparameters", "score", "trial_config"]
