"""``onepass sweep``: layout, manifest, resume after a kill, reproduce."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from onepass.analysis.runs import load_runs
from onepass.cli.main import main
from onepass.experiment.config import CONFIG_DIR, draw_random_initialisation
from onepass.sweep import make_units, run_sweep
from onepass.sweep.executors import PopulationUnit, SingleUnit
from onepass.sweep.plan import Sweep

ALGOS = ["random", "ours_lr"]


def sweep_args(uci_data_dir, root, *extra, inits=3, steps=40):
    return ["sweep", "-c", "uci_energy", "-a", *ALGOS, "-N", str(inits), "-l", str(root),
            "--steps", str(steps), "--data-dir", str(uci_data_dir), "--no-progress",
            "--set", "logging.tensorboard=false", *extra]


def final_losses(root):
    return {(r.algorithm, r.init_index): (r.status, r.final["test_loss"]) for r in load_runs(root)}


def test_layout_initialisations_and_skip(uci_data_dir, tmp_path, capsys):
    root = tmp_path / "sweep"
    assert main(sweep_args(uci_data_dir, root, "--population", "off")) == 0
    manifest = json.loads((root / "sweep.json").read_text())
    assert manifest["algorithms"] == ALGOS and manifest["inits"] == 3 and manifest["steps"] == 40
    runs = load_runs(root)
    assert sorted((r.algorithm, r.init_index) for r in runs) == \
        sorted((a, i) for a in ALGOS for i in range(3))
    for run in runs:
        assert run.path == root / run.algorithm / f"init_{run.init_index:03d}"
        assert run.status == "finished" and run.seed == run.init_index
        drawn = draw_random_initialisation(run.init_index)
        assert run.config["hyperparameters"]["lr"] == drawn["lr"]
        assert run.config["hyperparameters"]["momentum"] == drawn["momentum"]
    # the same initialisation starts every algorithm from the same weights: same first loss
    first = {a: (root / a / "init_001" / "metrics.csv").read_text().splitlines()[1].split(",")[1]
             for a in ALGOS}
    assert first["random"] != "" and abs(float(first["random"]) - float(first["ours_lr"])) < 0.05
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in root.rglob("summary.json")}
    assert main(sweep_args(uci_data_dir, root, "--population", "off")) == 0
    assert "ran 0, 6 were already done" in capsys.readouterr().err
    assert before == {p: p.stat().st_mtime_ns for p in root.rglob("summary.json")}


def test_manifest_mismatch_is_refused(uci_data_dir, tmp_path, capsys):
    root = tmp_path / "sweep"
    assert main(sweep_args(uci_data_dir, root, inits=1, steps=10)) == 0
    capsys.readouterr()
    assert main(sweep_args(uci_data_dir, root, inits=2, steps=10)) == 2
    err = capsys.readouterr().err
    assert "holds a different sweep" in err and "inits: 1 there, 2 now" in err
    assert main(sweep_args(uci_data_dir, root, inits=1, steps=20)) == 2
    assert "steps: 10 there, 20 now" in capsys.readouterr().err
    # the same sweep spelled with a config path continues
    args = sweep_args(uci_data_dir, root, inits=1, steps=10)
    args[args.index("uci_energy")] = str(CONFIG_DIR / "uci_energy.yaml")
    assert main(args) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "stuff.txt").write_text("x")
    assert main(sweep_args(uci_data_dir, other, inits=1, steps=10)) == 2
    assert "no sweep.json" in capsys.readouterr().err


def test_resume_after_kill_gives_the_uninterrupted_results(uci_data_dir, tmp_path):
    steps, inits = 300, 4
    reference = tmp_path / "reference"
    assert main(sweep_args(uci_data_dir, reference, "--population", "off", inits=inits,
                           steps=steps)) == 0
    expected = final_losses(reference)

    root = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    process = subprocess.Popen(
        [sys.executable, "-m", "onepass.cli.main",
         *sweep_args(uci_data_dir, root, "--population", "off", inits=inits, steps=steps)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    try:
        while time.time() < deadline and process.poll() is None:
            statuses = [json.loads(p.read_text()).get("status") if p.stat().st_size else None
                        for p in root.glob("*/*/summary.json")]
            if statuses.count("finished") >= 2 and "running" in statuses:
                break
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    statuses = [json.loads(p.read_text())["status"] for p in root.glob("*/*/summary.json")]
    assert "finished" in statuses and len(statuses) < 2 * inits, "the sweep was not killed midway"
    # more damage by hand: an interrupted run, a folder without summary, a stale 'running' one
    (root / "ours_lr" / "init_003").mkdir(parents=True, exist_ok=True)
    (root / "ours_lr" / "init_003" / "stale.txt").write_text("left over")
    (root / "ours_lr" / "init_003" / "summary.json").write_text('{"status": "running"}')
    (root / "random" / "init_003").mkdir(parents=True, exist_ok=True)
    finished = sorted(p for p in root.glob("*/*/summary.json")
                      if json.loads(p.read_text())["status"] == "finished")
    finished[0].write_text(finished[0].read_text().replace('"finished"', '"interrupted"'))

    assert main(sweep_args(uci_data_dir, root, "--population", "off", inits=inits,
                           steps=steps)) == 0
    assert final_losses(root) == expected
    assert not (root / "ours_lr" / "init_003" / "stale.txt").exists()


def test_population_sweep_matches_single_runs(uci_data_dir, tmp_path):
    options = dict(steps=30, data_dir=uci_data_dir, progress=False,
                   overrides=["logging.tensorboard=false"])
    single = run_sweep("uci_energy", ALGOS, 3, tmp_path / "single", population="off", **options)
    pop = run_sweep("uci_energy", ALGOS, 3, tmp_path / "pop", population="auto",
                    population_size=2, workers=2, **options)
    assert single.counts == pop.counts == {"finished": 6}
    a, b = final_losses(tmp_path / "single"), final_losses(tmp_path / "pop")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key][0] == b[key][0] and a[key][1] == pytest.approx(b[key][1], rel=1e-4)
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "pop").glob("*/*/summary.json")]
    assert sorted(s["population"]["size"] for s in summaries if "population" in s) == [2] * 4


def test_tasks_chunk_per_algorithm(uci_data_dir, tmp_path):
    sweep = Sweep(tmp_path, "uci_energy", ["random", "ours_lr"], 5, steps=10)
    tasks = make_units(sweep.runs(), population_size=2)
    assert [type(t) for t in tasks] == [PopulationUnit] * 4 + [SingleUnit] * 2
    assert [[s.init_index for s in t.specs] for t in tasks[:2]] == [[0, 1], [0, 1]]
    # costliest algorithm first in every round
    assert [t.specs[0].algorithm for t in tasks] == ["ours_lr", "random"] * 3
    assert all(isinstance(t, SingleUnit) for t in make_units(sweep.runs(), population="off"))


def test_ray_executor_without_ray_says_how_to_install(uci_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(sweep_args(uci_data_dir, tmp_path / "r", "--executor", "ray", inits=1)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'onepass[ray]'" in err
    assert not (tmp_path / "r").exists()


def test_reproduce_runs_the_sweep_and_the_report(uci_data_dir, tmp_path, capsys):
    root = tmp_path / "energy"
    assert main(["reproduce", "uci_energy", "--inits", "2", "--steps", "20", "-l", str(root),
                 "--data-dir", str(uci_data_dir), "--workers", "1", "--no-progress"]) == 0
    manifest = json.loads((root / "sweep.json").read_text())
    assert len(manifest["algorithms"]) == 9 and manifest["inits"] == 2
    assert len(load_runs(root)) == 18
    assert (root / "report" / "table.md").is_file() and (root / "report" / "report.html").is_file()
    out = capsys.readouterr().out
    assert "Ours" in out or "ours" in out


def test_report_subcommand_is_wired(uci_data_dir, tmp_path, capsys):
    root = tmp_path / "sweep"
    assert main(sweep_args(uci_data_dir, root, inits=2, steps=10)) == 0
    assert main(["report", str(root), "--format", "md"]) == 0
    assert (root / "report" / "table.md").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 1
