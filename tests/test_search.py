"""Search baselines (Bayesian optimisation, ASHA, PBT) with CI-sized budgets on UCI Energy.

These tests need the extras ``onepass[bayesopt]`` and ``onepass[ray]``: they fail
(not skip) when the libraries are missing.
"""
import json
import sys

import pytest
import torch

from onepass.cli.main import main
from onepass.search import MissingExtra, require
from onepass.search.trainable import DIVERGED_SCORE, TrainingSession, score, trial_config


def read(path):
    return json.loads(path.read_text())


# ------------------------------------------------------------------ sessions

def test_session_state_moves_a_run_between_trials(uci_data_dir, tmp_path):
    hyper = {"lr": 1e-2, "weight_decay": 1e-5, "momentum": 0.5}
    donor = TrainingSession(trial_config("uci_energy", "ours_lr_momentum", hyper, name="pbt",
                                         steps=40), tmp_path / "a", data_dir=uci_data_dir)
    donor.advance(20)
    state = donor.state()
    other = TrainingSession(trial_config("uci_energy", "ours_lr_momentum", {**hyper, "lr": 1e-4},
                                         name="pbt", steps=40), tmp_path / "b", data_dir=uci_data_dir)
    other.advance(10)
    other.load_state(state)
    assert other.steps == 20
    for key, value in donor.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[key], value)
    assert other.tuner.hyperparameters == donor.tuner.hyperparameters
    a, b = donor.advance(20), other.advance(20)  # same state → same continuation
    assert a["val_loss"] == b["val_loss"]
    summary = other.close()
    assert summary["status"] == "finished" and summary["steps"] == 40
    rows = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["20", "40"]  # the donor's row, then its own


def test_score_of_a_diverged_run_is_finite_and_bad():
    assert score({"status": "diverged", "final": {"val_loss": 0.1}}) == DIVERGED_SCORE
    assert score({"status": "finished", "final": {"val_loss": float("nan")}}) == DIVERGED_SCORE
    assert score({"status": "finished", "final": {"val_loss": 0.25}}) == 0.25


