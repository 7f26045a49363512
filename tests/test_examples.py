"""The scripts in ``examples/`` run as a user would run them, briefly.

One test per example: it runs the script in a subprocess, expects exit 0 and,
as the last line of stdout, one JSON object ``{"hyperparameters": {...},
"val_loss": ...}`` whose learned values moved from where the script started
them.
"""
from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: str) -> dict:
    """Run ``args``; check the exit status and return the last stdout line as JSON."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=EXAMPLES.parent)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output\nstderr:\n{done.stderr}"
    return json.loads(lines[-1])


def check_result(result: dict, start: dict[str, float], fixed: dict[str, float]) -> None:
    assert set(result) == {"hyperparameters", "val_loss"}, result
    hyper = result["hyperparameters"]
    assert "lr/group0" in hyper, hyper
    assert all(isinstance(v, float) and math.isfinite(v) for v in hyper.values()), hyper
    assert isinstance(result["val_loss"], float) and math.isfinite(result["val_loss"]), result
    for name, value in start.items():      # tuned: moved from the script's starting value
        assert abs(hyper[name] - value) > 1e-3 * value, (name, hyper)
    for name, value in fixed.items():      # not tuned by the recipe: where the script put it
        assert math.isclose(hyper[name], value, rel_tol=1e-6), (name, hyper)


def test_plain_loop():
    result = run(sys.executable, str(EXAMPLES / "plain_loop.py"), "--steps", "30")
    check_result(result, {"lr/group0": 1e-3}, {"weight_decay/group0": 1e-2})


def test_ddp():
    result = run(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                 "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                 str(EXAMPLES / "ddp.py"), "--steps", "30")
    check_result(result, {"lr/group0": 1e-3}, {"weight_decay/group0": 1e-2})
