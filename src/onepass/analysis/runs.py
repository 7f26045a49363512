"""Find and read the run folders of a sweep.

A *run folder* is any directory, at any depth below the sweep folder, that
holds a ``summary.json`` (written by :func:`onepass.experiment.run.run_training`);
the search does not descend into run folders. :func:`load_runs` reads only
``summary.json`` and ``config.yaml`` of each run (JSON plus the C YAML loader
when PyYAML has one), so thousands of runs load in a few seconds; a run's
``metrics.csv`` is parsed with numpy on first access of :attr:`Run.metrics`
and cached.

Readers are tolerant: unknown keys are ignored, a missing ``config.yaml``
falls back to the ``algorithm``/``dataset``/``seed`` keys of the summary, and
an unreadable ``summary.json`` gives a run with status ``"unreadable"``, which
like ``"failed"``, ``"interrupted"`` and ``"running"`` is listed but kept out
of the statistics (see :data:`STATISTICS_STATUSES`).

This module deliberately imports neither torch nor :mod:`onepass.experiment`
so that reading a sweep stays cheap.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

SUMMARY = "summary.json"
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
        status: ``summary["status"]`` (``"unreadable"`` when the summary is not JSON).
        algorithm: ``config.algorithm.name`` (else ``summary["algorithm"]``, else ``"unknown"``).
        dataset: ``config.dataset.name`` (else ``summary["dataset"]``, else ``"unknown"``).
        dataset_kind: ``config.dataset.kind`` (e.g. ``"uci"``), ``None`` if unknown.
        seed: ``config.seed`` (else ``summary["seed"]``), ``None`` if unknown.
        init_index: the initialisation index, ``summary["init_index"]`` else
            ``config["init_index"]``; ``None`` when neither has one.
        final: ``summary["final"]``: final (for diverged runs: last finite) losses.
        hyperparameters: ``summary["hyperparameters"]``: final values (a float,
            or ``{"mean", "min", "max", "median"}`` for per-weight values).
        wall_time_s: ``summary["wall_time_s"]`` (``None`` if absent).
        steps: ``summary["steps"]``: weight updates taken (``None`` if absent).
        summary: the whole ``summary.json``.
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
    summary: dict[str, Any] = field(repr=False)
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
        summary = json.loads((folder / SUMMARY).read_bytes())
        if not isinstance(summary, dict):
            raise ValueError("summary is not an object")
    except (OSError, ValueError):
        summary = {"status": "unreadable"}
    try:
        with open(folder / CONFIG, "rb") as f:
            config = yaml.load(f, Loader=_YAML_LOADER) or {}
        if not isinstance(config, dict):
            config = {}
    except (OSError, yaml.YAMLError):
        config = {}
    algorithm = (_mapping(config.get("algorithm")).get("name") or summary.get("algorithm")
                 or "unknown")
    dataset_cfg = _mapping(config.get("dataset"))
    init_index = summary.get("init_index")
    if init_index is None:
        init_index = config.get("init_index")
    seed = config.get("seed", summary.get("seed"))
    return Run(
        path=folder,
        name=folder.relative_to(root).as_posix() if folder != root else folder.name,
        status=str(summary.get("status", "unknown")),
        algorithm=str(algorithm),
        dataset=str(dataset_cfg.get("name") or summary.get("dataset") or "unknown"),
        dataset_kind=dataset_cfg.get("kind"),
        seed=_int_or_none(seed),
        init_index=_int_or_none(init_index),
        final=_mapping(summary.get("final")),
        hyperparameters=_mapping(summary.get("hyperparameters")),
        wall_time_s=_finite(summary.get("wall_time_s")),
        steps=_int_or_none(summary.get("steps")),
        summary=summary,
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
