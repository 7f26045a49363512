"""A state file is data, never code (issue #21).

A crafted pickle whose ``__reduce__`` writes a marker file is refused, with
one line, by every path that reads a state file: ``onepass train -s FILE``,
``onepass train --resume DIR`` and the ASHA and PBT trial restores; the marker
does not exist afterwards. Checkpoints written before state files were plain
data still load, and ``onepass.optim``'s ``state_dict()`` loads with a plain
``torch.load(weights_only=True)``.
"""
import io
import os
import pickle
import shlex
import time

import pytest
import torch
from torch import nn
from torch.nn.functional import mse_loss

import onepass.optim as oo
from onepass.cli.main import main
from onepass.experiment import load_config, run_training
from onepass.experiment.checkpoint import UnsafeStateError, read_state
from onepass.experiment.logging import CONFIG, write_config
from onepass.search.ray_state import complete_state_file, repair_state

STEPS = 20


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.fixture
def crafted(tmp_path):
    """A torch state file carrying :class:`Payload`, and the marker it would create.

    Loading it the unsafe way does run the payload: the file is a real threat."""
    marker = tmp_path / "marker"
    path = tmp_path / "crafted.pt"
    torch.save({"format": 1, "steps": 10, "trial_id": "x", "payload": Payload(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path, marker


def config_for(steps=STEPS):
    return load_config(["uci_energy", "ours_lr_momentum"],
                       [f"training.steps={steps}", "logging.tensorboard=false"])


def assert_refused_in_one_line(text, path, marker):
    assert "refusing to load" in text and str(path) in text and "posix.system" in text, text
    assert "\n" not in text.strip()
    assert not marker.exists()


def test_read_state_refuses_code_and_names_the_object(crafted):
    path, marker = crafted
    with pytest.raises(UnsafeStateError) as error:
        read_state(path)
    assert_refused_in_one_line(str(error.value), path, marker)


def test_train_load_state_refuses_a_crafted_file(crafted, uci_data_dir, tmp_path, capsys):
    path, marker = crafted
    code = main(["train", "-c", "uci_energy", "ours_lr_momentum", "-s", str(path),
                 "-l", str(tmp_path / "runs"), "-n", "run", "--data-dir", str(uci_data_dir),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("onepass: error: ") and err.count("\n") == 1
    assert_refused_in_one_line(err, path, marker)
    assert not (tmp_path / "runs" / "run").exists()


def test_train_resume_refuses_a_crafted_checkpoint(crafted, uci_data_dir, tmp_path, capsys):
    path, marker = crafted
    run_dir = tmp_path / "run"
    write_config(run_dir, config_for())
    checkpoint = run_dir / "checkpoint.pt"
    checkpoint.write_bytes(path.read_bytes())
    code = main(["train", "--resume", str(run_dir), "--data-dir", str(uci_data_dir),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert_refused_in_one_line(err, checkpoint, marker)
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", CONFIG]


@pytest.mark.parametrize("method", ["asha", "pbt"])
def test_trial_restore_refuses_a_crafted_checkpoint(method, crafted, uci_data_dir, tmp_path):
    from onepass.search.ray_tune import STATE_FILE, STATIC, _trainable_class
    path, marker = crafted
    static = {"method": method, "root": str(tmp_path / method), "dataset": "uci_energy",
              "base": "random_training_set_only", "max_steps": STEPS, "report_every": 10,
              "seed": 0, "overrides": [], "data_dir": str(uci_data_dir), "device": "cpu",
              "keep_checkpoints": method == "pbt", "started_at": time.time()}
    trial = _trainable_class()(config={"lr": 1e-3, "weight_decay": 1e-5, "momentum": 0.5,
                                       STATIC: static})
    try:
        trial.step()
        saved = trial.save(str(tmp_path / "checkpoint"))   # a real trial checkpoint restores
        trial.restore(saved)
        state_file = tmp_path / "checkpoint" / STATE_FILE
        state_file.write_bytes(path.read_bytes())
        with pytest.raises(UnsafeStateError) as error:
            trial.restore(saved)
    finally:
        trial.stop()
    assert_refused_in_one_line(str(error.value), state_file, marker)


def test_a_checkpoint_written_before_plain_data_still_resumes(uci_data_dir, tmp_path):
    """Earlier versions stored ``versions["torch"]`` as a ``TorchVersion``."""
    whole = run_training(config_for(2 * STEPS), tmp_path / "whole", data_dir=uci_data_dir,
                         progress=False, save_state_to=tmp_path / "whole.pt")
    run_training(config_for(STEPS), tmp_path / "first", data_dir=uci_data_dir, progress=False,
                 save_state_to=tmp_path / "first.pt")
    state = torch.load(tmp_path / "first.pt", weights_only=True)   # new files: plain data
    assert type(state["versions"]["torch"]) is str
    state["versions"]["torch"] = torch.__version__
    assert type(state["versions"]["torch"]) is not str
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(pickle.UnpicklingError, match="TorchVersion"):
        torch.load(tmp_path / "old.pt", weights_only=True)
    resumed = run_training(config_for(2 * STEPS), tmp_path / "second", data_dir=uci_data_dir,
                           progress=False, resume_from=tmp_path / "old.pt",
                           save_state_to=tmp_path / "second.pt")
    assert resumed["final"] == whole["final"]
    assert resumed["hyperparameters"] == whole["hyperparameters"]
    a, b = read_state(tmp_path / "whole.pt"), read_state(tmp_path / "second.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_ray_state_files_are_checked_without_unpickling(tmp_path):
    marker = tmp_path / "marker"
    data = pickle.dumps({"trials": [1, 2.5, "x"], "payload": Payload(marker)}, protocol=4)
    path = tmp_path / "basic-variant-state-2026.json"
    assert complete_state_file(path, data)
    assert not any(complete_state_file(path, data[:n]) for n in range(len(data)))
    assert not complete_state_file(path, data + b"\x00")
    path.write_bytes(data[:len(data) // 2])                     # truncated by a kill
    kept = tmp_path / ".onepass_kept_state" / path.name
    kept.parent.mkdir()
    kept.write_bytes(data)
    repair_state(tmp_path)
    assert path.read_bytes() == data
    assert not marker.exists()


# ------------------------------------------------ onepass.optim's state_dict

X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
Y = torch.randn(64, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
XV = torch.randn(32, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
YV = torch.randn(32, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def make_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def train(model, opt, start, stop):
    for t in range(start, stop):
        x, y = X[(t * 8) % 49:][:16], Y[(t * 8) % 49:][:16]
        opt.zero_grad()
        mse_loss(model(x), y).backward(create_graph=opt.needs_graph)
        opt.step()


@pytest.mark.parametrize("make_optimizer", [
    lambda m, v: oo.SGD(m.parameters(), lr=0.05, momentum=0.5, weight_decay=1e-4,
                        update_interval=3, val_loss=v),
    lambda m, v: oo.Adam(m.parameters(), lr=0.01, update_interval=3, val_loss=v),
    lambda m, v: oo.AdamW(m.parameters(), lr=0.01, weight_decay=1e-2, update_interval=3,
                          val_loss=v),
], ids=["SGD", "Adam", "AdamW"])
def test_optimizer_state_dict_is_plain_data_and_resumes_exactly(make_optimizer):
    model = make_model()
    opt = make_optimizer(model, lambda: mse_loss(model(XV), YV))
    train(model, opt, 0, 9)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    train(model, opt, 9, 20)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)       # no allow-list: plain data only
    resumed = make_model()
    resumed.load_state_dict(saved["model"])
    resumed_opt = make_optimizer(resumed, lambda: mse_loss(resumed(XV), YV))
    resumed_opt.load_state_dict(saved["optimizer"])
    train(resumed, resumed_opt, 9, 20)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert resumed_opt.hyperparameters == opt.hyperparameters
