from pathlib import Path

import numpy as np
import pytest
import torch

from onepass.data import UCI_DATASETS, load_uci, resolve_data_dir

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

SPLITS = {  # name: (n_trainval, n_val, n_test, n_inputs)
    "boston": (455, 91, 51, 13),
    "concrete": (927, 185, 103, 8),
    "energy": (692, 78, 76, 8),
    "kin8nm": (7373, 1475, 819, 8),
    "naval": (10741, 2148, 1193, 16),
    "power": (8611, 1722, 957, 4),
    "wine": (1439, 288, 160, 11),
    "yacht": (277, 55, 31, 6),
}


@pytest.fixture
def data_dir():
    assert (SHARED_DATA / "uci").is_dir(), f"the local UCI copies must lie under {SHARED_DATA}"
    return SHARED_DATA


def test_specs_cover_the_protocol():
    assert set(UCI_DATASETS) == set(SPLITS)
    for name, (n_trainval, n_val, n_test, n_inputs) in SPLITS.items():
        spec = UCI_DATASETS[name]
        assert (spec.n_trainval, spec.n_val, spec.n_test, spec.n_inputs) == (
            n_trainval, n_val, n_test, n_inputs)
        assert spec.url.startswith("https://raw.githubusercontent.com/yaringal/")
        assert spec.url.endswith("/data/data.txt")


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_split_sizes(data_dir, name):
    n_trainval, n_val, n_test, n_inputs = SPLITS[name]
    data = load_uci(name, data_dir)
    assert data.n_inputs == n_inputs
    assert data.x_train.shape == (n_trainval - n_val, n_inputs)
    assert data.y_train.shape == (n_trainval - n_val, 1)
    assert data.x_val.shape == (n_val, n_inputs)
    assert data.y_val.shape == (n_val, 1)
    assert data.x_test.shape == (n_test, n_inputs)
    assert data.y_test.shape == (n_test, 1)
    assert data.x_trainval.shape == (n_trainval, n_inputs)
    assert data.y_trainval.shape == (n_trainval, 1)
    assert data.x_train.dtype == torch.float32


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_standardised_with_trainval_statistics_only(data_dir, name):
    n_trainval = SPLITS[name][0]
    table = np.loadtxt(data_dir / "uci" / f"{name}.txt")
    x, y = table[:n_trainval, :-1], table[:n_trainval, -1]
    x_std = x.std(axis=0)
    x_std[np.ptp(x, axis=0) == 0] = 1.0
    data = load_uci(name, data_dir, dtype=torch.float64)
    np.testing.assert_allclose(data.x_mean.numpy(), x.mean(axis=0))
    np.testing.assert_allclose(data.x_std.numpy(), x_std)
    np.testing.assert_allclose(data.y_mean.numpy(), [y.mean()])
    np.testing.assert_allclose(data.y_std.numpy(), [y.std()])

    trainval = torch.cat([data.x_trainval, data.y_trainval], dim=1)
    varying = np.ptp(table[:n_trainval], axis=0) > 0
    np.testing.assert_allclose(trainval.mean(0).numpy(), 0, atol=1e-9)
    assert (trainval[:, ~varying] == 0).all()
    np.testing.assert_allclose(trainval.std(0, unbiased=False).numpy()[varying], 1, atol=1e-9)
    test = torch.cat([data.x_test, data.y_test], dim=1)
    assert not np.allclose(test.mean(0).numpy(), 0, atol=1e-6)

    np.testing.assert_allclose(
        data.unnormalise_mse(2.0), 2.0 * y.std() ** 2, rtol=1e-12)


def test_unnormalised_targets_round_trip(data_dir):
    data = load_uci("yacht", data_dir, dtype=torch.float64)
    table = np.loadtxt(data_dir / "uci" / "yacht.txt")
    original = data.y_test * data.y_std + data.y_mean
    np.testing.assert_allclose(original.numpy()[:, 0], table[-31:, -1])


def test_shuffle_seed_is_reproducible(data_dir):
    unshuffled = load_uci("yacht", data_dir)
    first = load_uci("yacht", data_dir, shuffle_seed=0)
    second = load_uci("yacht", data_dir, shuffle_seed=0)
    assert torch.equal(first.x_test, second.x_test)
    assert not torch.equal(first.x_test, unshuffled.x_test)


def test_to_casts_every_tensor(data_dir):
    data = load_uci("yacht", data_dir).to("cpu", torch.float64)
    assert data.x_train.dtype == data.y_std.dtype == torch.float64
    assert data.name == "yacht"


