"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017) from the official IDX gzip files.

Files live at ``<data dir>/fashion_mnist/`` (see :func:`resolve_data_dir`), as
published (still gzipped): ``train-images-idx3-ubyte.gz`` (60,000 × 28 × 28
``uint8``), ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``
(10,000 test images) and ``t10k-labels-idx1-ubyte.gz``; labels are ``0..9``.

The IDX format (LeCun's MNIST page): a big-endian header of a 4-byte magic
number ``0x00 0x00 <type code> <number of dimensions>`` then one big-endian
``uint32`` per dimension, then the values, big-endian, row-major.
"""

from __future__ import annotations

import gzip
import os
import struct
import urllib.error
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from onepass.data.download import download_md5
from onepass.data.paths import require_files, resolve_data_dir
from onepass.data.splits import Splits, class_labels, validation_split

# The GitHub copy (HTTPS) first, then the authors' AWS mirror (HTTP only; the
# MD5 check guards it).
FASHION_MNIST_MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)

# File name -> published MD5 (the fashion-mnist README; torchvision uses the same).
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# IDX type code -> numpy dtype of the big-endian values.
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def parse_idx(content: bytes, source: str = "IDX data") -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file into a native-endian array.

    Raises ``ValueError`` naming ``source`` when the magic number's first two
    bytes are not zero, the type code is unknown, the header is cut short, or
    the payload size differs from the product of the dimensions.
    """
    if len(content) < 4:
        raise ValueError(f"{source}: {len(content)} bytes, too short for an IDX header")
    zero, type_code, n_dims = struct.unpack(">HBB", content[:4])
    magic = int.from_bytes(content[:4], "big")
    if zero != 0:
        raise ValueError(
            f"{source}: bad IDX magic number 0x{magic:08x} (its first two bytes must be zero)"
        )
    if type_code not in _IDX_TYPES:
        raise ValueError(
            f"{source}: bad IDX magic number 0x{magic:08x}: unknown type code 0x{type_code:02x}"
        )
    header = 4 + 4 * n_dims
    if len(content) < header:
        raise ValueError(f"{source}: header of {n_dims} dimensions cut short")
    shape = struct.unpack(f">{n_dims}I", content[4:header])
    dtype = _IDX_TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(content) - header != expected:
        raise ValueError(
            f"{source}: {len(content) - header} bytes of data, expected {expected} bytes "
            f"for shape {shape} of {dtype.name}"
        )
    values = np.frombuffer(content, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzipped (detected from its content) or not; see :func:`parse_idx`."""
    path = Path(path)
    content = path.read_bytes()
    if content[:2] == _GZIP_MAGIC:
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path}: corrupt gzip stream: {error}") from None
    return parse_idx(content, str(path))


def _read_images(path: Path) -> np.ndarray:
    images = read_idx(path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{path}: expected uint8 images of shape (N, rows, columns), "
            f"got {images.dtype} of shape {images.shape}"
        )
    return images


def _read_labels(path: Path, n_images: int) -> np.ndarray:
    labels = read_idx(path)
    if labels.shape != (n_images,) or labels.dtype != np.uint8:
        raise ValueError(
            f"{path}: expected {n_images} uint8 labels (one per image), "
            f"got {labels.dtype} of shape {labels.shape}"
        )
    if labels.size and labels.max() >= len(CLASSES):
        raise ValueError(f"{path}: labels outside 0..{len(CLASSES) - 1}")
    return labels.astype(np.int64)


@dataclass
class FashionMNISTData(Splits):
    """Fashion-MNIST split into train / validation / test.

    Inputs are flattened to ``(N, 784)`` and standardised per pixel with the
    mean and (population) standard deviation of the TRAINING split only
    (``x_mean``, ``x_std`` of shape ``(784,)``, in raw 0–255 units; a pixel
    constant over the training split gets deviation 1). Labels are int64
    ``(N,)`` class indices.
    """

    x_mean: torch.Tensor
    x_std: torch.Tensor

    @property
    def n_inputs(self) -> int:
        """Number of input features (784)."""
        return self.x_train.shape[1]



def fashion_mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the four IDX files: ``<data dir>/fashion_mnist``."""
    return resolve_data_dir(data_dir) / "fashion_mnist"


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    validation_size: int = 10000,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> FashionMNISTData:
    """Load Fashion-MNIST split and standardised as in the protocol.

    The 60,000 training images are permuted with
    ``numpy.random.default_rng(seed)``: the first ``validation_size`` of the
    permutation form the validation set, the rest (50,000 by default) the
    training set, both in permuted order; the 10,000 ``t10k`` images are the
    test set, in file order. Images are flattened row-major and standardised
    per pixel with the training split's statistics (computed in float64, then
    cast to ``dtype``).

    Raises ``FileNotFoundError`` naming the missing file and the command that
    fetches it; ``ValueError`` for a corrupt file (bad magic number, wrong
    shape, images and labels of different counts) or a ``validation_size``
    outside ``[0, number of training images)``.
    """
    folder = fashion_mnist_dir(data_dir)
    require_files([folder / name for name in FASHION_MNIST_FILES], "Fashion-MNIST file",
                  "fashion_mnist")
    x_all = _read_images(folder / "train-images-idx3-ubyte.gz")
    y_all = _read_labels(folder / "train-labels-idx1-ubyte.gz", len(x_all))
    x_test = _read_images(folder / "t10k-images-idx3-ubyte.gz")
    y_test = _read_labels(folder / "t10k-labels-idx1-ubyte.gz", len(x_test))
    if x_test.shape[1:] != x_all.shape[1:]:
        raise ValueError(
            f"test images are {x_test.shape[1:]} but training images {x_all.shape[1:]}"
        )
    train_index, val_index = validation_split(len(x_all), validation_size, seed)
    x_all = x_all.reshape(len(x_all), -1).astype(np.float64)
    x_test = x_test.reshape(len(x_test), -1).astype(np.float64)
    x_train = x_all[train_index]
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    # A pixel constant over the training split maps to exactly 0 (its mean is
    # then its value, with no rounding).
    constant = np.ptp(x_train, axis=0) == 0
    mean[constant] = x_train[0, constant]
    std[constant] = 1.0

    def inputs(rows: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((rows - mean) / std, dtype=dtype)

    return FashionMNISTData(
        x_train=inputs(x_train),
        y_train=class_labels(y_all[train_index]),
        x_val=inputs(x_all[val_index]),
        y_val=class_labels(y_all[val_index]),
        x_test=inputs(x_test),
        y_test=class_labels(y_test),
        x_mean=torch.as_tensor(mean, dtype=dtype),
        x_std=torch.as_tensor(std, dtype=dtype),
    )


def download_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    mirrors: Sequence[str] = FASHION_MNIST_MIRRORS,
    progress: bool = True,
) -> Path:
    """Fetch the four Fashion-MNIST files into ``<data dir>/fashion_mnist``; return that folder.

    Each file is checked against its published MD5 (a mismatch raises
    :class:`~onepass.data.download.MD5ChecksumError` and keeps no bad file) and
    skipped when a verified copy is already there. ``mirrors`` are base URLs
    tried in order while a fetch fails with a network error; the last error
    propagates.
    """
    folder = fashion_mnist_dir(data_dir)
    for name, md5 in FASHION_MNIST_FILES.items():
        for attempt, base in enumerate(mirrors, start=1):
            try:
                download_md5(base + name, folder / name, md5, progress=progress)
                break
            except urllib.error.URLError:
                if attempt == len(mirrors):
                    raise
    return folder


__all__ = [
    "CLASSES",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_MIRRORS",
    "FashionMNISTData",
    "download_fashion_mnist",
    "fashion_mnist_dir",
    "load_fashion_mnist",
    "parse_idx",
    "read_idx",
]
