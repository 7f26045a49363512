"""Datasets: where they live, how they are fetched, loaded and split."""

from onepass.data.download import (
    ChecksumError,
    UnsafeArchiveError,
    download,
    safe_extract,
    sha256sum,
)
from onepass.data.paths import DATA_DIR_ENV, resolve_data_dir
from onepass.data.uci import (
    UCI_DATASETS,
    UCIData,
    UCISpec,
    download_uci,
    load_uci,
    read_uci_table,
    uci_path,
)

__all__ = [
    "ChecksumError",
    "DATA_DIR_ENV",
    "UCIData",
    "UCISpec",
    "UCI_DATASETS",
    "UnsafeArchiveError",
    "download",
    "download_uci",
    "load_uci",
    "read_uci_table",
    "resolve_data_dir",
    "safe_extract",
    "sha256sum",
    "uci_path",
]
