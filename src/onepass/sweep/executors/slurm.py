"""Run a sweep's units as SLURM jobs through ``submitit`` (``pip install 'onepass[slurm]'``).

::

    from onepass.sweep.executors.slurm import SlurmExecutor
    executor = SlurmExecutor("runs/energy/.slurm", partition="gpu", timeout_min=120,
                             gpus_per_node=1, chunk_size=10)
    for results in executor.run(units, data_dir="/shared/data", device="auto"):
        ...

* **Jobs.** Units are grouped in chunks of ``chunk_size`` (one unit per job by
  default) and submitted as one SLURM job array; each job runs its units one
  after the other with :func:`~onepass.sweep.executors.base.execute_unit`,
  writing the run folders directly (the log root must be on a filesystem
  shared with the compute nodes, as must ``data_dir``). ``max_parallel`` caps
  the jobs of the array that run at once (``--array=...%N``).
* **Resumable.** A run whose ``summary.json`` says ``finished`` or
  ``diverged`` is skipped, both when submitting (:meth:`SlurmExecutor.run`
  yields it unsubmitted) and again inside the job (a requeued or preempted job
  does not redo what it finished before). Resubmitting the same sweep after a
  crash, a timeout or a cancelled allocation therefore only runs what is missing.
* **Failures.** A job that dies (time limit, node failure, OOM) reports its
  runs as ``failed``; the driver never raises for it. Interrupting the driver
  (Ctrl-C) cancels the jobs still queued or running.

For tests and laptops, ``cluster="local"`` runs the same jobs as local
processes (``submitit``'s ``LocalExecutor``), and ``cluster="debug"`` in this process.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

from onepass.sweep.executors.base import (
    RunResult, done_results, execute_unit, failed_results, import_extra, unit_done,
)

SLURM_HINT = "the slurm executor needs submitit: pip install 'onepass[slurm]'"


def import_submitit():
    """``submitit``, or :class:`ImportError` with the install hint (one line)."""
    return import_extra("submitit", SLURM_HINT)


def run_chunk(units: Sequence, data_dir=None, device: str = "cpu", threads: int = 1
              ) -> list[RunResult]:
    """What one SLURM job runs: its units in order, skipping those already done.

    Returns the flat list of results, one per run, in unit order.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    results = []
    for unit in units:
        results.extend(done_results(unit) if unit_done(unit) else
                       execute_unit(unit, data_dir, device))
    return results


class SlurmExecutor:
    """:class:`~onepass.sweep.executors.base.Executor` on SLURM through ``submitit``.

    Args:
        folder: where submitit keeps job scripts, pickles and logs
            (one sub-folder per job is made by submitit).
        cluster: ``None`` or ``"slurm"`` for SLURM; ``"local"`` to run the
            jobs as local processes; ``"debug"`` to run them in this process.
        chunk_size: units per job (1: one job per run or population chunk).
        partition, timeout_min, cpus_per_task, gpus_per_node, mem_gb: the
            usual job resources (``None`` leaves the cluster's default).
        max_parallel: jobs of the array running at once (``None``: no cap).
        threads: ``torch.set_num_threads`` inside each job (0 keeps torch's
            default; default ``cpus_per_task``).
        poll_s: seconds between checks of the jobs' states.
        slurm_parameters: further submitit parameters, e.g.
            ``{"slurm_account": "abc", "slurm_qos": "high"}``.
    """

    name: ClassVar[str] = "slurm"

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        cluster: str | None = None,
        chunk_size: int = 1,
        partition: str | None = None,
        timeout_min: int = 60,
        cpus_per_task: int = 1,
        gpus_per_node: int | None = None,
        mem_gb: float | None = None,
        max_parallel: int | None = None,
        threads: int | None = None,
        poll_s: float = 5.0,
        slurm_parameters: Mapping[str, Any] | None = None,
    ):
        submitit = import_submitit()
        if cluster not in (None, "slurm", "local", "debug"):
            raise ValueError(f"unknown cluster {cluster!r}; choose slurm, local or debug")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
        if max_parallel is not None and max_parallel < 1:
            raise ValueError(f"max_parallel must be ≥ 1, got {max_parallel}")
        self.folder = Path(folder)
        self.chunk_size = chunk_size
        self.threads = cpus_per_task if threads is None else threads
        self.poll_s = poll_s
        self.executor = submitit.AutoExecutor(folder=str(self.folder), cluster=cluster)
        parameters: dict[str, Any] = {"timeout_min": timeout_min, "cpus_per_task": cpus_per_task,
                                      "name": "onepass"}
        if gpus_per_node is not None:
            parameters["gpus_per_node"] = gpus_per_node
        if mem_gb is not None:
            parameters["mem_gb"] = mem_gb
        if partition is not None:
            parameters["slurm_partition"] = partition
        if max_parallel is not None:
            parameters["slurm_array_parallelism"] = max_parallel
        parameters.update(slurm_parameters or {})
        self.executor.update_parameters(**parameters)
        self.jobs: list = []

    @classmethod
    def check_available(cls) -> None:
        import_submitit()

    @classmethod
    def for_sweep(cls, root: Path, *, workers: int = 1, address: str | None = None,
                  slurm: Mapping | None = None) -> "SlurmExecutor":
        """submitit's files go to ``root/.slurm``; ``slurm`` holds this class's options."""
        return cls(Path(root) / ".slurm", **(slurm or {}))

    def run(self, units: Sequence, *, data_dir=None, device: str = "cpu"
            ) -> Iterator[list[RunResult]]:
        """Yield each unit's results as its job completes.

        Units whose runs are all done already are yielded at once, unsubmitted.
        """
        pending = []
        for unit in units:
            if unit_done(unit):
                yield done_results(unit)
            else:
                pending.append(unit)
        if not pending:
            return
        chunks = [pending[k:k + self.chunk_size] for k in range(0, len(pending), self.chunk_size)]
        data_dir = None if data_dir is None else str(Path(data_dir).resolve())
        jobs = self.executor.map_array(run_chunk, chunks, [data_dir] * len(chunks),
                                       [str(device)] * len(chunks), [self.threads] * len(chunks))
        self.jobs = list(jobs)
        waiting = dict(zip(self.jobs, chunks))
        try:
            while waiting:
                finished = [job for job in waiting if job.done()]
                if not finished:
                    time.sleep(self.poll_s)
                    continue
                for job in finished:
                    chunk = waiting.pop(job)
                    yield from self._collect(job, chunk)
        finally:
            for job in waiting:  # interrupted driver: cancel what is still queued or running
                try:
                    job.cancel(check=False)
                except Exception:  # noqa: BLE001  (best effort)
                    pass

    def _collect(self, job, chunk) -> Iterator[list[RunResult]]:
        try:
            flat = job.result()
        except Exception as error:  # noqa: BLE001  (the job died: its runs are redone on resume)
            message = f"slurm job {job.job_id}: {type(error).__name__}: " \
                      f"{' '.join(str(error).split())[:500]}"
            for unit in chunk:
                yield done_results(unit) if unit_done(unit) else failed_results(unit, message)
            return
        k = 0
        for unit in chunk:
            n = len(unit.specs)
            yield flat[k:k + n]
            k += n


__all__ = ["SLURM_HINT", "SlurmExecutor", "import_submitit", "run_chunk"]
