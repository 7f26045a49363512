"""Run configurations: a schema, layered YAML loading, ``--set`` overrides.

A run is described by one nested mapping in natural units (the values a
researcher reads in the paper, e.g. ``lr: 0.001``), built from layers::

    config = load_config(["uci_energy", "ours_lr_momentum"],
                         overrides=["hyperparameters.lr=0.01"], random_init=3)

Later layers override earlier ones key by key. Every layer is checked on load:
an unknown key, a value of the wrong type or an impossible value raises
:class:`ConfigError` naming the key and the file it came from (with a "did you
mean" suggestion for misspelt keys). The result of :func:`load_config` and
:func:`resolve_config` is a plain dict with every default filled in; it is what
a run folder's ``config.yaml`` holds and what :func:`onepass.experiment.run.
run_training` takes.

``dataset.kind: python`` and ``model.kind: python`` name your own code
(``target: "package.module:function"``, ``kwargs``, and the top-level
``python_path``; :mod:`onepass.experiment.targets` says what the functions
return). The keys of a kind a config does not use are left out of its
resolved form, so the paper's configs resolve as they always did.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import yaml

from onepass.core.estimators import ESTIMATORS
from onepass.core.hyperparameters import TRANSFORMS, closest
from onepass.core.rules import RULES
from onepass.data.uci import UCI_DATASETS
from onepass.experiment import algorithms as _algorithms

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
"""The folder of the shipped config files (``src/onepass/configs``)."""

ALGORITHMS = _algorithms.names(kind="main")
"""Names of the shipped algorithm configs of the paper's experiments (``configs/<name>.yaml``),
from :data:`onepass.experiment.algorithms.TABLE`."""

EXTRA_ALGORITHMS = _algorithms.names(kind="variant")
"""Shipped algorithm configs beyond the main table: long Diff-through-Opt, whose
windows (``update_interval = unroll_steps = N``) are far longer than a short run,
and ``baydin_exact`` (Baydin with the exact derivative through the momentum update)."""

PYTHON = "python"
"""The ``dataset.kind`` and ``model.kind`` of a user's own code: ``target``
(``"package.module:function"``) and ``kwargs`` name a Python callable that
returns the splits or the model (see :mod:`onepass.experiment.targets`)."""

DATASET_KINDS = ("uci", "fashion_mnist", "penn_treebank", "cifar10", PYTHON)
"""Dataset families (``dataset.kind``); each is a task of :mod:`onepass.experiment.tasks`."""

DATASETS = tuple(f"uci_{name}" for name in UCI_DATASETS) + tuple(
    kind for kind in DATASET_KINDS[1:] if kind != PYTHON)
"""Names of the shipped dataset configs (``configs/<name>.yaml``)."""

MODEL_KEYS = {"mlp": ("hidden", "batch_norm"),
              "lstm": ("embedding_dim", "hidden_dim", "num_layers", "dropout", "tie_weights"),
              "resnet18": ("width",),
              PYTHON: ("target", "kwargs")}
"""The ``model.*`` keys that apply to each ``model.kind``."""
# The model kind(s) each dataset family can train, and the losses it allows (the
# first is its own). Your own model (kind python) trains on every (x, y) family.
DATASET_MODELS = {"uci": ("mlp", PYTHON), "fashion_mnist": ("mlp", PYTHON),
                  "penn_treebank": ("lstm",), "cifar10": ("resnet18", PYTHON),
                  PYTHON: (PYTHON, "mlp")}
DATASET_LOSS = {"uci": ("mse",), "fashion_mnist": ("cross_entropy",),
                "penn_treebank": ("cross_entropy",), "cifar10": ("cross_entropy",),
                PYTHON: ("mse", "cross_entropy")}
DATASET_KEYS = {PYTHON: ("target", "kwargs")}
"""``dataset.*`` keys that apply to one ``dataset.kind`` only (and are left out
of the resolved config of the others, as ``model.target`` / ``model.kwargs`` and
``python_path`` are left out of a config that names no target)."""

METHODS = ("none", *ESTIMATORS)
"""``none`` (fixed hyperparameters) and every registered estimator."""
BAYDIN_METHODS = tuple(name for name, estimator in ESTIMATORS.items() if estimator.tunable == ("lr",))
HYPERPARAMETERS = tuple(dict.fromkeys(name for rule in RULES.values() for name in rule.defaults))
"""Every hyperparameter name of some update rule (:data:`onepass.core.rules.RULES`); a
config's ``hyperparameters`` section holds those of its ``training.rule``."""
RANDOM_INIT = ("lr", "weight_decay", "momentum")
"""What ``--random-init`` draws (for the names the rule has)."""
LR_CLIP = (1e-10, 1.0)


