"""The run record: one typed, versioned schema for summary.json."""
import ast
import json

import pytest

from onepass.experiment import record as record_module
from onepass.experiment.record import (
    CLOCK, SCHEMA_VERSION, RecordError, RecordVersionError, RunRecord, find_record, read_record,
    write_record,
)


def test_round_trip_and_nan_become_null(tmp_path):
    record = RunRecord(status="finished", algorithm="ours_lr", dataset="energy", seed=3, steps=10,
                       final={"test_loss": float("nan"), "train_loss": 0.5}, train_seconds=1.5,
                       wall_time_s=2.0)
    written = write_record(tmp_path, record)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == written and on_disk["schema_version"] == SCHEMA_VERSION
    assert on_disk["final"]["test_loss"] is None and on_disk["clock"] == CLOCK
    assert read_record(tmp_path) == record.replace(final={"test_loss": None, "train_loss": 0.5})
    assert not list(tmp_path.glob(".summary.json.*"))  # atomic: no temporary file left


def test_unknown_version_is_one_line_naming_file_and_version(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"schema_version": 7, "status": "finished"}))
    with pytest.raises(RecordVersionError) as error:
        read_record(tmp_path)
    text = str(error.value)
    assert "\n" not in text and str(tmp_path / "summary.json") in text and "7" in text
    with pytest.raises(RecordVersionError):
        find_record(tmp_path)


def test_unknown_key_and_wrong_type_are_refused(tmp_path):
    good = RunRecord(status="finished").to_dict()
    (tmp_path / "summary.json").write_text(json.dumps({**good, "wall_seconds": 1.0}))
    with pytest.raises(RecordError, match="wall_seconds"):
        read_record(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({**good, "steps": "ten"}))
    with pytest.raises(RecordError, match="steps"):
        read_record(tmp_path)
    assert find_record(tmp_path) is None and find_record(tmp_path / "missing") is None
    with pytest.raises(RecordError, match="status"):
        RunRecord(status="done")


def test_unversioned_records_are_read_as_version_0(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(
        {"status": "finished", "steps": 100, "wall_time_s": 1.5, "extra": [1]}))
    record = read_record(tmp_path)
    assert record.schema_version == 0 and record.steps == 100 and record.train_seconds is None
    assert "before records were versioned" in record.clock


def test_record_module_imports_no_torch():
    tree = ast.parse(open(record_module.__file__).read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in (node.names if isinstance(node, ast.Import) else [node])
                for alias in ([alias] if isinstance(node, ast.Import) else
                              [type("A", (), {"name": node.module or ""})])}
    assert "torch" not in imported and "onepass" not in imported


def test_single_and_population_runs_write_the_same_schema(uci_data_dir, tmp_path):
    from onepass.experiment import load_config, run_training
    from onepass.sweep.population import train_population

    config = load_config(["uci_energy", "ours_lr"], ["training.steps=20",
                                                     "logging.tensorboard=false"])
    single = run_training(config, tmp_path / "single", data_dir=uci_data_dir, progress=False,
                          record_fields={"init_index": 4})
    (pop,) = train_population([config], [tmp_path / "pop"], data_dir=uci_data_dir,
                              extra_summary=[{"init_index": 4}])
    for written in (single, pop):
        record = read_record(written["run_dir"])
        assert record.init_index == 4 and record.status == "finished"
        assert 0 <= record.train_seconds <= record.wall_time_s
    rows = (tmp_path / "pop" / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[5] == "train_seconds"
