"""Your own model and data (``dataset.kind`` / ``model.kind: python``) through the CLI.

The example project ``examples/own_model`` is run as its README says: train
(in a fresh process, from another folder, so only the config's ``python_path``
can make ``my_project`` importable), a sweep of random initialisations on two
local workers, the same on Ray, a Bayesian-optimisation study, the report; and
every way a target can be wrong gives one line naming it, exit status 2, before
any run folder exists.
"""
import json
import math
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from onepass.analysis.runs import load_runs
from onepass.cli.main import main
from onepass.experiment.config import ConfigError, draw_random_initialisation, load_config, \
    resolve_config
from onepass.experiment.run import run_training
from onepass.experiment.python_targets import TargetError, build_model, load_splits
from onepass.sweep import make_units
from onepass.sweep.executors import SingleUnit
from onepass.sweep.plan import Sweep

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_model"
CONFIG = EXAMPLE / "config.yaml"
CLASSIFY = EXAMPLE / "classify.yaml"
QUIET = ["--no-progress", "--set", "logging.tensorboard=false"]


def read(path):
    return json.loads(Path(path).read_text())


# ------------------------------------------------------------------ config

def test_config_names_the_targets_and_the_paper_configs_are_unchanged():
    config = load_config([CONFIG, "ours_lr_momentum"])
    assert config["python_path"] == [str(EXAMPLE)]          # relative to the config file
    assert config["dataset"]["target"] == "my_project.data:splits"
    assert config["dataset"]["kwargs"]["n_train"] == 256
    assert (config["model"]["kind"], config["model"]["target"]) == ("python", "my_project.model:build")
    assert config["model"]["kwargs"] == {"in_features": 4, "hidden": 32, "depth": 2}
    assert resolve_config(config) == config
    changed = load_config([CONFIG, "ours_lr"], ["model.kwargs.hidden=8"])
    assert changed["model"]["kwargs"] == {"in_features": 4, "hidden": 8, "depth": 2}
    # the python-only keys are left out of configs that do not use them
    paper = load_config(["uci_energy", "ours_lr"])
    assert "python_path" not in paper and "target" not in paper["dataset"] \
        and "kwargs" not in paper["model"]