class ConfigError(ValueError):
    """A config that cannot be run; the message names the key and its source."""


# ------------------------------------------------------------------ schema

@dataclass(frozen=True)
class Field:
    """One config value: its type, default, and the checks it must pass.

    ``kind`` is one of ``int``, ``float``, ``bool``, ``str``, ``int_list``,
    ``str_list``, ``str_map`` (names to strings) or ``mapping`` (names to any
    YAML values). ``check`` returns an error text or ``None``.
    """

    kind: str
    default: Any
    doc: str
    choices: tuple | None = None
    nullable: bool = False
    check: Callable[[Any], str | None] | None = None


def _at_least(low):
    return lambda v: None if v >= low else f"must be ≥ {low}, got {v!r}"


def _positive(v):
    return None if math.isfinite(v) and v > 0 else f"must be a finite number > 0, got {v!r}"


def _non_negative(v):
    return None if math.isfinite(v) and v >= 0 else f"must be a finite number ≥ 0, got {v!r}"


def _widths(v):
    return None if all(w >= 1 for w in v) else f"every width must be ≥ 1, got {v!r}"


def _tunable(v):
    bad = [n for n in v if n not in HYPERPARAMETERS]
    if bad:
        return (f"cannot tune {bad[0]!r}{_did_you_mean(bad[0], HYPERPARAMETERS)} "
                f"(hyperparameters: {', '.join(HYPERPARAMETERS)})")
    if len(set(v)) != len(v):
        return f"lists a hyperparameter twice: {v!r}"
    return None


def _granularity(v):
    for name, kind in v.items():
        if name not in HYPERPARAMETERS:
            return f"unknown hyperparameter {name!r}{_did_you_mean(name, HYPERPARAMETERS)}"
        if kind not in ("scalar", "tensor", "weight"):
            return f"{name}: granularity must be one of scalar, tensor, weight, got {kind!r}"
    return None


TARGET_FORMAT = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _target(v):
    return None if TARGET_FORMAT.match(v) else (
        f"must be 'package.module:function' (a module Python can import, a colon, a callable "
        f"in it), got {v!r}")


def _dataset_name(v):
    return None if v and "/" not in v and v not in (".", "..") else \
        f"must be a non-empty name without '/', got {v!r}"


def _unit_interval(v):
    return None if 0 <= v < 1 else f"must lie in [0, 1), got {v!r}"


SIGMOID_HALF = 1.0 / (1.0 + math.exp(-0.5))  # the protocol's placeholder momentum, sigmoid(0.5)
PLACEHOLDERS = {"momentum": SIGMOID_HALF, "weight_decay": 1e-16}
"""The protocol's starting values for a hyperparameter whose rule default is 0 (a
value its transformed space cannot hold, so it could not be tuned)."""
_HYPER_CHECKS = {"lr": _positive, "eps": _positive, "weight_decay": _non_negative}


def hyperparameter_defaults(rule: str) -> dict[str, float]:
    """The ``hyperparameters`` section's defaults for ``rule``: the rule's own
    (:data:`onepass.core.rules.RULES`), a 0 replaced by :data:`PLACEHOLDERS`."""
    defaults = dict(RULES[rule].defaults)
    return {k: PLACEHOLDERS[k] if v == 0 and k in PLACEHOLDERS else float(v)
            for k, v in defaults.items()}

