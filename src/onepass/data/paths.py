"""Where datasets live on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

DATA_DIR_ENV = "ONEPASS_DATA_DIR"

PACKAGED_DATA_DIR = Path(__file__).resolve().parent / "files"
"""The data shipped inside the package, laid out as a data directory: the eight
UCI regression sets as ``uci/<name>.txt.gz`` (sources in ``uci/DATA_NOTICE.md``).
Loaders fall back to it for files the data directory lacks (only UCI is shipped)."""

DATA_DIR_RULES = (
    "the data directory is the --data-dir / data_dir argument if given, "
    f"else ${DATA_DIR_ENV} if set, else $XDG_CACHE_HOME/onepass "
    "(default ~/.cache/onepass)"
)


class DataFileError(ValueError):
    """A data file that exists but does not hold the expected table.

    The message is one line: ``corrupt <what> <path>[, row R[, column C]]:
    <problem>``, rows and columns counted from 1 (the row is the file's line
    number). ``path``, ``row`` and ``column`` (``None`` when unknown) and
    ``problem`` are kept as attributes.
    """

    def __init__(self, path: str | os.PathLike, problem: str, *, row: int | None = None,
                 column: int | None = None, what: str = "data file"):
        self.path = Path(path)
        self.problem = " ".join(str(problem).split())
        self.row = row
        self.column = column
        where = ""
        if row is not None:
            where = f", row {row}" + ("" if column is None else f", column {column}")
        super().__init__(f"corrupt {what} {path}{where}: {self.problem}")


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the root folder of the datasets.

    Resolution order: the explicit ``data_dir`` argument, else the environment
    variable ``ONEPASS_DATA_DIR``, else the user cache folder
    ``$XDG_CACHE_HOME/onepass`` (``~/.cache/onepass`` when XDG_CACHE_HOME is
    unset or empty). ``~`` is expanded; the folder is not created. Datasets sit
    in sub-folders by family, e.g. ``<data dir>/uci/<name>.txt``. The UCI
    loader falls back to :data:`PACKAGED_DATA_DIR` for a set this folder lacks.
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
