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
``python_path``; :mod:`onepass.experiment.python_targets` says what the functions
return). The keys of a kind a config does not use are left out of its
resolved form, so the paper's configs resolve as they always did.

This module merges layers; the schema and key lookup are in
:mod:`~onepass.experiment.config_schema`, the YAML text in
:mod:`~onepass.experiment.config_files`, the checks across keys in
:mod:`~onepass.experiment.config_checks`. Their public names are importable
from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from onepass.core.hyperparameters import closest
from onepass.core.rules import RULES
from onepass.experiment.config_checks import check_consistency
from onepass.experiment.config_files import dump_config, find_config, parse_override, read_config_file
from onepass.experiment.config_schema import (
    ALGORITHMS, CONFIG_DIR, DATASET_KEYS, DATASET_KINDS, DATASETS, EXTRA_ALGORITHMS, HYPERPARAMETERS,
    LR_CLIP, MODEL_KEYS, PYTHON, RANDOM_INIT, SCHEMA, TOP_LEVEL, ConfigError, Field, _check_layer,
    _coerce, _field, describe_schema, hyperparameter_defaults, uses_python,
)

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
    check_consistency(out, layers.sources)
    _drop_unused(out)
    return out


_MISSING = object()


def _absolute(folder: str, base: Path | None = None) -> str:
    """``folder`` as an absolute path (a relative one taken from ``base``, else the
    working directory); not resolved, so a link stays what the config says."""
    path = Path(folder).expanduser()
    return os.path.normpath(path if path.is_absolute() else (base or Path.cwd()).absolute() / path)



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
    if not uses_python(config):
        config.pop("python_path", None)

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

__all__ = [
    "ALGORITHMS", "CONFIG_DIR", "ConfigError", "DATASETS", "DATASET_KINDS", "DATASET_KEYS",
    "EXTRA_ALGORITHMS", "Field", "HYPERPARAMETERS", "LR_CLIP", "MODEL_KEYS", "PYTHON", "SCHEMA",
    "describe_schema", "hyperparameter_defaults",
    "draw_random_initialisation", "dump_config", "find_config", "load_config", "parse_override",
    "read_config_file", "resolve_config",
]
