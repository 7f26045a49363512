"""State files (checkpoints): one layout, and data, never code.

Every state file has the layout of :func:`run_state`: ``format``, ``config``,
``steps``, ``model`` (its ``state_dict``) and ``versions``, then what its
writer has: a single run's checkpoint (:func:`loop_state`) adds the tuner,
the batch order, the task's validation draws, the RNG states, the clocks and
the last log row; a search trial adds its metrics and events to that; a
population member's final state has the model alone (the population's tuner
is shared). :func:`load_checkpoint` reads one to continue a run.

Every state file onepass writes (a run's ``checkpoint.pt``, a file saved with
``-s``/``save_state_to``, a search trial's ``state.pt``) holds only tensors
and plain data: dicts, lists, tuples, numbers, strings, ``None``. Random
generator states are tensors (``torch.get_rng_state``,
``torch.Generator.get_state``). Every state file is read by :func:`read_state`,
with ``torch.load(weights_only=True)``, so a file that names any other Python
object, e.g. one whose pickle would call ``os.system``, is refused before
anything in it runs.

:data:`SAFE_GLOBALS` is the one allow-list: ``torch.torch_version.TorchVersion``,
which checkpoints written before state files were plain data carried as
``versions["torch"]`` (a ``str`` subclass that only compares versions).
"""
from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.torch_version

from onepass.experiment.logging import CHECKPOINT, versions
from onepass.experiment.record import atomic_write_bytes

CHECKPOINT_FORMAT = 1
"""``format`` of every state file (:func:`run_state`)."""

SAFE_GLOBALS = (torch.torch_version.TorchVersion,)
"""Classes besides tensors and plain data that a state file may name."""

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class UnsafeStateError(ValueError):
    """A state file that names a Python object other than data: refused unread."""


def read_state(path: str | os.PathLike, map_location: Any = None) -> Any:
    """The content of the state file ``path``, read as data only.

    Raises:
        UnsafeStateError: (a ``ValueError``) the file names a callable or a
            class that is neither a tensor nor plain data; nothing it names ran.
        FileNotFoundError: no file at ``path``.
    """
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = _GLOBAL.search(str(error))
        what = f"names {found.group(1)}" if found else "holds something other than data"
        raise UnsafeStateError(f"refusing to load {path}: it {what}, and a state file holds only "
                               "tensors and plain data (nothing in it was run)") from None


def write_state(state: Any, path: str | os.PathLike) -> None:
    """``torch.save`` of ``state`` (tensors and plain data) to ``path``, atomically
    (through :func:`~onepass.experiment.record.atomic_write_bytes`)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def run_state(config: Mapping, steps: int, model: Mapping, **parts) -> dict:
    """The one layout of a state file: ``format``, ``config``, ``steps``, the
    ``model``'s ``state_dict``, ``versions`` and the writer's ``parts``."""
    return {"format": CHECKPOINT_FORMAT, "config": config, "steps": steps, "model": model,
            **parts, "versions": versions()}


def loop_state(loop, *, copy: bool = False) -> dict:
    """The resumable state of a one-run :class:`~onepass.experiment.loop.TrainingLoop`
    (:func:`run_state` with ``tuner``, ``sampler``, ``task``, ``torch_rng``,
    ``cuda_rng``, ``wall_time_s``, ``train_seconds``, ``last_row``). ``copy``:
    tensors as CPU copies, which the run's later updates leave as they are."""
    tuner, task = loop.tuner, loop.task
    device = task.device
    keep = to_device if copy else (lambda tree, _: tree)
    return run_state(
        loop.config, tuner.steps_taken, keep(loop.model.state_dict(), "cpu"),
        tuner=keep(tuner.state_dict(), "cpu"), sampler=keep(task.sampler.state_dict(), "cpu"),
        task=task.state_dict(), torch_rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        wall_time_s=loop.clock.wall(), train_seconds=loop.clock.train_seconds,
        last_row=loop.members[0].last_row)


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint to continue a run from (a run's ``checkpoint.pt``, or a
    file saved with ``save_state_to``; a folder means its ``checkpoint.pt``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = read_state(path, map_location=device)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a onepass training checkpoint")
    if "tuner" not in state:
        raise ValueError(f"{path} holds a model's weights only (a population member's final "
                         "state), not a run's state to continue from")
    return state


def to_device(tree, device):
    """``tree`` (dicts, lists, tuples) with every tensor detached and copied to ``device``."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to(device, copy=True)
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_device(v, device) for v in tree)
    return tree


__all__ = ["CHECKPOINT_FORMAT", "SAFE_GLOBALS", "UnsafeStateError", "load_checkpoint",
           "loop_state", "read_state", "run_state", "to_device", "write_state"]
