"""Find and read the run folders of a sweep.

A *run folder* is any directory, at any depth below the sweep folder, that
holds a ``summary.json``, its run record; the search does not descend into run
folders. :func:`load_runs` reads each record through the schema
(:func:`onepass.experiment.record.read_record`) and the run's ``config.yaml``
(the C YAML loader when PyYAML has one), so thousands of runs load in a few
seconds; a run's ``metrics.csv`` is parsed with numpy on first access of
:attr:`Run.metrics` and cached.

A missing ``config.yaml`` falls back to the record's ``algorithm`` /
``dataset`` / ``seed``; a record that does not fit the schema gives a run with
status ``"unreadable"``, which like ``"failed"``, ``"interrupted"`` and
``"running"`` is listed but kept out of the statistics (see
:data:`STATISTICS_STATUSES`); a record of an unknown ``schema_version`` stops
the report with one line naming the file.

This module imports neither torch nor the training code (only the torch-free
:mod:`onepass.experiment.record`), so that reading a sweep stays cheap.
"""
from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from onepass.experiment.record import SUMMARY, RecordError, RecordVersionError, RunRecord, read_record

CONFIG = "config.yaml"
METRICS = "metrics.csv"

STATISTICS_STATUSES = ("finished", "diverged")
"""Statuses whose runs enter the statistics; a diverged run contributes the
last finite values its summary records."""

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_EMPTY_CSV_FIELD = re.compile(r"(?<=,)(?=,|\n|$)|^(?=,)", re.MULTILINE)


@dataclass(eq=False)
class Run:
    """One run folder of a sweep.

    Attributes:
        path: the run folder.
        name: its path relative to the sweep folder (POSIX separators).
        status: ``record.status`` (``"unreadable"`` when the record does not fit the schema).
        algorithm: ``config.algorithm.name`` (else the record's, else ``"unknown"``).
        dataset: ``config.dataset.name`` (else the record's, else ``"unknown"``).
        dataset_kind: ``config.dataset.kind`` (e.g. ``"uci"``), ``None`` if unknown.
        seed: ``config.seed`` (else the record's), ``None`` if unknown.
        init_index: the initialisation index, the record's else
            ``config["init_index"]``; ``None`` when neither has one.
        final: ``record.final``: final (for diverged runs: last finite) losses.
        hyperparameters: ``record.hyperparameters``: final values (a float,
            or ``{"mean", "min", "max", "median"}`` for per-weight values).
        wall_time_s: ``record.wall_time_s`` (``None`` if absent).
        steps: ``record.steps``: weight updates taken (``None`` if absent).
        record: the whole :class:`~onepass.experiment.record.RunRecord`.
        config: the whole ``config.yaml`` (``{}`` when absent or unreadable).
    """

    path: Path
    name: str
    status: str
    algorithm: str
    dataset: str
    dataset_kind: str | None
    seed: int | None
    init_index: int | None
    final: dict[str, Any]
    hyperparameters: dict[str, Any]
    wall_time_s: float | None
    steps: int | None
    record: RunRecord = field(repr=False)
    config: dict[str, Any] = field(repr=False)

    @property
    def in_statistics(self) -> bool:
        """Whether the run enters the statistics (status finished or diverged)."""
        return self.status in STATISTICS_STATUSES

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    def final_value(self, key: str) -> float | None:
        """``final[key]`` as a float, or ``None`` when absent or not finite."""
        return _finite(self.final.get(key))

    @cached_property
    def metrics(self) -> dict[str, np.ndarray]:
        """``metrics.csv`` as ``{column: float array}``, one entry per log step;
        empty cells are NaN. ``{}`` when the file is missing, empty or unreadable."""
        return read_metrics_csv(self.path / METRICS)


def load_runs(root: str | os.PathLike) -> list[Run]:
    """Every run folder below ``root`` (``root`` itself may be one), ordered
    naturally by relative path (``run_2`` before ``run_10``).

    Raises:
        FileNotFoundError: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no sweep folder at {root}")
    runs = [_load_run(folder, root) for folder in _run_folders(root)]
    runs.sort(key=lambda run: natural_key(run.name))
    return runs


def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs by value: ``init_2`` < ``init_10``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", text) if part)


def initialisation_order(runs: list[Run]) -> list[Run]:
    """``runs`` ordered by initialisation index; runs without one follow, in
    natural folder-name order."""
    return sorted(runs, key=lambda run: (run.init_index is None, run.init_index or 0,
                                         natural_key(run.name)))


def read_metrics_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``metrics.csv`` as ``{column: float64 array}`` (empty cells → NaN).

    Returns ``{}`` for a missing, empty or malformed file. Rows of a file cut
    short by a crash (a last line with too few cells) are dropped.
    """
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    header, _, body = text.partition("\n")
    columns = [c.strip() for c in header.strip().split(",") if c.strip()]
    lines = [line for line in _EMPTY_CSV_FIELD.sub("nan", body).splitlines()
             if line.count(",") == len(columns) - 1]
    if not columns or not lines:
        return {column: np.empty(0) for column in columns}
    try:
        table = np.loadtxt(io.StringIO("\n".join(lines)), delimiter=",", dtype=float, ndmin=2)
    except ValueError:
        return {}
    return {column: table[:, i] for i, column in enumerate(columns)}


# ------------------------------------------------------------------ private

def _run_folders(root: Path) -> list[Path]:
    """Directories below ``root`` holding a ``summary.json``; no descent into them."""
    found, stack = [], [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        if any(e.name == SUMMARY and e.is_file() for e in entries):
            found.append(folder)
            continue
        stack.extend(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False))
    return found


def _load_run(folder: Path, root: Path) -> Run:
    try:
        record = read_record(folder)
    except RecordVersionError:
        raise
    except (OSError, RecordError):
        record = RunRecord(status="unreadable", schema_version=0)
    try:
        with open(folder / CONFIG, "rb") as f:
            config = yaml.load(f, Loader=_YAML_LOADER) or {}
        if not isinstance(config, dict):
            config = {}
    except (OSError, yaml.YAMLError):
        config = {}
    dataset_cfg = _mapping(config.get("dataset"))
    init_index = record.init_index if record.init_index is not None else config.get("init_index")
    return Run(
        path=folder,
        name=folder.relative_to(root).as_posix() if folder != root else folder.name,
        status=record.status,
        algorithm=str(_mapping(config.get("algorithm")).get("name") or record.algorithm),
        dataset=str(dataset_cfg.get("name") or record.dataset),
        dataset_kind=dataset_cfg.get("kind"),
        seed=_int_or_none(config.get("seed", record.seed)),
        init_index=_int_or_none(init_index),
        final=record.final,
        hyperparameters=record.hyperparameters,
        wall_time_s=_finite(record.wall_time_s),
        steps=record.steps,
        record=record,
        config=config,
    )


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


__all__ = ["METRICS", "Run", "STATISTICS_STATUSES", "initialisation_order", "load_runs",
           "natural_key", "read_metrics_csv"]
