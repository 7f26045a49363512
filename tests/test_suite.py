"""benchmarks/suite.py keeps working: a few updates of a couple of workloads
and rows, the JSON's schema, the run cache (resume without rerunning), the
markdown table and the plot, and re-rendering from the JSON."""
from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

pytest.importorskip("prodigyopt")
pytest.importorskip("schedulefree")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

REPO = Path(__file__).resolve().parents[1]


def _suite():
    spec = importlib.util.spec_from_file_location("suite", REPO / "benchmarks" / "suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["suite"] = module
    spec.loader.exec_module(module)
    return module


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_suite_writes_its_json_and_resumes_from_its_cache(tmp_path, monkeypatch):
    suite = _suite()
    runs, out, png = tmp_path / "runs.jsonl", tmp_path / "suite.json", tmp_path / "suite.png"
    args = ["--workloads", "uci_energy", "digits_cnn", "--rows", "onepass", "onepass_sgd", "adam", "adamw_cosine",
            "schedulefree", "--seeds", "1", "--steps", "0.005", "--workers", "1", "--quiet",
            "--runs", str(runs), "--json", str(out), "--plot", str(png)]
    result = suite.main(args)
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result))
    assert set(data) >= {"workloads", "recipe", "summary"}
    assert set(data["workloads"]) == {"uci_energy", "digits_cnn"}
    assert data["workloads"]["uci_energy"]["metric"] == "test_mse"
    assert data["workloads"]["digits_cnn"]["metric"] == "test_cross_entropy"
    for name, entry in data["workloads"].items():
        assert set(entry["rows"]) == {"onepass", "onepass_sgd", "adam", "adamw_cosine", "schedulefree"}, name
        for row, r in entry["rows"].items():
            for field in ("median", "mean", "sem", "time_ratio"):
                assert _finite(r[field]), (name, row, field, r[field])
            assert len(r["values"]) == 1 and r["median"] == r["values"][0]
        assert entry["rows"]["adam"]["time_ratio"] == pytest.approx(1.0)
        assert entry["rows"]["onepass"]["hyperparameters_median"]["lr/group0"] > 0
        best = min(("adam", "adamw_cosine", "schedulefree"), key=lambda r: entry["rows"][r]["median"])
        assert entry["best_default"] == best
        assert entry["onepass_ratio"] == pytest.approx(entry["rows"]["onepass"]["median"] / entry["rows"][best]["median"])
    assert 0 <= data["workloads"]["digits_cnn"]["rows"]["onepass"]["accuracy_median"] <= 1
    summary = data["summary"]["onepass"]
    assert summary["workloads"] == 2 and summary["wins"] == sum(
        data["workloads"][n]["onepass_ratio"] <= 1 for n in ("uci_energy", "digits_cnn"))
    assert data["recipe"]["adamw"]["fold"] == 0.25
    for row in ("adam", "adamw_cosine", "schedulefree"):                 # each default against the best of the others
        medians = {n: {r: e["rows"][r]["median"] for r in ("adam", "adamw_cosine", "schedulefree")}
                   for n, e in data["workloads"].items()}
        ratios = {n: m[row] / min(v for r, v in m.items() if r != row) for n, m in medians.items()}
        assert data["summary"]["defaults"][row]["ratios"] == pytest.approx(ratios)
        assert data["summary"]["defaults"][row]["wins"] == sum(r <= 1 for r in ratios.values())
    assert sum(data["summary"]["defaults"][r]["wins"] for r in ("adam", "adamw_cosine", "schedulefree")) == 2
    assert png.stat().st_size > 1000

    # every run is cached once; a second invocation runs nothing and gives the same table
    lines = runs.read_text().splitlines()
    assert len(lines) == 2 * 5
    monkeypatch.setattr(suite, "_work", lambda job: pytest.fail(f"reran {job}"))
    again = suite.main(args[:-4] + ["--json", str(tmp_path / "again.json")])
    assert again["workloads"] == data["workloads"]
    assert len(runs.read_text().splitlines()) == len(lines)

    # --cached-only summarises the cache without running anything
    cached = suite.main(args[:-4] + ["--cached-only"])
    assert cached["workloads"] == data["workloads"]

    # re-rendering from the JSON runs nothing either
    table = tmp_path / "table.md"
    readme = tmp_path / "readme.md"
    suite.main(["--from-json", str(out), "--markdown", str(table), "--plot", str(tmp_path / "again.png"),
                "--readme", str(readme)])
    text = table.read_text()
    assert "| digits_cnn |" in readme.read_text() and "geometric mean" in readme.read_text()
    assert "Each default held to the same bar, against the best of the other defaults: adam " in readme.read_text()
    assert "| uci_energy |" in text and "onepass / best default" in text and "at or below the best default" in text
    assert "the same bar for each default, against the best of the others: adam " in text
    # the README's time column from a timing measured apart, where one is given
    timing = tmp_path / "timing.json"
    timing.write_text(json.dumps({"workloads": {"uci_energy": {"rows": {"onepass": {"time_ratio": 1.25}}}}}))
    suite.main(["--from-json", str(out), "--markdown", str(table), "--readme", str(readme), "--time-ratios", str(timing)])
    quiet = readme.read_text().splitlines()
    assert quiet[0].endswith("| time × Adam (quiet) |")
    assert next(line for line in quiet if line.startswith("| uci_energy |")).endswith("| 1.25 |")
    assert next(line for line in quiet if line.startswith("| digits_cnn |")).endswith("| — |")


