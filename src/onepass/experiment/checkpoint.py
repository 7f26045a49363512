"""State files (checkpoints) are data, never code.

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
from typing import Any

import torch
import torch.torch_version

from onepass.experiment.record import atomic_write_bytes

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


__all__ = ["SAFE_GLOBALS", "UnsafeStateError", "read_state", "write_state"]
