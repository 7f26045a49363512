"""The run folder: ``config.yaml``, ``metrics.csv``, TensorBoard events, checkpoints.

Everything a finished (or diverged, failed, interrupted) run leaves behind, in
a form scripts can read without TensorBoard; the run record ``summary.json``
is :mod:`onepass.experiment.record`'s. Files that other processes may read
while the run goes on (``summary.json``, ``checkpoint.pt``) are written
atomically: to a temporary file in the same folder, then ``os.replace``.
"""
from __future__ import annotations

import csv
import io
import os
import platform
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from onepass.experiment.config import dump_config
from onepass.experiment.events import EventWriter
from onepass.experiment.record import atomic_write_bytes, json_safe

METRICS = "metrics.csv"
CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
LOSS_COLUMNS = ("step", "train_loss", "val_loss", "test_loss", "test_loss_unnormalised",
                "train_seconds")
"""The first columns of ``metrics.csv``; ``train_seconds`` is the run record's clock
(:data:`onepass.experiment.record.CLOCK`) at the row's step."""


def write_config(run_dir: str | os.PathLike, config: Mapping) -> Path:
    """Write the resolved config as ``config.yaml``."""
    path = Path(run_dir) / CONFIG
    atomic_write_bytes(path, dump_config(config).encode())
    return path


def versions() -> dict[str, str]:
    """Software versions recorded in every run record and state file, as plain ``str``."""
    from onepass import __version__
    import numpy
    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "numpy": numpy.__version__, "onepass": __version__}


def _json_safe(tree):
    """:func:`~onepass.experiment.record.json_safe`, with tensors as lists."""
    return json_safe(tree, lambda t: t.tolist() if isinstance(t, torch.Tensor) else t)


# ---------------------------------------------------------- hyperparameters

def hyperparameter_summary(hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """Natural values for summaries: floats stay floats; per-group/tensor/weight
    values become ``{"mean", "min", "max", "median"}``."""
    out = {}
    for name, value in hyperparameters.items():
        if isinstance(value, (int, float)):
            out[name] = float(value)
        else:
            flat = _flatten(value)
            out[name] = {"mean": flat.mean().item(), "min": flat.min().item(),
                         "max": flat.max().item(), "median": flat.median().item()}
    return out


def hyperparameter_columns(hyperparameters: Mapping[str, Any]) -> dict[str, float]:
    """CSV columns: ``name`` for a scalar, ``name_mean/_min/_max`` otherwise."""
    out = {}
    for name, value in hyperparameter_summary(hyperparameters).items():
        if isinstance(value, dict):
            for stat in ("mean", "min", "max"):
                out[f"{name}_{stat}"] = value[stat]
        else:
            out[name] = value
    return out


def _flatten(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(-1).double().cpu()
    return torch.cat([_flatten(v) if isinstance(v, torch.Tensor)
                      else torch.tensor([float(v)], dtype=torch.float64) for v in value])


# ------------------------------------------------------------------ writer

FLUSH_SECONDS = 1.0
"""metrics.csv is flushed at most this often (and on close): one flush per row
per member dominated the logging of population runs."""


class RunLogger:
    """Appends one row per log step to ``metrics.csv`` and TensorBoard (one event per row).

    Args:
        run_dir: the run folder (created if needed).
        hyperparameters: the tuner's current values, to fix the CSV columns.
        tensorboard: also write TensorBoard event files.
        resume_step: continuing a run in the same folder from this update:
            rows after it are dropped from ``metrics.csv`` and TensorBoard
            events after it are purged.
        metric_columns: extra columns after the losses (e.g. ``test_accuracy``,
            ``test_perplexity``), written to TensorBoard as ``Metrics/<name>``.
    """

    def __init__(self, run_dir: str | os.PathLike, hyperparameters: Mapping[str, Any], *,
                 tensorboard: bool = True, resume_step: int | None = None,
                 metric_columns: Sequence[str] = ()):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metric_columns = list(metric_columns)
        self.columns = [*LOSS_COLUMNS, *self.metric_columns, *hyperparameter_columns(hyperparameters)]
        path = self.run_dir / METRICS
        if resume_step is not None and path.is_file():
            with path.open(newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]
            text = io.StringIO()
            writer = csv.DictWriter(text, self.columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_bytes(path, text.getvalue().encode())
            self._file = path.open("a", newline="")
        else:
            self._file = path.open("w", newline="")
            self._file.write(",".join(self.columns) + "\n")
        self._csv = csv.DictWriter(self._file, self.columns, extrasaction="ignore",
                                   lineterminator="\n")
        self._file.flush()
        self._flushed = time.monotonic()
        self._tb = None
        if tensorboard:
            purge = None if resume_step is None else resume_step + 1
            self._tb = EventWriter(self.run_dir, purge_step=purge)

    def log(self, row: Mapping[str, Any], hyperparameters: Mapping[str, Any]) -> dict:
        """Write one log step; ``row`` has the loss columns. Returns the full CSV row."""
        hyperparameters = {name: value if isinstance(value, (int, float)) else _flatten(value)
                           for name, value in hyperparameters.items()}   # flattened once
        full = {**row, **hyperparameter_columns(hyperparameters)}
        self._csv.writerow({k: _csv_value(full.get(k)) for k in self.columns})
        if self._tb is not None:
            scalars, histograms = {}, {}
            for key, tag in (("train_loss", "Loss/Training"), ("val_loss", "Loss/Validation"),
                             ("test_loss", "Loss/Test"),
                             ("test_loss_unnormalised", "Loss/Test_Unnormalised")):
                if row.get(key) is not None:
                    scalars[tag] = row[key]
            for key in self.metric_columns:
                if row.get(key) is not None:
                    scalars[f"Metrics/{key}"] = row[key]
            for name, value in hyperparameters.items():
                if isinstance(value, (int, float)):
                    scalars[f"Hyperparameters/{name}"] = value
                else:
                    if torch.isfinite(value).any():
                        histograms[f"Hyperparameters/{name}"] = value
                    scalars[f"Hyperparameters/{name}_mean"] = full[f"{name}_mean"]
            self._tb.add(int(row["step"]), scalars, histograms)
        now = time.monotonic()
        if now - self._flushed >= FLUSH_SECONDS:  # rows reach the disk at least every second
            self.flush()
        return full

    def flush(self) -> None:
        """Write the buffered rows of ``metrics.csv`` to disk now (no-op once closed)."""
        if self._file.closed:
            return
        self._file.flush()
        if self._tb is not None:
            self._tb.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, float | None]]:
    """Rows of ``metrics.csv`` as dicts of floats (``None`` for empty cells)."""
    with (Path(run_dir) / METRICS).open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in rows]


__all__ = [
    "CHECKPOINT", "CONFIG", "LOSS_COLUMNS", "METRICS", "RunLogger",
    "hyperparameter_columns", "hyperparameter_summary", "read_metrics", "versions",
    "write_config",
]
