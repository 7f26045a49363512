"""The one training loop: config → Tuner, the stepped learning rate, the clock."""
import pytest
import torch

from onepass.experiment.config import load_config
from onepass.experiment.loop import TrainClock, step_learning_rate, tuner_from_config
from onepass.experiment.tasks import make_task


def config(*overrides):
    return load_config(["uci_energy", "ours_lr"], ["training.steps=20", *overrides])


def test_tuner_from_config_passes_every_training_option(uci_data_dir):
    c = config("training.max_grad_norm=0.5", "training.rule=adamw")
    task = make_task(c, uci_data_dir, "cpu")
    tuner = tuner_from_config(c, task.build_model(), task.tuner_loss())
    assert tuner.rule.name == "adamw" and tuner.update_interval == 10
    assert set(tuner.hyperparameters) == {"lr", "beta1", "beta2", "eps", "weight_decay"}
    assert tuner.hyperparameters["weight_decay"] == pytest.approx(1e-2)


def test_stepped_learning_rate_is_clipped_and_skips_frozen_members(uci_data_dir):
    from onepass.models import PopulationMLP

    c = config("algorithm.tune=[]", "algorithm.method=none", "hyperparameters.lr=0.9")
    task = make_task(c, uci_data_dir, "cpu", population=2)
    members = [c, config("algorithm.tune=[]", "algorithm.method=none", "hyperparameters.lr=0.1")]
    model = PopulationMLP.from_models([task.build_model(), task.build_model()])
    tuner = tuner_from_config(c, model, task.tuner_loss(), members=members)
    step_learning_rate(tuner, [2.0, 2.0], torch.tensor([False, True]))
    assert [float(v) for v in tuner.hyperparameters["lr"]] == pytest.approx([1.0, 0.1])


def test_clock_skips_the_first_step_of_each_kind_and_shares_a_population():
    class Result:
        def __init__(self, hyper):
            self.hypergradient = {} if hyper else None

    clock = TrainClock(torch.device("cpu"), share=4)
    for hyper in (False, False, True, True):
        started = clock.start_step() - 1.0  # each step "takes" a second
        clock.end_step(started, Result(hyper))
    assert clock.train_seconds == pytest.approx(2.0 / 4, abs=0.01)


def test_reset_optimizer_state_reaches_the_tuner(uci_data_dir):
    c = load_config(["uci_energy", "long_dto_standalone"],
                    ["algorithm.reset_optimizer_state=true", "algorithm.update_interval=5",
                     "algorithm.unroll_steps=5"])
    task = make_task(c, uci_data_dir, "cpu")
    tuner = tuner_from_config(c, task.build_model(), task.tuner_loss())
    assert tuner.reset_optimizer_state


def test_baydin_exact_trains_from_its_config(uci_data_dir, tmp_path):
    from onepass.experiment import run_training
    c = load_config(["uci_energy", "baydin_exact"], ["training.steps=20",
                                                     "logging.tensorboard=false"])
    assert c["algorithm"]["method"] == "baydin_exact"
    assert run_training(c, tmp_path, data_dir=uci_data_dir, progress=False)["status"] == "finished"


@pytest.mark.parametrize("rule", ["sgd", "sgd_nesterov", "adam", "adamw"])
@pytest.mark.parametrize("algorithm", ["ours_lr", "diff_through_opt", "baydin", "baydin_exact"])
def test_a_config_run_equals_the_tuner_built_by_hand(uci_data_dir, rule, algorithm):
    """Every rule × method from a config: the same weights and hyperparameters as a
    Tuner given the rule's defaults and the config's options directly."""
    from onepass.core import Tuner
    from onepass.core.rules import RULES
    tune = ["lr"] if algorithm.startswith("baydin") else ["lr", "weight_decay"]
    c = load_config(["uci_energy", algorithm], ["training.steps=20", f"training.rule={rule}",
                                                f"algorithm.tune={tune}", "training.max_grad_norm=1.0"])
    task = make_task(c, uci_data_dir, "cpu")
    torch.manual_seed(0)
    model = task.build_model()
    by_hand = task.build_model()
    by_hand.load_state_dict(model.state_dict())
    from_config = tuner_from_config(c, model, task.tuner_loss())
    algo = c["algorithm"]
    expected = dict(RULES[rule].defaults, **c["hyperparameters"])
    direct = Tuner(by_hand, **task.tuner_loss(), rule=rule, hyperparameters=expected, tune=tune,
                   method=algo["method"], update_interval=algo["update_interval"],
                   unroll_steps=algo["unroll_steps"], hyper_optimizer=algo["hyper_optimizer"],
                   hyper_lr=algo["hyper_lr"], max_grad_norm=1.0)
    assert from_config.hyperparameters == pytest.approx(direct.hyperparameters)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, task.n_inputs, generator=g)
    batch, val_batch = (x, x[:, :1]), (x[:16], x[:16, :1])
    for _ in range(20):
        from_config.step(batch, val_batch)
        direct.step(batch, val_batch)
    for a, b in zip(model.parameters(), by_hand.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert from_config.hyperparameters == pytest.approx(direct.hyperparameters, rel=1e-12)
    assert from_config.hyperparameters["lr"] != pytest.approx(expected["lr"])   # it was tuned
