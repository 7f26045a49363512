"""One training run: every algorithm config, logs, divergence, interruption and resuming."""
import csv
import json

import pytest
import torch

from onepass.core import Tuner
from onepass.experiment import ALGORITHMS, load_config, run_training
from onepass.experiment.config import draw_random_initialisation

STEPS = 30


def config_for(algorithm, *overrides, steps=STEPS, tensorboard=False, random_init=None):
    return load_config(["uci_energy", algorithm],
                       [f"training.steps={steps}", f"logging.tensorboard={str(tensorboard).lower()}",
                        *overrides], random_init=random_init)


def read_rows(run_dir):
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_runs_and_logs(algorithm, uci_data_dir, tmp_path):
    config = config_for(algorithm, random_init=1, tensorboard=algorithm == "ours_hdlr_momentum")
    summary = run_training(config, tmp_path, data_dir=uci_data_dir, progress=False)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["status"] == "finished" and summary["steps"] == STEPS
    assert set(summary["versions"]) >= {"python", "torch", "onepass"}
    final = summary["final"]
    for key in ("train_loss", "test_loss", "test_loss_unnormalised"):
        assert final[key] > 0
    merged = config["algorithm"]["validation"] == "merged"
    assert (final["val_loss"] is None) == merged
    hyper = summary["hyperparameters"]
    assert set(hyper) == {"lr", "momentum", "weight_decay"}
    if algorithm == "ours_hdlr_momentum":
        assert set(hyper["lr"]) == {"mean", "min", "max", "median"}
        assert list(tmp_path.glob("events.out.tfevents.*"))
    if config["algorithm"]["tune"] and algorithm != "ours_hdlr_momentum":
        for name in config["algorithm"]["tune"]:
            assert hyper[name] != pytest.approx(config["hyperparameters"][name], rel=1e-9)
    if algorithm == "random_stepped_lr":  # three windows of 10 updates
        expected = config["hyperparameters"]["lr"] * config["algorithm"]["lr_multiplier"] ** 3
        assert hyper["lr"] == pytest.approx(expected, rel=1e-5)

    rows = read_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [10, 20, 30]
    columns = list(rows[0])
    assert columns[:6] == ["step", "train_loss", "val_loss", "test_loss", "test_loss_unnormalised",
                           "train_seconds"]
    lr_columns = ["lr_mean", "lr_min", "lr_max"] if algorithm == "ours_hdlr_momentum" else ["lr"]
    assert columns[6:] == [*lr_columns, "momentum", "weight_decay"]
    assert float(rows[-1]["test_loss"]) == pytest.approx(final["test_loss"])
    assert load_config([tmp_path / "config.yaml"]) == config


def test_same_seed_gives_every_algorithm_the_same_initial_weights(uci_data_dir, tmp_path):
    firsts = []
    for algorithm in ("random_training_set_only", "ours_lr"):
        run_training(config_for(algorithm, steps=1), tmp_path / algorithm, data_dir=uci_data_dir,
                     progress=False)
        firsts.append(float(read_rows(tmp_path / algorithm)[0]["train_loss"]))
    assert firsts[0] == firsts[1]


def test_divergence_is_recorded_not_raised(uci_data_dir, tmp_path):
    config = config_for("random", "hyperparameters.lr=50", "logging.interval=1", steps=200)
    summary = run_training(config, tmp_path, data_dir=uci_data_dir, progress=False)
    assert summary["status"] == "diverged"
    assert summary["steps"] < 200 and summary["diverged"]["step"] == summary["steps"] + 1
    assert "non-finite" in summary["error"]
    assert summary["final_step"] <= summary["steps"]
    assert all(v is None or v == v for v in summary["final"].values())  # last finite values
    assert summary["final"]["train_loss"] is not None
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


def final_state(path):
    state = torch.load(path, weights_only=True)
    return state["model"], state["tuner"]


def assert_same_state(a, b):
    (model_a, tuner_a), (model_b, tuner_b) = a, b
    assert model_a.keys() == model_b.keys()
    for key in model_a:
        assert torch.equal(model_a[key], model_b[key]), key
    for store in ("raw", "fixed"):
        for name in tuner_a[store]:
            for x, y in zip(tuner_a[store][name], tuner_b[store][name]):
                assert torch.equal(x, y), name
    assert tuner_a["steps_taken"] == tuner_b["steps_taken"]


