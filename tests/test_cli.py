"""The ``onepass`` command line: train, download, demo, and its error messages."""
import json
import sys
import types

import pytest

from onepass.cli.main import build_parser, main


def train(uci_data_dir, tmp_path, *extra, steps=20):
    return main(["train", "-c", "uci_energy", "ours_lr", "--data-dir", str(uci_data_dir),
                 "-l", str(tmp_path / "runs"), "--no-progress", "--set", f"training.steps={steps}",
                 "--set", "logging.tensorboard=false", *extra])


def test_train_writes_a_run_folder(uci_data_dir, tmp_path, capsys):
    assert train(uci_data_dir, tmp_path, "-g", "group", "-n", "first", "--seed", "3",
                 "--set", "hyperparameters.momentum=0.9", "-S", str(tmp_path / "state.pt")) == 0
    run_dir = tmp_path / "runs" / "group" / "first"
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.csv", "summary.json"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["seed"] == 3
    assert (tmp_path / "state.pt").is_file()
    assert "finished after 20 updates" in capsys.readouterr().err


def test_shipped_config_paths_work(uci_data_dir, tmp_path):
    assert main(["train", "-c", "configs/uci_energy.yaml", "configs/random.yaml", "--data-dir",
                 str(uci_data_dir), "-l", str(tmp_path), "-n", "r", "--no-progress",
                 "--set", "training.steps=10", "--random-init", "2"]) == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "finished"


def test_default_run_name_is_algorithm_and_time(uci_data_dir, tmp_path):
    assert train(uci_data_dir, tmp_path, steps=10) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("ours_lr_")


def test_finished_runs_are_not_overwritten(uci_data_dir, tmp_path, capsys):
    assert train(uci_data_dir, tmp_path, "-n", "x", steps=10) == 0
    capsys.readouterr()
    assert train(uci_data_dir, tmp_path, "-n", "x", steps=10) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert train(uci_data_dir, tmp_path, "-n", "x", "--overwrite", steps=10) == 0


def test_load_state_and_resume(uci_data_dir, tmp_path):
    assert train(uci_data_dir, tmp_path, "-n", "a", "-S", str(tmp_path / "a.pt")) == 0
    assert train(uci_data_dir, tmp_path, "-n", "b", "-s", str(tmp_path / "a.pt"), steps=30) == 0
    summary = json.loads((tmp_path / "runs" / "b" / "summary.json").read_text())
    assert summary["steps"] == 30
    # An interrupted run: fake one by marking the summary and keeping a checkpoint.
    assert train(uci_data_dir, tmp_path, "-n", "c", "--set", "logging.checkpoint_interval=10") == 0
    run_dir = tmp_path / "runs" / "c"
    path = run_dir / "summary.json"
    path.write_text(path.read_text().replace('"finished"', '"interrupted"'))
    assert main(["train", "--resume", str(run_dir), "--data-dir", str(uci_data_dir),
                 "--no-progress"]) == 0
    summary = json.loads(path.read_text())
    assert summary["status"] == "finished" and summary["steps"] == 20
    assert summary["resumed_from"].endswith("checkpoint.pt")


