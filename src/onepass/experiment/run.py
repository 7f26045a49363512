"""One training run of the paper: data, model, :class:`~onepass.Tuner`, loop, logs.

:func:`run_training` is the public entry point (the CLI's ``onepass train`` and
the sweeps call it): it loads the data, then opens the run folder, builds the
tuner with :func:`~onepass.experiment.loop.tuner_from_config` and trains with
:class:`~onepass.experiment.loop.TrainingLoop` (the loop population members and
search trials share), checkpointing model, tuner and RNG states periodically.

A run stops early, with status ``"diverged"``, when the tuner refuses a
non-finite loss or hypergradient; ``KeyboardInterrupt`` (and SIGTERM, turned
into one) leaves status ``"interrupted"`` and the latest periodic checkpoint,
from which a resumed run reaches bit-for-bit the result of an uninterrupted one
on the CPU.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping

import torch

from onepass.core import Tuner
from onepass.experiment.checkpoint import read_state, write_state
from onepass.experiment.config import resolve_config
from onepass.experiment.logging import CHECKPOINT, LOSS_COLUMNS, RunLogger, versions, write_config
from onepass.experiment.loop import (
    Member, TrainClock, TrainingLoop, sigterm_raises_keyboard_interrupt, start_record,
    tuner_from_config,
)
from onepass.experiment.record import write_record
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


def run_training(
    config: Mapping,
    run_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    resume_from: str | os.PathLike | None = None,
    save_state_to: str | os.PathLike | None = None,
    progress: bool = True,
    record_fields: Mapping | None = None,
) -> dict:
    """Run one algorithm on one dataset as described by ``config``; return its record.

    Args:
        config: a config mapping (see :mod:`onepass.experiment.config`); it is
            checked and its defaults filled in.
        run_dir: the run folder; receives ``config.yaml``, ``metrics.csv``,
            TensorBoard events, ``summary.json`` and ``checkpoint.pt``. It is
            created only once the data are loaded.
        data_dir: dataset root (else ``$ONEPASS_DATA_DIR``, else the user cache).
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` or a ``torch.device``.
        resume_from: a checkpoint (``checkpoint.pt`` of a run, or a file saved
            with ``save_state_to``) to continue from. Its config must agree with
            ``config`` except for ``training.steps`` and ``logging.*``. If it is
            ``run_dir``'s own checkpoint, metrics logged after it are dropped.
        save_state_to: at the end of a finished run, save its state there.
        progress: show a tqdm progress bar.
        record_fields: fields of the run record set from the start, e.g.
            ``{"init_index": 3}`` (a sweep) or ``{"search": {...}}`` (a study).

    Returns:
        The run record (:class:`~onepass.experiment.record.RunRecord`) as
        written to ``run_dir/summary.json``: ``status`` (``finished`` or
        ``diverged``), ``final`` losses, final ``hyperparameters`` (natural
        units), ``train_seconds``, ``wall_time_s``, ``steps``, ...

    Raises:
        KeyboardInterrupt: after recording status ``interrupted``.
        Exception: anything else after recording status ``failed``.
        ConfigError, FileNotFoundError, ValueError: before the run starts (and
            before its folder is created), for a bad config, missing or corrupt
            data or a mismatched checkpoint.
    """
    config = resolve_config(config)
    run_dir = Path(run_dir)
    device = resolve_device(device)
    log_cfg = config["logging"]

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
    tuner: Tuner = tuner_from_config(config, model, task.tuner_loss())
    sampler = task.sampler

    steps_done, wall_before, train_before, last_row = 0, 0.0, 0.0, None
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
        train_before = float(checkpoint.get("train_seconds", 0.0))
        last_row = checkpoint.get("last_row")

    same_folder = resume_from is not None and \
        Path(resume_from).resolve() == (run_dir / CHECKPOINT).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, config)
    logger = RunLogger(run_dir, tuner.hyperparameters, tensorboard=log_cfg["tensorboard"],
                       resume_step=steps_done if same_folder else None,
                       metric_columns=[m for m in task.metrics if m not in LOSS_COLUMNS])
    record = start_record(config, run_dir, device, steps=steps_done,
                          resumed_from=None if resume_from is None else str(resume_from),
                          **dict(record_fields or {}))
    write_record(run_dir, record)
    member = Member(run_dir, logger, record, last_row=last_row)

    steps = config["training"]["steps"]
    window = tuner.update_interval
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, initial=steps_done, disable=not progress, dynamic_ncols=True,
               desc=f"{config['algorithm']['name']} {config['dataset']['name']}", unit="upd",
               leave=True)
    clock = TrainClock(device, train_before=train_before, wall_before=wall_before)

    def save_state(path) -> None:
        logger.flush()  # every row logged before the checkpoint is on disk with it
        write_state({
            "format": CHECKPOINT_FORMAT, "config": config, "steps": tuner.steps_taken,
            "model": model.state_dict(), "tuner": tuner.state_dict(),
            "sampler": sampler.state_dict(), "task": task.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "wall_time_s": clock.wall(), "train_seconds": clock.train_seconds,
            "last_row": member.last_row, "versions": versions(),
        }, path)

    multiplier = config["algorithm"]["lr_multiplier"]
    loop = TrainingLoop(
        config, task, model, tuner, [member], clock,
        multipliers=None if multiplier is None else [multiplier], log_every=log_cfg["interval"],
        checkpoint_every=max(window, math.ceil(log_cfg["checkpoint_interval"] / window) * window),
        checkpoint=lambda: save_state(run_dir / CHECKPOINT), bar=bar)
    status, error = "finished", None
    try:
        with sigterm_raises_keyboard_interrupt():
            loop.run(steps)
    except KeyboardInterrupt:
        status, error = "interrupted", "KeyboardInterrupt"
        raise
    except BaseException as err:
        status, error = "failed", f"{type(err).__name__}: {err}"
        try:
            err.run_status = "failed"  # tells callers the run had started (record written)
        except AttributeError:
            pass
        raise
    finally:
        bar.close()
        loop.close()
        (record,) = loop.finish(status, error)
        if record.status == "finished" and save_state_to is not None:
            save_state(save_state_to)
            record = record.replace(state_saved_to=str(save_state_to))
        summary = write_record(run_dir, record)
    return summary


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint written by :func:`run_training` (periodic or ``save_state_to``),
    as data only (:func:`~onepass.experiment.checkpoint.read_state`)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = read_state(path, map_location=device)
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


__all__ = ["load_checkpoint", "resolve_device", "run_training"]