@pytest.mark.parametrize("algorithm", ["ours_hdlr_momentum", "diff_through_opt", "baydin",
                                       "random_stepped_lr"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(algorithm, uci_data_dir, tmp_path,
                                                             monkeypatch):
    overrides = ["logging.checkpoint_interval=20", "training.batch_size=100"]
    config = config_for(algorithm, *overrides, steps=40, random_init=4)
    whole = run_training(config, tmp_path / "whole", data_dir=uci_data_dir, progress=False,
                         save_state_to=tmp_path / "whole.pt")

    real_step = Tuner.step

    def step(self, *args, **kwargs):
        if self.steps_taken == 27:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Tuner, "step", step)
    run_dir = tmp_path / "parts"
    with pytest.raises(KeyboardInterrupt):
        run_training(config, run_dir, data_dir=uci_data_dir, progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == 27
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["steps"] == 20
    monkeypatch.setattr(Tuner, "step", real_step)

    resumed = run_training(config, run_dir, data_dir=uci_data_dir, progress=False,
                           resume_from=run_dir / "checkpoint.pt", save_state_to=tmp_path / "parts.pt")
    assert resumed["status"] == "finished" and resumed["steps"] == 40
    assert_same_state(final_state(tmp_path / "whole.pt"), final_state(tmp_path / "parts.pt"))
    assert resumed["hyperparameters"] == whole["hyperparameters"]
    assert resumed["final"] == whole["final"]
    assert [r["step"] for r in read_rows(run_dir)] == ["10", "20", "30", "40"]
    assert read_rows(run_dir)[-1]["test_loss"] == read_rows(tmp_path / "whole")[-1]["test_loss"]


def test_saved_state_continues_in_a_new_folder(uci_data_dir, tmp_path):
    config = config_for("ours_lr_momentum", steps=40)
    run_training(config, tmp_path / "whole", data_dir=uci_data_dir, progress=False,
                 save_state_to=tmp_path / "whole.pt")
    first = config_for("ours_lr_momentum", steps=20)
    run_training(first, tmp_path / "first", data_dir=uci_data_dir, progress=False,
                 save_state_to=tmp_path / "first.pt")
    second = run_training(config, tmp_path / "second", data_dir=uci_data_dir, progress=False,
                          resume_from=tmp_path / "first.pt", save_state_to=tmp_path / "second.pt")
    assert second["steps"] == 40
    assert_same_state(final_state(tmp_path / "whole.pt"), final_state(tmp_path / "second.pt"))
    assert [r["step"] for r in read_rows(tmp_path / "second")] == ["30", "40"]


def test_resuming_with_another_config_is_refused(uci_data_dir, tmp_path):
    run_training(config_for("ours_lr", steps=10), tmp_path / "a", data_dir=uci_data_dir,
                 progress=False, save_state_to=tmp_path / "a.pt")
    with pytest.raises(ValueError, match="hyperparameters.lr"):
        run_training(config_for("ours_lr", "hyperparameters.lr=0.01", steps=20), tmp_path / "b",
                     data_dir=uci_data_dir, progress=False, resume_from=tmp_path / "a.pt")


def test_failure_is_recorded_and_raised(uci_data_dir, tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(Tuner, "step", broken)
    with pytest.raises(RuntimeError, match="boom"):
        run_training(config_for("random"), tmp_path, data_dir=uci_data_dir, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "boom" in summary["error"]


def test_random_init_is_what_the_run_starts_from(uci_data_dir, tmp_path):
    config = config_for("random", random_init=3, steps=1)
    summary = run_training(config, tmp_path, data_dir=uci_data_dir, progress=False)
    drawn = draw_random_initialisation(3)
    assert summary["hyperparameters"]["lr"] == pytest.approx(drawn["lr"], rel=1e-6)


def test_sigterm_is_recorded_as_interrupted(uci_data_dir, tmp_path, monkeypatch):
    import os
    import signal

    real_step = Tuner.step

    def step(self, *args, **kwargs):
        if self.steps_taken == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Tuner, "step", step)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        run_training(config_for("random"), tmp_path, data_dir=uci_data_dir, progress=False)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) == before
