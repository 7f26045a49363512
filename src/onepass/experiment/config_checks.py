"""Checks across keys of a resolved config: the dataset, model and loss agree,
the method can tune what it is asked to, tuned values lie in their domains.
Each failure is one :class:`~onepass.experiment.config_schema.ConfigError`
naming the key and the file that set it."""

from __future__ import annotations

from typing import Mapping

from onepass.core.estimators import ESTIMATORS
from onepass.core.hyperparameters import TRANSFORMS, closest
from onepass.data.uci import UCI_DATASETS
from onepass.experiment.config_schema import (
    BAYDIN_METHODS, DATASET_KEYS, DATASET_LOSS, DATASET_MODELS, LR_CLIP, MODEL_KEYS, PYTHON, SCHEMA,
    ConfigError, _did_you_mean, uses_python,
)

def check_consistency(config: dict, sources: Mapping[tuple[str, ...], str]) -> None:
    def fail(path: str, message: str) -> ConfigError:
        source = sources.get(tuple(path.split(".")), "defaults")
        return ConfigError(f"{source}: {path} {message}")

    algo, hyper = config["algorithm"], config["hyperparameters"]
    method, tune = algo["method"], algo["tune"]
    dataset, model = config["dataset"], config["model"]
    kind = dataset["kind"]
    if kind == "uci" and dataset["name"] not in UCI_DATASETS:
        raise fail("dataset.name", f"must be a UCI dataset ({', '.join(UCI_DATASETS)}) for kind "
                   f"'uci', got {dataset['name']!r}{_did_you_mean(dataset['name'], UCI_DATASETS)}")
    if kind not in ("uci", PYTHON) and dataset["name"] != kind:
        raise fail("dataset.name", f"must be {kind!r} for kind {kind!r}, got {dataset['name']!r}")
    for key, spec in SCHEMA["dataset"].items():
        owner = next((k for k, keys in DATASET_KEYS.items() if key in keys), None)
        if owner is not None and owner != kind and dataset[key] != spec.default:
            raise fail(f"dataset.{key}", f"applies to dataset kind {owner!r}, not {kind!r}")
        if kind == PYTHON and key in ("shuffle_seed", "validation_size", "bptt") \
                and dataset[key] != spec.default:
            raise fail(f"dataset.{key}", "does not apply to dataset kind 'python' (your "
                       "dataset.target makes the splits)")
    if model["kind"] not in DATASET_MODELS[kind]:
        raise fail("model.kind", f"must be {' or '.join(DATASET_MODELS[kind])} for dataset kind "
                   f"{kind!r}, got {model['kind']!r}")
    for key, spec in SCHEMA["model"].items():
        # A resolved config lists every key, so only a non-default value is an error.
        if key != "kind" and key not in MODEL_KEYS[model["kind"]] and model[key] != spec.default:
            owner = next(k for k, keys in MODEL_KEYS.items() if key in keys)
            raise fail(f"model.{key}", f"applies to model kind {owner!r}, not {model['kind']!r}")
    for section in ("dataset", "model"):
        if config[section]["kind"] == PYTHON and config[section]["target"] is None:
            example = "my_project.data:splits" if section == "dataset" else "my_project.model:build"
            source = sources.get((section, "kind"), "defaults")
            raise ConfigError(f"{source}: {section}.target is required for {section}.kind "
                              f"'python' (e.g. {example!r}: 'package.module:function')")
    if config["python_path"] and not uses_python(config):
        raise fail("python_path", "applies only to a config with dataset.kind or model.kind "
                   "'python'")
    losses = DATASET_LOSS[kind]
    if config["training"]["loss"] not in losses:
        raise fail("training.loss", f"must be {' or '.join(map(repr, losses))} for dataset kind "
                   f"{kind!r}, got {config['training']['loss']!r}")
    if method == "none" and tune:
        raise fail("algorithm.tune", f"must be empty for method 'none', got {tune!r}")
    if method != "none" and not tune:
        raise fail("algorithm.tune", f"must name at least one hyperparameter for method {method!r}")
    if method in BAYDIN_METHODS and set(tune) - {"lr"}:
        raise fail("algorithm.tune", f"may only contain 'lr' for method {method!r}, got {tune!r}")
    for name in tune:
        if name not in hyper:
            raise fail("algorithm.tune", f"names {name!r}, which rule {config['training']['rule']!r} "
                       f"does not have{closest(name, hyper)} (it has: {', '.join(hyper)})")
    if method != "none" and ESTIMATORS[method].validation and algo["validation"] == "merged":
        raise fail("algorithm.validation", f"must be 'split' for method {method!r}: its "
                   "hypergradient needs a validation set")
    if algo["full_validation"] and algo["validation"] == "merged":
        raise fail("algorithm.full_validation", "needs algorithm.validation: split")
    if method == "unroll" and algo["unroll_steps"] > algo["update_interval"]:
        raise fail("algorithm.unroll_steps", f"({algo['unroll_steps']}) must not exceed "
                   f"algorithm.update_interval ({algo['update_interval']})")
    for name in algo["granularity"]:
        if name not in tune:
            raise fail("algorithm.granularity", f"sets {name!r}, which is not tuned "
                       f"(algorithm.tune: {tune!r})")
    if algo["reset_each_window"] and method != "unroll":
        raise fail("algorithm.reset_each_window", f"needs method 'unroll' (long Diff-through-Opt), "
                   f"got {method!r}")
    if algo["cost_budget"] is not None:
        fixed = ("lr_multiplier", "steps its lr every update_interval updates") if algo["lr_multiplier"] \
            is not None else ("reset_each_window", "restarts every window") if algo["reset_each_window"] else None
        if method not in ("neumann", "cg"):
            raise fail("algorithm.cost_budget", f"needs method 'neumann' or 'cg' (a hyperparameter step "
                       f"that closes a window), got {method!r}")
        if fixed is not None:
            raise fail("algorithm.cost_budget", f"cannot be combined with algorithm.{fixed[0]}, which "
                       f"{fixed[1]}")
    if algo["reset_optimizer_state"] and not algo["reset_each_window"]:
        raise fail("algorithm.reset_optimizer_state", "needs algorithm.reset_each_window: true")
    if algo["lr_multiplier"] is not None and "lr" in tune:
        raise fail("algorithm.lr_multiplier", "cannot be combined with tuning lr")
    if "momentum" in tune and not 0 < hyper["momentum"] < 1:
        raise fail("hyperparameters.momentum", f"must lie strictly between 0 and 1 to be tuned, "
                   f"got {hyper['momentum']!r}")
    if "weight_decay" in tune and not hyper["weight_decay"] > 0:
        raise fail("hyperparameters.weight_decay", f"must be > 0 to be tuned (e.g. 1e-16), "
                   f"got {hyper['weight_decay']!r}")
    if "lr" in tune and not LR_CLIP[0] <= hyper["lr"] <= LR_CLIP[1]:
        raise fail("hyperparameters.lr", f"must lie in [{LR_CLIP[0]}, {LR_CLIP[1]}] to be tuned, "
                   f"got {hyper['lr']!r}")
    for name in tune:
        if name in TRANSFORMS and not TRANSFORMS[name].contains(hyper[name]):
            raise fail(f"hyperparameters.{name}", f"must be {TRANSFORMS[name].domain} to be "
                       f"tuned, got {hyper[name]!r}")