def test_missing_extra_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "bayes_opt", None)  # import bayes_opt → ImportError
    with pytest.raises(MissingExtra, match=r"pip install 'onepass\[bayesopt\]'"):
        require("bayes_opt", "bayesopt")
    assert main(["bayesopt", "-l", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["onepass: error: bayes_opt is not installed; install it with: "
                   "pip install 'onepass[bayesopt]'"]
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["asha", "-l", str(tmp_path)]) == 2
    assert "pip install 'onepass[ray]'" in capsys.readouterr().err


# ----------------------------------------------------------- Bayesian optimisation

def test_bayesopt_runs_and_a_rerun_continues_the_study(uci_data_dir, tmp_path, capsys):
    import bayes_opt  # noqa: F401  (fails the test when the extra is missing)
    args = ["bayesopt", "-l", str(tmp_path), "--data-dir", str(uci_data_dir),
            "--set", "training.steps=20", "--init-points", "2"]
    assert main([*args, "--iterations", "1"]) == 0
    study_dir = tmp_path / "bayesopt"
    first = read(study_dir / "study.json")
    assert first["completed"] == 3
    assert [e["reused"] for e in first["evaluations"]] == [False] * 3
    stamps = {i: read(study_dir / f"eval_{i:03d}" / "summary.json")["finished_at"] for i in range(3)}
    for i in range(3):
        summary = read(study_dir / f"eval_{i:03d}" / "summary.json")
        assert summary["algorithm"] == "bayesopt" and summary["status"] in ("finished", "diverged")
        assert summary["search"]["index"] == i and summary["wall_time_s"] > 0
        assert (study_dir / f"eval_{i:03d}" / "config.yaml").is_file()
        assert (study_dir / f"eval_{i:03d}" / "metrics.csv").is_file()
    assert first["evaluations"][0]["point"] != first["evaluations"][1]["point"]

    # An evaluation cut short is run again; finished ones are read back, not re-run.
    (study_dir / "eval_002" / "summary.json").write_text(json.dumps({"status": "running"}))
    assert main([*args, "--iterations", "3"]) == 0
    second = read(study_dir / "study.json")
    assert second["completed"] == 5
    assert [e["reused"] for e in second["evaluations"]] == [True, True, False, False, False]
    for i in range(2):
        assert read(study_dir / f"eval_{i:03d}" / "summary.json")["finished_at"] == stamps[i]
        assert second["evaluations"][i]["point"] == first["evaluations"][i]["point"]
    # Deterministic: the re-run evaluation 2 gets the point it had.
    assert second["evaluations"][2]["point"] == pytest.approx(first["evaluations"][2]["point"])
    assert second["best"]["score"] == min(e["score"] for e in second["evaluations"])
    assert "best evaluation" in capsys.readouterr().err
    # Other settings in the same folder are refused.
    assert main([*args, "--iterations", "3", "--seed", "1"]) == 2


# ------------------------------------------------------------------ Ray Tune

# ray_session (tests/conftest.py): one Ray instance for the test process.

def test_asha_trials_are_run_folders(ray_session, uci_data_dir, tmp_path):
    from onepass.search.ray_tune import run_ray_search
    study = run_ray_search("asha", "uci_energy", tmp_path / "asha", num_samples=8, max_steps=40,
                           grace_period=10, reduction_factor=2, data_dir=uci_data_dir,
                           cpus_per_trial=2)  # one trial at a time: reproducible stops
    assert study["errors"] == [] and study["completed"] == 8
    trials = {t["run_dir"]: t for t in study["trials"]}
    assert any(t["stopped_early"] for t in trials.values())  # ASHA stopped someone
    assert any(t["steps"] == 40 for t in trials.values())
    for name in trials:
        folder = tmp_path / "asha" / name
        summary = read(folder / "summary.json")
        assert summary["algorithm"] == "asha" and summary["status"] in ("finished", "diverged")
        assert summary["search"]["method"] == "asha" and summary["wall_time_s"] >= 0
        assert (folder / "config.yaml").is_file()
        rows = (folder / "metrics.csv").read_text().splitlines()
        assert len(rows) == 1 + summary["steps"] // 10
    assert study["best"]["score"] == min(t["score"] for t in study["trials"])


def test_pbt_exploit_copies_the_donor_checkpoint(ray_session, uci_data_dir, tmp_path):
    from onepass.search.ray_tune import run_ray_search
    root = tmp_path / "pbt"
    study = run_ray_search("pbt", "uci_energy", root, num_samples=2, max_steps=40,
                           perturbation_interval=20, synch=True, data_dir=uci_data_dir)
    assert study["errors"] == [] and study["completed"] == 2
    exploits = []
    for folder in sorted(root.glob("trial_*")):
        summary = read(folder / "summary.json")
        assert summary["algorithm"] == "pbt" and summary["steps"] == 40
        exploits += [(folder, e) for e in summary.get("events", []) if e["event"] == "exploit"]
    assert exploits, "the bottom trial must exploit the top one at update 20"
    folder, note = exploits[0]
    donor_state = torch.load(root / note["donor_run_dir"] / "checkpoints" / f"step_{note['step']:05d}.pt",
                             weights_only=True)
    restored = torch.load(folder / "restored" / f"step_{note['step']:05d}_from_{note['donor']}.pt",
                          weights_only=True)
    assert donor_state["trial_id"] == note["donor"] and restored["note"]["step"] == 20
    for key, value in donor_state["model"].items():  # the weights are the donor's
        assert torch.equal(restored["model"][key], value)
    for key in ("lr", "momentum", "weight_decay"):    # and so were the hyperparameters
        assert note["hyperparameters_restored"][key] == pytest.approx(
            donor_state["hyperparameters"][key], rel=1e-6)
    assert 0 <= note["hyperparameters_explored"]["momentum"] <= 1 - 1e-6
    # The exploiting trial's history up to the exploit is the donor's.
    donor_rows = (root / note["donor_run_dir"] / "metrics.csv").read_text().splitlines()
    rows = (folder / "metrics.csv").read_text().splitlines()
    assert rows[:3] == donor_rows[:3]


def test_pbt_with_ours_as_the_base(ray_session, uci_data_dir, tmp_path):
    from onepass.search.ray_tune import run_ray_search
    study = run_ray_search("pbt", "uci_energy", tmp_path / "pbt", base="ours_lr_momentum",
                           num_samples=2, max_steps=40, perturbation_interval=20, synch=True,
                           data_dir=uci_data_dir)
    assert study["errors"] == [] and study["completed"] == 2
    config = (tmp_path / "pbt" / "trial_000" / "config.yaml").read_text()
    assert "method: neumann" in config and "name: pbt" in config
