"""Fashion-MNIST, Penn Treebank and CIFAR-10 runs (onepass.experiment.tasks) at toy size.

The data are tiny files in the official formats, written here; the models are
the paper's architectures made narrow (MLP 784-8-10, LSTM 8/8, ResNet-18 of
width 2), trained for tens of updates.
"""
import csv
import gzip
import json
import math
import pickle
import struct

import numpy as np
import pytest
import torch

from onepass.cli.main import main
from onepass.data.ptb import ptb_path
from onepass.experiment.config import ALGORITHMS, ConfigError, load_config
from onepass.experiment.run import load_checkpoint, run_training

STEPS = 20

TOY = {
    "fashion_mnist": ["dataset.validation_size=20", "model.hidden=[8]", "training.batch_size=10"],
    "penn_treebank": ["model.embedding_dim=8", "model.hidden_dim=8", "training.batch_size=4",
                      "dataset.bptt=5"],
    "cifar10": ["dataset.validation_size=12", "model.width=2", "training.batch_size=6"],
}


# ---------------------------------------------------------- toy data files

def _idx_gz(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_fashion_mnist(root, n_train=60, n_test=20):
    rng = np.random.default_rng(0)
    folder = root / "fashion_mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        # Learnable: the brightness of a label-dependent patch of pixels.
        images = rng.integers(0, 60, (n, 28, 28))
        for k, label in enumerate(labels):
            images[k, 2 * label:2 * label + 3] += 150
        _idx_gz(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _idx_gz(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


def write_ptb(root):
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(20)] + ["<unk>"]

    def text(n_lines):
        return "".join(" " + " ".join(rng.choice(words, rng.integers(3, 9))) + " \n"
                       for _ in range(n_lines))
    for split, lines in (("train", 60), ("valid", 12), ("test", 12)):
        path = ptb_path(split, root)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text(lines))


def write_cifar10(root, n_per_batch=8):
    rng = np.random.default_rng(2)
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch)
        with open(folder / name, "wb") as handle:
            pickle.dump({b"batch_label": b"toy", b"data": data, b"labels": list(map(int, labels)),
                         b"filenames": [b"x.png"] * n_per_batch}, handle, protocol=2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest and does not suffer from a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_fashion_mnist(root)
    write_ptb(root)
    write_cifar10(root)
    return root


def toy_config(dataset, algorithm, *extra, steps=STEPS):
    overrides = [*TOY[dataset], f"training.steps={steps}", "logging.interval=5",
                 "logging.tensorboard=false", *extra]
    return load_config([dataset, algorithm], overrides, random_init=3)


def read_csv(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


METRIC = {"fashion_mnist": "test_accuracy", "cifar10": "test_accuracy",
          "penn_treebank": "test_perplexity"}


# ------------------------------------------------------------------ smoke

@pytest.mark.parametrize("dataset", ["fashion_mnist", "penn_treebank", "cifar10"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_runs_on_every_dataset(dataset, algorithm, data_dir, tmp_path):
    config = toy_config(dataset, algorithm)
    summary = run_training(config, tmp_path, data_dir=data_dir, progress=False)
    assert summary["status"] in ("finished", "diverged"), summary["error"]
    if summary["status"] == "diverged":  # a random initialisation may diverge; none of these do
        pytest.fail(f"diverged: {summary['error']}")
    assert summary["steps"] == STEPS
    metric = METRIC[dataset]
    final = summary["final"]
    assert math.isfinite(final["test_loss"]) and math.isfinite(final[metric])
    assert final["test_loss_unnormalised"] is None
    assert ({"test_accuracy", "test_perplexity"} - {metric}).isdisjoint(final)
    if metric == "test_perplexity":
        assert final[metric] == pytest.approx(math.exp(final["test_loss"]))
    else:
        assert 0 <= final[metric] <= 1
    rows = read_csv(tmp_path)
    assert [int(r["step"]) for r in rows] == list(range(5, STEPS + 1, 5))
    assert all(r[metric] != "" for r in rows)
    has_val = config["algorithm"]["validation"] == "split"
    assert (final["val_loss"] is not None) == has_val
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["final"][metric] == pytest.approx(final[metric])


# ------------------------------------------------------------ behaviour

def test_fashion_mnist_learns_the_toy_problem(data_dir, tmp_path):
    config = toy_config("fashion_mnist", "random", "hyperparameters.lr=0.05",
                        "hyperparameters.momentum=0.5", steps=60)
    summary = run_training(config, tmp_path, data_dir=data_dir, progress=False)
    assert summary["final"]["test_accuracy"] > 0.5
    assert summary["final"]["test_loss"] < math.log(10)


def test_penn_treebank_tuner_clips_and_carries_hidden_state(data_dir):
    from onepass.experiment.tasks import make_task
    config = toy_config("penn_treebank", "ours_lr_momentum")
    assert config["training"]["max_grad_norm"] == 0.25
    task = make_task(config, data_dir, "cpu")
    torch.manual_seed(0)
    model = task.build_model()
    assert model.lstm.hidden_size == 8 and model.vocab_size == task.n_inputs == 22
    inputs, targets, carrier = task.sampler.next()
    assert inputs.shape == (5, 4) and torch.equal(inputs[1:], targets[:-1])
    assert carrier.hidden is None
    loss = task.tuner_loss()["batch_loss"](model, (inputs, targets, carrier))
    assert loss.item() == pytest.approx(math.log(22), rel=0.1)
    assert carrier.hidden[0].shape == (2, 4, 8) and not carrier.hidden[0].requires_grad
    following, _, same = task.sampler.next()
    assert same is carrier and torch.equal(following[0], targets[-1])
    # Validation windows walk the validation stream with their own state.
    val_inputs, _, val_carrier = task.val_batch()
    assert val_carrier is not carrier and val_inputs.shape[1] == 4


def test_penn_treebank_resume_is_exact(data_dir, tmp_path):
    """A run continued from a checkpoint (hidden states included) matches an uninterrupted one."""
    extra = ["logging.checkpoint_interval=10"]
    whole = run_training(toy_config("penn_treebank", "ours_lr", *extra), tmp_path / "whole",
                         data_dir=data_dir, progress=False)
    half = run_training(toy_config("penn_treebank", "ours_lr", *extra, steps=10), tmp_path / "half",
                        data_dir=data_dir, progress=False, save_state_to=tmp_path / "state.pt")
    state = load_checkpoint(tmp_path / "state.pt")
    assert state["sampler"]["hidden"] is not None and state["task"]["val_sampler"]["hidden"] is not None
    assert half["steps"] == 10
    resumed = run_training(toy_config("penn_treebank", "ours_lr", *extra), tmp_path / "resumed",
                           data_dir=data_dir, progress=False, resume_from=tmp_path / "state.pt")
    assert resumed["final"] == whole["final"]
    assert resumed["hyperparameters"] == whole["hyperparameters"]


def test_merged_penn_treebank_trains_on_train_and_validation(data_dir):
    from onepass.experiment.tasks import make_task
    split = make_task(toy_config("penn_treebank", "ours_lr"), data_dir, "cpu")
    merged = make_task(toy_config("penn_treebank", "random"), data_dir, "cpu")
    n = split.train_source.numel() + split.data.valid.numel()
    assert n - 8 < merged.train_source.numel() <= n


def test_uci_outputs_keep_their_columns(uci_data_dir, tmp_path):
    from onepass.experiment.logging import LOSS_COLUMNS
    config = load_config(["uci_energy", "ours_lr"], ["training.steps=10",
                                                      "logging.tensorboard=false"])
    summary = run_training(config, tmp_path, data_dir=uci_data_dir, progress=False)
    assert list(summary["final"]) == ["train_loss", "val_loss", "test_loss", "test_loss_unnormalised"]
    assert list(read_csv(tmp_path)[0])[:len(LOSS_COLUMNS)] == list(LOSS_COLUMNS)
    assert list(read_csv(tmp_path)[0])[len(LOSS_COLUMNS):] == ["lr", "momentum", "weight_decay"]


# --------------------------------------------------------------- config

@pytest.mark.parametrize("overrides, message", [
    (["training.loss=mse"], "training.loss must be 'cross_entropy'"),
    (["model.kind=lstm"], "model.kind must be mlp"),
    (["model.hidden_dim=32"], "applies to model kind 'lstm'"),
    (["dataset.name=energy"], "dataset.name must be 'fashion_mnist'"),
    (["training.max_grad_norm=0"], "training.max_grad_norm must be a finite number > 0"),
])
def test_config_checks(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(["fashion_mnist", "random"], overrides)


def test_shipped_dataset_configs_follow_the_protocol():
    fm = load_config(["fashion_mnist", "ours_lr_momentum"])
    assert (fm["model"]["kind"], fm["model"]["hidden"], fm["training"]["batch_size"],
            fm["training"]["steps"], fm["dataset"]["validation_size"]) == ("mlp", [50], 50, 10000, 10000)
    ptb = load_config(["penn_treebank", "ours_lr_momentum"])
    assert (ptb["model"]["embedding_dim"], ptb["model"]["hidden_dim"], ptb["model"]["num_layers"],
            ptb["training"]["batch_size"], ptb["dataset"]["bptt"], ptb["training"]["max_grad_norm"],
            ptb["training"]["steps"]) == (650, 650, 2, 40, 70, 0.25, 23910)
    cifar = load_config(["cifar10", "ours_lr_momentum"])
    assert (cifar["model"]["kind"], cifar["model"]["width"], cifar["training"]["batch_size"],
            cifar["training"]["steps"], cifar["dataset"]["validation_size"]) == \
        ("resnet18", 64, 100, 32400, 5000)


# ------------------------------------------------------------------ CLI

def test_cli_trains_cifar10(data_dir, tmp_path):
    args = ["train", "-c", "cifar10", "ours_lr_momentum", "--data-dir", str(data_dir),
            "-l", str(tmp_path), "-n", "toy", "--no-progress"]
    for item in [*TOY["cifar10"], "training.steps=10", "logging.tensorboard=false"]:
        args += ["--set", item]
    assert main(args) == 0
    summary = json.loads((tmp_path / "toy" / "summary.json").read_text())
    assert summary["status"] == "finished" and "test_accuracy" in summary["final"]


def test_cli_reports_missing_dataset(tmp_path, capsys):
    assert main(["train", "-c", "penn_treebank", "random", "--data-dir", str(tmp_path),
                 "-l", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "onepass download ptb" in err and err.count("\n") == 1


@pytest.mark.parametrize("family, function", [
    ("fashion_mnist", "onepass.data.fashion_mnist.download_fashion_mnist"),
    ("ptb", "onepass.data.ptb.download_ptb"),
    ("cifar10", "onepass.data.cifar10.download_cifar10"),
])
def test_download_families(family, function, monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(function, lambda data_dir: calls.append(data_dir) or tmp_path / family)
    assert main(["download", family, "--data-dir", str(tmp_path)]) == 0
    assert calls == [tmp_path] and family in capsys.readouterr().out
    assert main(["download", family, "extra"]) == 2
