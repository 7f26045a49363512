"""Where a sweep's units run: one interface, three implementations.

Every executor follows :class:`~onepass.sweep.executors.base.Executor`:
``executor.run(units, data_dir=..., device=...)`` yields one list of
:class:`RunResult` per unit as each unit completes, and
``Executor.for_sweep(root, workers=..., address=..., slurm=...)`` builds the
one ``onepass sweep --executor NAME`` uses.

* ``local`` (:class:`~onepass.sweep.executors.local.LocalExecutor`): in this
  process, or a pool of local worker processes;
* ``ray`` (:class:`~onepass.sweep.executors.ray.RayExecutor`): one Ray task per
  sweep unit, run folders shipped back to the driver;
* ``slurm`` (:class:`~onepass.sweep.executors.slurm.SlurmExecutor`): SLURM job
  arrays through submitit.

The units, their results and the work a unit does (:func:`execute_unit`)
live in :mod:`.base`, which the implementations import (never this package's
``__init__``); Ray and submitit are imported only when used.
"""
from __future__ import annotations

from onepass.sweep.executors.base import (
    Executor, PopulationUnit, RunResult, SingleUnit, execute_unit,
)
from onepass.sweep.executors.local import LocalExecutor
from onepass.sweep.executors.ray import RayExecutor, import_ray
from onepass.sweep.executors.slurm import SlurmExecutor, import_submitit

EXECUTORS: dict[str, type] = {cls.name: cls for cls in (LocalExecutor, RayExecutor, SlurmExecutor)}
"""``--executor`` name → class."""

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "PopulationUnit", "RayExecutor", "RunResult",
           "SingleUnit", "SlurmExecutor", "execute_unit", "import_ray", "import_submitit"]
