"""A Ray Tune study continues after its driver is killed with SIGKILL.

The test starts ``onepass asha`` in a subprocess, kills it
(``kill -9``) once the run folders show enough progress, runs the same command
again and checks that the study completes: trials that had finished are not
run again (their folders are untouched) and trials cut short continue from
their last checkpoint. Ray is an extra CI installs: a missing Ray fails these
tests rather than skipping them.

ASHA and PBT share this resume path (``Tuner.restore`` of the study, then each
cut trial's ``restore`` from its checkpoint), so one kill -9 test serves both;
PBT's own restore, an exploit that loads the donor's checkpoint, is held by
``tests/test_search.py::test_pbt_exploit_copies_the_donor_checkpoint``.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import ray  # noqa: F401  (a missing Ray fails these tests)

# Their drivers start their own Ray (the case a user's kill -9 hits). The group runs them
# in the worker that runs the other Ray tests, so that no two studies share the cores.
pytestmark = pytest.mark.xdist_group("ray")

POLL_LIMIT_S = 300


def summaries(study):
    out = {}
    for folder in sorted(study.glob("trial_*")):
        try:
            out[folder.name] = json.loads((folder / "summary.json").read_text())
        except (OSError, ValueError):
            continue
    return out


def closed(summary):
    """A trial that ended (its actor wrote the final summary)."""
    return (summary.get("status") in ("finished", "diverged")
            and "finished_at_study_s" in (summary.get("search") or {}))


def command(method, root, data_dir, *extra):
    return [sys.executable, "-m", "onepass.cli.main", method, "-l", str(root),
            "--data-dir", str(data_dir), "--num-cpus", "2", "--checkpoint-every", "1", *extra]


def run_and_kill(args, study, ready, tmp_path):
    """Start ``args``; SIGKILL the driver once ``ready(summaries)``; return what was on disk."""
    # Ray saves its experiment state at every step of its loop (default: every ≥ 10 s),
    # so that the trial cut short resumes from the checkpoint it had, not an older one.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    with open(tmp_path / "first.log", "wb") as log:
        driver = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + POLL_LIMIT_S
            while True:
                seen = summaries(study)
                if ready(seen):
                    break
                assert driver.poll() is None, \
                    f"the study ended before the kill:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
                assert time.monotonic() < deadline, "the study made too little progress"
                time.sleep(0.2)
            os.kill(driver.pid, signal.SIGKILL)          # kill -9 of the driver only
            killed_at = time.time()
            driver.wait(timeout=30)
        finally:
            if driver.poll() is None:
                driver.kill()
            time.sleep(1.0)
            try:                                         # then whatever Ray left in its session
                os.killpg(driver.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    assert driver.returncode == -signal.SIGKILL
    # Ray's workers outlive the driver for a moment and may report (summary, then
    # checkpoint) once more: what counts as "before" is what is on disk once they are gone.
    seen = settled(study)
    return {name: (study / name / "summary.json").read_bytes() for name in seen
            if (study / name / "summary.json").is_file()}, seen, killed_at


def settled(study, quiet_s=1.5, limit_s=30.0):
    """The summaries once no file has changed for ``quiet_s`` seconds."""
    deadline = time.monotonic() + limit_s
    last = summaries(study)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = summaries(study)
        if now == last:
            return now
        last = now
    return last


def rerun(args, tmp_path):
    done = subprocess.run(args, capture_output=True, text=True, timeout=POLL_LIMIT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def metric_steps(folder):
    rows = (folder / "metrics.csv").read_text().splitlines()[1:]
    return [int(r.split(",")[0]) for r in rows]


def check_continued(study, before, after, killed_at):
    """Every history is whole (no gap, no repeat), and each trial cut short by
    the kill first came back from a checkpoint at or before where its summary
    said it was; returns those (trial, step) pairs."""
    restored = []
    for name, summary in after.items():
        steps = metric_steps(study / name)
        assert steps == list(range(10, summary["steps"] + 1, 10)), (name, steps)
        if name not in before or closed(before[name]):
            continue
        started = summary["search"]["study_started_at"]
        # Its own restores: a PBT exploit copies the donor's events (the donor's restores) too.
        late = [e for e in summary.get("events", [])
                if e["event"] == "restore" and e.get("donor_run_dir") == name
                and started + e["at_study_s"] > killed_at]
        if late:
            assert 0 < late[0]["step"] <= before[name]["steps"], (name, late[0])
            restored.append((name, late[0]["step"]))
    return restored


def test_asha_study_continues_after_kill_9(uci_data_dir, tmp_path):
    study = tmp_path / "asha"
    # Trials long enough (200 updates) that on a quiet machine the study is still
    # running when the condition below is first seen.
    args = command("asha", tmp_path, uci_data_dir, "--num-samples", "5", "--max-steps", "200",
                   "--grace-period", "60", "--reduction-factor", "2", "--cpus-per-trial", "2")

    def ready(seen):  # two trials over, and one past its first checkpoints
        return (sum(closed(s) for s in seen.values()) >= 2
                and any(s.get("status") == "running" and s.get("steps", 0) >= 30
                        for s in seen.values()))

    t0 = time.monotonic()
    finished_bytes, before, killed_at = run_and_kill(args, study, ready, tmp_path)
    t1 = time.monotonic()
    done = rerun(args, tmp_path)
    t2 = time.monotonic()
    print(f"asha: killed after {t1 - t0:.1f} s, resumed run {t2 - t1:.1f} s")

    result = json.loads((study / "study.json").read_text())
    assert result["status"] == "finished" and result["resumes"] == 1
    assert result["errors"] == [] and result["completed"] == 5
    after = summaries(study)
    assert len(after) == 5 and all(closed(s) for s in after.values())
    assert any(s["stopped_early"] for s in after.values())       # ASHA stopped someone
    for name, summary in before.items():                         # finished before: untouched
        if closed(summary):
            assert (study / name / "summary.json").read_bytes() == finished_bytes[name], name
    assert check_continued(study, before, after, killed_at), "no trial continued from a checkpoint"
    assert "best trial" in done.stderr

    # A finished study run again trains nothing.
    stamps = {name: (study / name / "summary.json").read_bytes() for name in after}
    rerun(args, tmp_path)
    assert {name: (study / name / "summary.json").read_bytes() for name in after} == stamps
    assert json.loads((study / "study.json").read_text())["completed"] == 5