@pytest.mark.parametrize("overrides, words", [
    (["model.target=null"], "model.target is required for model.kind 'python'"),
    (["dataset.target=null"], "dataset.target is required for dataset.kind 'python'"),
    (["model.target=my_project.model"], "model.target must be 'package.module:function'"),
    (["dataset.shuffle_seed=3"], "dataset.shuffle_seed does not apply to dataset kind 'python'"),
    (["model.kind=lstm"], "model.kind must be python or mlp"),
])
def test_config_errors(overrides, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_config([CONFIG, "ours_lr"], overrides)


def test_config_errors_outside_python_kinds():
    with pytest.raises(ConfigError, match="dataset.target applies to dataset kind 'python', not 'uci'"):
        load_config(["uci_energy", "ours_lr"], ["dataset.target=my_project.data:splits"])
    with pytest.raises(ConfigError, match="python_path applies only"):
        load_config(["uci_energy", "ours_lr"], ["python_path=[.]"])
    with pytest.raises(ConfigError, match="dataset.name is required for dataset kind 'python'"):
        load_config(["ours_lr"], ["dataset.kind=python", "dataset.target=a.b:c"])


# --------------------------------------------------------------- commands

def test_train_in_a_fresh_process_trains_the_users_model(tmp_path):
    """``onepass train`` from another folder; the saved weights load into the
    user's own model and give the run's final test loss."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    state = tmp_path / "state.pt"
    done = subprocess.run(
        [sys.executable, "-m", "onepass.cli.main", "train", "-c", str(CONFIG), "ours_lr_momentum",
         "-l", "runs", "-n", "waves", "-S", str(state), "--set", "training.steps=40", *QUIET],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = read(tmp_path / "runs" / "waves" / "summary.json")
    assert summary["status"] == "finished" and summary["dataset"] == "waves"
    assert summary["steps"] == 40 and math.isfinite(summary["final"]["test_loss"])
    assert summary["hyperparameters"]["lr"] != 1e-3   # tuned by the paper's method

    sys.path.insert(0, str(EXAMPLE))
    try:
        from my_project.data import splits
        from my_project.model import build
    finally:
        sys.path.remove(str(EXAMPLE))
    model = build(in_features=4, hidden=32, depth=2)
    model.load_state_dict(torch.load(state, weights_only=True)["model"])   # strict: same keys
    x, y = splits(n_train=256, n_val=64, n_test=256, noise=0.1, seed=0)["test"]
    with torch.no_grad():
        test_loss = F.mse_loss(model(x), y).item()
    assert test_loss == pytest.approx(summary["final"]["test_loss"], rel=1e-5)


def test_sweep_with_random_inits_on_two_workers_then_report(tmp_path, capsys):
    root = tmp_path / "sweep"
    algorithms = ["random", "ours_lr_momentum"]
    args = ["sweep", "-c", str(CONFIG), "-a", *algorithms, "-N", "3", "--workers", "2",
            "--steps", "20", "-l", str(root), *QUIET]
    # no population for a python model: one task per run
    sweep = Sweep(root, str(CONFIG), algorithms, 3, steps=20)
    assert all(isinstance(t, SingleUnit) for t in make_units(sweep.runs()))
    assert main(args) == 0
    runs = load_runs(root)
    assert sorted((r.algorithm, r.init_index) for r in runs) == \
        sorted((a, i) for a in algorithms for i in range(3))
    for run in runs:
        assert run.status == "finished" and run.seed == run.init_index
        assert run.config["model"]["target"] == "my_project.model:build"
        assert run.config["hyperparameters"]["lr"] == draw_random_initialisation(run.init_index)["lr"]
        assert math.isfinite(run.final["test_loss"])
    finals = {r.final["test_loss"] for r in runs if r.algorithm == "random"}
    assert len(finals) == 3                      # three different initialisations
    capsys.readouterr()
    assert main(args) == 0                       # a rerun keeps the finished runs
    assert "ran 0, 6 were already done" in capsys.readouterr().err

    assert main(["report", str(root), "--format", "md", "csv"]) == 0
    table = capsys.readouterr().out
    assert "## waves" in table and "`test_loss`" in table
    rows = [line for line in table.splitlines() if line.startswith("| Random |")
            or line.startswith("| Ours (WD+LR+M) |")]
    assert len(rows) == 2 and all(row.split("|")[2].strip() == "3" for row in rows)
    assert (root / "report" / "table.csv").is_file()


def test_ray_sweep_imports_the_users_module_on_its_workers(ray_session, tmp_path):
    """Ray workers do not share the driver's sys.path: only python_path lets them
    import my_project. The results equal a local sweep's."""
    def sweep(root, *extra):
        return main(["sweep", "-c", str(CONFIG), "-a", "ours_lr", "-N", "2", "--steps", "20",
                     "-l", str(root), *QUIET, *extra])
    assert sweep(tmp_path / "ray", "--executor", "ray") == 0
    assert sweep(tmp_path / "local") == 0
    on_ray = {r.init_index: r for r in load_runs(tmp_path / "ray")}
    local = {r.init_index: r for r in load_runs(tmp_path / "local")}
    assert sorted(on_ray) == sorted(local) == [0, 1]
    for i, run in on_ray.items():
        assert run.status == "finished", run.record.error
        assert run.final["test_loss"] == pytest.approx(local[i].final["test_loss"], rel=1e-4)


def test_bayesopt_study_on_the_users_problem(tmp_path, capsys):
    import bayes_opt  # noqa: F401  (the extra must be installed: fails, not skips)
    assert main(["bayesopt", "-c", str(CONFIG), "--init-points", "2", "--iterations", "1",
                 "--set", "training.steps=20", "-l", str(tmp_path)]) == 0
    study = read(tmp_path / "bayesopt" / "study.json")
    assert study["completed"] == 3 and study["best"]["val_loss"] is not None
    for i in range(3):
        run = tmp_path / "bayesopt" / f"eval_{i:03d}"
        summary = read(run / "summary.json")
        assert summary["dataset"] == "waves" and summary["status"] in ("finished", "diverged")
        assert "my_project.model:build" in (run / "config.yaml").read_text()
    assert "best evaluation" in capsys.readouterr().err


def test_asha_study_on_the_users_data(ray_session, tmp_path, monkeypatch):
    """Ray's trials run in other folders: the config path and python_path must reach them."""
    monkeypatch.chdir(EXAMPLE)                         # a relative config path, as a user types it
    assert main(["asha", "-c", "config.yaml", "--num-samples", "2", "--max-steps", "40",
                 "--grace-period", "20", "--num-cpus", "2", "--cpus-per-trial", "1",
                 "-l", str(tmp_path)]) == 0
    study = read(tmp_path / "asha" / "study.json")
    assert study["completed"] == 2 and study["errors"] == []
    for run in sorted((tmp_path / "asha").glob("trial_*")):
        summary = read(run / "summary.json")
        assert summary["dataset"] == "waves" and summary["status"] == "finished"


def test_classification_with_the_shipped_mlp_on_the_users_data(tmp_path):
    state = tmp_path / "state.pt"
    assert main(["train", "-c", str(CLASSIFY), "ours_lr_momentum", "-l", str(tmp_path), "-n", "c",
                 "-S", str(state), "--set", "training.steps=20", *QUIET]) == 0
    summary = read(tmp_path / "c" / "summary.json")
    assert summary["status"] == "finished" and 0 <= summary["final"]["test_accuracy"] <= 1
    header = (tmp_path / "c" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "test_accuracy" in header
    weights = torch.load(state, weights_only=True)["model"]
    assert weights["0.weight"].shape == (32, 4) and weights["2.weight"].shape == (3, 32)  # 4 -> 32 -> 3


def test_the_users_model_on_the_papers_data(uci_data_dir, tmp_path):
    config = load_config(["uci_energy", "ours_lr"], [
        "model.kind=python", "model.target=my_project.model:build",
        "model.kwargs={in_features: 8}", f"python_path=[{EXAMPLE}]", "training.steps=20",
        "logging.tensorboard=false"])
    summary = run_training(config, tmp_path, data_dir=uci_data_dir, progress=False)
    assert summary["status"] == "finished"
    assert math.isfinite(summary["final"]["test_loss_unnormalised"])


# ------------------------------------------------------------ bad targets

BAD_MODULE = '''
import torch
from torch import nn


def a_list():
    return [1, 2]


def frozen():
    return nn.Linear(4, 1).requires_grad_(False)


def a_tuple():
    return (1, 2, 3)


def no_test():
    x, y = torch.zeros(4, 4), torch.zeros(4)
    return {"train": (x, y), "val": (x, y)}


def float_labels():
    x, y = torch.zeros(4, 4), torch.rand(4)
    return {"train": (x, y), "val": (x, y), "test": (x, y)}


def boom():
    raise RuntimeError("no data today")


NOT_CALLABLE = 3
'''


@pytest.fixture
def bad_module(tmp_path):
    """A module of wrong targets under a fresh name, and the --set that finds it."""
    name = f"user_targets_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / f"{name}.py").write_text(BAD_MODULE)
    return name, f"python_path=[{EXAMPLE}, {folder}]"


BAD_CASES = [
    (["model.target=no_such_pkg_q.model:build"],
     r"model\.target 'no_such_pkg_q\.model:build': cannot import module 'no_such_pkg_q\.model' "
     r"\(no module named 'no_such_pkg_q'\); it must be importable"),
    (["model.target=my_project.model:buld"],
     r"model\.target 'my_project\.model:buld': module 'my_project\.model' has no attribute 'buld' "
     r"\(did you mean 'build'\?\); expected a function"),
    (["model.target={mod}:NOT_CALLABLE", "model.kwargs={{}}"],
     r"model\.target '{mod}:NOT_CALLABLE': 'NOT_CALLABLE' is of type int, not a function"),
    (["model.kwargs.hiden=64"],
     r"model\.target 'my_project\.model:build' cannot be called with model\.kwargs .*'hiden'"),
    (["model.target={mod}:a_list", "model.kwargs={{}}"],
     r"model\.target '{mod}:a_list' returned a list; expected a torch\.nn\.Module$"),
    (["model.target={mod}:frozen", "model.kwargs={{}}"],
     r"model\.target '{mod}:frozen' returned a Linear without trainable parameters"),
    (["model.kwargs.out_features=3"],
     r"model\.target 'my_project\.model:build': its output on 2 inputs has shape \(2, 3\); "
     r"expected the shape of the targets .*\(2, 1\)"),
    (["dataset.target={mod}:a_tuple", "dataset.kwargs={{}}"],
     r"dataset\.target '{mod}:a_tuple' returned a tuple; expected a mapping \{{'train': \(x, y\)"),
    (["dataset.target={mod}:no_test", "dataset.kwargs={{}}"],
     r"dataset\.target '{mod}:no_test' returned a mapping without 'test'; expected a mapping"),
    (["dataset.target={mod}:float_labels", "dataset.kwargs={{}}", "training.loss=cross_entropy"],
     r"dataset\.target '{mod}:float_labels' returned 'train': y of dtype torch\.float32 and shape "
     r"\(4,\), not integer labels .*cross_entropy"),
    (["dataset.target={mod}:boom", "dataset.kwargs={{}}"],
     r"dataset\.target '{mod}:boom' raised RuntimeError: no data today$"),
]


@pytest.mark.parametrize("overrides, pattern", BAD_CASES)
def test_a_bad_target_is_one_line_before_any_run(bad_module, tmp_path, capsys, overrides, pattern):
    name, path = bad_module
    sets = [item for o in overrides for item in ("--set", o.format(mod=name))]
    root = tmp_path / "runs"
    rc = main(["train", "-c", str(CONFIG), "ours_lr", "-l", str(root), "-n", "x",
               "--set", path, *sets, *QUIET])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    line = err.strip()
    assert line.startswith("onepass: error: ") and re.search(pattern.format(mod=name), line), line
    assert not root.exists()                              # no run folder was started


def test_sweep_and_bayesopt_report_a_bad_target_in_one_line(tmp_path, capsys):
    bad = ["--set", "model.target=my_project.model:nope"]
    root = tmp_path / "sweep"
    assert main(["sweep", "-c", str(CONFIG), "-a", "random", "-N", "2", "--workers", "2",
                 "-l", str(root), *QUIET, *bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.target 'my_project.model:nope'" in err
    assert not root.exists()
    assert main(["bayesopt", "-c", str(CONFIG), "--init-points", "1", "--iterations", "0",
                 "-l", str(tmp_path / "bo"), *bad]) == 2
    lines = capsys.readouterr().err.strip().splitlines()   # its progress line, then the error
    assert [line for line in lines if line.startswith("onepass: error:")] == lines[-1:]
    assert "model.target 'my_project.model:nope'" in lines[-1] and "has no attribute" in lines[-1]
    assert not list((tmp_path / "bo").rglob("summary.json"))


def test_the_python_api_raises_target_errors(bad_module):
    name, path = bad_module
    config = load_config([CONFIG, "ours_lr"], [path, f"dataset.target={name}:boom",
                                               "dataset.kwargs={}"])
    with pytest.raises(TargetError, match="raised RuntimeError: no data today") as info:
        load_splits(config)
    assert isinstance(info.value, ConfigError)
    assert isinstance(info.value.__cause__, RuntimeError)   # the user's traceback is kept
    config = load_config([CONFIG, "ours_lr"], [path, f"model.target={name}:a_list",
                                               "model.kwargs={}"])
    with pytest.raises(TargetError, match=r"returned a list; expected a torch\.nn\.Module"):
        build_model(config)
