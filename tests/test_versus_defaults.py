"""benchmarks/versus_defaults.py keeps working: a few updates on one UCI set
and digits, every row, the JSON's shape and finite values."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("prodigyopt")
pytest.importorskip("schedulefree")
pytest.importorskip("sklearn")

REPO = Path(__file__).resolve().parents[1]
ROWS = {"onepass", "adam", "adamw", "prodigy", "schedulefree", "sgd", "adam_grid"}


def _module():
    spec = importlib.util.spec_from_file_location("versus_defaults", REPO / "benchmarks" / "versus_defaults.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_benchmark_runs_and_writes_its_json(tmp_path, capsys):
    out = tmp_path / "result.json"
    _module().main(["--datasets", "energy", "digits", "--steps", "20", "--seeds", "1", "--workers", "1",
                    "--json", str(out)])
    printed = capsys.readouterr().out
    assert "energy" in printed and "digits" in printed and "onepass" in printed
    result = json.loads(out.read_text())
    assert set(result) >= {"datasets", "recipe"}
    assert set(result["datasets"]) == {"energy", "digits"}
    assert result["datasets"]["energy"]["metric"] == "test_mse"
    assert result["datasets"]["digits"]["metric"] == "test_cross_entropy"
    for name, entry in result["datasets"].items():
        assert set(entry["rows"]) == ROWS, name
        for row, r in entry["rows"].items():
            for key in ("median", "mean", "sem", "time_ratio"):
                assert _finite(r[key]), (name, row, key, r[key])
            assert len(r["values"]) == 1 and all(_finite(v) for v in r["values"]), (name, row)
        assert entry["rows"]["adam"]["time_ratio"] == pytest.approx(1.0)
        hypers = entry["rows"]["onepass"]["hyperparameters_median"]
        assert _finite(hypers["lr/group0"]) and hypers["lr/group0"] > 0
    assert all(_finite(a) for a in result["datasets"]["digits"]["rows"]["onepass"]["accuracy"])
    assert "values" in result["recipe"] and "settings" in result["recipe"]


def test_robustness_draws_the_papers_ranges():
    module = _module()
    starts = [module.paper_initialisation(i, "adamw") for i in range(50)]
    assert all(1e-6 <= s["lr"] <= 1e-1 and 1e-7 <= s["weight_decay"] <= 1e-2 for s in starts)
    assert all(0 < s["betas"][0] < 1 for s in starts)
    assert len({s["lr"] for s in starts}) == 50
