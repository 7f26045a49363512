"""The tables of :mod:`onepass.analysis.statistics` as Markdown and CSV text.

Markdown shows three significant digits (``mean ± s.e.``) under a caption that
states the metric, the treatment of diverged and excluded runs and how Random
(3-batched) is formed; CSV keeps full precision (an empty cell for NaN), one
row per (dataset, algorithm).
"""
from __future__ import annotations

import csv
import io
import math
from typing import Sequence

from onepass.analysis.statistics import THREE_BATCHED, DatasetTable

CSV_COLUMNS = ("dataset", "metric", "algorithm", "name", "n", "diverged", "excluded",
               "mean", "sem", "median", "best", "mean_without_diverged", "sem_without_diverged")
MARKDOWN_HEADER = ("Algorithm", "n", "diverged", "excluded", "mean ± s.e.", "median", "best",
                   "mean ± s.e. without diverged")

METRIC_LABELS = {
    "test_loss_unnormalised": "test loss in original units (MSE)",
    "test_loss": "test loss",
}


def fmt(x: float, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits; ``"–"`` for NaN/None."""
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def mean_sem(mean: float, sem: float) -> str:
    """``"mean ± sem"`` (just the mean when the standard error is undefined)."""
    return fmt(mean) if not math.isfinite(sem) else f"{fmt(mean)} ± {fmt(sem, 2)}"


def caption(table: DatasetTable) -> str:
    """The caption of one dataset's table (plain text)."""
    statuses = ", ".join(f"{count} {status}" for status, count in table.status_counts.items())
    text = (f"Final {METRIC_LABELS.get(table.metric, table.metric)} (`{table.metric}`) on "
            f"{table.dataset} over random hyperparameter initialisations: mean ± standard error "
            "(sample std, ddof=1, / √n), median and best (minimum). n counts finished and "
            "diverged runs; diverged runs enter every statistic with their last finite values "
            "and are also counted under 'diverged' (the last column leaves them out). "
            "'excluded' counts failed, interrupted or "
            f"unfinished runs and runs without a finite final value. Runs: {statuses}.")
    if table.row(THREE_BATCHED) is not None:
        text += (" Random (3-batched): Random (validation) runs ordered by initialisation index, "
                 "grouped in consecutive threes (a remainder is dropped); each group reports the "
                 "test loss of its run with the best final validation loss; n counts groups.")
    return text


def markdown(tables: Sequence[DatasetTable]) -> str:
    """All tables as one Markdown document (a section per dataset)."""
    parts = []
    for table in tables:
        lines = [f"## {table.dataset}", "", caption(table), "",
                 "| " + " | ".join(MARKDOWN_HEADER) + " |",
                 "|" + "---|" * len(MARKDOWN_HEADER)]
        for row in table.rows:
            cells = (row.display, str(row.n), str(row.diverged), str(row.excluded),
                     mean_sem(row.mean, row.sem), fmt(row.median), fmt(row.best),
                     mean_sem(*row.without_diverged))
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def csv_text(tables: Sequence[DatasetTable]) -> str:
    """All rows as CSV with :data:`CSV_COLUMNS` (floats in full precision)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for table in tables:
        for row in table.rows:
            writer.writerow([table.dataset, table.metric, row.algorithm, row.display, row.n,
                             row.diverged, row.excluded,
                             *(repr(v) if math.isfinite(v) else ""
                               for v in (row.mean, row.sem, row.median, row.best,
                                         *row.without_diverged))])
    return out.getvalue()


__all__ = ["CSV_COLUMNS", "METRIC_LABELS", "caption", "csv_text", "fmt", "markdown", "mean_sem"]
