"""The SLURM executor, through submitit's local executor (no cluster needed)."""
import json
import sys

import pytest

from onepass.sweep import make_units
from onepass.sweep.plan import Sweep


def tiny_sweep(root):
    return Sweep(root, "uci_energy", ["ours_lr"], inits=2, steps=20,
                 overrides=["logging.tensorboard=false"])


def test_missing_submitit_names_the_extra(monkeypatch, tmp_path):
    from onepass.sweep.executors import slurm
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(ImportError) as info:
        slurm.SlurmExecutor(tmp_path)
    assert str(info.value) == "the slurm executor needs submitit: pip install 'onepass[slurm]'"


def test_local_jobs_run_a_tiny_sweep_and_resume(uci_data_dir, tmp_path):
    pytest.importorskip("submitit")
    from onepass.sweep.executors import SlurmExecutor

    sweep = tiny_sweep(tmp_path / "runs")
    specs = sweep.runs()
    executor = SlurmExecutor(tmp_path / "slurm", cluster="local", chunk_size=2, poll_s=0.2,
                             timeout_min=5)
    tasks = make_units(specs, population="off")
    results = [r for batch in executor.run(tasks, data_dir=uci_data_dir) for r in batch]
    assert sorted((r.algorithm, r.init_index, r.status) for r in results) == \
        [("ours_lr", 0, "finished"), ("ours_lr", 1, "finished")]
    assert len(executor.jobs) == 1  # one job for the chunk of both runs
    summaries = [json.loads((s.run_dir / "summary.json").read_text()) for s in specs]
    assert [(s["status"], s["steps"], s["init_index"]) for s in summaries] == \
        [("finished", 20, 0), ("finished", 20, 1)]

    # Resumable: finished runs are not submitted again, a missing one is.
    (specs[1].run_dir / "summary.json").unlink()
    again = SlurmExecutor(tmp_path / "slurm", cluster="local", poll_s=0.2, timeout_min=5)
    tasks = make_units(specs, population="off")
    results = [r for batch in again.run(tasks, data_dir=uci_data_dir) for r in batch]
    assert sorted((r.init_index, r.status) for r in results) == [(0, "finished"), (1, "finished")]
    assert len(again.jobs) == 1
    assert json.loads((specs[1].run_dir / "summary.json").read_text())["status"] == "finished"
    first = json.loads((specs[0].run_dir / "summary.json").read_text())
    assert first["finished_at"] == summaries[0]["finished_at"]  # untouched


def test_a_dead_job_reports_failed_runs(tmp_path):
    pytest.importorskip("submitit")
    from onepass.sweep.executors import SlurmExecutor

    sweep = tiny_sweep(tmp_path / "runs")
    tasks = make_units(sweep.runs()[:1], population="off")
    executor = SlurmExecutor(tmp_path / "slurm", cluster="debug", poll_s=0.05)
    # A corrupt energy file under this data_dir (it wins over the shipped copy): the run
    # fails inside the job, recorded, not raised.
    (tmp_path / "corrupt" / "uci").mkdir(parents=True)
    (tmp_path / "corrupt" / "uci" / "energy.txt").write_text("1 2 x\n")
    results = [r for batch in executor.run(tasks, data_dir=tmp_path / "corrupt") for r in batch]
    assert [r.status for r in results] == ["failed"]


def test_onepass_sweep_runs_through_the_slurm_executor(uci_data_dir, tmp_path):
    """``run_sweep(executor="slurm")`` submits through submitit (its local cluster here)
    and leaves the same run folders as a local sweep."""
    from onepass.experiment.record import read_record
    from onepass.sweep import run_sweep

    outcome = run_sweep("uci_energy", ["random", "ours_lr"], 2, tmp_path / "sweep", steps=20,
                        executor="slurm", slurm=dict(cluster="local", poll_s=0.2),
                        population="off", data_dir=uci_data_dir, progress=False)
    assert outcome.counts == {"finished": 4}
    for algorithm in ("random", "ours_lr"):
        for i in range(2):
            record = read_record(tmp_path / "sweep" / algorithm / f"init_{i:03d}")
            assert record.status == "finished" and record.steps == 20 and record.init_index == i
