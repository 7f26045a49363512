import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

import onepass.data.uci as uci_module
from onepass.data import (
    PACKAGED_DATA_DIR,
    UCI_DATASETS,
    DataFileError,
    load_uci,
    resolve_data_dir,
    uci_path,
)

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


SHA256 = {  # of the uncompressed shipped copies, as listed in their DATA_NOTICE.md
    "boston": "c82be0c32bcbba5a619226305aa1c9901907811a34fa02d235c0675b98dc4849",
    "concrete": "5c8b7e5f66f1396f6a96ceaf8ce4c54da733b8d29875860a9468c9b52c7660d8",
    "energy": "6813c784cbd5d671a4729eabf73be5aa9da35fc4450122c04465b0425b4de7bb",
    "kin8nm": "da24f6e329d17659b5b016d10c9ecf0fd74dfe7868de1112e8d0203beb9f8103",
    "naval": "f34a47a6e5c89fa8bf318dfb5703cd60d4387df108b0fadd0221689f2ae46428",
    "power": "e8fc25746d49b9a7299974accad09aeecb12b0e1ff2bc16568c6ea8f4d84cba8",
    "wine": "9077b7b732751f8fff0cd0e0a69c524961083ddf748b59dbc3f3471d629cef74",
    "yacht": "aee82c124bb5c977fc0ae433461375e2da49cd0c642a7411569de7de598af972",
}


@pytest.fixture
def data_dir(uci_data_dir):
    return uci_data_dir


def shipped_text(name):
    return gzip.decompress((PACKAGED_DATA_DIR / "uci" / f"{name}.txt.gz").read_bytes()).decode()


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_shipped_copies_are_intact_and_noticed(name):
    assert hashlib.sha256(shipped_text(name).encode()).hexdigest() == SHA256[name]
    notice = (PACKAGED_DATA_DIR / "uci" / "DATA_NOTICE.md").read_text(encoding="utf-8")
    assert f"`{name}.txt.gz`" in notice and SHA256[name] in notice


def test_without_settings_the_shipped_copies_are_found(monkeypatch, tmp_path):
    # Nothing outside the package: no $ONEPASS_DATA_DIR and an empty user cache.
    monkeypatch.delenv("ONEPASS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for name in SPLITS:
        assert uci_path(name) == PACKAGED_DATA_DIR / "uci" / f"{name}.txt.gz"
    assert PACKAGED_DATA_DIR.parent == Path(uci_module.__file__).resolve().parent  # in the package
    assert load_uci("energy").x_test.shape == (76, 8)


def _user_copy(folder, name, last_target):
    """A plain-text copy of the shipped set ``name`` in ``folder/uci`` whose
    last target is ``last_target``."""
    table = np.loadtxt(PACKAGED_DATA_DIR / "uci" / f"{name}.txt.gz")
    table[-1, -1] = last_target
    (folder / "uci").mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / "uci" / f"{name}.txt", table)
    return table


def test_a_data_directory_copy_wins_over_the_shipped_one(tmp_path):
    table = _user_copy(tmp_path, "yacht", 1234.5)
    assert uci_path("yacht", tmp_path) == tmp_path / "uci" / "yacht.txt"
    data = load_uci("yacht", tmp_path, dtype=torch.float64)
    assert float(data.y_test[-1, 0] * data.y_std + data.y_mean) == pytest.approx(1234.5)
    np.testing.assert_allclose((data.y_test * data.y_std + data.y_mean).numpy()[:, 0],
                               table[-31:, -1])
    # Sets the folder lacks still come from the package.
    assert uci_path("energy", tmp_path) == PACKAGED_DATA_DIR / "uci" / "energy.txt.gz"


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
    table = np.loadtxt(data_dir / "uci" / f"{name}.txt.gz")
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
    table = np.loadtxt(data_dir / "uci" / "yacht.txt.gz")
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


