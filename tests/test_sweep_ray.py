"""``onepass sweep --executor ray`` on a local Ray instance.

Ray is an optional extra (``pip install -e '.[ray]'``) that CI installs, so a
missing Ray FAILS this test rather than skipping it.
"""
import json

import pytest

from onepass.analysis.runs import load_runs
from onepass.cli.main import main


def test_ray_executor_runs_a_tiny_sweep(ray_session, uci_data_dir, tmp_path):
    def sweep(root, *extra):
        return main(["sweep", "-c", "uci_energy", "-a", "random", "ours_lr", "-N", "3",
                     "-l", str(root), "--steps", "20", "--data-dir", str(uci_data_dir),
                     "--no-progress", "--set", "logging.tensorboard=false", *extra])

    # populations of 2 (+ a single run per algorithm) on Ray, then the same locally
    assert sweep(tmp_path / "ray", "--executor", "ray", "--population-size", "2") == 0
    assert sweep(tmp_path / "local", "--population", "off") == 0
    on_ray = {(r.algorithm, r.init_index): r for r in load_runs(tmp_path / "ray")}
    local = {(r.algorithm, r.init_index): r for r in load_runs(tmp_path / "local")}
    assert on_ray.keys() == local.keys() and len(local) == 6
    for key, run in on_ray.items():
        assert run.status == "finished"
        assert run.final["test_loss"] == pytest.approx(local[key].final["test_loss"], rel=1e-4)
        assert run.record.run_dir == str(run.path)          # not the worker's temporary folder
        assert (run.path / "metrics.csv").is_file() and (run.path / "config.yaml").is_file()
    # a finished Ray sweep is skipped when run again
    summary = tmp_path / "ray" / "random" / "init_000" / "summary.json"
    before = summary.read_text()
    assert sweep(tmp_path / "ray", "--executor", "ray", "--population-size", "2") == 0
    assert summary.read_text() == before and json.loads(before)["init_index"] == 0