SCHEMA: dict[str, dict[str, Field]] = {
    "dataset": {
        "kind": Field("str", "uci", "dataset family", choices=DATASET_KINDS),
        "name": Field("str", None, "dataset name (a UCI set; python: your name for it; else the "
                      "kind)", check=_dataset_name),
        "shuffle_seed": Field("int", None, "permute the rows with this seed before splitting "
                              "(null keeps the file's order)", nullable=True),
        "validation_size": Field("int", None, "fashion_mnist / cifar10: held-out validation "
                                 "images (null: 10000 / 5000)", nullable=True, check=_at_least(1)),
        "bptt": Field("int", 70, "penn_treebank: tokens per window (truncated BPTT length)",
                      check=_at_least(1)),
        "target": Field("str", None, "python: 'package.module:function' returning the splits "
                        "{'train': (x, y), 'val': (x, y), 'test': (x, y)}", nullable=True,
                        check=_target),
        "kwargs": Field("mapping", {}, "python: keyword arguments of dataset.target"),
    },
    "model": {
        "kind": Field("str", "mlp", "model family", choices=tuple(MODEL_KEYS)),
        "hidden": Field("int_list", [50], "mlp: hidden layer widths", check=_widths),
        "batch_norm": Field("bool", False, "mlp: BatchNorm after each hidden layer"),
        "embedding_dim": Field("int", 650, "lstm: embedding width", check=_at_least(1)),
        "hidden_dim": Field("int", 650, "lstm: units per LSTM layer", check=_at_least(1)),
        "num_layers": Field("int", 2, "lstm: stacked LSTM layers", check=_at_least(1)),
        "dropout": Field("float", 0.5, "lstm: dropout probability",
                         check=lambda v: None if 0 <= v < 1 else f"must lie in [0, 1), got {v!r}"),
        "tie_weights": Field("bool", False, "lstm: share the embedding and decoder weights"),
        "width": Field("int", 64, "resnet18: channels of the first stage (64 in the paper)",
                       check=_at_least(1)),
        "target": Field("str", None, "python: 'package.module:function' returning a "
                        "torch.nn.Module", nullable=True, check=_target),
        "kwargs": Field("mapping", {}, "python: keyword arguments of model.target"),
    },
    "training": {
        "rule": Field("str", "sgd", "weight-update rule (its hyperparameters make the "
                      "hyperparameters section)", choices=tuple(RULES)),
        "steps": Field("int", 4000, "weight updates", check=_at_least(1)),
        "batch_size": Field("int", None, "training batch size (null: full batch)", nullable=True,
                            check=_at_least(1)),
        "loss": Field("str", "mse", "training loss (uci: mse; python: either; else "
                      "cross_entropy)",
                      choices=("mse", "cross_entropy")),
        "max_grad_norm": Field("float", None, "clip the training gradient to this joint 2-norm "
                               "inside the update (penn_treebank: 0.25)", nullable=True,
                               check=_positive),
        "compile": Field("bool", False, "compile the gradient of undifferentiated steps with "
                         "torch.compile (faster long runs of small models; seconds to compile)"),
    },
    "hyperparameters": {  # one key per name of the rule: see hyperparameter_defaults
        name: Field("float", None, f"initial {name} (default: the rule's; sgd's momentum "
                    "sigmoid(0.5) and weight_decay 1e-16)", nullable=True,
                    check=_HYPER_CHECKS.get(name, _unit_interval))
        for name in HYPERPARAMETERS
    },
    "algorithm": {
        "name": Field("str", "custom", "algorithm name (used in run folder names)"),
        "method": Field("str", "none", "hypergradient method", choices=METHODS),
        "tune": Field("str_list", [], "hyperparameters to tune", check=_tunable),
        "granularity": Field("str_map", {}, "per tuned name: scalar, tensor or weight",
                             check=_granularity),
        "neumann_terms": Field("int", 5, "Neumann series terms K", check=_at_least(1)),
        "unroll_steps": Field("int", 5, "updates differentiated through (unroll)", check=_at_least(1)),
        "update_interval": Field("int", 10, "weight updates per hyperparameter update",
                                 check=_at_least(1)),
        "cost_budget": Field("float", None, "wall-clock accepted as a multiple of the plain "
                             "updates' (e.g. 1.5): the run times its first windows, then fixes a "
                             "longer update_interval if needed (null: update_interval throughout)",
                             nullable=True, check=lambda v: None if math.isfinite(v) and v > 1 else
                             f"must be a finite number > 1, got {v!r}"),
        "hyper_optimizer": Field("str", "adam", "optimiser of the raw hyperparameters",
                                 choices=("adam", "sgd")),
        "hyper_lr": Field("float", 0.05, "learning rate of the hyper-optimiser", check=_positive),
        "validation": Field("str", "split", "split: hold out the validation set; merged: train on "
                            "train+val", choices=("split", "merged")),
        "full_validation": Field("bool", False, "validation loss on the whole validation set at "
                                 "each log step"),
        "lr_multiplier": Field("float", None, "multiply lr by this after every window of "
                               "update_interval updates (clipped to [1e-10, 1])", nullable=True,
                               check=_positive),
        "reset_each_window": Field("bool", False, "restore the initial weights and optimiser state "
                                   "at the start of every window (long Diff-through-Opt: "
                                   "Standalone, Full)"),
        "reset_optimizer_state": Field("bool", False, "with reset_each_window: also reset the "
                                       "optimiser state (momentum buffer); false follows the "
                                       "reference code, which carries it over"),
    },
    "logging": {
        "interval": Field("int", 10, "updates between log steps", check=_at_least(1)),
        "checkpoint_interval": Field("int", 1000, "updates between checkpoints (rounded up to a "
                                     "multiple of update_interval)", check=_at_least(1)),
        "tensorboard": Field("bool", True, "write TensorBoard event files"),
    },
}
TOP_LEVEL: dict[str, Field] = {
    "seed": Field("int", 0, "seed of the model initialisation and batch order", check=_at_least(0)),
    "python_path": Field("str_list", [], "folders put on sys.path before importing a "
                         "dataset.target / model.target (relative to the config file that "
                         "lists them)"),
}