def test_env_var_is_honoured(tmp_path, monkeypatch):
    _user_copy(tmp_path, "boston", 99.0)
    monkeypatch.setenv("ONEPASS_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert uci_path("boston") == tmp_path / "uci" / "boston.txt"
    data = load_uci("boston", dtype=torch.float64)
    assert data.x_test.shape == (51, 13)
    assert float(data.y_test[-1, 0] * data.y_std + data.y_mean) == pytest.approx(99.0)


def test_cache_folder_default(monkeypatch, tmp_path):
    monkeypatch.delenv("ONEPASS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert resolve_data_dir() == tmp_path / "onepass"
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_missing_file_message(tmp_path, monkeypatch):
    # Only an install without the package data can miss a UCI set.
    monkeypatch.setattr(uci_module, "PACKAGED_DATA_DIR", tmp_path / "not-shipped")
    with pytest.raises(FileNotFoundError) as info:
        load_uci("energy", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "uci" / "energy.txt") in message
    assert "\n" not in message
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


def corrupt_copy(tmp_path, name, edit, *, compress=False):
    """The shipped copy of ``name`` with its lines passed through ``edit``,
    written as ``tmp_path/uci/<name>.txt`` (``.txt.gz`` if ``compress``)."""
    lines = edit(shipped_text(name).splitlines(keepends=True))
    (tmp_path / "uci").mkdir(exist_ok=True)
    path = tmp_path / "uci" / (f"{name}.txt.gz" if compress else f"{name}.txt")
    data = "".join(lines).encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def replace_cell(row, column, value):
    def edit(lines):
        cells = lines[row - 1].split()
        cells[column - 1] = value
        lines[row - 1] = " ".join(cells) + "\n"
        return lines
    return edit


def corrupt_error(name, data_dir):
    with pytest.raises(DataFileError) as info:
        load_uci(name, data_dir)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message and "usecols" not in message
    return info.value, message


@pytest.mark.parametrize("compress", [False, True])
def test_non_numeric_cell_names_file_row_and_column(tmp_path, compress):
    path = corrupt_copy(tmp_path, "energy", replace_cell(100, 3, "12..5"), compress=compress)
    error, message = corrupt_error("energy", tmp_path)
    assert (error.path, error.row, error.column) == (path, 100, 3)
    assert message == f"corrupt UCI file {path}, row 100, column 3: '12..5' is not a number"


def test_missing_value_names_its_cell(tmp_path):
    corrupt_copy(tmp_path, "energy", replace_cell(7, 9, "nan"))
    error, message = corrupt_error("energy", tmp_path)
    assert (error.row, error.column) == (7, 9)
    assert "row 7, column 9: 'nan' is not a finite number" in message


def test_row_with_a_missing_cell_names_its_row(tmp_path):
    def drop_a_cell(lines):
        lines[41] = " ".join(lines[41].split()[:-1]) + "\n"
        return lines
    path = corrupt_copy(tmp_path, "energy", drop_a_cell)
    error, message = corrupt_error("energy", tmp_path)
    assert (error.path, error.row, error.column) == (path, 42, None)
    assert message.startswith(f"corrupt UCI file {path}, row 42: 8 columns, but row 1 has 9")


def test_truncated_last_row_is_named(tmp_path):
    def cut(lines):
        text = "".join(lines)
        return [text[: text.rindex(" ") - 1]]  # ends inside the last row, no newline
    corrupt_copy(tmp_path, "yacht", cut)
    error, message = corrupt_error("yacht", tmp_path)
    assert error.row == 308
    assert "row 308: 6 columns, but row 1 has 7" in message


def test_truncated_compressed_file_is_reported(tmp_path):
    path = corrupt_copy(tmp_path, "kin8nm", lambda lines: lines, compress=True)
    path.write_bytes(path.read_bytes()[:5000])
    error, message = corrupt_error("kin8nm", tmp_path)
    assert message.startswith(f"corrupt UCI file {path}") and "unreadable after row" in message


def test_binary_garbage_is_reported(tmp_path):
    (tmp_path / "uci").mkdir()
    path = tmp_path / "uci" / "yacht.txt"
    path.write_bytes(b"\x00\xff\xfe garbage\n")
    error, message = corrupt_error("yacht", tmp_path)
    assert (error.row, error.column) == (1, 1)


def test_ragged_file_is_rejected(tmp_path):
    (tmp_path / "uci").mkdir()
    path = tmp_path / "uci" / "yacht.txt"
    path.write_text("1 2 3 4 5 6 7\n1 2 3\n")
    error, message = corrupt_error("yacht", tmp_path)
    assert message == f"corrupt UCI file {path}, row 2: 3 columns, but row 1 has 7 " \
                      "(a truncated or merged row?)"


def test_non_numeric_file_is_rejected(tmp_path):
    (tmp_path / "uci").mkdir()
    (tmp_path / "uci" / "yacht.txt").write_text("1 2 3 4 5 6 seven\n")
    error, message = corrupt_error("yacht", tmp_path)
    assert (error.row, error.column) == (1, 7)


def test_wrong_row_and_column_counts_are_rejected(tmp_path):
    _write(tmp_path, "yacht", np.ones((300, 7)))
    with pytest.raises(DataFileError, match=r"yacht.txt: 300 rows, expected 308$"):
        load_uci("yacht", tmp_path)
    _write(tmp_path, "yacht", np.ones((308, 9)))
    with pytest.raises(DataFileError, match=r"yacht.txt: 9 columns"):
        load_uci("yacht", tmp_path)


def test_cli_reports_a_corrupt_file_in_one_line(tmp_path, capsys):
    from onepass.cli.main import main

    path = corrupt_copy(tmp_path, "energy", replace_cell(5, 2, "abc"))
    assert main(["train", "-c", "uci_energy", "ours_lr", "--data-dir", str(tmp_path),
                 "-l", str(tmp_path / "runs"), "--no-progress",
                 "--set", "training.steps=5"]) == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert error_lines == [f"onepass: error: corrupt UCI file {path}, row 5, column 2: "
                           "'abc' is not a number"]


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
