"""benchmarks/language_model.py keeps working: two updates of the GPT-2-style
model, the second closing a window, so the hyperparameter step runs."""
import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_language_model_benchmark_runs_a_hyperparameter_step(tmp_path):
    out = tmp_path / "lm.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "language_model.py"), "--updates", "2",
                           "--batch", "1", "--threads", "1", "--update-interval", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert math.isfinite(result["ratio"]) and result["ratio"] > 0
    assert len(result["seconds"]["onepass"]) == 2
    assert result["hyperparameters"]["lr/group0"] != 1e-3           # the step ran and moved it
    assert "ratio" in done.stdout