def test_interrupted_suite_keeps_the_finished_runs(tmp_path):
    suite = _suite()
    runs_path = tmp_path / "runs.jsonl"
    jobs = [suite.job("uci_energy", "adam", 0, 3), suite.job("uci_energy", "sgd", 0, 3)]
    cache = suite.Runs(runs_path)
    cache.run(jobs[:1], workers=1, progress=False)
    resumed = suite.Runs(runs_path)
    assert suite.key(jobs[0]) in resumed.records and suite.key(jobs[1]) not in resumed.records
    records = resumed.run(jobs, workers=1, progress=False)
    assert [_finite(r["test"]) for r in records] == [True, True]
    assert len(runs_path.read_text().splitlines()) == 2


def test_rows_are_the_published_defaults_and_the_readme_use():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch
    from workloads import ALL, HELDOUT, SUITE, base
    import onepass.optim
    assert len(SUITE) >= 10 and not set(SUITE) & set(HELDOUT)
    assert set(HELDOUT) == {"uci_boston", "uci_concrete", "uci_wine", "uci_yacht", "token_mlp"}
    params = [torch.nn.Parameter(torch.zeros(2))]
    adam, _ = base.baseline_optimizer("adam", params, 100)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["lr"] == 1e-3
    sgd, _ = base.baseline_optimizer("sgd", params, 100)
    assert sgd.defaults["lr"] == 0.1 and sgd.defaults["momentum"] == 0.9
    _, schedule = base.baseline_optimizer("adamw_cosine", params, 100)
    assert schedule(0) == pytest.approx(0.2) and schedule(4) == pytest.approx(1.0) and schedule(99) < 0.01
    config = base.onepass_config()
    opt = base.onepass_optimizer(params, config, lambda: params[0].sum(), None)
    plain = onepass.optim.AdamW(params, val_loss=lambda: params[0].sum())
    assert type(opt) is onepass.optim.AdamW and config["fold"] == onepass.optim.recipe.recipe("adamw")["loop"]["fold"]
    assert opt.hyperparameters == plain.hyperparameters and opt._config == plain._config