def test_diverged_run_exits_zero(uci_data_dir, tmp_path):
    assert main(["train", "-c", "uci_energy", "random", "--data-dir", str(uci_data_dir), "-l",
                 str(tmp_path), "-n", "d", "--no-progress", "--set", "hyperparameters.lr=50",
                 "--set", "training.steps=100"]) == 0
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize("args, words", [
    (["-c", "uci_energy", "ours_lr", "--set", "algorithm.tnue=[lr]"], "did you mean 'tune'"),
    (["-c", "uci_energy", "ours_lrr"], "not found"),
    (["-c", "uci_energy", "ours_lr", "--set", "hyperparameters.lr=abc"], "must be a number"),
    (["-c", "uci_energy", "ours_lr", "--set", "hyperparameters.weight_decay=0"], "> 0 to be tuned"),
    # UCI ships with the package, so missing data is shown with Fashion-MNIST.
    (["-c", "fashion_mnist", "ours_lr", "--data-dir", "{tmp}/nowhere"],
     "onepass download fashion_mnist"),
    (["--resume", "{tmp}/missing"], "no checkpoint.pt"),
    (["-c", "uci_energy", "ours_lr", "-s", "{tmp}/missing.pt"], "not found"),
    ([], "give config files"),
])
def test_errors_are_one_line_with_status_2(args, words, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["train", "-l", str(tmp_path / "runs"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onepass: error: ") and words in err[0]
    assert "Traceback" not in err[0]


def test_unknown_key_in_a_file_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  stpes: 10\n")
    assert main(["train", "-c", "uci_energy", "ours_lr", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'stpes'" in err and "did you mean 'steps'" in err


def test_help_explains_every_option():
    parser = build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    text = train_parser.format_help()
    for action in train_parser._actions:
        assert action.help, action.option_strings
        for option in action.option_strings:
            assert option in text
    for word in ("hyperparameters.lr", "uci_energy", "ours_hdlr_momentum", "--random-init"):
        assert word in text


def test_download_calls_download_uci(monkeypatch, tmp_path, capsys):
    calls = []

    def fake(names, data_dir):
        calls.append((names, data_dir))
        return [tmp_path / "uci" / "energy.txt"]

    monkeypatch.setattr("onepass.data.uci.download_uci", fake)
    assert main(["download", "uci", "--data-dir", str(tmp_path)]) == 0
    assert main(["download", "uci", "energy"]) == 0
    assert calls == [(None, tmp_path), (["energy"], None)]
    assert "energy.txt" in capsys.readouterr().out


def test_demo_is_delegated(monkeypatch):
    seen = []
    fake = types.ModuleType("onepass.demo")
    fake.main = lambda argv=None: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "onepass.demo", fake)
    import onepass
    monkeypatch.setattr(onepass, "demo", fake, raising=False)
    assert main(["demo", "--steps", "5"]) == 0
    assert seen == [["--steps", "5"]]


def test_corrupt_data_is_one_line_and_leaves_no_run_folder(uci_data_dir, tmp_path, capsys):
    import gzip
    shipped = uci_data_dir / "uci" / "energy.txt"
    lines = (shipped.read_text() if shipped.is_file() else
             gzip.decompress((uci_data_dir / "uci" / "energy.txt.gz").read_bytes()).decode()
             ).splitlines()
    lines[5] = "0.98 514.5 not-a-number 110.25 7 2 0 0 15.55 21.33"
    (tmp_path / "data" / "uci").mkdir(parents=True)
    (tmp_path / "data" / "uci" / "energy.txt").write_text("\n".join(lines) + "\n")
    assert main(["train", "-c", "uci_energy", "ours_lr", "--data-dir", str(tmp_path / "data"),
                 "-l", str(tmp_path / "runs"), "-n", "x", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onepass: error: ") and "energy" in err[0], err
    assert not (tmp_path / "runs").exists()


def test_every_rule_trains_from_a_config(uci_data_dir, tmp_path):
    for rule in ("adam", "adamw", "sgd_nesterov"):
        assert main(["train", "-c", "uci_energy", "ours_lr", "--data-dir", str(uci_data_dir),
                     "-l", str(tmp_path), "-n", rule, "--no-progress", "--set",
                     f"training.rule={rule}", "--set", "hyperparameters.beta1=0.8"
                     if rule.startswith("adam") else "hyperparameters.momentum=0.5",
                     "--set", "training.steps=20", "--set", "logging.tensorboard=false"]) == 0
        summary = json.loads((tmp_path / rule / "summary.json").read_text())
        assert summary["status"] == "finished"
        assert set(summary["hyperparameters"]) >= ({"beta1", "beta2", "eps"}
                                                   if rule.startswith("adam") else {"momentum"})


def test_a_hyperparameter_the_rule_lacks_is_one_line(tmp_path, capsys):
    bad = tmp_path / "adam.yaml"
    bad.write_text("training:\n  rule: sgd\nhyperparameters:\n  beta1: 0.9\n")
    assert main(["train", "-c", "uci_energy", "ours_lr", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "beta1" in err[0] and "'sgd'" in err[0]
    assert main(["train", "-c", "uci_energy", "ours_lr", "--set", "hyperparameters.betta2=0.9"]) == 2
    assert "did you mean 'beta2'" in capsys.readouterr().err
