"""Sweeps: every (algorithm, random initialisation) pair of one dataset.

:func:`run_sweep` is what ``onepass sweep`` calls::

    run_sweep("uci_energy", ["random", "ours_lr"], inits=20, root="runs/energy",
              steps=4000, workers=2)

* :mod:`.plan`: the runs, their folders, the manifest, resume state;
* :mod:`.population`: many initialisations trained as one computation;
* :mod:`.executors`: where units run, one interface (local processes, Ray, SLURM);
* :mod:`.reproduce`: the paper's named experiments (sweep + report).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from onepass.experiment.record import find_record
from onepass.sweep.executors import EXECUTORS, PopulationUnit, SingleUnit
from onepass.sweep.plan import (
    PAPER_ALGORITHMS, RootLock, RunSpec, Sweep, SweepError, check_or_write_manifest, run_is_done,
)

DEFAULT_POPULATION_SIZE = 50


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` did: ``counts`` of final statuses over the whole
    sweep, ``skipped`` (already done before), ``ran`` (this call), ``failed``."""

    root: Path
    total: int
    skipped: int
    ran: int
    counts: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)


def relative_cost(config) -> float:
    """A run's cost per update relative to Random's (measured on UCI Energy
    populations: a Diff-through-Opt window costs about twice a plain one)."""
    algo = config["algorithm"]
    if not algo["tune"] or algo["method"] == "none":
        return 1.0
    if algo["method"] == "unroll":
        return 1.0 + algo["unroll_steps"] / algo["update_interval"]
    if algo["method"] == "baydin":
        return 1.1
    per_weight = "weight" in dict(algo["granularity"]).values()
    return 1.4 if per_weight else 1.3


def make_units(specs: Sequence[RunSpec], *, population: str = "auto",
               population_size: int = DEFAULT_POPULATION_SIZE) -> list:
    """Group pending runs into units: population chunks (per algorithm, in
    initialisation order, at most ``population_size``) where they apply, single
    runs elsewhere; interleaved so early units cover every algorithm, costliest
    algorithm first in each round (:func:`relative_cost`) so the cheapest
    chunks end the sweep and the workers finish together."""
    from onepass.sweep.population import population_applies

    if population not in ("auto", "off"):
        raise SweepError(f"--population must be auto or off, got {population!r}")
    if population_size < 1:
        raise SweepError(f"--population-size must be ≥ 1, got {population_size}")
    singles, by_algorithm = [], {}
    for spec in specs:
        if population == "auto" and population_size > 1 and population_applies(spec.config):
            by_algorithm.setdefault(spec.algorithm, []).append(spec)
        else:
            singles.append(SingleUnit(spec))
    chunked = {a: [s[k:k + population_size] for k in range(0, len(s), population_size)]
               for a, s in by_algorithm.items()}
    order = sorted(chunked, key=lambda a: -relative_cost(by_algorithm[a][0].config))
    units = []
    for k in range(max((len(c) for c in chunked.values()), default=0)):
        for chunks in (chunked[a] for a in order):
            if k < len(chunks):
                chunk = chunks[k]
                units.append(PopulationUnit(chunk) if len(chunk) > 1 else SingleUnit(chunk[0]))
    return units + singles


def run_sweep(
    dataset: str,
    algorithms: Sequence[str],
    inits: int,
    root: str | os.PathLike,
    *,
    seed: int = 0,
    steps: int | None = None,
    overrides: Sequence[str] = (),
    workers: int = 1,
    executor: str = "local",
    address: str | None = None,
    population: str = "auto",
    population_size: int = DEFAULT_POPULATION_SIZE,
    data_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
    slurm: Mapping | None = None,
) -> SweepOutcome:
    """Run (or continue) a sweep under ``root``; see :mod:`onepass.sweep.plan`.

    Raises:
        SweepError: bad arguments, a manifest of a different sweep, another
            sweep running in ``root``.
        ImportError: ``executor="ray"`` without Ray installed, ``"slurm"``
            without submitit (``slurm`` holds
            :class:`~onepass.sweep.executors.slurm.SlurmExecutor` options such as
            ``partition``, ``timeout_min``, ``gpus_per_node``).
        ConfigError, FileNotFoundError: a bad config or missing data.
        KeyboardInterrupt: runs in flight are recorded ``interrupted``.
    """
    if executor not in EXECUTORS:
        raise SweepError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    EXECUTORS[executor].check_available()
    if workers < 1:
        raise SweepError(f"--workers must be ≥ 1, got {workers}")
    sweep = Sweep(Path(root), dataset, algorithms, inits, seed=seed, steps=steps,
                  overrides=overrides)
    first = sweep.config(algorithms[0], 0)
    name = first["dataset"]["name"]
    from onepass.experiment.tasks import check_data
    check_data(first, data_dir)  # raises, saying where it looked and how to download
    with RootLock(sweep.root):
        check_or_write_manifest(sweep)
        specs = sweep.runs()
        pending = [s for s in specs if not run_is_done(s)]
        units = make_units(pending, population=population, population_size=population_size)
        outcome = SweepOutcome(sweep.root, len(specs), len(specs) - len(pending), 0)
        from tqdm.auto import tqdm
        bar = tqdm(total=len(specs), initial=outcome.skipped, disable=not progress,
                   dynamic_ncols=True, unit="run", desc=f"sweep {name}")
        counts: Counter = Counter()
        try:
            runner = EXECUTORS[executor].for_sweep(sweep.root, workers=workers, address=address,
                                                   slurm=slurm)
            for results in runner.run(units, data_dir=data_dir, device=device):
                for result in results:
                    counts[result.status] += 1
                    if result.status not in ("finished", "diverged"):
                        outcome.failed.append(result)
                outcome.ran += len(results)
                bar.update(len(results))
                bar.set_postfix({k: v for k, v in sorted(counts.items())}, refresh=False)
        finally:
            bar.close()
        total: Counter = Counter()
        for spec in specs:
            record = find_record(spec.run_dir)
            total["missing" if record is None else record.status] += 1
        outcome.counts = dict(sorted(total.items()))
    return outcome


__all__ = ["DEFAULT_POPULATION_SIZE", "EXECUTORS", "PAPER_ALGORITHMS", "Sweep", "SweepError",
           "SweepOutcome", "make_units", "relative_cost", "run_sweep"]
