"""Long Diff-through-Opt configs (Standalone, Medium, Full) and algorithm.reset_each_window."""
import pytest
import torch

from onepass.experiment import load_config, run_training
from onepass.experiment.config import EXTRA_ALGORITHMS, ConfigError
from onepass.experiment.run import load_checkpoint

EXPECTED = {  # name: (N, hyperparameter steps, reset)
    "long_dto_standalone": (200, 30, True),
    "long_dto_medium": (200, 50, False),
    "long_dto_full": (4000, 30, True),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_long_dto_configs_follow_the_protocol(name):
    assert name in EXTRA_ALGORITHMS
    config = load_config(["uci_energy", name])
    algo = config["algorithm"]
    n, hyper_steps, reset = EXPECTED[name]
    assert algo["name"] == name and algo["method"] == "unroll"
    assert algo["tune"] == ["lr", "momentum", "weight_decay"]
    assert algo["update_interval"] == algo["unroll_steps"] == n
    assert config["training"]["steps"] == n * hyper_steps
    assert algo["reset_each_window"] is reset
    assert (algo["hyper_optimizer"], algo["hyper_lr"], algo["validation"]) == ("adam", 0.05, "split")


def test_reset_each_window_needs_unroll():
    assert load_config(["uci_energy", "diff_through_opt"])["algorithm"]["reset_each_window"] is False
    with pytest.raises(ConfigError, match="reset_each_window.*unroll"):
        load_config(["uci_energy", "ours_lr"], ["algorithm.reset_each_window=true"])


def short(name, n, windows, **extra):
    return load_config(["uci_energy", name], [
        f"algorithm.update_interval={n}", f"algorithm.unroll_steps={n}", f"training.steps={n * windows}",
        "logging.tensorboard=false", f"logging.interval={n}", f"logging.checkpoint_interval={n}",
        *[f"{k}={v}" for k, v in extra.items()]], random_init=3)


def test_standalone_restarts_each_window_from_the_initial_weights(uci_data_dir, tmp_path):
    reset = run_training(short("long_dto_standalone", 20, 3), tmp_path / "reset", data_dir=uci_data_dir,
                         progress=False, save_state_to=tmp_path / "reset.pt")
    carry = run_training(short("long_dto_medium", 20, 3), tmp_path / "carry", data_dir=uci_data_dir,
                         progress=False, save_state_to=tmp_path / "carry.pt")
    assert reset["status"] == carry["status"] == "finished"
    # Both took 3 hyperparameter steps from the same start...
    assert reset["hyperparameters"]["lr"] != load_config(["uci_energy", "long_dto_standalone"],
                                                         random_init=3)["hyperparameters"]["lr"]
    # ... but only the reset run kept its initial weights to return to.
    state = load_checkpoint(tmp_path / "reset.pt")
    assert state["tuner"]["initial"] is not None
    assert load_checkpoint(tmp_path / "carry.pt")["tuner"]["initial"] is None
    torch.manual_seed(state["config"]["seed"])
    from onepass.models import build_model
    fresh = build_model({"kind": "mlp", "hidden": [50], "batch_norm": False}, 8, 1)
    for saved, initial in zip(state["tuner"]["initial"]["weights"], fresh.parameters()):
        assert torch.equal(saved, initial.detach())
    # Carrying on trains for 60 updates in all; resetting, for only the last 20.
    assert carry["final"]["train_loss"] < reset["final"]["train_loss"]


def test_standalone_resumes_bit_for_bit(uci_data_dir, tmp_path):
    config = short("long_dto_standalone", 10, 4)
    whole = run_training(config, tmp_path / "whole", data_dir=uci_data_dir, progress=False)
    half = dict(config, training={**config["training"], "steps": 20})
    run_training(half, tmp_path / "half", data_dir=uci_data_dir, progress=False,
                 save_state_to=tmp_path / "half.pt")
    resumed = run_training(config, tmp_path / "resumed", data_dir=uci_data_dir, progress=False,
                           resume_from=tmp_path / "half.pt")
    assert resumed["final"] == whole["final"]
    assert resumed["hyperparameters"] == whole["hyperparameters"]