def test_equal_time_rows_give_the_baselines_onepass_wall_clock(tmp_path, monkeypatch):
    suite = _suite()
    runs, out = tmp_path / "runs.jsonl", tmp_path / "suite.json"
    eqtime = ["adam_eqtime", "adamw_eqtime", "adamw_cosine_eqtime"]
    args = ["--workloads", "uci_energy", "--rows", "onepass", "adam", "adamw", "adamw_cosine", *eqtime,
            "--seeds", "2", "--steps", "0.005", "--workers", "1", "--quiet", "--runs", str(runs),
            "--json", str(out), "--markdown", str(tmp_path / "table.md"), "--plot", str(tmp_path / "suite.png")]
    result = suite.main(args)
    entry = json.loads(out.read_text())["workloads"]["uci_energy"]
    rows, steps = entry["rows"], entry["steps"]
    assert set(rows) == {"onepass", "adam", "adamw", "adamw_cosine", *eqtime}
    records = suite.Runs(runs).records
    for row in eqtime:
        r, base = rows[row], suite.EQTIME[row]
        assert r["baseline"] == base and r["updates"] >= steps
        # the update count is the baseline's at onepass's median seconds over its own, from the same run's records
        assert r["reference"]["onepass_seconds"] == rows["onepass"]["seconds"]
        assert r["reference"]["baseline_seconds"] == rows[base]["seconds"]
        assert r["updates"] == max(steps, round(steps * statistics.median(rows["onepass"]["seconds"])
                                                / statistics.median(rows[base]["seconds"])))
        # each seed's run is the baseline's own row trained for that many updates (cosine stretched to them)
        assert r["values"] == [records[suite.key(suite.job("uci_energy", base, s, r["updates"]))]["test"]
                               for s in range(2)]
        assert r["time_ratio"] == pytest.approx(statistics.median(r["seconds"])
                                                / statistics.median(rows["adam"]["seconds"]))
    best = min(eqtime, key=lambda row: rows[row]["median"])
    assert entry["best_eqtime"] == best and entry["best_default"] in ("adam", "adamw", "adamw_cosine")
    assert entry["onepass_eqtime_ratio"] == pytest.approx(rows["onepass"]["median"] / rows[best]["median"])
    assert result["summary"]["equal_time"]["wins"] == int(entry["onepass_eqtime_ratio"] <= 1)
    text = (tmp_path / "table.md").read_text()
    assert "at equal wall-clock onepass wins on" in text and "onepass / best equal-time" in text
    assert f"[{rows['adam_eqtime']['updates']}]" in text

    # asked for alone, the equal-time rows read the onepass (and baseline) runs from the cache and rerun none
    lines = len(runs.read_text().splitlines())
    monkeypatch.setattr(suite, "_work", lambda job: pytest.fail(f"reran {job}"))
    alone = suite.main(args[:3] + eqtime + args[10:-6] + ["--cached-only"])
    assert {r: alone["workloads"]["uci_energy"]["rows"][r] for r in eqtime} == {r: rows[r] for r in eqtime}
    again = suite.main(args[:3] + eqtime + args[10:-6])
    assert again["workloads"]["uci_energy"]["onepass_eqtime_ratio"] == entry["onepass_eqtime_ratio"]
    assert len(runs.read_text().splitlines()) == lines
    monkeypatch.undo()

    # --time-ratios: the update count from a time ratio measured apart, not from the cached seconds
    timed = tmp_path / "timing.json"
    timed.write_text(json.dumps({"workloads": {"uci_energy": {"rows": {"onepass": {"time_ratio": 3.0}}}}}))
    quiet = suite.main(args[:3] + eqtime + args[10:-6] + ["--time-ratios", str(timed)])["workloads"]["uci_energy"]
    assert {quiet["rows"][r]["updates"] for r in eqtime} == {3 * steps}


def test_equal_time_updates():
    suite = _suite()
    assert suite.equal_time_updates(100, [3.0, 2.0, 10.0], [1.0, 2.0, 1.0]) == 300
    assert suite.equal_time_updates(100, [1.0], [2.0]) == 100      # load, not a cheaper onepass


