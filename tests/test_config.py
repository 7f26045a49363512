"""Config schema, layered loading, --set overrides, validation messages, random initialisation."""
import math

import pytest

from onepass.experiment.config import (
    ALGORITHMS, CONFIG_DIR, DATASETS, ConfigError, draw_random_initialisation, dump_config,
    find_config, load_config, parse_override, resolve_config,
)

EXPECTED = {  # name: (method, tune, validation)
    "random": ("none", [], "merged"),
    "random_stepped_lr": ("none", [], "merged"),
    "random_validation": ("none", [], "split"),
    "random_training_set_only": ("none", [], "split"),
    "lorraine": ("neumann", ["weight_decay"], "split"),
    "baydin": ("baydin", ["lr"], "merged"),
    "ours_lr": ("neumann", ["lr", "weight_decay"], "split"),
    "ours_lr_momentum": ("neumann", ["lr", "momentum", "weight_decay"], "split"),
    "ours_hdlr_momentum": ("neumann", ["lr", "momentum", "weight_decay"], "split"),
    "diff_through_opt": ("unroll", ["lr", "momentum", "weight_decay"], "split"),
}


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_files_are_named_as_the_issue_asks():
    from onepass.experiment.config import EXTRA_ALGORITHMS  # long Diff-through-Opt (issue #5)
    assert {p.stem for p in CONFIG_DIR.glob("*.yaml")} == \
        set(ALGORITHMS) | set(DATASETS) | set(EXTRA_ALGORITHMS)
    assert find_config("configs/uci_energy.yaml").resolve() == (CONFIG_DIR / "uci_energy.yaml").resolve()


@pytest.mark.parametrize("dataset", [d for d in DATASETS if d.startswith("uci_")])
def test_dataset_configs_follow_the_protocol(dataset):
    config = load_config([dataset, "random"])
    assert config["dataset"] == {"kind": "uci", "name": dataset[4:], "shuffle_seed": None,
                                 "validation_size": None, "bptt": 70}
    model = {k: config["model"][k] for k in ("kind", "hidden", "batch_norm")}
    assert model == {"kind": "mlp", "hidden": [50], "batch_norm": False}
    assert config["training"] == {"rule": "sgd", "steps": 4000, "batch_size": None, "loss": "mse",
                                  "max_grad_norm": None, "compile": False}
    assert config["hyperparameters"] == {"lr": 1e-3, "momentum": 1 / (1 + math.exp(-0.5)),
                                         "weight_decay": 1e-16}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_algorithm_configs_follow_the_method_table(algorithm):
    algo = load_config(["uci_energy", algorithm])["algorithm"]
    assert algo["name"] == algorithm
    assert (algo["method"], algo["tune"], algo["validation"]) == EXPECTED[algorithm]
    assert algo["granularity"] == ({"lr": "weight"} if algorithm == "ours_hdlr_momentum" else {})
    assert algo["full_validation"] == (algorithm == "random_validation")
    assert algo["lr_multiplier"] == (1.0 if algorithm == "random_stepped_lr" else None)
    if algorithm == "baydin":
        assert (algo["update_interval"], algo["hyper_optimizer"], algo["hyper_lr"]) == (1, "sgd", 0.001)
    elif algo["method"] != "none":
        assert (algo["update_interval"], algo["hyper_optimizer"], algo["hyper_lr"]) == (10, "adam", 0.05)
    if algorithm == "diff_through_opt":
        assert algo["unroll_steps"] == 5


def test_later_layers_win_and_set_parses_natural_units(tmp_path):
    extra = write(tmp_path, "extra.yaml", "training: {steps: 7}\nhyperparameters: {lr: 2e-2}\n")
    config = load_config(["uci_energy", "ours_lr", extra],
                         ["hyperparameters.weight_decay=1e-5", "hyperparameters.momentum=0.9",
                          "model.hidden=[20, 10]", "training.batch_size=32"])
    assert config["training"]["steps"] == 7
    assert config["hyperparameters"] == {"lr": 0.02, "momentum": 0.9, "weight_decay": 1e-5}
    assert config["model"]["hidden"] == [20, 10]
    assert config["training"]["batch_size"] == 32
    assert load_config(["uci_energy", "ours_lr"], ["training.steps=3", "training.steps=5"])[
        "training"]["steps"] == 5
    assert resolve_config(config) == config
    assert resolve_config(load_config([], [], base=config)) == config
    assert "lr: 0.02" in dump_config(config)


def test_set_reaches_into_mapping_values():
    config = load_config(["uci_energy", "ours_lr"], ["algorithm.granularity.lr=weight"])
    assert config["algorithm"]["granularity"] == {"lr": "weight"}


def test_parse_override():
    assert parse_override("hyperparameters.lr=1e-3") == (("hyperparameters", "lr"), 1e-3)
    assert parse_override("training.batch_size=null") == (("training", "batch_size"), None)
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("hyperparameters.lr")