# ------------------------------------------------------------- YAML input

class _Loader(yaml.SafeLoader):
    """YAML 1.1 loader that also reads ``1e-5`` (no dot) as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from None


def find_config(name: str | Path) -> Path:
    """The file for ``name``: a path, or a bare shipped name such as ``uci_energy``."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.parent == Path(".") and path.suffix in ("", ".yaml", ".yml"):
        shipped = CONFIG_DIR / f"{path.stem}.yaml"
        if shipped.is_file():
            return shipped
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"config file {str(name)!r} not found (neither a file nor a shipped config"
                          f"{_did_you_mean(path.stem, known)}; shipped: {', '.join(known)})")
    raise ConfigError(f"config file {str(name)!r} not found")


def read_config_file(name: str | Path) -> tuple[dict, str]:
    """Read one config layer (checked for unknown keys and types); returns it and its source label."""
    path = find_config(name)
    source = str(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{source}: cannot read: {error.strerror}") from None
    data = _parse_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config file must be a mapping of sections, "
                          f"got {type(data).__name__}")
    _check_layer(data, source)
    return data, source


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``"hyperparameters.lr=1e-3"`` → ``(("hyperparameters", "lr"), 0.001)``. The value is YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected key.path=value, e.g. hyperparameters.lr=0.001")
    path = tuple(key.split("."))
    if any(not part for part in path):
        raise ConfigError(f"--set {text!r}: empty part in key {key!r}")
    parsed = _parse_yaml(value, f"--set {key}") if value.strip() else None
    return path, parsed


# ---------------------------------------------------------------- checking

MOVED = {("algorithm", "rule"): "training.rule"}
"""Keys that moved: an old config gets their new place in its error."""


def _did_you_mean(name, choices) -> str:
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _unknown_key(key, where: str, choices, source: str) -> ConfigError:
    return ConfigError(f"{source}: unknown key {where}{key!r}{_did_you_mean(key, choices)}; "
                       f"valid keys: {', '.join(choices)}")


