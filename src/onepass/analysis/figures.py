"""The paper's figures for one dataset of a sweep, rendered to PNG bytes.

Four figures per dataset (matplotlib, Agg canvas, no pyplot state):

- ``cdf``: empirical CDF of the final metric per algorithm (log x axis), the
  same values as the table (Random (3-batched) included);
- ``loss_vs_steps``: the metric against weight updates: per algorithm the
  median over its runs with an interquartile band; for random search also
  the *min over runs* at each step (dashed): an oracle envelope, the best test
  loss any of the runs has at that step;
- ``loss_vs_time``: the same against training time: at each log step the
  median over runs of ``metrics.csv``'s ``train_seconds`` on the x axis, the
  run record's clock (:data:`TIME_CAPTION`): time in training steps only, so
  compilation, data loading, evaluation and a population chunk's sharing do
  not shift one algorithm's curve against another's. Runs written before
  records were versioned have only ``wall_time_s`` (everything included); the
  figure then says so;
- ``hyperparameters``: learning rate, weight decay and momentum against weight
  updates (median and interquartile band over runs; ``<name>_mean`` columns for
  per-weight values; log scale for learning rate and weight decay).

Curves use the runs of each table row (finished and diverged runs with a
finite final value), read from their ``metrics.csv``. Runs are aligned on the
union of their log steps; a missing or non-finite value is replaced by the
run's last finite one, so **a diverged run keeps its last finite loss for the
rest of the axis**, as in the table. Wall-clock times are not carried forward.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from itertools import cycle
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from onepass.analysis.runs import Run
from onepass.analysis.statistics import DatasetTable, is_random_search
from onepass.analysis.tables import METRIC_LABELS

HYPERPARAMETERS = (("lr", "learning rate", True), ("weight_decay", "weight decay", True),
                   ("momentum", "momentum", False))
"""(column, label, log scale) of the hyperparameter panels."""

_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf", "#000000", "#1b9e77", "#d95f02", "#7570b3")
DPI = 110

TIME_COLUMN, LEGACY_TIME_COLUMN = "train_seconds", "wall_time_s"
TIME_CAPTION = ("Training time: seconds spent in training steps only (weight and hyperparameter "
                "updates), without compilation and first-step warm-up, data loading, evaluation "
                "or logging; a population member is charged its chunk's step time divided by "
                "the number of members. x: the median over runs at each log step.")
LEGACY_TIME_CAPTION = ("Wall-clock time as runs written before versioned run records measured it: "
                       "compilation, evaluation and logging included, and a population member's "
                       "time is its whole chunk's, so curves of different algorithms are not "
                       "comparable. x: the median over runs at each log step.")


@dataclass
class RenderedFigure:
    """One figure as PNG bytes, with the names a report needs."""

    dataset: str
    key: str
    title: str
    png: bytes
    caption: str = ""

    @property
    def filename(self) -> str:
        """``<dataset>_<key>.png`` with unsafe characters of the dataset replaced by ``_``."""
        return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', self.dataset)}_{self.key}.png"


def render_figures(table: DatasetTable) -> list[RenderedFigure]:
    """The figures of one dataset's table; a figure without data is left out."""
    label = METRIC_LABELS.get(table.metric, table.metric)
    upper = label[:1].upper() + label[1:]
    legacy = time_column(table) == LEGACY_TIME_COLUMN
    makers = (("cdf", f"Empirical CDF of the final {label}", cdf_figure, ""),
              ("loss_vs_steps", f"{upper} against weight updates", steps_figure, ""),
              ("loss_vs_time", f"{upper} against " + ("wall-clock time (legacy runs)" if legacy
                                                      else "training time"), time_figure,
               LEGACY_TIME_CAPTION if legacy else TIME_CAPTION),
              ("hyperparameters", "Hyperparameters during training", hyperparameter_figure, ""))
    out = []
    for key, title, make, caption in makers:
        figure = make(table)
        if figure is not None:
            figure.suptitle(f"{table.dataset}: {title}")
            out.append(RenderedFigure(table.dataset, key, title, png_bytes(figure), caption))
    return out


def time_column(table: DatasetTable) -> str:
    """The clock the time figure plots: ``train_seconds`` when every run logs it,
    else the legacy ``wall_time_s``."""
    runs = [run for row in table.rows if not row.derived for run in row.runs]
    return TIME_COLUMN if runs and all(TIME_COLUMN in run.metrics for run in runs) \
        else LEGACY_TIME_COLUMN


def png_bytes(figure: Figure) -> bytes:
    """``figure`` saved as PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def cdf_figure(table: DatasetTable) -> Figure | None:
    """Empirical CDF of the final metric per row, log x axis."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.add_subplot()
    drawn = False
    for colour, row in zip(_colours(), table.rows):
        if row.n == 0:
            continue
        x = np.sort(row.values)
        ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", color=colour,
                label=f"{row.display} (n={row.n})")
        drawn = True
    if not drawn:
        return None
    ax.set_xscale("log")
    ax.set_xlabel(f"final {table.metric}")
    ax.set_ylabel("fraction of initialisations")
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return figure


def steps_figure(table: DatasetTable) -> Figure | None:
    """Median and interquartile band of the metric against weight updates."""
    return _loss_curves(table, time_axis=False)


def time_figure(table: DatasetTable) -> Figure | None:
    """Median and interquartile band of the metric against the median of
    :func:`time_column` (training time; wall-clock time for legacy runs)."""
    return _loss_curves(table, time_axis=True)


