import pickle
import tarfile

import numpy as np
import pytest
import torch

from onepass.data import ChecksumError, MD5ChecksumError, download_cifar10, load_cifar10, md5sum
from onepass.data.cifar10 import CIFAR10_MD5, read_cifar10_batch

N_PER_BATCH = 20


def write_batch(path, data, labels):
    """A batch as the official Python 2 pickles hold it: byte-string keys, protocol 2."""
    with open(path, "wb") as handle:
        pickle.dump({b"batch_label": b"test", b"data": data, b"labels": list(map(int, labels)),
                     b"filenames": [b"x.png"] * len(labels)}, handle, protocol=2)


def make_raw(root):
    """Five training batches and a test batch of 20 images each, in ``root/cifar-10-batches-py``."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (N_PER_BATCH, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, N_PER_BATCH)
        write_batch(folder / name, data, labels)
        arrays[name] = (data, labels)
    return arrays


@pytest.fixture
def raw(tmp_path):
    return tmp_path, make_raw(tmp_path / "cifar10")


def test_batch_layout_is_channel_planes(tmp_path):
    data = np.zeros((1, 3072), np.uint8)
    data[0, 1024 + 32 * 5 + 7] = 200  # green plane, row 5, column 7
    write_batch(tmp_path / "b", data, [3])
    images, labels = read_cifar10_batch(tmp_path / "b")
    assert images.shape == (1, 3, 32, 32) and images[0, 1, 5, 7] == 200 and images.sum() == 200
    assert labels.tolist() == [3] and labels.dtype == np.int64


def test_refuses_pickles_that_run_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil", "wb") as handle:
        pickle.dump({b"data": Exploit(), b"labels": []}, handle, protocol=2)
    with pytest.raises(ValueError, match="refusing to load .*print"):
        read_cifar10_batch(tmp_path / "evil")


def test_load_shapes_scaling_and_train_only_statistics(raw):
    data_dir, arrays = raw
    data = load_cifar10(data_dir, validation_size=10, seed=4)
    assert data.x_train.shape == (90, 3, 32, 32) and data.x_val.shape == (10, 3, 32, 32)
    assert data.x_test.shape == (20, 3, 32, 32)
    assert data.y_train.shape == (90,) and data.y_train.dtype == torch.int64
    assert data.x_train.dtype == torch.float32

    pixels = np.concatenate([arrays[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = np.concatenate([arrays[f"data_batch_{i}"][1] for i in range(1, 6)])
    order = np.random.default_rng(4).permutation(100)
    val, train = order[:10], order[10:]
    scaled = pixels.reshape(100, 3, 32, 32) / 255.0
    mean = scaled[train].mean(axis=(0, 2, 3))
    std = scaled[train].std(axis=(0, 2, 3))
    np.testing.assert_allclose(data.mean.numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(data.std.numpy(), std, rtol=1e-6)
    assert not np.allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-4)  # val images excluded
    expected_val = (scaled[val] - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(data.x_val.numpy(), expected_val, rtol=1e-5, atol=1e-5)
    exact = load_cifar10(data_dir, validation_size=10, seed=4, dtype=torch.float64)
    np.testing.assert_allclose(exact.x_val.numpy(), expected_val, rtol=1e-12, atol=1e-12)
    test = arrays["test_batch"][0].reshape(20, 3, 32, 32) / 255.0
    np.testing.assert_allclose(data.x_test.numpy(), (test - mean[:, None, None]) / std[:, None, None],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(data.y_val.numpy(), labels[val])
    np.testing.assert_array_equal(data.y_test.numpy(), arrays["test_batch"][1])

    per_channel = data.x_train.double().transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(per_channel.std(1, unbiased=False), torch.ones(3, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    assert data.x_trainval.shape == (100, 3, 32, 32)
    assert data.to(dtype=torch.float64).y_train.dtype == torch.int64


def test_missing_batch_names_path_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path)
    assert str(tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_1") in str(info.value)
    assert "onepass download cifar10" in str(info.value)


def test_download_md5_mismatch_keeps_nothing(tmp_path):
    make_raw(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    target = tmp_path / "target"
    with pytest.raises(MD5ChecksumError) as info:
        download_cifar10(target, url=archive.as_uri(), progress=False)
    assert isinstance(info.value, ChecksumError)
    assert info.value.expected == CIFAR10_MD5 and info.value.actual == md5sum(archive)
    assert "MD5 mismatch" in str(info.value)
    assert list((target / "cifar10").iterdir()) == []

    folder = download_cifar10(target, url=archive.as_uri(), md5=md5sum(archive), progress=False)
    assert folder == target / "cifar10" / "cifar-10-batches-py"
    assert load_cifar10(target, validation_size=5).x_train.shape == (95, 3, 32, 32)
