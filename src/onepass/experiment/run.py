"""One training run of the paper: data, model, :class:`~onepass.Tuner`, loop, logs.

:func:`run_training` is the public entry point (the CLI's ``onepass train`` and
the sweeps call it): it builds the data, model and tuner, then opens the run
folder and trains to the end with :mod:`onepass.experiment.runner` (which
population members and search trials share), checkpointing model, tuner and
RNG states periodically (:func:`~onepass.experiment.checkpoint.loop_state`).
What is its own: continuing from a checkpoint, the progress bar and the
periodic checkpoints.

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

from onepass.experiment.checkpoint import load_checkpoint, loop_state, write_state
from onepass.experiment.config import resolve_config
from onepass.experiment.logging import CHECKPOINT, LOSS_COLUMNS
from onepass.experiment.loop import TrainClock, TrainingLoop, logged_hyperparameters
from onepass.experiment.runner import build_run, open_run, resolve_device, train_to_end

# Keys that may differ between a checkpoint's config and the config continuing it.
RESUMABLE_CHANGES = {("training", "steps"), ("logging", "interval"),
                     ("logging", "checkpoint_interval"), ("logging", "tensorboard")}


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

    # ---- data (per dataset.kind, see onepass.experiment.tasks; train on train+val
    # when the algorithm has no validation split), model and tuner
    run = build_run(config, data_dir, device)
    task, model, tuner = run.task, run.model, run.tuner

    steps_done, wall_before, train_before, last_row = 0, 0.0, 0.0, None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        tuner.load_state_dict(checkpoint["tuner"])
        task.sampler.load_state_dict(checkpoint["sampler"])
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
    member = open_run(config, run_dir, logged_hyperparameters(tuner, tuner.hyperparameters), device,
                      tensorboard=log_cfg["tensorboard"],
                      resume_step=steps_done if same_folder else None,
                      metric_columns=[m for m in task.metrics if m not in LOSS_COLUMNS],
                      last_row=last_row, steps=steps_done,
                      resumed_from=None if resume_from is None else str(resume_from),
                      **dict(record_fields or {}))

    steps = config["training"]["steps"]
    window = tuner.update_interval
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, initial=steps_done, disable=not progress, dynamic_ncols=True,
               desc=f"{config['algorithm']['name']} {config['dataset']['name']}", unit="upd",
               leave=True)
    clock = TrainClock(device, train_before=train_before, wall_before=wall_before)

    def save_state(path) -> None:
        member.logger.flush()  # every row logged before the checkpoint is on disk with it
        write_state(loop_state(loop), path)

    multiplier = config["algorithm"]["lr_multiplier"]
    loop = TrainingLoop(
        config, task, model, tuner, [member], clock,
        multipliers=None if multiplier is None else [multiplier], log_every=log_cfg["interval"],
        checkpoint_every=max(window, math.ceil(log_cfg["checkpoint_interval"] / window) * window),
        checkpoint=lambda: save_state(run_dir / CHECKPOINT), bar=bar)
    (summary,) = train_to_end(loop, steps, save_to=[save_state_to],
                              save=lambda m, path: save_state(path))
    return summary


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