@pytest.mark.parametrize("text, key, suggestion", [
    ("algorithm: {tnue: [lr]}\n", "tnue", "tune"),
    ("hyperparameter: {lr: 0.1}\n", "hyperparameter", "hyperparameters"),
    ("training: {step: 10}\n", "step", "steps"),
])
def test_unknown_keys_name_key_file_and_suggestion(tmp_path, text, key, suggestion):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(["uci_energy", path])
    message = str(info.value)
    assert str(path) in message and repr(key) in message and f"did you mean {suggestion!r}" in message


@pytest.mark.parametrize("text, key, words", [
    ("hyperparameters: {lr: abc}\n", "hyperparameters.lr", "must be a number"),
    ("training: {steps: 1.5}\n", "training.steps", "must be an integer"),
    ("model: {batch_norm: maybe}\n", "model.batch_norm", "true or false"),
    ("model: {hidden: [50, x]}\n", "model.hidden", "list of integers"),
    ("algorithm: {method: nuemann}\n", "algorithm.method", "did you mean 'neumann'"),
    ("hyperparameters: {momentum: 1.5}\n", "hyperparameters.momentum", "[0, 1)"),
    ("hyperparameters: {lr: -1}\n", "hyperparameters.lr", "> 0"),
    ("training: {steps: 0}\n", "training.steps", "≥ 1"),
    ("dataset: {name: enrgy}\n", "dataset.name", "did you mean 'energy'"),
    ("seed: -3\n", "seed", "≥ 0"),
    ("training: 5\n", "training", "must be a mapping"),
    ("- a\n- b\n", "", "mapping of sections"),
    ("training: {steps: [\n", "", "not valid YAML"),
])
def test_wrong_types_and_values_name_key_and_file(tmp_path, text, key, words):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(["uci_energy", "ours_lr", path])
    message = str(info.value)
    assert str(path) in message and key in message and words in message


@pytest.mark.parametrize("overrides, key, words", [
    (["hyperparameters.weight_decay=0"], "hyperparameters.weight_decay", "> 0 to be tuned"),
    (["algorithm.tune=[]"], "algorithm.tune", "at least one"),
    (["algorithm.validation=merged"], "algorithm.validation", "needs a validation set"),
    (["algorithm.method=unroll", "algorithm.unroll_steps=20"], "algorithm.unroll_steps", "exceed"),
    (["algorithm.method=baydin"], "algorithm.tune", "only contain 'lr'"),
    (["algorithm.granularity={momentum: weight}"], "algorithm.granularity", "not tuned"),
    (["algorithm.lr_multiplier=1.01"], "algorithm.lr_multiplier", "tuning lr"),
    (["hyperparameters.lr=2"], "hyperparameters.lr", "to be tuned"),
])
def test_inconsistent_configs_are_refused(overrides, key, words):
    with pytest.raises(ConfigError) as info:
        load_config(["uci_energy", "ours_lr"], overrides)
    assert key in str(info.value) and words in str(info.value)


def test_inconsistency_names_the_file_that_set_the_value(tmp_path):
    path = write(tmp_path, "zero.yaml", "hyperparameters: {weight_decay: 0.0}\n")
    load_config(["uci_energy", "random", path])  # fine when nothing is tuned
    with pytest.raises(ConfigError, match=f"{path}: hyperparameters.weight_decay"):
        load_config(["uci_energy", path, "lorraine"])


def test_missing_inputs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="dataset.name is required"):
        load_config(["ours_lr"])
    with pytest.raises(ConfigError, match="did you mean 'ours_lr'"):
        load_config(["uci_energy", "ours_lrr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "nope.yaml"])
    with pytest.raises(ConfigError, match=r"--set hyperparameters.lrr.*did you mean 'lr'"):
        load_config(["uci_energy", "ours_lr"], ["hyperparameters.lrr=0.1"])


def test_random_initialisation_is_seeded_and_in_range():
    draws = [draw_random_initialisation(seed) for seed in range(200)]
    assert draw_random_initialisation(5) == draws[5]
    assert draws[0] != draws[1]
    for d in draws:
        assert 1e-6 <= d["lr"] <= 1e-1 and 1e-7 <= d["weight_decay"] <= 1e-2
        assert 0 < d["momentum"] < 1 and 0.95 <= d["lr_multiplier"] <= 1.01
    with pytest.raises(ConfigError):
        draw_random_initialisation(-1)


def test_random_init_layer_sits_between_files_and_set():
    drawn = draw_random_initialisation(11)
    config = load_config(["uci_energy", "ours_lr_momentum"], ["hyperparameters.lr=0.5"], random_init=11)
    assert config["hyperparameters"] == {"lr": 0.5, "momentum": drawn["momentum"],
                                         "weight_decay": drawn["weight_decay"]}
    assert config["algorithm"]["lr_multiplier"] is None
    stepped = load_config(["uci_energy", "random_stepped_lr"], random_init=11)
    assert stepped["algorithm"]["lr_multiplier"] == drawn["lr_multiplier"]
    assert stepped["hyperparameters"]["lr"] == drawn["lr"]


def test_a_moved_key_names_its_new_place():
    with pytest.raises(ConfigError, match=r"algorithm.rule is now training.rule"):
        load_config(["uci_energy", "random"], ["algorithm.rule=adam"])