def _field(path: Sequence[str], source: str) -> Field:
    """The schema field at ``path`` (a section and a key, or a top-level key)."""
    top = {**SCHEMA, **TOP_LEVEL}
    head = path[0]
    if head not in top:
        raise _unknown_key(head, "", list(top), source)
    if head in TOP_LEVEL:
        if len(path) > 1:
            raise ConfigError(f"{source}: {head!r} is a value, not a section")
        return TOP_LEVEL[head]
    if len(path) == 1:
        raise ConfigError(f"{source}: {head!r} is a section; give a key such as "
                          f"{head}.{next(iter(SCHEMA[head]))}")
    section = SCHEMA[head]
    if head == "hyperparameters" and path[1] not in section:
        raise ConfigError(f"{source}: unknown hyperparameter {path[1]!r}"
                          f"{closest(str(path[1]), HYPERPARAMETERS)} (the rules have: "
                          f"{', '.join(HYPERPARAMETERS)})")
    if (head, path[1]) in MOVED:
        raise ConfigError(f"{source}: {head}.{path[1]} is now {MOVED[head, path[1]]}")
    if path[1] not in section:
        raise _unknown_key(path[1], f"in section {head!r}: ", list(section), source)
    if len(path) > 2 and section[path[1]].kind not in ("str_map", "mapping"):
        raise ConfigError(f"{source}: {'.'.join(path[:2])} is a value, not a section")
    return section[path[1]]


def _coerce(value: Any, spec: Field, key: str, source: str) -> Any:
    """Check ``value`` against ``spec``; returns it normalised (ints to floats etc.)."""
    def fail(message: str) -> ConfigError:
        return ConfigError(f"{source}: {key} {message}")

    if value is None:
        if spec.nullable:
            return None
        raise fail("is required" if spec.default is None else "must not be null")
    kind = spec.kind
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"must be a number, got {value!r} ({type(value).__name__})")
        value = float(value)
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"must be an integer, got {value!r} ({type(value).__name__})")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise fail(f"must be true or false, got {value!r} ({type(value).__name__})")
    elif kind == "str":
        if not isinstance(value, str):
            raise fail(f"must be a string, got {value!r} ({type(value).__name__})")
    elif kind in ("int_list", "str_list"):
        item = int if kind == "int_list" else str
        if isinstance(value, item) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, item)
                                              for v in value):
            raise fail(f"must be a list of {'integers' if item is int else 'strings'}, got {value!r}")
        value = list(value)
    elif kind == "str_map":
        if not isinstance(value, dict) or any(not isinstance(k, str) or not isinstance(v, str)
                                              for k, v in value.items()):
            raise fail(f"must be a mapping of names to strings, got {value!r}")
        value = dict(value)
    elif kind == "mapping":
        if not isinstance(value, dict) or any(not isinstance(k, str) for k in value):
            raise fail(f"must be a mapping of names to values, got {value!r}")
        value = dict(value)
    if spec.choices is not None and value not in spec.choices:
        raise fail(f"must be one of {', '.join(map(str, spec.choices))}, got {value!r}"
                   f"{_did_you_mean(value, spec.choices)}")
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            raise fail(problem)
    return value


def _check_layer(data: Mapping, source: str) -> None:
    """Check one layer's keys and value types (not cross-key consistency)."""
    for head, body in data.items():
        head = str(head)
        if head in TOP_LEVEL:
            _coerce(body, TOP_LEVEL[head], head, source)
            continue
        if head not in SCHEMA:
            raise _unknown_key(head, "", [*SCHEMA, *TOP_LEVEL], source)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: section {head!r} must be a mapping of keys to values, "
                              f"got {body!r}")
        for key, value in body.items():
            spec = _field((head, str(key)), source)
            _coerce(value, spec, f"{head}.{key}", source)


# ----------------------------------------------------------------- merging

