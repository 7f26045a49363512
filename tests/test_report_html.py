"""``report.html`` opened in headless Chromium.

The page must render offline: the DOM Chromium builds holds the table rows and
``<img>`` elements with ``data:`` URIs, the screenshot shows the (coloured)
figures, and Chromium logs no console message (no JavaScript error). A
control page with a deliberate ``console.error`` checks that such messages
would be caught. The browser is ``$ONEPASS_CHROMIUM``, else the first of
chromium, chromium-browser, google-chrome, google-chrome-stable, chrome on
PATH; the README's test command runs ``scripts/ensure_chromium.sh``, which
installs Debian's ``chromium`` when it is missing and it can (as root with
apt-get). Without a browser the test fails (it is never skipped), saying how
to get one.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onepass.analysis import write_report

CHROMIUM_ENV = "ONEPASS_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
                  "chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0")
CONSOLE_LINE = re.compile(r":CONSOLE[:(]")


def find_chromium() -> str:
    """The browser to run: ``$ONEPASS_CHROMIUM``, else the first of
    :data:`CHROMIUM_NAMES` on PATH; fails the test, saying how to get one."""
    given = os.environ.get(CHROMIUM_ENV)
    if given:
        if not (os.path.isfile(given) and os.access(given, os.X_OK)):
            pytest.fail(f"${CHROMIUM_ENV}={given} is not an executable file", pytrace=False)
        return given
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no headless Chromium for the report test: run scripts/ensure_chromium.sh "
                "(installs Debian's chromium as root), or install it yourself (Debian/Ubuntu: "
                f"sudo apt-get install chromium), or set {CHROMIUM_ENV}=/path/to/chromium-or-chrome",
                pytrace=False)


def chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``page`` with a fresh profile; stdout and stderr captured."""
    browser = find_chromium()
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args,
                           page.as_uri()], capture_output=True, text=True, timeout=60)


def console_messages(stderr: str) -> list[str]:
    """Lines of Chromium's log that report a console message (errors included)."""
    return [line for line in stderr.splitlines() if CONSOLE_LINE.search(line)]


class PageParser(HTMLParser):
    """Collects table rows (``data-algorithm`` and cell texts) and image sources."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.images: list[str] = []
        self._row: str | None = None
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-algorithm" in attrs:
            self._row = attrs["data-algorithm"]
            self.rows[self._row] = []
        elif tag == "td" and self._row is not None:
            self._in_cell = True
            self.rows[self._row].append("")
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_cell = False
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._in_cell:
            self.rows[self._row][-1] += data


def write_run(folder: Path, algorithm: str, test_u: float, val: float, index: int,
              status: str = "finished") -> None:
    """A minimal UCI Energy run folder with an 11-row ``metrics.csv``."""
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "status": status, "init_index": index, "steps": 100, "wall_time_s": 1.0,
        "final": {"train_loss": 0.1, "val_loss": val, "test_loss": test_u / 10,
                  "test_loss_unnormalised": test_u},
        "hyperparameters": {"lr": 0.01, "momentum": 0.5, "weight_decay": 1e-4}}))
    (folder / "config.yaml").write_text(
        f"algorithm: {{name: {algorithm}}}\ndataset: {{kind: uci, name: energy}}\nseed: 0\n")
    rows = ["step,train_loss,val_loss,test_loss,test_loss_unnormalised,wall_time_s,"
            "lr,momentum,weight_decay"]
    for i in range(11):
        u = test_u * (2 - i / 10)
        rows.append(f"{10 * i},0.1,{val},{u / 10},{u},{0.1 * i},{0.01 * 0.9 ** i},0.5,1e-4")
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture
def report(tmp_path) -> Path:
    """``report.html`` of a sweep: Random, Random (validation) (6 runs → 2 groups), Ours."""
    root = tmp_path / "sweep"
    for i in range(4):
        write_run(root / "random" / f"init_{i}", "random", 1.0 + i, 1.0, i,
                  status="diverged" if i == 3 else "finished")
    for i in range(6):
        write_run(root / "rv" / f"init_{i}", "random_validation", 10.0 + i, 6.0 - i, i)
    for i in range(3):
        write_run(root / "ours" / f"init_{i}", "ours_lr_momentum", 0.5 + i / 10, 1.0, i)
    return write_report(root, tmp_path / "out", formats=["html"])["report.html"]


def test_console_errors_would_be_detected(tmp_path):
    page = tmp_path / "control.html"
    page.write_text("<!DOCTYPE html><p>control</p><script>console.error('control-error');"
                    "notDefined();</script>")
    result = chromium(page, tmp_path, "--dump-dom")
    messages = console_messages(result.stderr)
    assert any("control-error" in m for m in messages), result.stderr[-2000:]
    assert any("notDefined" in m for m in messages)


def test_report_html_renders_in_chromium(report, tmp_path):
    result = chromium(report, tmp_path, "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    assert console_messages(result.stderr) == []
    page = PageParser()
    page.feed(result.stdout)
    assert list(page.rows) == ["random", "random_validation", "random_3_batched",
                               "ours_lr_momentum"]
    assert page.rows["random"] == ["Random", "4", "1", "0", "2.5 ± 0.65", "2.5", "1", "2 ± 0.58"]
    # Groups (0,1,2) and (3,4,5) keep the lower validation loss: indices 2 and 5.
    assert page.rows["random_3_batched"] == ["Random (3-batched)", "2", "0", "0", "13.5 ± 1.5",
                                             "13.5", "12", "13.5 ± 1.5"]
    assert page.rows["ours_lr_momentum"][:2] == ["Ours (WD+LR+M)", "3"]
    assert len(page.images) == 4
    assert all(src.startswith("data:image/png;base64,") for src in page.images)


def test_report_html_screenshot_shows_the_figures(report, tmp_path):
    shot = tmp_path / "shot.png"
    result = chromium(report, tmp_path, f"--screenshot={shot}", "--window-size=1200,2400",
                      "--hide-scrollbars")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    assert console_messages(result.stderr) == []
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=int)
    assert pixels.shape[:2] == (2400, 1200)
    # Only the figures are in colour (text and table are grey): many saturated pixels.
    saturated = (pixels.max(axis=2) - pixels.min(axis=2)) > 80
    assert saturated.sum() > 5000


def test_a_missing_browser_fails_with_advice(monkeypatch):
    monkeypatch.delenv(CHROMIUM_ENV, raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(pytest.fail.Exception, match="ensure_chromium.sh.*apt-get install chromium"):
        find_chromium()
    monkeypatch.setenv(CHROMIUM_ENV, "/nonexistent/chromium")
    with pytest.raises(pytest.fail.Exception, match="not an executable file"):
        find_chromium()
