"""Population members equal the same initialisations run alone by run_training."""
import csv
import json

import pytest
import torch

from onepass.experiment.config import load_config
from onepass.experiment.run import run_training
from onepass.sweep.plan import PAPER_ALGORITHMS
from onepass.sweep.population import population_applies, train_population

STEPS, INITS = 30, (0, 1)
ALGORITHMS = [*PAPER_ALGORITHMS, "random_training_set_only"]


def config(algorithm, init, *overrides):
    return load_config(["uci_energy", algorithm],
                       [f"seed={init}", f"training.steps={STEPS}", "logging.interval=7",
                        "logging.tensorboard=false", *overrides], random_init=init)


def read_rows(run_dir):
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def assert_same_rows(a, b):
    assert len(a) == len(b) and a[0].keys() == b[0].keys()
    for ra, rb in zip(a, b):
        for key in ra:
            if key == "train_seconds":  # the clock, not a result
                continue
            if ra[key] == "" or rb[key] == "":
                assert ra[key] == rb[key], key
            else:
                assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-4, abs=1e-7), key


def assert_same_summary(pop, single):
    assert set(pop) - {"population", "init_index"} == set(single) - {"checkpoint"}
    assert pop["status"] == single["status"] and pop["steps"] == single["steps"]
    assert pop["final_step"] == single["final_step"] and pop["diverged"] == single["diverged"]
    assert pop["error"] == single["error"]
    for key, value in single["final"].items():
        if value is None:
            assert pop["final"][key] is None, key
            continue
        assert pop["final"][key] == pytest.approx(value, rel=1e-4, abs=1e-7), key
    assert pop["hyperparameters"].keys() == single["hyperparameters"].keys()
    for name, value in single["hyperparameters"].items():
        mine = pop["hyperparameters"][name]
        if isinstance(value, dict):
            for stat in value:
                assert mine[stat] == pytest.approx(value[stat], rel=1e-4), (name, stat)
        else:
            assert mine == pytest.approx(value, rel=1e-4), name


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_members_equal_single_runs(shared_data, tmp_path, algorithm):
    configs = [config(algorithm, i) for i in INITS]
    assert all(population_applies(c) for c in configs)
    pop_dirs = [tmp_path / "pop" / str(i) for i in INITS]
    summaries = train_population(configs, pop_dirs, data_dir=shared_data,
                                 extra_summary=[{"init_index": i} for i in INITS],
                                 save_states_to=[tmp_path / f"pop{i}.pt" for i in INITS])
    for i, c, pop_dir, pop in zip(INITS, configs, pop_dirs, summaries):
        single_dir = tmp_path / "single" / str(i)
        single = run_training(c, single_dir, data_dir=shared_data, progress=False,
                              save_state_to=tmp_path / f"single{i}.pt")
        written = json.loads((pop_dir / "summary.json").read_text())
        assert written["init_index"] == i and written["status"] == "finished"
        assert_same_summary(written, single)
        assert (pop_dir / "config.yaml").read_text() == (single_dir / "config.yaml").read_text()
        assert_same_rows(read_rows(pop_dir), read_rows(single_dir))
        pop_state = torch.load(tmp_path / f"pop{i}.pt", weights_only=True)["model"]
        single_state = torch.load(tmp_path / f"single{i}.pt", weights_only=True)["model"]
        assert pop_state.keys() == single_state.keys()
        for key in single_state:
            torch.testing.assert_close(pop_state[key], single_state[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["random_stepped_lr", "ours_lr_momentum"])
def test_diverged_member_is_recorded_and_others_finish(shared_data, tmp_path, algorithm):
    # member 1 diverges after its first log step (update 10), the others finish
    bad = config(algorithm, 1, "hyperparameters.lr=0.5", "hyperparameters.momentum=0.9")
    configs = [config(algorithm, 0), bad, config(algorithm, 2)]
    summaries = train_population(configs, [tmp_path / "pop" / str(i) for i in range(3)],
                                 data_dir=shared_data)
    assert [s["status"] for s in summaries] == ["finished", "diverged", "finished"]
    assert summaries[1]["final_step"] == 7 and summaries[1]["diverged"]["step"] == 10
    for i, (c, pop) in enumerate(zip(configs, summaries)):
        single = run_training(c, tmp_path / "single" / str(i), data_dir=shared_data,
                              progress=False)
        assert_same_summary(json.loads((tmp_path / "pop" / str(i) / "summary.json").read_text()),
                            single)
        assert_same_rows(read_rows(tmp_path / "pop" / str(i)), read_rows(tmp_path / "single" / str(i)))


def test_members_must_share_everything_but_the_initialisation(shared_data, tmp_path):
    with pytest.raises(ValueError, match="may differ only"):
        train_population([config("ours_lr", 0), config("ours_lr", 1, "training.steps=5")],
                         [tmp_path / "a", tmp_path / "b"], data_dir=shared_data)
    assert not population_applies(config("ours_lr", 0, "training.batch_size=32"))
