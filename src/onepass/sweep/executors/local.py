"""Run a sweep's units on this machine: in this process, or in a pool of worker processes.

* ``workers=1``: in this process, with one torch thread;
* ``workers>1``: a pool of spawned processes, each with
  ``torch.set_num_threads(1)`` and tied to this process (Linux: they die with
  it, even on ``kill -9``). Interrupting the driver terminates the workers;
  their runs are recorded ``interrupted`` and redone on resume.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import ClassVar, Iterator, Mapping, Sequence

from onepass.sweep.executors.base import RunResult, execute_unit


class LocalExecutor:
    """:class:`~onepass.sweep.executors.base.Executor` on local processes."""

    name: ClassVar[str] = "local"

    def __init__(self, workers: int = 1):
        if workers < 1:
            raise ValueError(f"workers must be ≥ 1, got {workers}")
        self.workers = workers

    @classmethod
    def check_available(cls) -> None:
        """Nothing optional is needed."""

    @classmethod
    def for_sweep(cls, root: Path, *, workers: int = 1, address: str | None = None,
                  slurm: Mapping | None = None) -> "LocalExecutor":
        return cls(workers)

    def run(self, units: Sequence, *, data_dir=None, device: str = "cpu"
            ) -> Iterator[list[RunResult]]:
        """Yield each unit's results as it completes."""
        if self.workers <= 1 or len(units) <= 1:
            import torch
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                for unit in units:
                    yield execute_unit(unit, data_dir, device)
            finally:
                torch.set_num_threads(threads)
            return
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context,
                                   initializer=_worker_init)
        completed = False
        try:
            pending = {pool.submit(execute_unit, unit, data_dir, device) for unit in units}
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


def _shutdown_pool(pool) -> None:
    """Stop the pool now: running units are killed (their runs are redone on resume)."""
    processes = list(getattr(pool, "_processes", {}).values())
    for p in processes:
        if p.is_alive():
            p.terminate()   # SIGTERM: run_training records "interrupted"
    for p in processes:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["LocalExecutor"]