class _Layers:
    """The merged raw values and, per key, the source that set it last."""

    def __init__(self):
        self.values: dict = {}
        self.sources: dict[tuple[str, ...], str] = {}

    def add(self, data: Mapping, source: str) -> None:
        for head, body in data.items():
            if head in TOP_LEVEL:
                self.set((head,), body, source)
            elif body is not None:
                for key, value in body.items():
                    self.set((head, key), value, source)

    def set(self, path: tuple[str, ...], value: Any, source: str) -> None:
        _field(path, source)
        if len(path) == 3:  # one entry of a mapping-valued field, e.g. algorithm.granularity.lr
            mapping = dict(self.get(path[:2]) or {})
            if value is None:
                mapping.pop(path[2], None)
            else:
                mapping[path[2]] = value
            path, value = path[:2], mapping
        _coerce(value, _field(path, source), ".".join(path), source)
        node = self.values
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
        self.sources[path] = source

    def get(self, path: tuple[str, ...], default=None):
        node = self.values
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def load_config(
    files: Iterable[str | Path] = (),
    overrides: Iterable[str | tuple[Sequence[str], Any]] = (),
    *,
    random_init: int | None = None,
    base: Mapping | None = None,
) -> dict:
    """Build a resolved config from layers, later ones winning.

    Order: ``base`` (a resolved config, e.g. from a checkpoint), then each file
    (a path or a shipped name such as ``"uci_energy"``), then the random
    initialisation drawn by :func:`draw_random_initialisation(random_init)
    <draw_random_initialisation>` (hyperparameters, and ``lr_multiplier`` if the
    algorithm has one), then ``overrides`` (``"key.path=value"`` strings or
    ``(path, value)`` pairs). Raises :class:`ConfigError`.
    """
    layers = _Layers()
    if base is not None:
        if not isinstance(base, Mapping):
            raise ConfigError(f"base config must be a mapping, got {type(base).__name__}")
        _check_layer(base, "<base config>")
        layers.add(base, "<base config>")
    for name in files:
        data, source = read_config_file(name)
        if data.get("python_path") is not None:  # relative to the file that lists them
            folders = _coerce(data["python_path"], TOP_LEVEL["python_path"], "python_path", source)
            data = {**data, "python_path": [_absolute(f, Path(source).parent) for f in folders]}
        layers.add(data, source)
    overrides = [parse_override(item) if isinstance(item, str) else (tuple(item[0]), item[1])
                 for item in overrides]
    if random_init is not None:
        source = f"--random-init {random_init}"
        drawn = draw_random_initialisation(random_init)
        rules = [value for path, value in overrides if tuple(path) == ("training", "rule")]
        rule = (rules or [layers.get(("training", "rule")) or SCHEMA["training"]["rule"].default])[-1]
        for key in (k for k in RANDOM_INIT if k in RULES.get(rule, RULES["sgd"]).defaults):
            layers.set(("hyperparameters", key), drawn[key], source)
        if layers.get(("algorithm", "lr_multiplier")) is not None:
            layers.set(("algorithm", "lr_multiplier"), drawn["lr_multiplier"], source)
    for path, value in overrides:
        layers.set(tuple(path), value, f"--set {'.'.join(path)}")
    return _resolve(layers)


def resolve_config(config: Mapping, source: str = "<config>") -> dict:
    """Check a config mapping and fill in every default (idempotent)."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{source}: a config must be a mapping, got {type(config).__name__}")
    _check_layer(config, source)
    layers = _Layers()
    layers.add(config, source)
    return _resolve(layers)


def _resolve(layers: _Layers) -> dict:
    out: dict = {}
    for head, section in SCHEMA.items():
        out[head] = {}
        if head == "hyperparameters":
            continue  # after the algorithm section: the rule decides its keys
        for key, spec in section.items():
            path = (head, key)
            value = layers.get(path, _MISSING)
            source = layers.sources.get(path, "defaults")
            if value is _MISSING and spec.default is None and not spec.nullable:
                if (head, key) == ("dataset", "name") and out["dataset"]["kind"] == PYTHON:
                    raise ConfigError("dataset.name is required for dataset kind 'python' (your "
                                      "name for the data: run records and the report use it)")
                raise ConfigError(f"{head}.{key} is required (for dataset.name give a dataset "
                                  "config such as configs/uci_energy.yaml)")
            if value is _MISSING:
                value = list(spec.default) if isinstance(spec.default, list) else (
                    dict(spec.default) if isinstance(spec.default, dict) else spec.default)
            out[head][key] = _coerce(value, spec, f"{head}.{key}", source)
    rule = out["training"]["rule"]
    defaults = hyperparameter_defaults(rule)
    for key, spec in SCHEMA["hyperparameters"].items():
        path = ("hyperparameters", key)
        value = layers.get(path)
        source = layers.sources.get(path, "defaults")
        if key not in defaults:
            if value is not None:
                raise ConfigError(f"{source}: hyperparameters.{key} is not a hyperparameter of "
                                  f"rule {rule!r}{closest(key, defaults)} (it has: "
                                  f"{', '.join(defaults)})")
            continue
        out["hyperparameters"][key] = _coerce(defaults[key] if value is None else value, spec,
                                              f"hyperparameters.{key}", source)
    for key, spec in TOP_LEVEL.items():
        value = layers.get((key,), spec.default)
        out[key] = _coerce(value, spec, key, layers.sources.get((key,), "defaults"))
    out["python_path"] = [_absolute(folder) for folder in out["python_path"]]
    _check_consistency(out, layers.sources)
    _drop_unused(out)
    return out


_MISSING = object()


def _absolute(folder: str, base: Path | None = None) -> str:
    """``folder`` as an absolute path (a relative one taken from ``base``, else the
    working directory); not resolved, so a link stays what the config says."""
    path = Path(folder).expanduser()
    return os.path.normpath(path if path.is_absolute() else (base or Path.cwd()).absolute() / path)


def _uses_python(config: Mapping) -> bool:
    return config["dataset"]["kind"] == PYTHON or config["model"]["kind"] == PYTHON


def _drop_unused(config: dict) -> None:
    """Leave out the keys of kinds a config does not use (``dataset.target`` and
    ``dataset.kwargs`` unless ``dataset.kind`` is python, ``model.target`` and
    ``model.kwargs`` unless ``model.kind`` is, ``python_path`` unless either is),
    so the paper's configs (run folders, sweep manifests) read as before."""
    dataset_kind, model_kind = config["dataset"]["kind"], config["model"]["kind"]
    for kind, keys in DATASET_KEYS.items():
        if kind != dataset_kind:
            for key in keys:
                config["dataset"].pop(key, None)
    for key in MODEL_KEYS[PYTHON]:
        if model_kind != PYTHON:
            config["model"].pop(key, None)
    if not _uses_python(config):
        config.pop("python_path", None)


