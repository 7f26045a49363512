import gzip
import struct

import numpy as np
import pytest
import torch

from onepass.data import ChecksumError, load_fashion_mnist, read_idx
from onepass.data.fashion_mnist import FASHION_MNIST_FILES, download_fashion_mnist, parse_idx


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file: magic 0x0000<type><ndim>, big-endian uint32 dims, big-endian values."""
    header = struct.pack(">HBB", 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_gz(path, array: np.ndarray) -> None:
    path.write_bytes(gzip.compress(idx_bytes(array)))


@pytest.fixture
def raw(tmp_path):
    """Tiny Fashion-MNIST in the official layout: 30 training, 7 test images of 28×28."""
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 30, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (7, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 7, dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte.gz"][:, 0, 0] = 0  # a constant pixel, as in the corners
    folder = tmp_path / "fashion_mnist"
    folder.mkdir()
    for name, array in arrays.items():
        write_idx_gz(folder / name, array)
    return tmp_path, arrays


def test_idx_parser_round_trip_big_endian(tmp_path):
    values = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    path = tmp_path / "ints.idx"
    path.write_bytes(idx_bytes(values, type_code=0x0C))
    parsed = read_idx(path)
    assert parsed.shape == (2, 3, 4)
    np.testing.assert_array_equal(parsed, values)
    assert parsed.dtype.isnative


def test_idx_errors_are_clear():
    with pytest.raises(ValueError, match="bad IDX magic number 0x01020803"):
        parse_idx(b"\x01\x02\x08\x03" + bytes(12))
    with pytest.raises(ValueError, match="unknown type code 0x07"):
        parse_idx(b"\x00\x00\x07\x01" + bytes(8))
    with pytest.raises(ValueError, match="expected 6 bytes"):
        parse_idx(idx_bytes(np.zeros((2, 3), np.uint8))[:-1])


def test_load_splits_and_standardises(raw):
    data_dir, arrays = raw
    data = load_fashion_mnist(data_dir, validation_size=10, seed=3)
    assert data.x_train.shape == (20, 784) and data.x_val.shape == (10, 784)
    assert data.x_test.shape == (7, 784)
    assert data.y_train.dtype == data.y_test.dtype == torch.int64
    assert data.x_train.dtype == torch.float32

    images = arrays["train-images-idx3-ubyte.gz"].reshape(30, 784).astype(np.float64)
    labels = arrays["train-labels-idx1-ubyte.gz"]
    order = np.random.default_rng(3).permutation(30)
    val, train = order[:10], order[10:]
    np.testing.assert_array_equal(data.y_train.numpy(), labels[train])
    np.testing.assert_array_equal(data.y_val.numpy(), labels[val])
    np.testing.assert_array_equal(data.y_test.numpy(), arrays["t10k-labels-idx1-ubyte.gz"])

    # Statistics from the 20 training images only, applied to every split.
    mean, std = images[train].mean(0), images[train].std(0)
    std[std == 0] = 1
    np.testing.assert_allclose(data.x_val.numpy(), (images[val] - mean) / std, rtol=1e-5, atol=1e-5)
    test = arrays["t10k-images-idx3-ubyte.gz"].reshape(7, 784)
    np.testing.assert_allclose(data.x_test.numpy(), (test - mean) / std, rtol=1e-5, atol=1e-5)
    train_x = data.x_train.double()
    varying = std != 1
    torch.testing.assert_close(train_x.mean(0), torch.zeros(784, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(train_x.std(0, unbiased=False)[varying],
                               torch.ones(int(varying.sum()), dtype=torch.float64), atol=1e-5, rtol=0)
    assert data.x_std[0] == 1 and torch.all(data.x_train[:, 0] == 0)
    assert load_fashion_mnist(data_dir, validation_size=10, seed=3, dtype=torch.float64).x_train.dtype \
        == torch.float64


def test_bad_magic_number_names_the_file(raw):
    data_dir, _ = raw
    path = data_dir / "fashion_mnist" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x01\x08\x01" + struct.pack(">I", 30) + bytes(30)))
    with pytest.raises(ValueError, match="bad IDX magic number") as info:
        load_fashion_mnist(data_dir, validation_size=10)
    assert str(path) in str(info.value)


def test_label_count_must_match_images(raw):
    data_dir, _ = raw
    write_idx_gz(data_dir / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz", np.zeros(6, np.uint8))
    with pytest.raises(ValueError, match="expected 7 uint8 labels"):
        load_fashion_mnist(data_dir, validation_size=10)


def test_validation_size_is_checked(raw):
    with pytest.raises(ValueError, match="validation_size=30"):
        load_fashion_mnist(raw[0], validation_size=30)


def test_missing_file_names_path_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "fashion_mnist" / "train-images-idx3-ubyte.gz") in message
    assert "onepass download fashion_mnist" in message


def test_download_checks_md5_and_falls_back_to_next_mirror(raw, tmp_path):
    source, _ = raw
    mirror = (source / "fashion_mnist").as_uri() + "/"
    target = tmp_path / "target"
    with pytest.raises(ChecksumError, match="MD5 mismatch"):
        download_fashion_mnist(target, mirrors=["file:///nonexistent/", mirror], progress=False)
    assert list((target / "fashion_mnist").iterdir()) == []
    assert set(FASHION_MNIST_FILES) == {p.name for p in (source / "fashion_mnist").iterdir()}
