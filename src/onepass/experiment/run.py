"""One training run of the paper: data, model, :class:`~onepass.Tuner`, loop, logs.

:func:`run_training` is the public entry point (the CLI's ``onepass train`` and
the sweeps call it). It follows a batch from data to loss to update to log in
one loop::

    for step in 1..steps:
        result = tuner.step(train_batch, val_batch)      # weight update (+ hyper update)
        [stepped lr: lr *= multiplier at the end of each window]
        [log step: losses on train / validation / test, hyperparameters]
        [checkpoint step: model + tuner + RNG states -> checkpoint.pt]

A run stops early, with status ``"diverged"``, when the tuner refuses a
non-finite loss or hypergradient; ``KeyboardInterrupt`` (and SIGTERM, turned
into one) leaves status ``"interrupted"`` and the latest periodic checkpoint,
from which a resumed run reaches bit-for-bit the result of an uninterrupted one
on the CPU.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import torch

from onepass.core import NonFiniteError, Tuner
from onepass.experiment.config import LR_CLIP, resolve_config
from onepass.experiment.logging import (
    CHECKPOINT, LOSS_COLUMNS, RunLogger, atomic_torch_save, hyperparameter_summary, versions,
    write_config, write_summary,
)
from onepass.experiment.tasks import make_task

CHECKPOINT_FORMAT = 1
# Keys that may differ between a checkpoint's config and the config continuing it.
RESUMABLE_CHANGES = {("training", "steps"), ("logging", "interval"),
                     ("logging", "checkpoint_interval"), ("logging", "tensorboard")}


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; other names as ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    return device


class BatchSampler:
    """Training batches: the whole set (``batch_size=None``) or shuffled
    mini-batches, epoch by epoch, from a seeded generator (checkpointable)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None, seed: int):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order: torch.Tensor | None = None
        self.position = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch_size is None or self.batch_size >= len(self.x):
            return self.x, self.y
        if self.order is None or self.position + self.batch_size > len(self.order):
            self.order = torch.randperm(len(self.x), generator=self.generator)
            self.position = 0
        index = self.order[self.position:self.position + self.batch_size].to(self.x.device)
        self.position += self.batch_size
        return self.x[index], self.y[index]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: Mapping) -> None:
        self.generator.set_state(state["generator"].cpu())
        self.order = None if state["order"] is None else state["order"].cpu()
        self.position = int(state["position"])


