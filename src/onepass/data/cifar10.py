"""CIFAR-10 (Krizhevsky, 2009) from the official "python version" pickles.

Files live at ``<data dir>/cifar10/cifar-10-batches-py/`` (see
:func:`resolve_data_dir`): ``data_batch_1`` … ``data_batch_5`` (the 50,000
training images) and ``test_batch`` (10,000 test images). Each is a Python
pickle of a dict whose ``b"data"`` is a ``uint8`` array of shape ``(N, 3072)``
(the red, green then blue 32×32 planes of each image, row-major) and whose
``b"labels"`` is a list of ``N`` integers in ``0..9``.

The archive is checked with its published MD5
(:func:`onepass.data.download.download_md5`).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from onepass.data.download import download_md5, safe_extract
from onepass.data.paths import require_files, resolve_data_dir
from onepass.data.splits import Splits, class_labels, validation_split

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only, never arbitrary objects.

    A pickle can run any callable it names; a downloaded one is untrusted, so
    only the globals numpy needs to rebuild an array are resolved
    (``_codecs.encode`` turns the array bytes of a Python 3 protocol-2 pickle
    back into ``bytes``).
    """

    _ALLOWED = {
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 pickle")
        return super().find_class(module, name)


def read_cifar10_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 pickle into ``uint8`` images ``(N, 3, 32, 32)`` and int64 labels ``(N,)``.

    Accepts the original Python 2 pickles (byte-string keys) and Python 3 ones
    with ``str`` keys. Raises ``ValueError`` naming the file when it is not a
    pickle of the expected dict, when ``data`` is not ``uint8`` of width 3072,
    or when the label count or range is wrong.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as error:
        raise ValueError(f"corrupt CIFAR-10 batch {path}: {error}") from None
    if not isinstance(batch, dict):
        raise ValueError(f"corrupt CIFAR-10 batch {path}: expected a dict, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"corrupt CIFAR-10 batch {path}: keys {sorted(batch)} lack 'data' or 'labels'")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"corrupt CIFAR-10 batch {path}: data is {data.dtype} of shape {data.shape}, "
            "expected uint8 of shape (N, 3072)"
        )
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"corrupt CIFAR-10 batch {path}: {labels.size} labels for {data.shape[0]} images"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(f"corrupt CIFAR-10 batch {path}: labels outside 0..{len(CLASSES) - 1}")
    return data.reshape(-1, 3, 32, 32), labels


@dataclass
class CIFAR10Data(Splits):
    """CIFAR-10 split into train / validation / test, standardised per channel.

    Images are ``(N, 3, 32, 32)`` floats: pixels scaled to ``[0, 1]`` then
    standardised with the per-channel mean and (population) standard deviation
    of the TRAINING split only (``mean`` and ``std``, shape ``(3,)``, in the
    ``[0, 1]`` scale). Labels are int64 of shape ``(N,)``.
    """

    mean: torch.Tensor
    std: torch.Tensor



def cifar10_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding the extracted batches: ``<data dir>/cifar10/cifar-10-batches-py``."""
    return resolve_data_dir(data_dir) / "cifar10" / CIFAR10_FOLDER


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    validation_size: int = 5000,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
) -> CIFAR10Data:
    """Load CIFAR-10 split and standardised as in the protocol.

    The training batches (50,000 images) are permuted with
    ``numpy.random.default_rng(seed)``: the first ``validation_size`` images of
    the permutation form the validation set, the rest (45,000 by default) the
    training set, both in permuted order. ``test_batch`` is the test set, in
    file order. Pixels are divided by 255, then each channel is standardised
    with the training split's mean and standard deviation (a constant channel
    gets deviation 1). The statistics are exact (float64); the images are
    scaled and standardised in ``dtype``.

    Raises ``FileNotFoundError`` naming the missing file and the command that
    fetches it, ``ValueError`` for a corrupt batch or a ``validation_size``
    outside ``[0, number of training images)``.
    """
    folder = cifar10_dir(data_dir)
    require_files([folder / name for name in (*TRAIN_BATCHES, TEST_BATCH)], "CIFAR-10 batch",
                  "cifar10")
    train = [read_cifar10_batch(folder / name) for name in TRAIN_BATCHES]
    x_all = np.concatenate([x for x, _ in train])
    y_all = np.concatenate([y for _, y in train])
    x_test, y_test = read_cifar10_batch(folder / TEST_BATCH)
    train_index, val_index = validation_split(len(x_all), validation_size, seed)

    # Exact per-channel moments from the histogram of the 256 pixel levels:
    # no float copy of the training images is needed.
    train_pixels = x_all[train_index]
    levels = np.arange(256) / 255.0
    counts = np.stack([np.bincount(train_pixels[:, c].ravel(), minlength=256) for c in range(3)])
    mean = counts @ levels / counts.sum(axis=1)
    std = np.sqrt((counts * (levels - mean[:, None]) ** 2).sum(axis=1) / counts.sum(axis=1))
    std[std == 0] = 1.0
    mean_t = torch.as_tensor(mean, dtype=dtype)
    std_t = torch.as_tensor(std, dtype=dtype)

    def images(pixels: np.ndarray) -> torch.Tensor:
        scaled = torch.from_numpy(np.ascontiguousarray(pixels)).to(dtype).div_(255.0)
        return scaled.sub_(mean_t[:, None, None]).div_(std_t[:, None, None])

    return CIFAR10Data(
        x_train=images(train_pixels),
        y_train=class_labels(y_all[train_index]),
        x_val=images(x_all[val_index]),
        y_val=class_labels(y_all[val_index]),
        x_test=images(x_test),
        y_test=class_labels(y_test),
        mean=mean_t,
        std=std_t,
    )


def download_cifar10(
    data_dir: str | os.PathLike | None = None,
    *,
    url: str = CIFAR10_URL,
    md5: str | None = CIFAR10_MD5,
    progress: bool = True,
) -> Path:
    """Fetch and unpack CIFAR-10; return the folder of the batches.

    The archive is saved as ``<data dir>/cifar10/cifar-10-python.tar.gz``
    (skipped when a copy with the right MD5 is already there), checked against
    ``md5`` (the published digest by default; a mismatch raises
    :class:`~onepass.data.download.MD5ChecksumError` and keeps no file) and unpacked with
    :func:`safe_extract` beside it. Raises ``ValueError`` when the archive
    lacks one of the six batch files.
    """
    root = resolve_data_dir(data_dir) / "cifar10"
    archive = download_md5(url, root / CIFAR10_ARCHIVE, md5, progress=progress)
    safe_extract(archive, root)
    folder = root / CIFAR10_FOLDER
    missing = [name for name in (*TRAIN_BATCHES, TEST_BATCH) if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{archive} lacks {', '.join(missing)} under {CIFAR10_FOLDER}/")
    return folder


__all__ = [
    "CIFAR10Data",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "CLASSES",
    "cifar10_dir",
    "download_cifar10",
    "load_cifar10",
    "read_cifar10_batch",
]
