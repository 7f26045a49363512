"""Run logic once: build a run, open its folder, train it to its end.

Single runs (:func:`onepass.experiment.run.run_training`), population members
(:func:`onepass.sweep.population.train_population`) and search trials
(:class:`onepass.search.trainable.TrainingSession`) all

* build their data, model and tuner with :func:`build_run` (the same seed
  gives the same initial weights everywhere),
* open each run folder with :func:`open_run` (``config.yaml``, ``metrics.csv``
  and the ``running`` record),
* and, for the runs that train in one call, end with :func:`train_to_end`
  (status ``finished``, ``interrupted``, ``failed`` or ``diverged``, final
  state files, final records).

Their state files share one layout, :func:`~onepass.experiment.checkpoint.run_state`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from onepass.core import Tuner
from onepass.experiment.logging import RunLogger, write_config
from onepass.experiment.loop import (
    Member, TrainingLoop, sigterm_raises_keyboard_interrupt, start_record, tuner_from_config,
)
from onepass.experiment.record import write_record
from onepass.experiment.tasks import Task, make_task


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; other names as ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    return device


@dataclass
class Run:
    """What :func:`build_run` builds: the data, the model and its tuner."""

    task: Task
    model: torch.nn.Module
    tuner: Tuner


def build_run(config: Mapping, data_dir, device: torch.device, *,
              members: Sequence[Mapping] | None = None) -> Run:
    """The task (data), model and tuner of a resolved ``config``.

    The model is built after ``torch.manual_seed(config["seed"])``, so that
    every algorithm starts from the same weights for one seed. With
    ``members`` (population configs; ``config`` is their shared part) the
    model is a :class:`~onepass.models.PopulationMLP` whose member ``m`` is
    built exactly as the single run of ``members[m]`` builds its model.
    """
    if members is None:
        task = make_task(config, data_dir, device)
        torch.manual_seed(config["seed"])
        model = task.build_model().to(device)
    else:
        from onepass.models import PopulationMLP
        task = make_task(config, data_dir, device, population=len(members))
        models = []
        for member in members:
            torch.manual_seed(member["seed"])
            models.append(task.build_model().to(device))
        model = PopulationMLP.from_models(models)
    return Run(task, model, tuner_from_config(config, model, task.tuner_loss(), members=members))


def open_run(config: Mapping, run_dir: str | os.PathLike, hyperparameters: Mapping[str, Any],
             device, *, tensorboard: bool, resume_step: int | None = None,
             metric_columns: Sequence[str] = (), last_row: dict | None = None,
             **record_fields) -> Member:
    """Open ``run_dir`` for ``config``'s run: write ``config.yaml``, open
    ``metrics.csv`` (continued after ``resume_step`` if given) and write the
    ``running`` record (with ``record_fields``); returns the loop's
    :class:`~onepass.experiment.loop.Member` for it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, config)
    logger = RunLogger(run_dir, hyperparameters, tensorboard=tensorboard, resume_step=resume_step,
                       metric_columns=list(metric_columns))
    record = start_record(config, run_dir, device, **record_fields)
    write_record(run_dir, record)
    return Member(run_dir, logger, record, last_row=last_row)


def train_to_end(loop: TrainingLoop, steps: int, *,
                 save_to: Sequence[str | os.PathLike | None] = (),
                 save: Callable[[int, str | os.PathLike], None] | None = None) -> list[dict]:
    """Train ``loop`` to update ``steps`` and close its run folders; return
    every member's record as written.

    Each member ends ``finished`` or ``diverged``; ``KeyboardInterrupt`` (and
    SIGTERM, turned into one) records ``interrupted`` and anything else
    ``failed`` (the exception gets ``run_status = "failed"``: the run had
    started), then the exception propagates. A finished member ``m`` with a
    file ``save_to[m]`` gets ``save(m, save_to[m])`` and ``state_saved_to``.
    """
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
        if loop.bar is not None:
            loop.bar.close()
        loop.close()
        written = []
        for m, (member, record) in enumerate(zip(loop.members, loop.finish(status, error))):
            target = save_to[m] if save_to else None
            if record.status == "finished" and target is not None:
                save(m, target)
                record = record.replace(state_saved_to=str(target))
            written.append(write_record(member.run_dir, record))
    return written


__all__ = ["Run", "build_run", "open_run", "resolve_device", "train_to_end"]
