"""What every executor shares: the tasks, their results, the work itself, the interface.

A *task* is one single run (:class:`SingleTask`) or one population chunk
(:class:`PopulationTask`, several initialisations of one algorithm trained as
one computation). :func:`execute_task` runs a task wherever it is called and
returns one :class:`RunResult` per run; an :class:`Executor` only decides where.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator, Mapping, Protocol, Sequence

from onepass.sweep.plan import RunSpec, add_init_index, clear_run_dir, run_is_done


@dataclass(frozen=True)
class SingleTask:
    spec: RunSpec

    @property
    def specs(self) -> list[RunSpec]:
        return [self.spec]


@dataclass(frozen=True)
class PopulationTask:
    specs: list[RunSpec] = field(default_factory=list)


@dataclass(frozen=True)
class RunResult:
    algorithm: str
    init_index: int
    status: str
    error: str | None = None


class Executor(Protocol):
    """Where a sweep's tasks run.

    ``run`` yields one list of :class:`RunResult` per task (one result per run,
    in the task's order) as each task completes, in completion order. Closing
    the iterator early (an exception, Ctrl-C) stops or cancels the tasks still
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

    def run(self, tasks: Sequence, *, data_dir=None, device: str = "cpu"
            ) -> Iterator[list[RunResult]]:
        ...


# ------------------------------------------------------------ the work itself

def execute_task(task, data_dir=None, device="cpu") -> list[RunResult]:
    """Run ``task`` here; every run folder ends with a final ``summary.json``
    holding ``init_index`` (unless the process is killed)."""
    for spec in task.specs:
        clear_run_dir(spec.run_dir)
    if isinstance(task, PopulationTask):
        return _execute_population(task, data_dir, device)
    return [_execute_single(task.spec, data_dir, device)]


def task_done(task) -> bool:
    """Whether every run of ``task`` already holds a final result."""
    return all(run_is_done(spec) for spec in task.specs)


def done_results(task) -> list[RunResult]:
    """The results of a task whose runs are done, read from their folders."""
    from onepass.experiment.logging import read_summary
    out = []
    for spec in task.specs:
        summary = read_summary(spec.run_dir) or {}
        out.append(RunResult(spec.algorithm, spec.init_index, summary.get("status", "finished"),
                             summary.get("error")))
    return out


def failed_results(task, message: str) -> list[RunResult]:
    """One ``failed`` result per run of ``task`` (its worker or job died)."""
    return [RunResult(s.algorithm, s.init_index, "failed", message) for s in task.specs]


def _execute_single(spec: RunSpec, data_dir, device) -> RunResult:
    from onepass.experiment.run import run_training

    try:
        summary = run_training(spec.config, spec.run_dir, data_dir=data_dir, device=device,
                               progress=False)
    except KeyboardInterrupt:
        add_init_index(spec.run_dir, spec.init_index)
        raise
    except Exception as error:  # recorded as failed by run_training (or never started)
        summary = add_init_index(spec.run_dir, spec.init_index)
        if summary is None or summary.get("status") in (None, "running"):
            from onepass.experiment.logging import write_summary
            write_summary(spec.run_dir, {"status": "failed", "algorithm": spec.algorithm,
                                         "init_index": spec.init_index,
                                         "error": f"{type(error).__name__}: {error}"})
        return RunResult(spec.algorithm, spec.init_index, "failed", f"{type(error).__name__}: {error}")
    add_init_index(spec.run_dir, spec.init_index)
    return RunResult(spec.algorithm, spec.init_index, summary["status"], summary.get("error"))


def _execute_population(task: PopulationTask, data_dir, device) -> list[RunResult]:
    from onepass.sweep.population import train_population

    specs = task.specs
    try:
        summaries = train_population([s.config for s in specs], [s.run_dir for s in specs],
                                     data_dir=data_dir, device=device,
                                     extra_summary=[{"init_index": s.init_index} for s in specs])
    except KeyboardInterrupt:
        raise
    except Exception as error:
        from onepass.experiment.logging import read_summary, write_summary
        message = f"{type(error).__name__}: {error}"
        for s in specs:
            summary = read_summary(s.run_dir) or {"algorithm": s.algorithm}
            if summary.get("status") not in ("finished", "diverged", "failed"):
                summary.update(status="failed", error=message, init_index=s.init_index)
                write_summary(s.run_dir, summary)
        return failed_results(task, message)
    return [RunResult(s.algorithm, s.init_index, summary["status"], summary.get("error"))
            for s, summary in zip(specs, summaries)]


__all__ = ["Executor", "PopulationTask", "RunResult", "SingleTask", "done_results",
           "execute_task", "failed_results", "task_done"]
