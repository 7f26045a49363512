"""The report as ONE self-contained HTML file.

Inline CSS, figures embedded as ``data:image/png;base64`` URIs, no scripts and
no external resources, so the file can be mailed, archived or opened offline.
"""
from __future__ import annotations

import base64
import html
import re
from datetime import datetime, timezone
from typing import Sequence

from onepass.analysis.figures import RenderedFigure
from onepass.analysis.statistics import DatasetTable
from onepass.analysis.tables import MARKDOWN_HEADER, caption, fmt, mean_sem

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: 1em 0; }
caption { caption-side: top; text-align: left; font-size: .9em; color: #444; padding: .5em 0;
          max-width: 60em; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f0f0; }
tr.derived td { font-style: italic; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: .9em; color: #444; }
.meta { font-size: .85em; color: #666; }
"""


def render_html(tables: Sequence[DatasetTable], figures: Sequence[RenderedFigure], *,
                source: str = "", generated: datetime | None = None) -> str:
    """The complete report page.

    Args:
        tables: one table per dataset (:func:`~onepass.analysis.statistics.build_tables`).
        figures: figures of any datasets; each is shown under its dataset's table.
        source: the sweep folder, shown in the header.
        generated: the time shown in the header (default: now, UTC).
    """
    generated = generated or datetime.now(timezone.utc)
    esc = html.escape
    body = ["<h1>onepass report</h1>",
            f'<p class="meta">Sweep: <code>{esc(source)}</code> · generated '
            f"{esc(generated.isoformat(timespec='seconds'))}</p>"]
    for table in tables:
        body.append(f'<section id="{esc(table.dataset)}"><h2>{esc(table.dataset)}</h2>')
        body.append(_table_html(table))
        for figure in (f for f in figures if f.dataset == table.dataset):
            uri = "data:image/png;base64," + base64.b64encode(figure.png).decode("ascii")
            body.append(f'<figure><img src="{uri}" alt="{esc(figure.title)}">'
                        f"<figcaption>{esc(figure.title)}"
                        + (f". {esc(figure.caption)}" if figure.caption else "")
                        + "</figcaption></figure>")
        body.append("</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>onepass report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _table_html(table: DatasetTable) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in MARKDOWN_HEADER)
    rows = []
    for row in table.rows:
        cells = (row.display, row.n, row.diverged, row.excluded, mean_sem(row.mean, row.sem),
                 fmt(row.median), fmt(row.best), mean_sem(*row.without_diverged))
        css = ' class="derived"' if row.derived else ""
        rows.append(f'<tr{css} data-algorithm="{esc(row.algorithm)}">'
                    + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>")
    text = re.sub(r"`([^`]*)`", r"<code>\1</code>", esc(caption(table)))
    return (f"<table><caption>{text}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


__all__ = ["render_html"]
