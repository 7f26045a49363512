"""The config schema: every key with its type, default, check and help line
(:data:`SCHEMA`, :data:`TOP_LEVEL`), the names it draws on (datasets, models,
methods, hyperparameters), and the key lookup and value coercion every layer
goes through. :mod:`onepass.experiment.config` loads and merges layers with it."""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from onepass.core.estimators import ESTIMATORS
from onepass.core.hyperparameters import closest
from onepass.core.rules import RULES
from onepass.core.tuner import HYPER_OPTIMIZERS
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
returns the splits or the model (see :mod:`onepass.experiment.python_targets`)."""

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
                                 choices=tuple(HYPER_OPTIMIZERS)),
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

def describe_schema() -> str:
    """One line per config key with its default: for ``--help``."""
    lines = []
    for head, section in SCHEMA.items():
        for key, spec in section.items():
            lines.append(f"  {head}.{key} = {spec.default!r}  ({spec.doc})")
    for key, spec in TOP_LEVEL.items():
        lines.append(f"  {key} = {spec.default!r}  ({spec.doc})")
    return "\n".join(lines)

def uses_python(config: Mapping) -> bool:
    """Whether a config names your own code (a python dataset or model)."""
    return config["dataset"]["kind"] == PYTHON or config["model"]["kind"] == PYTHON