def test_ratio_interval_is_the_seeds_spread_of_the_median_ratio():
    suite = _suite()
    best = [1.0, 1.2, 0.9, 1.1, 1.05, 0.95]
    assert suite.ratio_interval(best, best) == [1.0, 1.0]                 # paired: a row against itself
    low, high = suite.ratio_interval([2 * v for v in best], best)
    assert low == pytest.approx(2.0) and high == pytest.approx(2.0)
    noisy = [0.5, 2.0, 0.8, 1.6, 1.0, 1.3]                                # same scale, a wide spread
    low, high = suite.ratio_interval(noisy, best)
    assert low < 1.0 < high
    assert suite.ratio_interval(noisy, best) == [low, high]               # a fixed generator
    assert suite.ratio_interval(best[:4], best[:4]) is None               # too few seeds to say
    low, high = suite.ratio_interval([None] * 6, best)                    # diverged runs are infinitely worse
    assert low == high == math.inf
    entry = suite.compare({"adam": {"median": 1.0, "values": best}, "onepass": {"median": 2.0, "values": [2 * v for v in best]}})
    assert entry["onepass_ratio_interval"] == pytest.approx([2.0, 2.0])
    few = {"rows": {"onepass": {"time_ratio": None}}, "onepass_ratio": 0.5}          # < 5 seeds: no interval
    summary = suite.summarise({"w": {"rows": {"onepass": {"time_ratio": None}}, **entry}, "few": few})
    assert summary["clear_losses"] == ["w"] and summary["clear_wins"] == [] and summary["wins"] == 1


def test_onepass_sgd_row_takes_its_own_overrides(tmp_path):
    suite = _suite()
    result = suite.main(["--workloads", "uci_energy", "--rows", "onepass_sgd", "--seeds", "1", "--steps", "0.005",
                         "--workers", "1", "--quiet", "--runs", str(tmp_path / "runs.jsonl"),
                         "--onepass-sgd", '{"lr": 0.01, "momentum": 0.9}', "--markdown", str(tmp_path / "t.md")])
    assert result["recipe"]["sgd"]["lr"] == 0.01 and result["recipe"]["sgd_overrides"] == {"lr": 0.01, "momentum": 0.9}
    assert result["recipe"]["adamw"].get("lr") is None                    # the onepass row keeps the recipe
    learned = result["workloads"]["uci_energy"]["rows"]["onepass_sgd"]["hyperparameters_median"]
    assert 0.5 < learned["momentum/group0"] < 1.0                          # started at 0.9, so tuned (0 is "off")


def test_a_schedule_ablation_runs_the_onepass_row_under_that_lr_scheduler(tmp_path):
    """``--onepass '{"schedule": "cosine"}'``: the loop drives onepass with the
    ``adamw_cosine`` row's LambdaLR, the optimizer learning a factor on it, so the
    rate in use ends at the cosine's 0 while the learned value does not."""
    suite = _suite()
    result = suite.main(["--workloads", "uci_energy", "--rows", "onepass", "--seeds", "1", "--steps", "0.005",
                         "--workers", "1", "--quiet", "--runs", str(tmp_path / "runs.jsonl"),
                         "--onepass", '{"schedule": "cosine"}', "--markdown", str(tmp_path / "t.md")])
    learned = result["workloads"]["uci_energy"]["rows"]["onepass"]["hyperparameters_median"]
    assert learned["lr/group0"] > 1e-4 and learned["lr_in_use/group0"] == pytest.approx(0.0, abs=1e-12)
    plain = suite.main(["--workloads", "uci_energy", "--rows", "onepass", "--seeds", "1", "--steps", "0.005",
                        "--workers", "1", "--quiet", "--runs", str(tmp_path / "runs.jsonl"),
                        "--markdown", str(tmp_path / "u.md")])
    in_use = plain["workloads"]["uci_energy"]["rows"]["onepass"]["hyperparameters_median"]
    assert in_use["lr_in_use/group0"] == pytest.approx(in_use["lr/group0"])


def test_the_token_mlp_gives_every_row_its_two_parameter_groups(tmp_path):
    """The held-out token MLP (the recipe issue's new user's script): the
    embedding in a group without weight decay, for onepass and the baselines
    alike; onepass reports both groups, the embedding's decay untouched."""
    suite = _suite()
    from workloads import ALL
    workload = ALL["token_mlp"]
    groups = workload.parameters(workload.model(0))
    assert [g.get("weight_decay") for g in groups] == [0.0, None]
    assert groups[0]["params"][0].shape == (64, 32)
    result = suite.main(["--workloads", "token_mlp", "--rows", "onepass", "adamw", "--seeds", "1", "--steps", "0.05",
                         "--workers", "1", "--quiet", "--runs", str(tmp_path / "runs.jsonl"),
                         "--markdown", str(tmp_path / "t.md")])
    learned = result["workloads"]["token_mlp"]["rows"]["onepass"]["hyperparameters_median"]
    assert learned["weight_decay/group0"] == 0.0 and learned["weight_decay/group1"] == pytest.approx(1e-2)
    assert learned["lr/group0"] == learned["lr/group1"] != pytest.approx(1e-3)      # one tuned rate, moved
    assert result["workloads"]["token_mlp"]["rows"]["adamw"]["median"] > 0


