"""What every executor shares: the units, their results, the work itself, the interface.

A *unit* is one single run (:class:`SingleUnit`) or one population chunk
(:class:`PopulationUnit`, several initialisations of one algorithm trained as
one computation). :func:`execute_unit` runs a unit wherever it is called and
returns one :class:`RunResult` per run; an :class:`Executor` only decides where.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar, Iterator, Mapping, Protocol, Sequence

from onepass.experiment.record import RunRecord, find_record, write_record
from onepass.sweep.plan import RunSpec, clear_run_dir, run_is_done


@dataclass(frozen=True)
class SingleUnit:
    spec: RunSpec

    @property
    def specs(self) -> list[RunSpec]:
        return [self.spec]


@dataclass(frozen=True)
class PopulationUnit:
    specs: list[RunSpec] = field(default_factory=list)


@dataclass(frozen=True)
class RunResult:
    algorithm: str
    init_index: int
    status: str
    error: str | None = None


class Executor(Protocol):
    """Where a sweep's units run.

    ``run`` yields one list of :class:`RunResult` per unit (one result per run,
    in the unit's order) as each unit completes, in completion order. Closing
    the iterator early (an exception, Ctrl-C) stops or cancels the units still
    running; their runs are redone when the sweep is run again.
    """

    name: ClassVar[str]

    @classmethod
    def check_available(cls) -> None:
        """Raise :class:`ImportError` naming the extra to install when the
        executor's optional library is missing."""

    @classmethod
    def for_sweep(cls, root: Path, *, workers: int = 1, address: str | None = None,
                  slurm: Mapping | None = None) -> "Executor":
        """The executor ``onepass sweep`` uses for the sweep under ``root``
        (each implementation reads the options that concern it)."""

    def run(self, units: Sequence, *, data_dir=None, device: str = "cpu"
            ) -> Iterator[list[RunResult]]:
        ...


def import_extra(module: str, hint: str):
    """``module`` imported, or :class:`ImportError` with ``hint`` (one line: how
    to install the extra an executor needs)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(hint) from None


# ------------------------------------------------------------ the work itself

def execute_unit(unit, data_dir=None, device="cpu") -> list[RunResult]:
    """Run ``unit`` here; every run folder ends with a final ``summary.json``
    holding ``init_index`` (unless the process is killed). The index is part of
    each record from its first write; a run that never started gets a ``failed``
    record of its own."""
    for spec in unit.specs:
        clear_run_dir(spec.run_dir)
    if isinstance(unit, PopulationUnit):
        return _execute_population(unit, data_dir, device)
    return [_execute_single(unit.spec, data_dir, device)]


def unit_done(unit) -> bool:
    """Whether every run of ``unit`` already holds a final result."""
    return all(run_is_done(spec) for spec in unit.specs)


def done_results(unit) -> list[RunResult]:
    """The results of a unit whose runs are done, read from their records."""
    out = []
    for spec in unit.specs:
        record = find_record(spec.run_dir)
        out.append(RunResult(spec.algorithm, spec.init_index,
                             "finished" if record is None else record.status,
                             None if record is None else record.error))
    return out


def failed_results(unit, message: str) -> list[RunResult]:
    """One ``failed`` result per run of ``unit`` (its worker or job died)."""
    return [RunResult(s.algorithm, s.init_index, "failed", message) for s in unit.specs]


def _record_unstarted_failure(spec: RunSpec, message: str) -> None:
    """Give ``spec``'s folder a ``failed`` record when the run left none, or
    only its ``running`` one (it died before its loop could record the end).
    A final record (``finished``, ``diverged``, ``failed``, ``interrupted``)
    written by the run itself is left as it is."""
    record = find_record(spec.run_dir)
    if record is not None and record.status != "running":
        return
    write_record(spec.run_dir, RunRecord(
        status="failed", algorithm=spec.algorithm,
        dataset=spec.config.get("dataset", {}).get("name", "unknown"), seed=spec.config.get("seed"),
        steps_planned=spec.config.get("training", {}).get("steps"),
        init_index=spec.init_index, run_dir=str(spec.run_dir), error=message,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds")))


def _execute_single(spec: RunSpec, data_dir, device) -> RunResult:
    from onepass.experiment.run import run_training

    try:
        summary = run_training(spec.config, spec.run_dir, data_dir=data_dir, device=device,
                               progress=False, record_fields={"init_index": spec.init_index})
    except KeyboardInterrupt:
        raise  # recorded as interrupted by run_training (or never started: redone on resume)
    except Exception as error:  # recorded as failed by run_training, or never started
        message = f"{type(error).__name__}: {error}"
        _record_unstarted_failure(spec, message)
        return RunResult(spec.algorithm, spec.init_index, "failed", message)
    return RunResult(spec.algorithm, spec.init_index, summary["status"], summary.get("error"))


def _execute_population(unit: PopulationUnit, data_dir, device) -> list[RunResult]:
    from onepass.sweep.population import train_population

    specs = unit.specs
    try:
        summaries = train_population([s.config for s in specs], [s.run_dir for s in specs],
                                     data_dir=data_dir, device=device,
                                     extra_summary=[{"init_index": s.init_index} for s in specs])
    except KeyboardInterrupt:
        raise
    except Exception as error:  # members recorded as failed by train_population, or never started
        message = f"{type(error).__name__}: {error}"
        for s in specs:
            _record_unstarted_failure(s, message)
        return failed_results(unit, message)
    return [RunResult(s.algorithm, s.init_index, summary["status"], summary.get("error"))
            for s, summary in zip(specs, summaries)]


__all__ = ["Executor", "PopulationUnit", "RunResult", "SingleUnit", "done_results",
           "execute_unit", "failed_results", "import_extra", "unit_done"]
