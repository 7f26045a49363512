"""``onepass report``: loading run folders, the table's statistics, the files.

Synthetic run folders are written by hand (``summary.json``, ``config.yaml``,
``metrics.csv``) with known final values, so every statistic is checked
against a value computed here by hand.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onepass.analysis import build_tables, load_runs, report_main, write_report
from onepass.analysis.figures import forward_fill
from onepass.analysis.runs import initialisation_order, read_metrics_csv
from onepass.analysis.statistics import THREE_BATCHED, display_name

HEADER = "step,train_loss,val_loss,test_loss,test_loss_unnormalised,wall_time_s"


def write_run(root: Path, name: str, *, algorithm: str, status: str = "finished",
              test_u: float | None = 1.0, test: float | None = None, val: float | None = None,
              dataset: str = "energy", kind: str = "uci", summary_index: int | None = None,
              config_index: int | None = None, steps: int = 100) -> Path:
    """One run folder; ``test`` defaults to ``test_u / 10``. ``metrics.csv``
    holds 11 log steps descending linearly from ``2 * test_u`` to ``test_u``;
    a diverged run's last row is non-finite."""
    test = test_u / 10 if test is None and test_u is not None else test
    folder = root / name
    folder.mkdir(parents=True)
    summary = {"status": status, "steps": steps, "wall_time_s": 1.5,
               "versions": {"onepass": "0.1.0"},
               "final": {"train_loss": 0.1, "val_loss": val, "test_loss": test,
                         "test_loss_unnormalised": test_u},
               "hyperparameters": {"lr": 0.01, "momentum": 0.5, "weight_decay": 1e-4},
               "extra_key_to_ignore": [1, 2]}
    if summary_index is not None:
        summary["init_index"] = summary_index
    (folder / "summary.json").write_text(json.dumps(summary))
    config = (f"algorithm:\n  name: {algorithm}\ndataset:\n  kind: {kind}\n  name: {dataset}\n"
              f"seed: 0\nhyperparameters:\n  lr: 0.01\n  momentum: 0.5\n  weight_decay: 0.0001\n")
    if config_index is not None:
        config += f"init_index: {config_index}\n"
    (folder / "config.yaml").write_text(config)
    per_weight = algorithm == "ours_hdlr_momentum"
    lines = [HEADER + (",lr_mean,lr_min,lr_max" if per_weight else ",lr,momentum,weight_decay")]
    final_u = test_u if test_u is not None else 1.0
    for i, step in enumerate(range(0, steps + 1, 10)):
        u = final_u * (2 - i / 10)
        val_cell = "" if val is None else repr(val)
        hyper = "0.01,0.005,0.02" if per_weight else f"{0.01 * 0.9 ** i!r},0.5,0.0001"
        if status == "diverged" and step == steps:
            lines.append(f"{step},nan,nan,inf,inf,{0.1 * i!r},{hyper}")
        else:
            lines.append(f"{step},0.1,{val_cell},{u / 10!r},{u!r},{0.1 * i!r},{hyper}")
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    return folder


def build_sweep(root: Path) -> None:
    """The sweep the statistics tests check (all on UCI Energy)."""
    # Random: 1, 2, 3 finished, 10 diverged (last finite), + failed and interrupted.
    for i, (value, status) in enumerate([(1, "finished"), (2, "finished"), (3, "finished"),
                                         (10, "diverged"), (999, "failed"), (999, "interrupted")]):
        write_run(root / "random", f"init_{i}", algorithm="random", status=status, test_u=value)
    for i, value in enumerate([0.5, 0.7, 0.9]):
        write_run(root / "ours" / "deep" / "er", f"init_{i}", algorithm="ours_lr", test_u=value)
    write_run(root, "hdlr_0", algorithm="ours_hdlr_momentum", test_u=0.25)
    write_run(root, "new_0", algorithm="my_new_algorithm", test_u=5.0)
    # A diverged run without any finite value: excluded.
    write_run(root, "new_1", algorithm="my_new_algorithm", status="diverged", test_u=None)
    # Random (validation): 7 runs; folder names out of initialisation order; the
    # index comes from summary.json for even, from config.yaml for odd indices.
    # Groups (0,1,2) → 1 (val 1), (3,4,5) → 3 (val 0.5, diverged); 6 (val 0.01)
    # is the remainder and must be dropped. test_u = 100 + index.
    vals = [3.0, 1.0, 2.0, 0.5, 5.0, 4.0, 0.01]
    for i, val in enumerate(vals):
        write_run(root / "rv", f"run_{(5 * i) % 7}", algorithm="random_validation",
                  status="diverged" if i == 3 else "finished", test_u=100.0 + i, val=val,
                  summary_index=i if i % 2 == 0 else None,
                  config_index=i if i % 2 == 1 else None)


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    build_sweep(root)
    return root


