"""``onepass report RUNS``: tables, figures and one HTML page for a sweep.

Reads every run folder below ``RUNS`` (:func:`~onepass.analysis.runs.load_runs`),
builds the per-dataset tables (:func:`~onepass.analysis.statistics.build_tables`)
and writes, into ``-o OUT`` (default ``RUNS/report``):

- ``table.md`` and ``table.csv`` (formats ``md`` and ``csv``);
- ``<dataset>_{cdf,loss_vs_steps,loss_vs_time,hyperparameters}.png`` (format ``png``);
- ``report.html``: the tables and the figures in one self-contained file
  (format ``html``).

All four formats are written unless ``--format`` names some. The Markdown
table is also printed to stdout.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

from onepass.analysis.figures import render_figures
from onepass.analysis.html import render_html
from onepass.analysis.runs import load_runs
from onepass.analysis.statistics import METRICS, build_tables
from onepass.analysis.tables import csv_text, markdown

FORMATS = ("md", "csv", "png", "html")


def write_report(root: str | os.PathLike, out: str | os.PathLike | None = None, *,
                 metric: str | None = None, formats: Iterable[str] = FORMATS) -> dict[str, Path]:
    """Write the report of the sweep under ``root``; return ``{file name: path}``.

    Args:
        root: the sweep folder.
        out: the output folder (created); default ``root/report``.
        metric: a key of :data:`~onepass.analysis.statistics.METRICS`, or
            ``None`` for the default per dataset (original units for UCI).
        formats: a subset of :data:`FORMATS`.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no run folder below ``root``, or an unknown metric or format.
    """
    formats = set(formats)
    if not formats <= set(FORMATS):
        raise ValueError(f"formats must be among {FORMATS}, got {sorted(formats)}")
    root = Path(root)
    runs = load_runs(root)
    if not runs:
        raise ValueError(f"no run folders (folders with summary.json) below {root}")
    tables = build_tables(runs, metric)
    out = Path(out) if out is not None else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def write(name: str, data: str | bytes) -> None:
        path = out / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        written[name] = path

    if "md" in formats:
        write("table.md", markdown(tables))
    if "csv" in formats:
        write("table.csv", csv_text(tables))
    if formats & {"png", "html"}:
        figures = [figure for table in tables for figure in render_figures(table)]
        if "png" in formats:
            for figure in figures:
                write(figure.filename, figure.png)
        if "html" in formats:
            write("report.html", render_html(tables, figures, source=str(root.resolve())))
    return written


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``onepass report``."""
    parser = argparse.ArgumentParser(
        prog="onepass report",
        description="Tables (mean ± s.e., median, best of the final test loss per algorithm), "
                    "figures and a self-contained HTML page for a sweep of run folders.")
    parser.add_argument("runs", metavar="RUNS", help="sweep folder (run folders at any depth)")
    parser.add_argument("-o", "--out", metavar="OUT", help="output folder (default RUNS/report)")
    parser.add_argument("--metric", choices=METRICS,
                        help="final loss to tabulate (default: test_loss_unnormalised for UCI "
                             "regression, else test_loss)")
    parser.add_argument("--format", dest="formats", nargs="+", choices=FORMATS, default=None,
                        metavar="FORMAT", help=f"outputs to write, among {', '.join(FORMATS)} "
                                               "(default: all)")
    return parser


def report_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``onepass report``; returns the exit status (0 ok, 1 no runs)."""
    args = build_parser().parse_args(argv)
    try:
        written = write_report(args.runs, args.out, metric=args.metric,
                               formats=args.formats or FORMATS)
    except (FileNotFoundError, ValueError) as err:
        print(f"onepass report: {err}", file=sys.stderr)
        return 1
    if "table.md" in written:
        print(written["table.md"].read_text())
    for path in written.values():
        print(f"wrote {path}", file=sys.stderr)
    return 0


__all__ = ["FORMATS", "build_parser", "report_main", "write_report"]