def hyperparameter_figure(table: DatasetTable) -> Figure | None:
    """Median and interquartile band of each hyperparameter against weight updates."""
    figure = Figure(figsize=(13, 4.5), layout="constrained")
    axes = figure.subplots(1, len(HYPERPARAMETERS))
    drawn = False
    for ax, (name, label, log) in zip(axes, HYPERPARAMETERS):
        for colour, row in zip(_colours(), table.rows):
            if row.derived or not row.runs:
                continue
            column = _hyperparameter_column(row.runs, name)
            steps, values = aligned(row.runs, column)
            if values.size == 0:
                continue
            median, low, high = quartiles(values)
            ax.plot(steps, median, color=colour, label=row.display)
            ax.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
            drawn = True
        ax.set_title(label)
        ax.set_xlabel("weight updates")
        if log:
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    if not drawn:
        return None
    handles, labels = _legend_entries(axes)
    figure.legend(handles, labels, fontsize="small", loc="outside lower center",
                  ncol=min(len(labels), 4))
    return figure


def aligned(runs: Sequence[Run], column: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)``: ``column`` of each run's ``metrics.csv`` on the union
    of their log steps (``values[i, j]``: run ``i`` at ``steps[j]``), each
    non-finite or missing value replaced by the run's last finite one (NaN
    before its first). Runs without the column are left out (no row)."""
    series = []
    for run in runs:
        metrics = run.metrics
        if column in metrics and "step" in metrics and np.isfinite(metrics[column]).any():
            series.append((metrics["step"], metrics[column]))
    if not series:
        return np.empty(0), np.empty((0, 0))
    steps = np.unique(np.concatenate([s for s, _ in series]))
    steps = steps[np.isfinite(steps)]
    values = np.full((len(series), steps.size), np.nan)
    for i, (s, v) in enumerate(series):
        keep = np.isfinite(s)
        values[i, np.searchsorted(steps, s[keep])] = v[keep]
    return steps, forward_fill(values)


def forward_fill(values: np.ndarray) -> np.ndarray:
    """Each row's non-finite entries replaced by its last finite entry (NaN before the first)."""
    finite = np.isfinite(values)
    index = np.where(finite, np.arange(values.shape[1]), 0)
    np.maximum.accumulate(index, axis=1, out=index)
    out = values[np.arange(values.shape[0])[:, None], index]
    out[~np.maximum.accumulate(finite, axis=1)] = np.nan
    return out


def quartiles(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column-wise ``(median, 25th percentile, 75th percentile)``, ignoring NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN
        low, median, high = np.nanpercentile(values, [25, 50, 75], axis=0)
    return median, low, high


# ------------------------------------------------------------------ private

def _loss_curves(table: DatasetTable, time_axis: bool) -> Figure | None:
    figure = Figure(figsize=(10, 5), layout="constrained")
    ax = figure.add_subplot()
    drawn = False
    for colour, row in zip(_colours(), table.rows):
        if row.derived or not row.runs:
            continue
        steps, values = aligned(row.runs, table.metric)
        if values.size == 0:
            continue
        if time_axis:
            x = _median_time(row.runs, steps, time_column(table))
            keep = np.isfinite(x)
            x, values = x[keep], values[:, keep]
            if x.size == 0:
                continue
        else:
            x = steps
        median, low, high = quartiles(values)
        ax.plot(x, median, color=colour, label=f"{row.display} median")
        ax.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)
        if is_random_search(row.algorithm):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                envelope = np.nanmin(values, axis=0)
            ax.plot(x, envelope, color=colour, linestyle="--", linewidth=1,
                    label=f"{row.display}: min over runs")
        drawn = True
    if not drawn:
        return None
    ax.set_yscale("log")
    if time_axis:
        ax.set_xlabel("training time: seconds in training steps only, no compilation, data "
                      "loading or evaluation (median over runs)"
                      if time_column(table) == TIME_COLUMN else
                      "wall-clock time incl. compilation and evaluation (s, median over runs; "
                      "legacy runs)")
    else:
        ax.set_xlabel("weight updates")
    ax.set_ylabel(table.metric)
    ax.grid(True, which="both", alpha=0.3)
    figure.legend(fontsize="small", loc="outside right center")
    return figure


def _median_time(runs: Sequence[Run], steps: np.ndarray, column: str) -> np.ndarray:
    times = np.full((len(runs), steps.size), np.nan)
    for i, run in enumerate(runs):
        metrics = run.metrics
        if column in metrics and "step" in metrics:
            s, t = metrics["step"], metrics[column]
            keep = np.isfinite(s) & np.isfinite(t)
            times[i, np.searchsorted(steps, s[keep])] = t[keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(times, axis=0)


def _hyperparameter_column(runs: Sequence[Run], name: str) -> str:
    """``name`` if some run logs it as a column, else ``name_mean`` (per-weight values)."""
    return name if any(name in run.metrics for run in runs) else f"{name}_mean"


def _legend_entries(axes) -> tuple[list, list]:
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    return list(entries.values()), list(entries)


def _colours():
    """Line colours in table-row order (the same algorithm, the same colour in every figure)."""
    return cycle(_COLOURS)


__all__ = ["HYPERPARAMETERS", "RenderedFigure", "aligned", "cdf_figure", "forward_fill",
           "hyperparameter_figure", "png_bytes", "quartiles", "render_figures", "steps_figure",
           "time_column", "time_figure"]
