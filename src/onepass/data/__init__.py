"""Datasets: where they live, how they are fetched, loaded and split."""

from onepass.data.cifar10 import CIFAR10Data, download_cifar10, load_cifar10
from onepass.data.download import (
    ChecksumError,
    MD5ChecksumError,
    UnsafeArchiveError,
    download,
    download_md5,
    md5sum,
    safe_extract,
    sha256sum,
)
from onepass.data.fashion_mnist import (
    FashionMNISTData,
    download_fashion_mnist,
    load_fashion_mnist,
    read_idx,
)
from onepass.data.paths import DATA_DIR_ENV, PACKAGED_DATA_DIR, DataFileError, resolve_data_dir
from onepass.data.ptb import (
    PTBData,
    Vocabulary,
    batchify,
    download_ptb,
    iter_windows,
    load_ptb,
    n_windows,
)
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
    "CIFAR10Data",
    "ChecksumError",
    "DATA_DIR_ENV",
    "DataFileError",
    "FashionMNISTData",
    "MD5ChecksumError",
    "PACKAGED_DATA_DIR",
    "PTBData",
    "UCIData",
    "UCISpec",
    "UCI_DATASETS",
    "UnsafeArchiveError",
    "Vocabulary",
    "batchify",
    "download",
    "download_md5",
    "download_cifar10",
    "download_fashion_mnist",
    "download_ptb",
    "download_uci",
    "iter_windows",
    "load_cifar10",
    "load_fashion_mnist",
    "load_ptb",
    "load_uci",
    "md5sum",
    "n_windows",
    "read_idx",
    "read_uci_table",
    "resolve_data_dir",
    "safe_extract",
    "sha256sum",
    "uci_path",
]
