"""What a sweep runs, where each run goes, and which runs are already done.

A sweep is every (algorithm, initialisation) pair of one dataset config::

    <root>/sweep.json                      the manifest (what this folder holds)
    <root>/<algorithm>/init_<iii>/         one run folder per pair, in the format
                                           of ``onepass train`` (config.yaml,
                                           metrics.csv, TensorBoard events,
                                           summary.json with ``init_index``)

Initialisation ``i`` draws its hyperparameters with
:func:`~onepass.experiment.config.draw_random_initialisation` ``(seed + i)`` and
sets the config's ``seed`` (the model's initial weights) to ``seed + i``, so
every algorithm starts initialisation ``i`` from the same weights and the same
hyperparameters.

Resume semantics (:func:`run_is_done`): a run folder whose run record
(:mod:`onepass.experiment.record`) says ``finished`` or ``diverged`` is kept; anything else (no folder, no or an
unreadable summary, status ``running``, ``interrupted`` or ``failed``) is
emptied and run again from scratch. ``summary.json`` is always replaced
atomically, so a killed sweep never leaves a half-written summary that looks
finished.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from onepass.experiment import algorithms
from onepass.experiment.config import find_config, load_config
from onepass.experiment.record import atomic_write_bytes, find_record

MANIFEST = "sweep.json"
MANIFEST_FORMAT = 1
DONE_STATUSES = ("finished", "diverged")

PAPER_ALGORITHMS = algorithms.names(paper=True)
"""The single-run algorithms of the paper's main table, from
:data:`onepass.experiment.algorithms.TABLE` (Random (3-batched) is derived from
``random_validation`` by the report)."""


class SweepError(ValueError):
    """A sweep that cannot start (bad arguments, a mismatched manifest, a busy root)."""


@dataclass(frozen=True)
class RunSpec:
    """One (algorithm, initialisation) pair: its resolved config and run folder."""

    algorithm: str
    init_index: int
    config: dict
    run_dir: Path


@dataclass
class Sweep:
    """A sweep's definition (what :data:`MANIFEST` records).

    Args:
        root: the log root.
        dataset: a dataset config (shipped name such as ``uci_energy``, or a path).
        algorithms: algorithm configs (shipped names or paths).
        inits: number of random initialisations N (indices ``0 .. N-1``).
        seed: initialisation ``i`` uses ``seed + i``.
        steps: ``training.steps`` for every run (``None``: the config's).
        overrides: extra ``key=value`` overrides applied to every run (last).
    """

    root: Path
    dataset: str
    algorithms: Sequence[str]
    inits: int
    seed: int = 0
    steps: int | None = None
    overrides: Sequence[str] = ()
    _algorithm_names: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self):
        self.root = Path(self.root)
        self.algorithms = list(self.algorithms)
        self.overrides = list(self.overrides)
        if not self.algorithms:
            raise SweepError("give at least one algorithm")
        if self.inits < 1:
            raise SweepError(f"the number of initialisations must be ≥ 1, got {self.inits}")
        if self.seed < 0:
            raise SweepError(f"the seed must be ≥ 0, got {self.seed}")
        if self.steps is not None and self.steps < 1:
            raise SweepError(f"--steps must be ≥ 1, got {self.steps}")
        names = []
        for algorithm in self.algorithms:
            names.append(self.config(algorithm, 0)["algorithm"]["name"])  # checks every config
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SweepError(f"two algorithm configs share the name {duplicates[0]!r} "
                             "(algorithm.name is the folder name)")
        if any("/" in n or n in ("", ".", "..") for n in names):
            raise SweepError(f"invalid algorithm name among {names}")
        self._algorithm_names = names

    # ------------------------------------------------------------ configs

    def _overrides(self, init_index: int) -> list:
        out = [(("seed",), self.seed + init_index)]
        if self.steps is not None:
            out.append((("training", "steps"), self.steps))
        return out + list(self.overrides)

    def config(self, algorithm: str, init_index: int) -> dict:
        """The resolved config of ``algorithm`` (a config name or path) for initialisation ``i``."""
        return load_config([self.dataset, algorithm], self._overrides(init_index),
                           random_init=self.seed + init_index)

    @property
    def algorithm_names(self) -> list[str]:
        """Folder names (``algorithm.name`` of each config), in the given order."""
        return list(self._algorithm_names)

    def run_dir(self, algorithm_name: str, init_index: int) -> Path:
        return self.root / algorithm_name / f"init_{init_index:03d}"

    def runs(self) -> list[RunSpec]:
        """Every pair, initialisation-major (a killed sweep has whole initialisations done)."""
        return [RunSpec(name, i, self.config(algorithm, i), self.run_dir(name, i))
                for i in range(self.inits)
                for algorithm, name in zip(self.algorithms, self._algorithm_names)]

    # ----------------------------------------------------------- manifest

    def manifest(self) -> dict:
        """What :data:`MANIFEST` holds. ``base_config`` (the dataset config with
        the overrides, resolved) makes ``uci_energy`` and ``configs/uci_energy.yaml``
        the same sweep."""
        base = load_config([self.dataset], self._overrides(0)[1:])
        base.pop("seed", None)
        base.pop("algorithm", None)
        base.pop("hyperparameters", None)
        return {
            "format": MANIFEST_FORMAT,
            "dataset": self.dataset,
            "algorithms": self.algorithm_names,
            "algorithm_configs": [str(a) for a in self.algorithms],
            "inits": self.inits,
            "seed": self.seed,
            "steps": self.steps,
            "overrides": [o if isinstance(o, str) else f"{'.'.join(o[0])}={o[1]}"
                          for o in self.overrides],
            "base_config": base,
        }


COMPARED_KEYS = ("algorithms", "inits", "seed", "steps", "overrides", "base_config")


def check_or_write_manifest(sweep: Sweep) -> dict:
    """Write ``root/sweep.json``, or check that the one there describes the same sweep.

    Raises :class:`SweepError` naming the keys that differ.
    """
    path = sweep.root / MANIFEST
    manifest = sweep.manifest()
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise SweepError(f"{path} is not a readable sweep manifest ({error}); "
                             "choose another log root") from None
        differ = [k for k in COMPARED_KEYS if _jsonable(old.get(k)) != _jsonable(manifest.get(k))]
        if differ:
            details = "; ".join(f"{k}: {json.dumps(_jsonable(old.get(k)))} there, "
                                f"{json.dumps(_jsonable(manifest.get(k)))} now" for k in differ)
            raise SweepError(f"{sweep.root} holds a different sweep ({details}); rerun it with the "
                             "same arguments to continue it, or choose another log root (-l)")
        return old
    if sweep.root.exists() and any(p for p in sweep.root.iterdir() if p.name != LOCK):
        raise SweepError(f"{sweep.root} exists, is not empty and has no {MANIFEST}; "
                         "choose another log root (-l)")
    sweep.root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def _jsonable(value):
    return json.loads(json.dumps(value))


# -------------------------------------------------------------- run state

def run_is_done(spec: RunSpec) -> bool:
    """Whether ``spec``'s folder holds a final record (``finished`` or ``diverged``)."""
    record = find_record(spec.run_dir)
    return record is not None and record.status in DONE_STATUSES


def clear_run_dir(run_dir: Path) -> None:
    """Remove a stale run folder's contents (before running it again)."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------ lock

LOCK = ".sweep.lock"


class RootLock:
    """An exclusive ``flock`` on ``root/.sweep.lock`` while a sweep runs (released by
    the kernel even on ``kill -9``), so two sweeps never write the same folders."""

    def __init__(self, root: Path):
        self.path = Path(root) / LOCK
        self._fd: int | None = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no locking
            pass
        except OSError:
            os.close(fd)
            raise SweepError(f"another sweep is running in {self.path.parent} "
                             f"(it holds {self.path})") from None
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def dataset_config_name(name: str) -> str:
    """Check that ``name`` is a config file (raises ConfigError otherwise)."""
    find_config(name)
    return name


__all__ = ["DONE_STATUSES", "MANIFEST", "PAPER_ALGORITHMS", "RootLock", "RunSpec", "Sweep",
           "SweepError", "check_or_write_manifest", "clear_run_dir",
           "run_is_done"]
