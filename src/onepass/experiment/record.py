"""The run record: what a run folder's ``summary.json`` holds, as one typed schema.

Every writer (single runs, population members, search trials, sweeps) fills a
:class:`RunRecord` and writes it with :func:`write_record` (atomically: a
reader sees the old file or the new one, never half of one); every reader
(sweeps deciding what is done, :mod:`onepass.analysis`) goes through
:func:`read_record`. The record carries ``schema_version``; a version this
code does not know is refused with one line naming the file and the version.
Files written before records were versioned (no ``schema_version``) are read
as version 0: the keys the schema knows are taken, the others ignored.

This module imports neither torch nor anything above it, so that reading a
sweep stays cheap.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

SUMMARY = "summary.json"
SCHEMA_VERSION = 1
"""The version :func:`write_record` writes; :func:`read_record` reads 0 (unversioned) and 1."""
STATUSES = ("running", "finished", "diverged", "failed", "interrupted")

CLOCK = ("train_seconds: seconds spent in training steps only (the weight and hyperparameter "
         "updates and the stepped learning rate), without the first weight update and the first "
         "hyperparameter update of each process (compilation and warm-up), data loading, model "
         "building, evaluation, logging and checkpoints; a population member is charged its "
         "chunk's step time divided by the number of members. wall_time_s: seconds from the start "
         "of the training loop to its end, everything included (a population member: its chunk's).")
"""What the clocks of a version-1 record (and ``metrics.csv``'s ``train_seconds``) measure."""
LEGACY_CLOCK = ("wall_time_s only: wall-clock seconds including compilation and evaluation "
                "(a population member: its chunk's); written before records were versioned")


SITUATIONAL = ("init_index", "state_saved_to", "population", "search", "session", "events",
               "stopped_early")
"""Fields written only where they apply (a sweep's run, a saved state, a population
member, a search trial); absent means ``None`` (``events``: empty)."""


class RecordError(ValueError):
    """A ``summary.json`` that cannot be read as a run record (one line, naming the file)."""


class RecordVersionError(RecordError):
    """A ``summary.json`` written with a ``schema_version`` this code does not know."""


@dataclass
class RunRecord:
    """One run's record (``summary.json``), version :data:`SCHEMA_VERSION`.

    Attributes:
        status: one of :data:`STATUSES`.
        algorithm, dataset: ``algorithm.name`` and ``dataset.name`` of the config.
        seed: the config's seed; ``init_index``: the sweep initialisation (or
            search evaluation) index, ``None`` outside sweeps.
        steps: weight updates taken; ``steps_planned``: ``training.steps``.
        final_step: the log step ``final`` comes from (the last finite row).
        final: final losses and metrics (a diverged run: its last finite ones).
        hyperparameters: final values in natural units (a float, or
            ``{"mean", "min", "max", "median"}`` for per-group/tensor/weight values).
        train_seconds, wall_time_s, clock: the run's clocks and what they
            measure (:data:`CLOCK`).
        started_at, finished_at: UTC ISO times.
        run_dir, device, resumed_from, state_saved_to: where it ran and from / to which state.
        error: the error text of a diverged, failed or interrupted run;
            ``diverged``: ``{"step", "quantity"}`` of a divergence.
        population: ``{"size", "member"}`` for a population member.
        search: a search trial's study information (Bayesian optimisation,
            ASHA, PBT); ``session``: the Ray actor that owns the folder;
            ``events``: PBT's exploit / restore notes; ``stopped_early``: a
            trial stopped by its scheduler.
        versions: software versions.
    """

    status: str = "running"
    algorithm: str = "unknown"
    dataset: str = "unknown"
    seed: int | None = None
    init_index: int | None = None
    steps: int = 0
    steps_planned: int | None = None
    final_step: int | None = None
    final: dict = field(default_factory=dict)
    hyperparameters: dict = field(default_factory=dict)
    train_seconds: float | None = None
    wall_time_s: float | None = None
    clock: str = CLOCK
    started_at: str | None = None
    finished_at: str | None = None
    run_dir: str | None = None
    device: str | None = None
    resumed_from: str | None = None
    state_saved_to: str | None = None
    error: str | None = None
    diverged: dict | None = None
    population: dict | None = None
    search: dict | None = None
    session: str | None = None
    events: list = field(default_factory=list)
    stopped_early: bool | None = None
    versions: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        problem = _type_problem(self)
        if problem:
            raise RecordError(problem)

    def replace(self, **changes) -> "RunRecord":
        """A copy with ``changes`` (checked like a new record)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The JSON object ``summary.json`` holds (NaN and infinities become null;
        the fields of :data:`SITUATIONAL` only where they apply)."""
        data = dataclasses.asdict(self)
        for name in SITUATIONAL:
            if data[name] in (None, []):
                del data[name]
        return json_safe(data)

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "<record>") -> "RunRecord":
        """Check ``data`` against the schema of its ``schema_version``.

        Raises :class:`RecordVersionError` for an unknown version and
        :class:`RecordError` for an unknown key or a value of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise RecordError(f"{source}: a run record must be a JSON object, got "
                              f"{type(data).__name__}")
        version = data.get("schema_version", 0)
        names = {f.name for f in dataclasses.fields(cls)}
        if version == 0:  # unversioned: take the keys the schema knows
            known = {k: v for k, v in data.items() if k in names}
            known.update(schema_version=0, clock=LEGACY_CLOCK)
            known.setdefault("status", "unknown")
            data = known
        elif version != SCHEMA_VERSION:
            raise RecordVersionError(f"{source}: unknown run record schema_version {version!r} "
                                     f"(this onepass reads 0 to {SCHEMA_VERSION}; upgrade onepass)")
        else:
            unknown = sorted(set(data) - names)
            if unknown:
                raise RecordError(f"{source}: unknown key {unknown[0]!r} in a run record of "
                                  f"schema_version {version}")
        try:
            return cls(**data)
        except RecordError as error:
            raise RecordError(f"{source}: {error}") from None


def _type_problem(record: RunRecord) -> str | None:
    checks = {"status": str, "algorithm": str, "dataset": str, "clock": str, "steps": int,
              "final": dict, "hyperparameters": dict, "events": list, "versions": dict,
              "schema_version": int}
    optional = {"seed": int, "init_index": int, "steps_planned": int, "final_step": int,
                "train_seconds": (int, float), "wall_time_s": (int, float),
                "started_at": str, "finished_at": str, "run_dir": str, "device": str,
                "resumed_from": str, "state_saved_to": str, "error": str, "diverged": dict,
                "population": dict, "search": dict, "session": str, "stopped_early": bool}
    for name, kind in [*checks.items(), *optional.items()]:
        value = getattr(record, name)
        if value is None and name in optional:
            continue
        if isinstance(value, bool) and kind is not bool:
            return f"{name} must be {_kind_name(kind)}, got {value!r}"
        if not isinstance(value, kind):
            return f"{name} must be {_kind_name(kind)}, got {value!r}"
    if record.schema_version == SCHEMA_VERSION and record.status not in STATUSES:
        return f"status must be one of {', '.join(STATUSES)}, got {record.status!r}"
    return None


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "an integer", float: "a number", str: "a string", dict: "an object",
                        list: "a list", bool: "true or false"}[k] for k in kinds)


def json_safe(tree, leaf=None):
    """``tree`` with string keys, lists for tuples and ``None`` for non-finite
    floats; ``leaf`` (if given) first converts other leaves (e.g. tensors)."""
    if isinstance(tree, Mapping):
        return {str(k): json_safe(v, leaf) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [json_safe(v, leaf) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    if leaf is not None:
        converted = leaf(tree)
        if converted is not tree:
            return json_safe(converted, leaf)
    return tree


# ------------------------------------------------------------------ files

def record_path(path: str | os.PathLike) -> Path:
    """``path`` itself when it names a ``.json`` file, else ``path/summary.json`` (a run folder)."""
    path = Path(path)
    return path if path.suffix == ".json" else path / SUMMARY


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_record(path: str | os.PathLike, record: RunRecord) -> dict:
    """Write ``record`` atomically to ``path`` (a run folder or a ``.json`` file);
    returns the JSON object written."""
    if not isinstance(record, RunRecord):
        raise TypeError(f"write_record takes a RunRecord, got {type(record).__name__}")
    data = record.to_dict()
    atomic_write_bytes(record_path(path), (json.dumps(data, indent=2) + "\n").encode())
    return data


def read_record(path: str | os.PathLike) -> RunRecord:
    """The record at ``path`` (a run folder or a ``.json`` file).

    Raises:
        FileNotFoundError: there is none.
        RecordVersionError: its ``schema_version`` is unknown.
        RecordError: it is not JSON, or does not fit the schema.
    """
    file = record_path(path)
    try:
        text = file.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no run record at {file}") from None
    except OSError as error:
        raise RecordError(f"{file}: cannot read: {error.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise RecordError(f"{file}: not JSON ({error})") from None
    return RunRecord.from_dict(data, str(file))


def find_record(run_dir: str | os.PathLike) -> RunRecord | None:
    """The record of ``run_dir``, or ``None`` when it has none or one that cannot be
    read; an unknown ``schema_version`` still raises :class:`RecordVersionError`."""
    try:
        return read_record(run_dir)
    except RecordVersionError:
        raise
    except (FileNotFoundError, RecordError):
        return None


__all__ = ["CLOCK", "LEGACY_CLOCK", "RecordError", "RecordVersionError", "RunRecord",
           "SCHEMA_VERSION", "SITUATIONAL", "STATUSES", "SUMMARY", "atomic_write_bytes", "find_record",
           "json_safe", "read_record", "record_path", "write_record"]
