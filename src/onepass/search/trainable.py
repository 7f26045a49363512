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
import time
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from onepass.core import NonFiniteError, Tuner
from onepass.data.uci import load_uci
from onepass.experiment.config import LR_CLIP, load_config, resolve_config
from onepass.experiment.logging import (
    METRICS, RunLogger, atomic_write_bytes, hyperparameter_summary, read_metrics, versions,
    write_config, write_summary,
)
from onepass.experiment.run import BatchSampler, _final_summary, _now, resolve_device
from onepass.models import build_model

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

    Args:
        config: a resolved config (see :func:`trial_config`); ``training.steps``
            is the most updates the trial may take.
        run_dir: its run folder.
        data_dir: dataset root.
        extra_summary: keys added to every ``summary.json`` (e.g. ``search``).
    """

    def __init__(self, config: Mapping, run_dir: str | os.PathLike, *, data_dir=None,
                 device: str = "cpu", extra_summary: Mapping | None = None):
        self.config = config = resolve_config(config)
        self.run_dir = Path(run_dir)
        self.device = resolve_device(device)
        algo = config["algorithm"]
        self.data = data = load_uci(config["dataset"]["name"], data_dir,
                                    shuffle_seed=config["dataset"]["shuffle_seed"]).to(self.device)
        if config["dataset"]["kind"] != "uci":
            raise ValueError("the search baselines run on the UCI datasets only (for now)")
        if algo["validation"] != "split":
            raise ValueError("a search needs the validation split: use a base algorithm with "
                             "algorithm.validation: split")
        torch.manual_seed(config["seed"])
        self.model = build_model(_model_spec(config["model"]), data.n_inputs, 1).to(self.device)
        method = algo["method"]
        self.tuner = Tuner(
            self.model, F.mse_loss, rule=algo["rule"], hyperparameters=dict(config["hyperparameters"]),
            tune=tuple(algo["tune"]), granularity=dict(algo["granularity"]) or None,
            method="neumann" if method == "none" else method, neumann_terms=algo["neumann_terms"],
            unroll_steps=algo["unroll_steps"], update_interval=algo["update_interval"],
            hyper_optimizer=algo["hyper_optimizer"], hyper_lr=algo["hyper_lr"], lr_bounds=LR_CLIP,
            reset_each_window=algo["reset_each_window"])
        self.sampler = BatchSampler(data.x_train, data.y_train, config["training"]["batch_size"],
                                    config["seed"])
        self.val_batch = (data.x_val, data.y_val)
        self.max_steps = config["training"]["steps"]
        self.wall_before = 0.0
        self.last_row: dict | None = None
        self.status = "running"
        self.error = self.diverged = None
        self.events: list[dict] = []
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_config(self.run_dir, config)
        self.logger = RunLogger(self.run_dir, self.tuner.hyperparameters, tensorboard=False)
        self.summary: dict[str, Any] = {
            "status": "running", "algorithm": algo["name"], "dataset": config["dataset"]["name"],
            "seed": config["seed"], "steps": 0, "steps_planned": self.max_steps,
            "started_at": _now(), "run_dir": str(self.run_dir), "device": str(self.device),
            "resumed_from": None, "versions": versions(), **dict(extra_summary or {}),
        }
        write_summary(self.run_dir, self.summary)

    # ------------------------------------------------------------ training

    @property
    def steps(self) -> int:
        return self.tuner.steps_taken

    @property
    def done(self) -> bool:
        return self.status != "running" or self.steps >= self.max_steps

    def advance(self, updates: int) -> dict:
        """Take up to ``updates`` weight updates (never past ``training.steps``),
        log a row and return it: ``step``, losses (``val_loss`` on the whole
        validation set), ``wall_time_s``, ``score`` and ``done``. After a
        divergence the row repeats the last finite losses with the bad score."""
        if self.status == "running":
            start = time.perf_counter()
            try:
                for _ in range(min(updates, self.max_steps - self.steps)):
                    self.tuner.step(self.sampler.next(), val_batch=self.val_batch)
            except NonFiniteError as err:
                self.status, self.error = "diverged", str(err)
                self.diverged = {"step": err.step, "quantity": err.quantity}
            self.wall_before += time.perf_counter() - start
            if self.status == "running":
                row = {"step": self.steps, **self._losses(), "wall_time_s": self.wall_before}
                row = self.logger.log(row, self.tuner.hyperparameters)
                if all(v is None or not isinstance(v, float) or math.isfinite(v) for v in row.values()):
                    self.last_row = row
                else:
                    self.status, self.error = "diverged", f"non-finite loss at update {self.steps}"
                    self.diverged = {"step": self.steps, "quantity": "evaluation loss"}
            if self.status == "running" and self.steps >= self.max_steps:
                self.status = "finished"
            self.write_summary()
        row = dict(self.last_row or {"step": self.steps})
        row["score"] = score(row.get("val_loss")) if self.status in ("running", "finished") \
            else score(None)
        row["done"] = self.done
        return row

    def _losses(self) -> dict:
        model, data = self.model, self.data
        with torch.no_grad():
            was_training = model.training
            model.eval()
            try:
                def mse(x, y):
                    return F.mse_loss(model(x), y).item()
                train = mse(data.x_train, data.y_train)
                val = mse(data.x_val, data.y_val)
                test = mse(data.x_test, data.y_test)
            finally:
                model.train(was_training)
        return {"train_loss": train, "val_loss": val, "test_loss": test,
                "test_loss_unnormalised": data.unnormalise_mse(test)}

    def set_hyperparameters(self, **values: float) -> None:
        tuned = bool(self.tuner.tuned)
        self.tuner.set_hyperparameters(**clip_hyperparameters(values, tuned=tuned))

    # ---------------------------------------------------------- checkpoints

    def state(self) -> dict:
        """Model, tuner (optimiser state, hyperparameters), batch order, the
        metrics so far and the wall time: what a PBT exploit copies."""
        return {
            # Cloned: Tuner.state_dict() shares the hyper-optimiser's tensors, and SGD
            # updates the weights in place, so an uncloned state would drift with this run.
            "config": self.config, "steps": self.steps, "model": _cpu(self.model.state_dict()),
            "tuner": _cpu(self.tuner.state_dict()), "sampler": _cpu(self.sampler.state_dict()),
            "hyperparameters": hyperparameter_summary(self.tuner.hyperparameters),
            "wall_time_s": self.wall_before, "last_row": self.last_row, "status": self.status,
            "error": self.error, "diverged": self.diverged,
            "metrics": self._metrics_so_far(),
            "run_dir": str(self.run_dir), "events": list(self.events),
        }


    def _metrics_so_far(self) -> list:
        self.logger.flush()
        return read_metrics(self.run_dir) if (self.run_dir / METRICS).is_file() else []
    def load_state(self, state: Mapping, *, note: Mapping | None = None) -> None:
        """Continue from ``state`` (this trial's or another's): weights,
        optimiser state, hyperparameters, batch order, wall time, and the
        metrics history up to that point (``metrics.csv`` is rewritten)."""
        self.model.load_state_dict(state["model"])
        self.tuner.load_state_dict(_to(state["tuner"], self.device))
        self.sampler.load_state_dict(state["sampler"])
        self.wall_before = float(state["wall_time_s"])
        self.last_row = state["last_row"]
        self.status = state.get("status", "running")
        self.error, self.diverged = state.get("error"), state.get("diverged")
        self.events = list(state.get("events", []))
        if note is not None:
            self.events.append(dict(note))
        self.logger.close()
        _write_metrics(self.run_dir / METRICS, self.logger.columns, state.get("metrics", []))
        self.logger = RunLogger(self.run_dir, self.tuner.hyperparameters, tensorboard=False,
                                resume_step=int(state["steps"]))
        self.write_summary()

    # -------------------------------------------------------------- summary

    def write_summary(self, **extra) -> dict:
        status = self.status
        self.summary.update(_final_summary(status, self.tuner, self.last_row, self.wall_before,
                                           self.error, self.diverged))
        if self.events:
            self.summary["events"] = self.events
        self.summary.update(extra)
        write_summary(self.run_dir, self.summary)
        return self.summary

    def close(self, status: str | None = None) -> dict:
        """Finish the run folder. A trial stopped early by its scheduler is
        recorded as ``finished`` at the step it reached (``stopped_early``)."""
        if self.status == "running":
            self.status = status or "finished"
            extra = {"stopped_early": self.steps < self.max_steps}
        else:
            extra = {"stopped_early": False}
        self.logger.close()
        return self.write_summary(**extra)


def _model_spec(model: Mapping) -> dict:
    """``config["model"]`` less the keys of other model kinds (the schema lists them all)."""
    from onepass.experiment import config as config_module
    keys = getattr(config_module, "MODEL_KEYS", {}).get(model["kind"])
    if keys is None:
        return dict(model)
    return {"kind": model["kind"], **{k: v for k, v in model.items() if k in keys}}


def _write_metrics(path: Path, columns, rows) -> None:
    lines = [",".join(columns)]
    for row in rows:
        values = []
        for c in columns:
            v = row.get(c)
            values.append("" if v is None else (str(int(v)) if c == "step" else repr(float(v))))
        lines.append(",".join(values))
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def _cpu(tree):
    return _to(tree, "cpu")


def _to(tree, device):
    if isinstance(tree, torch.Tensor):
        return tree.detach().to(device, copy=True)
    if isinstance(tree, dict):
        return {k: _to(v, device) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to(v, device) for v in tree)
    return tree


__all__ = ["BASES", "DIVERGED_SCORE", "MOMENTUM_MAX", "SEARCH_SPACE", "TrainingSession",
           "clip_hyperparameters", "score", "trial_config"]
