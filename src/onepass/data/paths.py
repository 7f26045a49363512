"""Where datasets live on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

DATA_DIR_ENV = "ONEPASS_DATA_DIR"

DATA_DIR_RULES = (
    "the data directory is the --data-dir / data_dir argument if given, "
    f"else ${DATA_DIR_ENV} if set, else $XDG_CACHE_HOME/onepass "
    "(default ~/.cache/onepass)"
)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the root folder of the datasets.

    Resolution order: the explicit ``data_dir`` argument, else the environment
    variable ``ONEPASS_DATA_DIR``, else the user cache folder
    ``$XDG_CACHE_HOME/onepass`` (``~/.cache/onepass`` when XDG_CACHE_HOME is
    unset or empty). ``~`` is expanded; the folder is not created. Datasets sit
    in sub-folders by family, e.g. ``<data dir>/uci/<name>.txt``.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home).expanduser() / "onepass"


def require_files(paths: Iterable[Path], what: str, command: str) -> None:
    """Raise ``FileNotFoundError`` for the first of ``paths`` that is not a file,
    naming it (as ``what``), the data directory rules and the download command."""
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"{what} not found at {path}; {DATA_DIR_RULES}. "
                f"Fetch it with `onepass download {command}` "
                f"(or `onepass download {command} --data-dir DIR`)."
            )
