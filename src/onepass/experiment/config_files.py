"""Config files as text: the shipped folder, YAML in (with ``1e-5`` read as a
float), ``--set key=value`` overrides, and YAML out (a run folder's ``config.yaml``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from onepass.experiment.config_schema import CONFIG_DIR, ConfigError, _check_layer, _did_you_mean

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

def dump_config(config: Mapping) -> str:
    """A resolved config as YAML text (what ``config.yaml`` in a run folder holds)."""
    return yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=None)


def _plain(tree):
    if isinstance(tree, Mapping):
        return {str(k): _plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_plain(v) for v in tree]
    return tree
