"""``examples/with_lightning.py`` and ``examples/with_transformers.py`` run as a
user would run them, briefly: exit 0 and, as the last line of stdout, one JSON
object ``{"hyperparameters": {...}, "val_loss": ...}`` whose tuned values
moved from where the script started them. The Lightning run also writes its
CSV log, which must hold the tuned values.
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT_S = 600


def run(*args: str) -> dict:
    """Run ``args``; check the exit status and return the last stdout line as JSON."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}   # tiny models: one thread is fastest on a busy machine
    done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=EXAMPLES.parent, env=env)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output\nstderr:\n{done.stderr}"
    return json.loads(lines[-1])


def check_result(result: dict, start: dict[str, float]) -> None:
    assert set(result) == {"hyperparameters", "val_loss"}, result
    hyper = result["hyperparameters"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in hyper.values()), hyper
    assert isinstance(result["val_loss"], float) and math.isfinite(result["val_loss"]), result
    for name, value in start.items():      # tuned: moved from the script's starting value
        assert abs(hyper[name] - value) > 1e-3 * value, (name, hyper)


def logged_columns(path: Path) -> list[str]:
    with open(path) as f:
        return next(csv.reader(f))


def test_with_lightning(tmp_path):
    # 40 updates: one hyperparameter step (at 20) before the recipe's fold (from 30)
    result = run(sys.executable, str(EXAMPLES / "with_lightning.py"), "--steps", "40", "--log-dir", str(tmp_path))
    check_result(result, {"lr/group0": 1e-3})        # AdamW's recipe tunes the rate only
    assert result["hyperparameters"]["weight_decay/group0"] == pytest.approx(1e-2)
    (metrics,) = tmp_path.glob("lightning_logs/version_*/metrics.csv")
    with open(metrics) as f:
        logged = [float(r["onepass/lr/group0"]) for r in csv.DictReader(f) if r.get("onepass/lr/group0")]
    assert len(logged) == 4 and logged[-1] != 1e-3     # every 10 steps (log_every_n_steps)
    assert "onepass/weight_decay/group0" not in logged_columns(metrics)   # fixed values are not logged


def test_with_transformers():
    # 40 updates: one hyperparameter step (at 20) before the recipe's fold (from 30)
    result = run(sys.executable, str(EXAMPLES / "with_transformers.py"), "--steps", "40")
    check_result(result, {"lr/group0": 1e-3})        # the recipe tunes the rate only
    assert result["hyperparameters"]["weight_decay/group0"] == pytest.approx(1e-2)