def _check_consistency(config: dict, sources: Mapping[tuple[str, ...], str]) -> None:
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
    if config["python_path"] and not _uses_python(config):
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


# ------------------------------------------------------------ other helpers

def draw_random_initialisation(seed: int) -> dict[str, float]:
    """The paper's random initialisation for ``seed`` (natural units).

    ``lr = 10^U(-6,-1)``, ``weight_decay = 10^U(-7,-2)``, ``momentum = U(0,1)``
    and the stepped-lr multiplier ``U(0.95, 1.01)``, drawn in that order from
    ``numpy.random.default_rng(seed)``.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"--random-init must be a non-negative integer seed, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    lr = 10.0 ** rng.uniform(-6.0, -1.0)
    weight_decay = 10.0 ** rng.uniform(-7.0, -2.0)
    momentum = rng.uniform(0.0, 1.0)
    if momentum == 0.0:  # measure zero, but tuning needs 0 < momentum
        momentum = float(np.nextafter(0.0, 1.0))
    lr_multiplier = rng.uniform(0.95, 1.01)
    return {"lr": float(lr), "weight_decay": float(weight_decay), "momentum": float(momentum),
            "lr_multiplier": float(lr_multiplier)}


def dump_config(config: Mapping) -> str:
    """A resolved config as YAML text (what ``config.yaml`` in a run folder holds)."""
    return yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=None)


def _plain(tree):
    if isinstance(tree, Mapping):
        return {str(k): _plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_plain(v) for v in tree]
    return tree


def describe_schema() -> str:
    """One line per config key with its default: for ``--help``."""
    lines = []
    for head, section in SCHEMA.items():
        for key, spec in section.items():
            lines.append(f"  {head}.{key} = {spec.default!r}  ({spec.doc})")
    for key, spec in TOP_LEVEL.items():
        lines.append(f"  {key} = {spec.default!r}  ({spec.doc})")
    return "\n".join(lines)


__all__ = [
    "ALGORITHMS", "CONFIG_DIR", "ConfigError", "DATASETS", "DATASET_KINDS", "DATASET_KEYS",
    "EXTRA_ALGORITHMS", "Field", "HYPERPARAMETERS", "MODEL_KEYS", "PYTHON", "SCHEMA",
    "describe_schema", "hyperparameter_defaults",
    "draw_random_initialisation", "dump_config", "find_config", "load_config", "parse_override",
    "read_config_file", "resolve_config",
]