def test_env_var_is_honoured(data_dir, monkeypatch):
    monkeypatch.setenv("ONEPASS_DATA_DIR", str(data_dir))
    assert resolve_data_dir() == data_dir
    assert load_uci("boston").x_test.shape == (51, 13)


def test_cache_folder_default(monkeypatch, tmp_path):
    monkeypatch.delenv("ONEPASS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert resolve_data_dir() == tmp_path / "onepass"
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_missing_file_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_uci("energy", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "uci" / "energy.txt") in message
    assert "onepass download uci" in message
    assert "ONEPASS_DATA_DIR" in message


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="mnist"):
        load_uci("mnist", tmp_path)


def _write(tmp_path, name, table):
    (tmp_path / "uci").mkdir(exist_ok=True)
    path = tmp_path / "uci" / f"{name}.txt"
    np.savetxt(path, table)
    return path


def test_ragged_file_is_rejected(tmp_path):
    (tmp_path / "uci").mkdir()
    path = tmp_path / "uci" / "yacht.txt"
    path.write_text("1 2 3 4 5 6 7\n1 2 3\n")
    with pytest.raises(ValueError, match="yacht.txt"):
        load_uci("yacht", tmp_path)


def test_non_numeric_file_is_rejected(tmp_path):
    (tmp_path / "uci").mkdir()
    (tmp_path / "uci" / "yacht.txt").write_text("1 2 3 4 5 6 seven\n")
    with pytest.raises(ValueError, match="yacht.txt"):
        load_uci("yacht", tmp_path)


def test_wrong_row_and_column_counts_are_rejected(tmp_path):
    _write(tmp_path, "yacht", np.ones((300, 7)))
    with pytest.raises(ValueError, match=r"yacht.txt.*300 rows"):
        load_uci("yacht", tmp_path)
    _write(tmp_path, "yacht", np.ones((308, 9)))
    with pytest.raises(ValueError, match=r"yacht.txt.*9 columns"):
        load_uci("yacht", tmp_path)


@pytest.mark.parametrize(
    "name, n_columns, target_column",
    [("naval", 18, 16), ("energy", 10, 8)],
)
def test_upstream_column_layout(tmp_path, name, n_columns, target_column):
    spec = UCI_DATASETS[name]
    rng = np.random.default_rng(0)
    table = rng.normal(size=(spec.n_rows, n_columns))
    _write(tmp_path, name, table)
    data = load_uci(name, tmp_path, dtype=torch.float64)
    assert data.n_inputs == spec.n_inputs
    inputs = data.x_trainval * data.x_std + data.x_mean
    targets = data.y_trainval * data.y_std + data.y_mean
    np.testing.assert_allclose(inputs.numpy(), table[: spec.n_trainval, : spec.n_inputs])
    np.testing.assert_allclose(targets.numpy()[:, 0], table[: spec.n_trainval, target_column])


def test_download_uci_from_file_mirror(tmp_path, monkeypatch):
    import onepass.data.uci as uci

    rng = np.random.default_rng(1)
    tables = {}
    for name, n_columns in [("naval", 18), ("yacht", 7)]:
        spec = UCI_DATASETS[name]
        tables[name] = np.round(rng.normal(size=(spec.n_rows, n_columns)), 6)
        folder = tmp_path / "mirror" / spec.folder / "data"
        folder.mkdir(parents=True)
        np.savetxt(folder / "data.txt", tables[name])
    monkeypatch.setattr(
        uci, "UPSTREAM_URL", (tmp_path / "mirror").as_uri() + "/{folder}/data/data.txt")

    data_dir = tmp_path / "data"
    written = uci.download_uci(["naval", "yacht"], data_dir, progress=False)
    assert written == [data_dir / "uci" / "naval.txt", data_dir / "uci" / "yacht.txt"]
    assert (data_dir / "uci" / "raw" / "naval.data.txt").is_file()
    np.testing.assert_array_equal(
        np.loadtxt(data_dir / "uci" / "naval.txt"), tables["naval"][:, :17])
    assert load_uci("naval", data_dir).n_inputs == 16

    np.savetxt(tmp_path / "mirror" / "yacht" / "data" / "data.txt", tables["yacht"][:100])
    with pytest.raises(ValueError, match="100 rows"):
        uci.download_uci(["yacht"], data_dir, progress=False)
