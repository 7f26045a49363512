"""The paper's main table: final test loss per algorithm over initialisations.

For every dataset of a sweep, one row per algorithm with

- ``n``: runs in the statistics: status ``finished`` or ``diverged`` AND a
  finite final value of the metric;
- ``diverged``: how many of those ``n`` runs diverged. **A diverged run enters
  every statistic with the last finite values its summary records** (the
  losses logged before the non-finite step), so divergence is penalised by
  the loss it had reached rather than hidden by dropping the run;
- ``excluded``: runs of the algorithm not in ``n`` (status failed,
  interrupted, running or unreadable, or no finite final value at all);
- mean ± standard error (sample standard deviation, ``ddof=1``, over
  ``sqrt(n)``; NaN for ``n < 2``), median and best (minimum);
- the mean ± standard error once more without the diverged runs
  (:attr:`AlgorithmStats.without_diverged`), since one diverged run's last
  finite loss can dominate a mean.

The metric is, by default, the test MSE in original units
(``test_loss_unnormalised``) for UCI regression and ``test_loss`` otherwise.

The derived row **Random (3-batched)** (:func:`three_batched`) is computed from
the ``random_validation`` runs in ``n`` of that algorithm: ordered by
initialisation index (:func:`~onepass.analysis.runs.initialisation_order`),
cut into consecutive groups of three (a remainder of one or two runs is
dropped); in each group the run with the lowest final validation loss (a
missing one counts as +inf; ties go to the earlier run) is kept and its test
loss reported. Its ``n`` is the number of groups, ``diverged`` counts the
kept runs that diverged, ``excluded`` the ``random_validation`` runs in no
group.

A **search** algorithm (``bayesopt``, ``asha``, ``pbt``: runs whose summary
has a ``search`` entry naming their study) spends many runs on one result:
its row has one value per study, the test loss of the study's run with the
lowest final validation loss (:func:`search_stats`), so ``n`` counts studies.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from onepass.analysis.runs import Run, initialisation_order
from onepass.experiment import algorithms

METRICS = ("test_loss_unnormalised", "test_loss")
"""Metrics a report can tabulate (keys of a run record's ``final`` / columns of ``metrics.csv``)."""

THREE_BATCHED = "random_3_batched"
"""Algorithm key of the derived Random (3-batched) row."""
THREE_BATCHED_SOURCE = "random_validation"
"""The algorithm whose runs Random (3-batched) is built from."""

DISPLAY_NAMES = {a.name: a.label for a in algorithms.TABLE}
"""Paper names of the algorithms, in the paper's row order
(:data:`onepass.experiment.algorithms.TABLE`)."""
_ORDER = {name: i for i, name in enumerate(DISPLAY_NAMES)}


def display_name(algorithm: str) -> str:
    """The paper's name of ``algorithm``; unknown names are returned as is."""
    return DISPLAY_NAMES.get(algorithm, algorithm)


def algorithm_sort_key(algorithm: str) -> tuple:
    """Paper row order; unknown algorithms after the known ones, alphabetically."""
    return (_ORDER.get(algorithm, len(_ORDER)), algorithm)


def is_random_search(algorithm: str) -> bool:
    """Whether ``algorithm`` is a random-search baseline (hyperparameters not tuned)."""
    return algorithm.startswith("random")


@dataclass
class AlgorithmStats:
    """One row of the table (see the module docstring for the definitions).

    ``values[i]`` is the final metric of ``runs[i]`` (for Random (3-batched):
    of the run kept from group ``i``).
    """

    algorithm: str
    n: int
    diverged: int
    excluded: int
    mean: float
    sem: float
    median: float
    best: float
    values: np.ndarray = field(repr=False)
    runs: list[Run] = field(repr=False)

    @property
    def display(self) -> str:
        return display_name(self.algorithm)

    @property
    def without_diverged(self) -> tuple[float, float]:
        """``(mean, standard error)`` over the runs in ``n`` that did not diverge:
        how the row reads if diverged runs are dropped, as tables that average
        only finite results (the paper's, it seems) do."""
        kept = [v for v, r in zip(self.values, self.runs) if not r.diverged]
        mean, sem, _, _ = summarise(kept)
        return mean, sem

    @property
    def derived(self) -> bool:
        """True for an analysis row (Random (3-batched)) rather than a set of runs."""
        return self.algorithm == THREE_BATCHED


@dataclass
class DatasetTable:
    """The table of one dataset: its rows in paper order and, for the caption,
    the number of runs per status (all algorithms)."""

    dataset: str
    metric: str
    rows: list[AlgorithmStats]
    status_counts: dict[str, int]

    def row(self, algorithm: str) -> AlgorithmStats | None:
        """The row of ``algorithm`` (a key such as ``"random"``), if any."""
        return next((r for r in self.rows if r.algorithm == algorithm), None)


def summarise(values: Sequence[float]) -> tuple[float, float, float, float]:
    """``(mean, standard error, median, minimum)`` of ``values``.

    The standard error is ``std(ddof=1) / sqrt(n)``: NaN for fewer than two
    values; all four are NaN for none.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (math.nan,) * 4
    sem = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), sem, float(np.median(x)), float(x.min())


def default_metric(runs: Iterable[Run]) -> str:
    """``test_loss_unnormalised`` when the runs are UCI regression runs that
    record it, else ``test_loss``."""
    runs = list(runs)
    if any(r.dataset_kind == "uci" for r in runs) and \
            any(r.final_value("test_loss_unnormalised") is not None for r in runs):
        return "test_loss_unnormalised"
    return "test_loss"


def algorithm_stats(algorithm: str, runs: Sequence[Run], metric: str) -> AlgorithmStats:
    """The row of ``algorithm`` from its ``runs`` (of one dataset)."""
    used = [r for r in runs if r.in_statistics and r.final_value(metric) is not None]
    values = np.array([r.final_value(metric) for r in used], dtype=float)
    return AlgorithmStats(algorithm, len(used), sum(r.diverged for r in used),
                          len(runs) - len(used), *summarise(values), values=values, runs=used)


def search_stats(algorithm: str, runs: Sequence[Run], metric: str) -> AlgorithmStats:
    """The row of a search algorithm: per study, the run with the best final
    validation loss (ties to the earlier run) stands for the study."""
    usable = [r for r in initialisation_order(runs) if r.in_statistics and r.final_value(metric) is not None]
    studies: dict[str, list[Run]] = {}
    for run in usable:
        studies.setdefault(str(run.record.search.get("study", "")), []).append(run)
    kept = [min(group, key=lambda r: _or_inf(r.final_value("val_loss"))) for group in studies.values()]
    values = np.array([r.final_value(metric) for r in kept], dtype=float)
    return AlgorithmStats(algorithm, len(kept), sum(r.diverged for r in kept),
                          len(runs) - len(usable), *summarise(values), values=values, runs=kept)


def is_search(runs: Sequence[Run]) -> bool:
    """Whether these runs are the trials of search studies (BO, ASHA, PBT)."""
    return bool(runs) and all(r.record.search is not None for r in runs)


def three_batched(runs: Sequence[Run], metric: str) -> AlgorithmStats:
    """The Random (3-batched) row from ``random_validation`` runs of one dataset."""
    usable = initialisation_order([r for r in runs if r.in_statistics
                                   and r.final_value(metric) is not None])
    kept = []
    for start in range(0, len(usable) - len(usable) % 3, 3):
        group = usable[start:start + 3]
        kept.append(min(group, key=lambda r: _or_inf(r.final_value("val_loss"))))
    values = np.array([r.final_value(metric) for r in kept], dtype=float)
    return AlgorithmStats(THREE_BATCHED, len(kept), sum(r.diverged for r in kept),
                          len(runs) - 3 * len(kept), *summarise(values), values=values, runs=kept)


def build_tables(runs: Iterable[Run], metric: str | None = None) -> list[DatasetTable]:
    """One :class:`DatasetTable` per dataset (alphabetical), rows in paper order.

    Args:
        runs: runs of a sweep, e.g. from :func:`~onepass.analysis.runs.load_runs`.
        metric: a key of :data:`METRICS`; ``None`` → :func:`default_metric` per dataset.
    """
    if metric is not None and metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    by_dataset: dict[str, list[Run]] = {}
    for run in runs:
        by_dataset.setdefault(run.dataset, []).append(run)
    tables = []
    for dataset in sorted(by_dataset):
        dataset_runs = by_dataset[dataset]
        chosen = metric or default_metric(dataset_runs)
        by_algorithm: dict[str, list[Run]] = {}
        for run in dataset_runs:
            by_algorithm.setdefault(run.algorithm, []).append(run)
        rows = [(search_stats if is_search(rs) else algorithm_stats)(a, rs, chosen)
                for a, rs in by_algorithm.items()]
        if THREE_BATCHED_SOURCE in by_algorithm:
            rows.append(three_batched(by_algorithm[THREE_BATCHED_SOURCE], chosen))
        rows.sort(key=lambda row: algorithm_sort_key(row.algorithm))
        tables.append(DatasetTable(dataset, chosen, rows,
                                   dict(sorted(Counter(r.status for r in dataset_runs).items()))))
    return tables


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value


__all__ = ["AlgorithmStats", "DISPLAY_NAMES", "DatasetTable", "METRICS", "THREE_BATCHED",
           "THREE_BATCHED_SOURCE", "algorithm_sort_key", "algorithm_stats", "build_tables",
           "default_metric", "display_name", "is_random_search", "summarise", "three_batched"]
