"""Where a sweep's tasks run: in this process, in local worker processes, or on Ray.

A *task* is one single run (:class:`SingleTask`) or one population chunk
(:class:`PopulationTask`, several initialisations of one algorithm trained as
one computation). :func:`execute_task` runs a task wherever it is called and
returns one :class:`RunResult` per run; the executors only decide where:

* ``local`` with ``workers=1``: in this process;
* ``local`` with ``workers>1``: a pool of spawned processes, each with
  ``torch.set_num_threads(1)`` and tied to this process (Linux: they die with
  it, even on ``kill -9``);
* ``ray``: one Ray task per sweep task (``num_cpus=1``). The worker trains into
  a temporary folder and ships the run folders back as bytes; the driver writes
  them under the log root, ``summary.json`` last, so the cluster needs no
  shared filesystem (the dataset must exist under ``data_dir`` on every node).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from onepass.sweep.plan import RunSpec, add_init_index, clear_run_dir

RAY_HINT = "the ray executor needs Ray: pip install 'onepass[ray]'"


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


# ------------------------------------------------------------ the work itself

def execute_task(task, data_dir=None, device="cpu") -> list[RunResult]:
    """Run ``task`` here; every run folder ends with a final ``summary.json``
    holding ``init_index`` (unless the process is killed)."""
    for spec in task.specs:
        clear_run_dir(spec.run_dir)
    if isinstance(task, PopulationTask):
        return _execute_population(task, data_dir, device)
    return [_execute_single(task.spec, data_dir, device)]


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
        return [RunResult(s.algorithm, s.init_index, "failed", message) for s in specs]
    return [RunResult(s.algorithm, s.init_index, summary["status"], summary.get("error"))
            for s, summary in zip(specs, summaries)]


# ------------------------------------------------------------- worker setup

def _worker_init() -> None:
    """Worker processes: one torch thread, and die with the parent."""
    import torch
    torch.set_num_threads(1)
    _die_with_parent()


def _die_with_parent() -> None:
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch():  # fallback for systems without PDEATHSIG
        import time
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _pool_execute(task, data_dir, device) -> list[RunResult]:
    return execute_task(task, data_dir, device)


# ----------------------------------------------------------------- executors

def run_local(tasks: Sequence, *, workers: int = 1, data_dir=None, device="cpu"
              ) -> Iterator[list[RunResult]]:
    """Yield each task's results as it completes."""
    if workers <= 1 or len(tasks) <= 1:
        import torch
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for task in tasks:
                yield execute_task(task, data_dir, device)
        finally:
            torch.set_num_threads(threads)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init)
    completed = False
    try:
        pending = {pool.submit(_pool_execute, task, data_dir, device) for task in tasks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
        completed = True
    finally:
        if completed:
            pool.shutdown(wait=True)
        else:
            _shutdown_pool(pool)


def _shutdown_pool(pool) -> None:
    """Stop the pool now: running tasks are killed (their runs are redone on resume)."""
    processes = list(getattr(pool, "_processes", {}).values())
    for p in processes:
        if p.is_alive():
            p.terminate()   # SIGTERM: run_training records "interrupted"
    for p in processes:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def _ray_execute(task, data_dir, device) -> tuple[list[RunResult], dict[str, dict[str, bytes]]]:
    """On a Ray worker: train into a temporary folder, return results and files."""
    import torch
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="onepass-sweep-") as tmp:
        moved = []
        for k, spec in enumerate(task.specs):
            moved.append(RunSpec(spec.algorithm, spec.init_index, spec.config, Path(tmp) / str(k)))
        local = PopulationTask(moved) if isinstance(task, PopulationTask) else SingleTask(moved[0])
        results = execute_task(local, data_dir, device)
        files = {}
        for spec, local_spec in zip(task.specs, moved):
            contents = {str(p.relative_to(local_spec.run_dir)): p.read_bytes()
                        for p in sorted(local_spec.run_dir.rglob("*")) if p.is_file()}
            if "summary.json" in contents:  # name the real run folder, not the temporary one
                summary = json.loads(contents["summary.json"])
                summary["run_dir"] = str(spec.run_dir)
                contents["summary.json"] = (json.dumps(summary, indent=2) + "\n").encode()
            files[str(spec.run_dir)] = contents
    return results, files


def _write_shipped(files: dict[str, dict[str, bytes]]) -> None:
    from onepass.experiment.logging import SUMMARY, atomic_write_bytes
    from onepass.sweep.plan import clear_run_dir as clear

    for run_dir, contents in files.items():
        run_dir = Path(run_dir)
        clear(run_dir)
        for name, data in contents.items():
            if name != SUMMARY:
                atomic_write_bytes(run_dir / name, data)
        if SUMMARY in contents:
            atomic_write_bytes(run_dir / SUMMARY, contents[SUMMARY])


def import_ray():
    """``ray``, or :class:`ImportError` with the install hint."""
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_HINT) from None
    return ray


def run_ray(tasks: Sequence, *, address: str | None = None, data_dir=None, device="cpu",
            ) -> Iterator[list[RunResult]]:
    """Yield each task's results as it completes on Ray (``ray.init(address)``
    unless Ray is already initialised in this process)."""
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            from onepass.sweep.plan import SweepError
            raise SweepError(f"cannot start or reach Ray at {address or 'a new local instance'}: "
                             f"{' '.join(str(error).split())[:300]}") from None
    remote = ray.remote(num_cpus=1, max_retries=0)(_ray_execute)
    data_dir = None if data_dir is None else str(Path(data_dir).resolve())
    task_of = {remote.remote(task, data_dir, device): task for task in tasks}
    pending = list(task_of)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    results, files = ray.get(ref)
                except Exception as error:  # the worker died or Ray failed: rerun on resume
                    message = f"ray: {type(error).__name__}: {' '.join(str(error).split())[:500]}"
                    yield [RunResult(s.algorithm, s.init_index, "failed", message)
                           for s in task_of[ref].specs]
                    continue
                _write_shipped(files)
                yield results
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


__all__ = ["PopulationTask", "RAY_HINT", "RunResult", "SingleTask", "execute_task",
           "import_ray", "run_local", "run_ray"]