def test_the_grid_row_is_held_to_the_bar_onepass_is(tmp_path):
    """The 13-run Adam grid is summarised against the best default like onepass
    (wins, within 1.03x, worst), in the JSON and the table, also re-rendered."""
    suite = _suite()
    out, table = tmp_path / "grid.json", tmp_path / "grid.md"
    result = suite.main(["--workloads", "uci_energy", "--rows", "onepass", "adam", "adamw", "adam_grid", "--seeds", "1",
                         "--steps", "0.005", "--workers", "1", "--quiet", "--runs", str(tmp_path / "runs.jsonl"),
                         "--json", str(out), "--markdown", str(table)])
    entry = result["workloads"]["uci_energy"]
    best = min(("adam", "adamw"), key=lambda r: entry["rows"][r]["median"])
    ratio = entry["rows"]["adam_grid"]["median"] / entry["rows"][best]["median"]
    grid = result["summary"]["adam_grid"]
    assert grid["ratios"]["uci_energy"] == pytest.approx(ratio)
    assert grid["wins"] == int(ratio <= 1.0) and grid["max_ratio"] == pytest.approx(ratio)
    assert result["summary"]["grid"]["ratios"]["uci_energy"] == pytest.approx(
        entry["rows"]["onepass"]["median"] / entry["rows"]["adam_grid"]["median"])
    assert "\nadam_grid: at or below the best default on" in table.read_text()
    stored = json.loads(out.read_text())
    del stored["summary"]["adam_grid"]                                    # written before the grid had its line
    out.write_text(json.dumps(stored))
    again = suite.main(["--from-json", str(out), "--markdown", str(tmp_path / "again.md")])
    assert again["summary"]["adam_grid"]["ratios"] == pytest.approx(grid["ratios"])
    for e in stored["workloads"].values():                                 # a result without the grid row gains no line
        del e["rows"]["adam_grid"]
        e.pop("adam_grid_ratio"), e.pop("adam_grid_ratio_interval", None)
    out.write_text(json.dumps(stored))
    plain = suite.main(["--from-json", str(out), "--markdown", str(tmp_path / "plain.md")])
    assert "adam_grid" not in plain["summary"] and "adam_grid:" not in (tmp_path / "plain.md").read_text()


def test_each_default_is_held_to_the_bar_against_the_best_of_the_others():
    suite = _suite()
    workloads = {"w1": {"rows": {"adam": {"median": 1.0}, "prodigy": {"median": None}, "schedulefree": {"median": 2.0},
                                 "onepass": {"median": 0.5}}},
                 "w2": {"rows": {"adam": {"median": 3.0}, "prodigy": {"median": 1.0}, "schedulefree": {"median": 3.0}}}}
    s = suite.summarise_defaults(workloads)
    assert set(s) == {"adam", "prodigy", "schedulefree"}                  # onepass is never one of the others
    assert s["adam"]["ratios"] == {"w1": 0.5, "w2": 3.0} and s["adam"]["wins"] == 1 and s["adam"]["max_ratio"] == 3.0
    assert s["prodigy"]["diverged"] == ["w1"] and s["prodigy"]["ratios"] == {"w2": pytest.approx(1 / 3)}
    assert s["prodigy"]["workloads"] == 2 and s["prodigy"]["wins"] == 1   # a divergence is never a win
    assert s["schedulefree"]["ratios"] == {"w1": 2.0, "w2": 3.0} and s["schedulefree"]["within_1.03"] == 0