def test_load_runs_reads_every_folder(sweep):
    runs = load_runs(sweep)
    assert len(runs) == 6 + 3 + 1 + 2 + 7
    by_name = {r.name: r for r in runs}
    run = by_name["ours/deep/er/init_2"]
    assert (run.algorithm, run.dataset, run.dataset_kind, run.seed, run.status) == \
        ("ours_lr", "energy", "uci", 0, "finished")
    assert run.final_value("test_loss_unnormalised") == 0.9
    assert run.steps == 100 and run.wall_time_s == 1.5
    assert by_name["rv/run_5"].init_index == 1          # from config.yaml
    assert by_name["rv/run_3"].init_index == 2          # from summary.json
    assert by_name["new_1"].final_value("test_loss") is None
    assert not by_name["random/init_4"].in_statistics


def test_table_statistics_match_hand_computed_values(sweep):
    (table,) = build_tables(load_runs(sweep))
    assert table.dataset == "energy" and table.metric == "test_loss_unnormalised"
    assert table.status_counts == {"diverged": 3, "failed": 1, "finished": 14, "interrupted": 1}

    random = table.row("random")
    assert (random.n, random.diverged, random.excluded) == (4, 1, 2)
    # values 1, 2, 3, 10: mean 4, sample variance (9 + 4 + 1 + 36) / 3.
    assert random.mean == pytest.approx(4.0)
    assert random.sem == pytest.approx(math.sqrt(50 / 3) / 2)
    assert random.median == pytest.approx(2.5)
    assert random.best == pytest.approx(1.0)
    mean, sem = random.without_diverged          # 1, 2, 3: the diverged 10 left out
    assert mean == pytest.approx(2.0) and sem == pytest.approx(1 / math.sqrt(3))

    ours = table.row("ours_lr")
    assert (ours.n, ours.diverged, ours.excluded) == (3, 0, 0)
    assert ours.mean == pytest.approx(0.7)
    assert ours.sem == pytest.approx(0.2 / math.sqrt(3))
    assert (ours.median, ours.best) == (pytest.approx(0.7), 0.5)

    single = table.row("ours_hdlr_momentum")
    assert single.n == 1 and single.mean == 0.25 and math.isnan(single.sem)

    unknown = table.row("my_new_algorithm")
    assert (unknown.n, unknown.diverged, unknown.excluded) == (1, 0, 1)
    assert unknown.display == "my_new_algorithm"

    validation = table.row("random_validation")
    assert (validation.n, validation.diverged) == (7, 1)
    assert validation.mean == pytest.approx(103.0)


def test_three_batched_groups_by_initialisation_index_and_drops_remainder(sweep):
    (table,) = build_tables(load_runs(sweep))
    row = table.row(THREE_BATCHED)
    assert row.display == "Random (3-batched)" and row.derived
    assert [r.init_index for r in row.runs] == [1, 3]
    assert list(row.values) == [101.0, 103.0]
    assert (row.n, row.diverged, row.excluded) == (2, 1, 1)
    assert row.mean == pytest.approx(102.0)
    assert row.sem == pytest.approx(1.0)             # std([101, 103]) = √2, / √2
    mean, sem = row.without_diverged                 # only 101: no standard error
    assert mean == pytest.approx(101.0) and math.isnan(sem)
    assert (row.median, row.best) == (pytest.approx(102.0), 101.0)


def test_rows_follow_the_paper_order(sweep):
    (table,) = build_tables(load_runs(sweep))
    assert [r.display for r in table.rows] == [
        "Random", "Random (validation)", "Random (3-batched)", "Ours (WD+LR)",
        "Ours (WD+HDLR+M)", "my_new_algorithm"]
    assert display_name("diff_through_opt") == "Diff-through-Opt"


def test_metric_choice(sweep, tmp_path):
    (table,) = build_tables(load_runs(sweep), metric="test_loss")
    assert table.row("random").mean == pytest.approx(0.4)
    other = tmp_path / "other"
    write_run(other, "a", algorithm="random", kind="image", dataset="fashion_mnist",
              test_u=None, test=0.5)
    (table,) = build_tables(load_runs(other))
    assert table.metric == "test_loss" and table.row("random").mean == 0.5
    with pytest.raises(ValueError):
        build_tables(load_runs(other), metric="accuracy")


def test_initialisation_order_falls_back_to_natural_folder_order(tmp_path):
    for name in ("run_10", "run_2", "run_1"):
        write_run(tmp_path, name, algorithm="random_validation", val=1.0)
    assert [r.name for r in initialisation_order(load_runs(tmp_path))] == \
        ["run_1", "run_2", "run_10"]


