"""Analysis of a sweep of run folders: the paper's tables and figures.

- :mod:`~onepass.analysis.runs`: find and read run folders (:func:`load_runs`);
- :mod:`~onepass.analysis.statistics`: per-algorithm statistics and the
  derived Random (3-batched) row (:func:`build_tables`);
- :mod:`~onepass.analysis.tables`: Markdown and CSV text;
- :mod:`~onepass.analysis.figures`: CDF, loss curves and hyperparameter
  trajectories as PNG;
- :mod:`~onepass.analysis.html`: one self-contained HTML page;
- :mod:`~onepass.analysis.report`: :func:`write_report` and the
  ``onepass report`` entry point :func:`report_main`.

Diverged runs enter every statistic and curve with their last finite values
and are counted separately; failed, interrupted and unfinished runs are
listed but excluded.
"""
from onepass.analysis.report import FORMATS, report_main, write_report
from onepass.analysis.runs import Run, load_runs, read_metrics_csv
from onepass.analysis.statistics import (
    AlgorithmStats, DatasetTable, build_tables, display_name, summarise, three_batched,
)

__all__ = ["AlgorithmStats", "DatasetTable", "FORMATS", "Run", "build_tables", "display_name",
           "load_runs", "read_metrics_csv", "report_main", "summarise", "three_batched",
           "write_report"]
