"""Run a sweep's units on Ray (``pip install 'onepass[ray]'``).

One Ray task per sweep unit (``num_cpus=1``). The worker trains into a
temporary folder and ships the run folders back as bytes; the driver writes
them under the log root, the run record (``summary.json``, naming the real run
folder) last, so the cluster needs no shared filesystem (the dataset must exist under ``data_dir`` on every node). A worker
that dies reports its runs ``failed``; interrupting the driver cancels the
Ray tasks still running.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import ClassVar, Iterator, Mapping, Sequence

from onepass.experiment.record import SUMMARY, RunRecord, atomic_write_bytes, find_record, write_record
from onepass.sweep.executors.base import (
    PopulationUnit, RunResult, SingleUnit, execute_unit, failed_results, import_extra,
)
from onepass.sweep.plan import RunSpec, SweepError, clear_run_dir

RAY_HINT = "the ray executor needs Ray: pip install 'onepass[ray]'"


def import_ray():
    """``ray``, or :class:`ImportError` with the install hint."""
    return import_extra("ray", RAY_HINT)


class RayExecutor:
    """:class:`~onepass.sweep.executors.base.Executor` on Ray: ``ray.init(address)``
    unless Ray is already initialised in this process (``None``: a new local instance)."""

    name: ClassVar[str] = "ray"

    def __init__(self, address: str | None = None):
        self.address = address

    @classmethod
    def check_available(cls) -> None:
        import_ray()

    @classmethod
    def for_sweep(cls, root: Path, *, workers: int = 1, address: str | None = None,
                  slurm: Mapping | None = None) -> "RayExecutor":
        return cls(address)

    def run(self, units: Sequence, *, data_dir=None, device: str = "cpu"
            ) -> Iterator[list[RunResult]]:
        """Yield each unit's results as it completes on Ray."""
        ray = import_ray()
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise SweepError(f"cannot start or reach Ray at {self.address or 'a new local instance'}"
                                 f": {' '.join(str(error).split())[:300]}") from None
        remote = ray.remote(num_cpus=1, max_retries=0)(_ray_execute)
        data_dir = None if data_dir is None else str(Path(data_dir).resolve())
        task_of = {remote.remote(unit, data_dir, device): unit for unit in units}
        pending = list(task_of)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        results, files, records = ray.get(ref)
                    except Exception as error:  # the worker died or Ray failed: rerun on resume
                        message = f"ray: {type(error).__name__}: {' '.join(str(error).split())[:500]}"
                        yield failed_results(task_of[ref], message)
                        continue
                    _write_shipped(files, records)
                    yield results
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)


def _ray_execute(unit, data_dir, device
                 ) -> tuple[list[RunResult], dict[str, dict[str, bytes]], dict[str, RunRecord]]:
    """On a Ray worker: train into a temporary folder; return the results, each
    run folder's files but its record, and its record (naming the real run folder)."""
    import torch
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="onepass-sweep-") as tmp:
        moved = []
        for k, spec in enumerate(unit.specs):
            moved.append(RunSpec(spec.algorithm, spec.init_index, spec.config, Path(tmp) / str(k)))
        local = PopulationUnit(moved) if isinstance(unit, PopulationUnit) else SingleUnit(moved[0])
        results = execute_unit(local, data_dir, device)
        files, records = {}, {}
        for spec, local_spec in zip(unit.specs, moved):
            contents = {str(p.relative_to(local_spec.run_dir)): p.read_bytes()
                        for p in sorted(local_spec.run_dir.rglob("*")) if p.is_file()}
            record = find_record(local_spec.run_dir)
            if record is not None:
                del contents[SUMMARY]
                records[str(spec.run_dir)] = record.replace(run_dir=str(spec.run_dir))
            files[str(spec.run_dir)] = contents
    return results, files, records


def _write_shipped(files: dict[str, dict[str, bytes]], records: dict[str, RunRecord]) -> None:
    """Write shipped run folders under the log root, each record last."""
    for key, contents in files.items():
        run_dir = Path(key)
        clear_run_dir(run_dir)
        for name, data in contents.items():
            if name != SUMMARY:
                atomic_write_bytes(run_dir / name, data)
        if key in records:
            write_record(run_dir, records[key])
        elif SUMMARY in contents:  # a file the worker could not read as a record: as it was
            atomic_write_bytes(run_dir / SUMMARY, contents[SUMMARY])


__all__ = ["RAY_HINT", "RayExecutor", "import_ray"]