def test_read_metrics_csv_handles_empty_cells_and_a_cut_last_line(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,val_loss,test_loss\n0,,1.0\n10,0.5,\n20,0.")
    metrics = read_metrics_csv(path)
    assert list(metrics["step"]) == [0.0, 10.0]
    assert np.isnan(metrics["val_loss"][0]) and metrics["val_loss"][1] == 0.5
    assert np.isnan(metrics["test_loss"][1])
    assert read_metrics_csv(tmp_path / "missing.csv") == {}


def test_diverged_runs_keep_their_last_finite_value_in_curves():
    values = np.array([[np.nan, 1.0, np.inf, np.nan], [3.0, 2.0, 1.0, 0.5]])
    filled = forward_fill(values)
    assert np.isnan(filled[0, 0])
    assert list(filled[0, 1:]) == [1.0, 1.0, 1.0]
    assert list(filled[1]) == [3.0, 2.0, 1.0, 0.5]


def test_write_report_writes_tables_figures_and_html(sweep, tmp_path):
    out = tmp_path / "out"
    written = write_report(sweep, out)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["energy_cdf.png", "energy_hyperparameters.png", "energy_loss_vs_steps.png",
                    "energy_loss_vs_time.png"]
    for name in pngs:
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 200
    assert set(written) == {"table.md", "table.csv", "report.html", *pngs}

    md = (out / "table.md").read_text()
    assert "| Random | 4 | 1 | 2 | 4 ± 2 | 2.5 | 1 | 2 ± 0.58 |" in md
    assert "| Random (3-batched) | 2 | 1 | 1 | 102 ± 1 | 102 | 101 | 101 |" in md
    assert "last finite values" in md

    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    random = next(r for r in rows if r["algorithm"] == "random")
    assert float(random["sem"]) == pytest.approx(math.sqrt(50 / 3) / 2)
    assert (random["dataset"], random["n"], random["diverged"]) == ("energy", "4", "1")
    assert float(random["mean_without_diverged"]) == pytest.approx(2.0)
    single = next(r for r in rows if r["algorithm"] == "ours_hdlr_momentum")
    assert single["sem"] == ""

    page = (out / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 4
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_report_main_default_folder_formats_and_errors(sweep, tmp_path, capsys):
    assert report_main([str(sweep), "--format", "csv", "md"]) == 0
    assert sorted(p.name for p in (sweep / "report").iterdir()) == ["table.csv", "table.md"]
    assert "Random (3-batched)" in capsys.readouterr().out
    # The report folder inside the sweep holds no summary.json: not a run.
    assert len(load_runs(sweep)) == 19
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report_main([str(empty)]) == 1
    assert report_main([str(tmp_path / "missing")]) == 1
    with pytest.raises(SystemExit):
        report_main([str(sweep), "--metric", "accuracy"])


def test_load_runs_scales_to_300_folders(tmp_path):
    algorithms = ["random", "random_validation", "ours_lr_momentum"]
    for i in range(300):
        write_run(tmp_path / algorithms[i % 3] / f"seed_{i // 30}", f"init_{i}",
                  algorithm=algorithms[i % 3], test_u=1.0 + i, val=float(i % 7),
                  status="diverged" if i % 10 == 0 else "finished", summary_index=i // 3)
    runs = load_runs(tmp_path)
    assert len(runs) == 300
    (table,) = build_tables(runs)
    assert [table.row(a).n for a in algorithms] == [100, 100, 100]
    assert table.row("random").diverged == 10            # i % 30 == 0
    assert table.row(THREE_BATCHED).n == 33


def test_a_search_study_counts_once_with_its_best_validation_run(tmp_path):
    """BO / ASHA / PBT trials: one value per study, the best-validation trial's test loss."""
    trials = {"a": [(0.30, 5.0), (0.10, 2.0), (0.20, 1.0)], "b": [(0.50, 7.0), (0.40, 9.0)]}
    for study, results in trials.items():
        for i, (val, test_u) in enumerate(results):
            folder = write_run(tmp_path / "bayesopt" / study, f"eval_{i}", algorithm="bayesopt",
                               val=val, test_u=test_u)
            summary = json.loads((folder / "summary.json").read_text())
            summary["search"] = {"method": "bayesopt", "study": study, "index": i}
            (folder / "summary.json").write_text(json.dumps(summary))
    (table,) = build_tables(load_runs(tmp_path))
    row = table.row("bayesopt")
    assert (row.n, row.excluded) == (2, 0)
    assert sorted(row.values.tolist()) == [2.0, 9.0]
    assert row.display == "Bayesian optimisation"