def run_training(
    config: Mapping,
    run_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    resume_from: str | os.PathLike | None = None,
    save_state_to: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Run one algorithm on one dataset as described by ``config``; return its summary.

    Args:
        config: a config mapping (see :mod:`onepass.experiment.config`); it is
            checked and its defaults filled in.
        run_dir: the run folder; receives ``config.yaml``, ``metrics.csv``,
            TensorBoard events, ``summary.json`` and ``checkpoint.pt``.
        data_dir: dataset root (else ``$ONEPASS_DATA_DIR``, else the user cache).
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` or a ``torch.device``.
        resume_from: a checkpoint (``checkpoint.pt`` of a run, or a file saved
            with ``save_state_to``) to continue from. Its config must agree with
            ``config`` except for ``training.steps`` and ``logging.*``. If it is
            ``run_dir``'s own checkpoint, metrics logged after it are dropped.
        save_state_to: at the end of a finished run, save its state there.
        progress: show a tqdm progress bar.

    Returns:
        The summary also written to ``run_dir/summary.json``: ``status``
        (``finished`` or ``diverged``), ``final`` losses, final
        ``hyperparameters`` (natural units), ``wall_time_s``, ``steps``, ...

    Raises:
        KeyboardInterrupt: after recording status ``interrupted``.
        Exception: anything else after recording status ``failed``.
        ConfigError, FileNotFoundError, ValueError: before the run starts,
            for a bad config, missing data or a mismatched checkpoint.
    """
    config = resolve_config(config)
    run_dir = Path(run_dir)
    device = resolve_device(device)
    algo, training, log_cfg = config["algorithm"], config["training"], config["logging"]

    checkpoint = None
    if resume_from is not None:
        checkpoint = load_checkpoint(resume_from, device)
        _check_resumable(checkpoint["config"], config, resume_from)

    # ---- data (per dataset.kind, see onepass.experiment.tasks): train on
    # train+val when the algorithm has no validation split
    task = make_task(config, data_dir, device)

    # ---- model: the same seed gives every algorithm the same initial weights
    torch.manual_seed(config["seed"])
    model = task.build_model().to(device)
    method = algo["method"]
    tuner = Tuner(
        model, **task.tuner_loss(), max_grad_norm=training["max_grad_norm"], rule=algo["rule"],
        hyperparameters=dict(config["hyperparameters"]),
        tune=tuple(algo["tune"]), granularity=dict(algo["granularity"]) or None,
        method="neumann" if method == "none" else method, neumann_terms=algo["neumann_terms"],
        unroll_steps=algo["unroll_steps"], update_interval=algo["update_interval"],
        hyper_optimizer=algo["hyper_optimizer"], hyper_lr=algo["hyper_lr"], lr_bounds=LR_CLIP,
        reset_each_window=algo["reset_each_window"], compile=training["compile"],
    )
    sampler = task.sampler
    val_batch = task.val_batch

    steps_done, wall_before, last_row = 0, 0.0, None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        tuner.load_state_dict(checkpoint["tuner"])
        sampler.load_state_dict(checkpoint["sampler"])
        task.load_state_dict(checkpoint.get("task") or {"val_generator": checkpoint["val_generator"]})
        torch.set_rng_state(checkpoint["torch_rng"].cpu())
        if device.type == "cuda" and checkpoint.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(checkpoint["cuda_rng"].cpu(), device)
        steps_done = int(checkpoint["steps"])
        wall_before = float(checkpoint.get("wall_time_s", 0.0))
        last_row = checkpoint.get("last_row")

    same_folder = resume_from is not None and \
        Path(resume_from).resolve() == (run_dir / CHECKPOINT).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, config)
    logger = RunLogger(run_dir, tuner.hyperparameters, tensorboard=log_cfg["tensorboard"],
                       resume_step=steps_done if same_folder else None,
                       metric_columns=[m for m in task.metrics if m not in LOSS_COLUMNS])

    steps = training["steps"]
    window = tuner.update_interval
    checkpoint_every = max(window, math.ceil(log_cfg["checkpoint_interval"] / window) * window)
    log_every = log_cfg["interval"]
    summary: dict[str, Any] = {
        "status": "running", "algorithm": algo["name"], "dataset": config["dataset"]["name"],
        "seed": config["seed"], "steps": steps_done, "steps_planned": steps,
        "started_at": _now(), "run_dir": str(run_dir), "device": str(device),
        "resumed_from": None if resume_from is None else str(resume_from),
        "versions": versions(),
    }
    write_summary(run_dir, summary)

    def losses_now(train_loss: float | None) -> dict:
        """A log row at the current weights; ``train_loss`` None → evaluate on the whole training set."""
        return task.losses_now(model, train_loss)

    from tqdm.auto import tqdm
    bar = tqdm(total=steps, initial=steps_done, disable=not progress, dynamic_ncols=True,
               desc=f"{algo['name']} {config['dataset']['name']}", unit="upd", leave=True)
    start = time.perf_counter()

    def wall() -> float:
        return wall_before + time.perf_counter() - start

    def save_state(path) -> None:
        logger.flush()  # every row logged before the checkpoint is on disk with it
        atomic_torch_save({
            "format": CHECKPOINT_FORMAT, "config": config, "steps": tuner.steps_taken,
            "model": model.state_dict(), "tuner": tuner.state_dict(),
            "sampler": sampler.state_dict(), "task": task.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "wall_time_s": wall(), "last_row": last_row, "versions": versions(),
        }, path)

    status, error, diverged = "finished", None, None
    try:
        with _sigterm_raises_keyboard_interrupt():
            for step in range(steps_done + 1, steps + 1):
                result = tuner.step(sampler.next(), val_batch=val_batch)
                if algo["lr_multiplier"] is not None and step % window == 0:
                    lr = tuner.hyperparameters["lr"] * algo["lr_multiplier"]
                    tuner.set_hyperparameters(lr=min(max(lr, LR_CLIP[0]), LR_CLIP[1]))
                if step % log_every == 0 or step == steps:
                    # Final losses are evaluated once more after the last update.
                    row = losses_now(None if step == steps else result.loss.item())
                    row = {"step": step, **row, "wall_time_s": wall()}
                    hyper = tuner.hyperparameters
                    row = logger.log(row, hyper)
                    if all(row.get(k) is None or math.isfinite(row[k]) for k in row):
                        last_row = row
                    bar.set_postfix(_postfix(row, hyper), refresh=False)
                if step % checkpoint_every == 0 and step < steps:
                    save_state(run_dir / CHECKPOINT)
                bar.update(1)
    except NonFiniteError as err:
        status, error = "diverged", str(err)
        diverged = {"step": err.step, "quantity": err.quantity}
    except KeyboardInterrupt:
        status, error = "interrupted", "KeyboardInterrupt"
        raise
    except BaseException as err:
        status, error = "failed", f"{type(err).__name__}: {err}"
        try:
            err.run_status = "failed"  # tells callers the run had started (summary written)
        except AttributeError:
            pass
        raise
    finally:
        bar.close()
        logger.close()
        summary.update(_final_summary(status, tuner, last_row, wall(), error, diverged,
                                      metrics=task.metrics))
        if status == "finished" and save_state_to is not None:
            save_state(save_state_to)
            summary["state_saved_to"] = str(save_state_to)
        write_summary(run_dir, summary)
    return summary


def _final_summary(status, tuner, last_row, wall_time, error, diverged, metrics=()) -> dict:
    keys = ("train_loss", "val_loss", "test_loss", "test_loss_unnormalised")
    final = {k: (None if last_row is None else last_row.get(k))
             for k in (*keys, *(m for m in metrics if m not in keys))}
    return {
        "status": status, "final": final, "final_step": None if last_row is None else last_row["step"],
        "hyperparameters": hyperparameter_summary(tuner.hyperparameters),
        "steps": tuner.steps_taken, "wall_time_s": wall_time, "finished_at": _now(),
        "error": error, "diverged": diverged,
    }


def _postfix(row: Mapping, hyper: Mapping) -> dict:
    out = {"loss": f"{row['train_loss']:.3g}"}
    if row.get("val_loss") is not None:
        out["val"] = f"{row['val_loss']:.3g}"
    out["test"] = f"{row['test_loss']:.3g}"
    for name, value in hyperparameter_summary(hyper).items():
        out[name] = f"{value['mean'] if isinstance(value, dict) else value:.3g}"
    return out


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint written by :func:`run_training` (periodic or ``save_state_to``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a onepass training checkpoint")
    return state


def _check_resumable(saved: Mapping, config: Mapping, source) -> None:
    saved = resolve_config(saved, f"{source} (saved config)")
    for head, section in config.items():
        items = section.items() if isinstance(section, Mapping) else [(None, section)]
        for key, value in items:
            path = (head,) if key is None else (head, key)
            if path in RESUMABLE_CHANGES:
                continue
            old = saved[head] if key is None else saved[head][key]
            if old != value:
                raise ValueError(f"cannot resume from {source}: {'.'.join(path)} is {old!r} there "
                                 f"but {value!r} now (only training.steps and logging.* may change)")


@contextmanager
def _sigterm_raises_keyboard_interrupt():
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = ["BatchSampler", "load_checkpoint", "resolve_device", "run_training"]
