"""onepass.integrations.transformers: a real ``transformers.Trainer`` on CPU with
a tiny GPT-2 built from a config (nothing downloaded) on synthetic tokens.

The learned values are read back from ``trainer.state.log_history`` and from
the TensorBoard event files; a run resumed from its step-10 checkpoint is held
to the uninterrupted run; two accumulated micro-batches to one batch of both.
"""
from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from onepass.integrations.transformers import TrainerAdamW, optimizer_of, tune



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these models are tiny, and on a busy machine two threads
    that spin-wait for each other make a run ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


VOCAB, LENGTH = 64, 16
LR, WEIGHT_DECAY = 3e-3, 0.05


def sequences(n: int, seed: int, labels: bool = True) -> list[dict]:
    """Counting sequences mod VOCAB with a random start and step 1 or 2: learnable."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(VOCAB, (n, 1), generator=g)
    stride = torch.randint(1, 3, (n, 1), generator=g)
    ids = (start + stride * torch.arange(LENGTH)) % VOCAB
    return [{"input_ids": row, "labels": row} if labels else {"input_ids": row} for row in ids]


TRAIN, EVAL = sequences(64, 0), sequences(24, 1)    # 8 updates an epoch; 3 eval batches


def model(dropout: float = 0.1) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32,
                                      resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                                      bos_token_id=0, eos_token_id=0))


def arguments(out: Path, **overrides) -> TrainingArguments:
    settings = dict(output_dir=str(out), use_cpu=True, report_to=["tensorboard"], logging_steps=5,
                    save_steps=10, max_steps=20, per_device_train_batch_size=8, per_device_eval_batch_size=8,
                    learning_rate=LR, weight_decay=WEIGHT_DECAY, warmup_steps=4, lr_scheduler_type="linear",
                    seed=0, disable_tqdm=True, dataloader_num_workers=0)
    settings.update(overrides)
    return TrainingArguments(**settings)


def trained(out: Path, resume: str | None = None, train=TRAIN, eval_=EVAL, dropout=0.1, fold=None,
            **overrides) -> Trainer:
    """The one line, with a window of 5 and the weight decay tuned too; the recipe's fold
    (the last quarter of the updates frozen) unless ``fold`` says otherwise."""
    trainer = tune(Trainer(model=model(dropout), args=arguments(out, **overrides), train_dataset=train,
                           eval_dataset=eval_), update_interval=5, tune=("lr", "weight_decay"), fold=fold)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def onepass_of(trainer: Trainer) -> TrainerAdamW:
    optimizer = optimizer_of(trainer)
    assert isinstance(optimizer, TrainerAdamW) and trainer.optimizer.optimizer is optimizer   # in accelerate's wrapper
    return optimizer


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Trainer:
    return trained(tmp_path_factory.mktemp("whole"))


def test_hyperparameters_move_and_are_logged_to_log_history_and_tensorboard(whole):
    optimizer = onepass_of(whole)
    # a window of 5, the fold from update 15 on: 3 hyperparameter steps
    assert optimizer.steps_taken == 20 and optimizer.validation.taken == 3 and optimizer.is_frozen
    learned = optimizer.tuner.hyperparameters
    assert learned["lr"] != pytest.approx(LR, rel=1e-3)
    assert learned["weight_decay"] != pytest.approx(WEIGHT_DECAY, rel=1e-3)

    history = [h for h in whole.state.log_history if "onepass/lr/group0" in h]
    assert [h["step"] for h in history] == [5, 10, 15, 20]
    assert history[-1]["onepass/weight_decay/group0"] == pytest.approx(learned["weight_decay"])
    assert len({h["onepass/weight_decay/group0"] for h in history}) == 3    # one hyperparameter step apart, then frozen
    assert all("onepass/val_loss" in h and "loss" in h for h in history)
    assert not any(k.startswith("onepass/beta") for k in history[0])     # the tuned values only
    # lr/group0 is the learned value; lr_in_use/group0 is it times the Trainer's linear schedule
    # (warm-up of 4 updates, then down to 0 at update 20): at the step-15 log, 5/16 of the learned rate.
    assert history[-1]["onepass/lr/group0"] == pytest.approx(learned["lr"])
    assert history[2]["onepass/lr_in_use/group0"] == pytest.approx(history[2]["onepass/lr/group0"] * 5 / 16, rel=1e-6)
    assert history[3]["onepass/lr_in_use/group0"] == 0.0
    assert any(h["grad_norm"] > 1.0 for h in history)    # max_grad_norm=1 clipped, and onepass followed

    (events,) = Path(whole.args.output_dir).glob("runs/*")
    accumulator = EventAccumulator(str(events)).Reload()
    for tag in ("onepass/lr/group0", "onepass/weight_decay/group0", "onepass/val_loss"):
        scalars = accumulator.Scalars(f"train/{tag}")
        assert [s.step for s in scalars] == [5, 10, 15, 20]
        assert [s.value for s in scalars] == pytest.approx([h[tag] for h in history], rel=1e-6)


def test_resuming_from_a_checkpoint_equals_the_uninterrupted_run(whole, tmp_path):
    middle = Path(whole.args.output_dir) / "checkpoint-10"
    assert middle.is_dir()
    resumed = trained(tmp_path, resume=str(middle))
    optimizer, uninterrupted = onepass_of(resumed), onepass_of(whole)
    assert optimizer.steps_taken == 20 and optimizer.validation.taken == 3
    for p, q in zip(resumed.model.parameters(), whole.model.parameters()):
        assert torch.equal(p, q)    # bit for bit: at step 10 the eval data was 2 batches into its 3
    assert optimizer.tuner.hyperparameters == uninterrupted.tuner.hyperparameters


class Recording(Trainer):
    """Records the batches each update trains on (the model in train mode)."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            self.trained_on = getattr(self, "trained_on", []) + [inputs["input_ids"].clone()]
        return super().compute_loss(model, inputs, *args, **kwargs)


def test_the_default_use_gives_the_recipe_lr_tuned_then_the_fold_with_eval_batches(tmp_path):
    """``tune(trainer)`` with nothing else: the learning rate tuned (the weight decay kept at
    its start), the best-validation weights kept, and the last quarter of the updates (from
    update 18 of 24) frozen, with 3 eval batches to the epoch's 8 training batches: of the
    fold's 6 batches the 4th (update 22) is the first eval batch."""
    trainer = tune(Recording(model=model(), args=arguments(tmp_path, max_steps=24, save_strategy="no", report_to=[]),
                             train_dataset=TRAIN, eval_dataset=EVAL), update_interval=5)
    trainer.train()
    optimizer = onepass_of(trainer)
    assert optimizer.tuner.tuned == ("lr",) and optimizer.is_frozen
    assert optimizer.hyperparameters["weight_decay/group0"] == pytest.approx(WEIGHT_DECAY)
    assert optimizer.validation.taken == 3                       # updates 5, 10, 15
    assert optimizer.fold.fold_at == 18 and optimizer.fold.best is not None
    assert optimizer.fold_batches.drawn == 6 and optimizer.fold_batches.taken == 1
    first_eval = torch.stack([row["input_ids"] for row in EVAL[:8]])
    train_rows = {tuple(row["input_ids"].tolist()) for row in TRAIN}
    assert len(trainer.trained_on) == 24
    for update, ids in enumerate(trainer.trained_on, start=1):
        if update == 22:
            assert torch.equal(ids, first_eval)
        else:
            assert all(tuple(row.tolist()) in train_rows for row in ids), update


def test_resuming_inside_the_fold_equals_the_uninterrupted_run(tmp_path):
    """fold=0.4 of 20 updates: frozen from update 12; the step-16 checkpoint is 4 batches into
    the fold, one of them an eval batch."""
    whole = trained(tmp_path / "whole", fold=0.4, save_steps=8, report_to=[])
    middle = Path(whole.args.output_dir) / "checkpoint-16"
    assert middle.is_dir()
    resumed = trained(tmp_path / "resumed", resume=str(middle), fold=0.4, save_steps=8, report_to=[])
    optimizer, uninterrupted = onepass_of(resumed), onepass_of(whole)
    assert optimizer.is_frozen and optimizer.fold_batches.drawn == 8 and optimizer.fold_batches.taken == 2
    for p, q in zip(resumed.model.parameters(), whole.model.parameters()):
        assert torch.equal(p, q)
    assert optimizer.tuner.hyperparameters == uninterrupted.tuner.hyperparameters


def test_two_accumulated_micro_batches_equal_one_batch_of_both(tmp_path):
    """Without dropout (whose random draws differ between the two layouts)."""
    # No fold: it replaces whole micro-batches (16 to 3 eval batches here, 8 to 3 there)
    small = trained(tmp_path / "a", per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=10,
                    save_strategy="no", report_to=[], dropout=0.0, fold=0)
    big = trained(tmp_path / "b", max_steps=10, save_strategy="no", per_device_train_batch_size=8, report_to=[],
                  dropout=0.0, fold=0)
    for p, q in zip(small.model.parameters(), big.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert onepass_of(small).tuner.hyperparameters == pytest.approx(onepass_of(big).tuner.hyperparameters,
                                                                    rel=1e-4)


def test_bf16_runs(tmp_path):
    trainer = trained(tmp_path, bf16=True, max_steps=10, save_strategy="no", report_to=[])
    optimizer = onepass_of(trainer)
    assert optimizer.validation.taken == 1     # the fold from update 8 on
    assert optimizer.hyperparameters["skipped_hypersteps"] == 0.0     # in AMP mode: it would skip, not raise
    assert optimizer.tuner.hyperparameters["lr"] != pytest.approx(LR, rel=1e-3)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


class Generating(Trainer):
    """As TRL's trainers do, ``_prepare_inputs`` makes the training batch itself (here the
    labels, from the inputs, as a generation step would) and keeps state: the batches it saw."""

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        self.seen = getattr(self, "seen", []) + [inputs["input_ids"]]
        return {**inputs, "labels": inputs["input_ids"].clone()}


def test_a_trl_style_trainer_overriding_prepare_inputs_equals_the_plain_trainer(tmp_path):
    """The validation batches do not go through the Trainer's ``_prepare_inputs``: the
    subclass sees the training batches only, and the run equals the plain Trainer's on
    the same batches with their labels."""
    options = dict(max_steps=10, save_strategy="no", report_to=[])
    plain = trained(tmp_path / "plain", **options)
    generating = tune(Generating(model=model(), args=arguments(tmp_path / "trl", **options),
                                 train_dataset=TRAIN, eval_dataset=EVAL), update_interval=5,
                      tune=("lr", "weight_decay"))
    generating.train()
    # the fold from update 8 on; of its 2 batches none is replaced yet (3 eval batches to 8)
    assert len(generating.seen) == 10 and onepass_of(generating).validation.taken == 1
    train_rows = {tuple(row["input_ids"].tolist()) for row in TRAIN}
    assert all(tuple(row.tolist()) in train_rows for ids in generating.seen for row in ids)
    for p, q in zip(generating.model.parameters(), plain.model.parameters()):
        assert torch.equal(p, q)
    assert onepass_of(generating).tuner.hyperparameters == onepass_of(plain).tuner.hyperparameters


def test_a_compiled_model_equals_the_eager_run(tmp_path):
    """``torch_compile=True``: a compiled graph has no double backward, so the differentiated
    updates run the model's eager code; the others, and the validation, the compiled one."""
    options = dict(max_steps=10, save_strategy="no", report_to=[], dropout=0.0)
    eager = trained(tmp_path / "eager", **options)
    compiled = trained(tmp_path / "compiled", torch_compile=True, torch_compile_backend="aot_eager", **options)
    assert type(compiled.model_wrapped).__name__ == "OptimizedModule"
    assert onepass_of(compiled).validation.taken == 1
    for p, q in zip(compiled.model.parameters(), eager.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert onepass_of(compiled).tuner.hyperparameters == pytest.approx(onepass_of(eager).tuner.hyperparameters,
                                                                       rel=1e-5)


def test_tune_wraps_only_the_accelerators_backward_and_training_step(tmp_path):
    trainer = Trainer(model=model(), args=arguments(tmp_path), train_dataset=TRAIN, eval_dataset=EVAL)
    before = dict(vars(trainer))
    tune(trainer)
    changed = sorted(k for k, v in vars(trainer).items() if k not in before or before[k] is not v)
    assert changed == ["optimizer", "training_step"]   # Trainer(optimizers=...)'s own attribute; the fold's batches
    assert sorted(k for k in vars(trainer.accelerator) if k == "backward") == ["backward"]
    assert type(trainer.callback_handler.callbacks[0]).__module__ == "onepass.integrations.transformers"


# ------------------------------------------------------------------ bad input


def test_an_eval_batch_without_labels_is_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match=r"^onepass: the model returned no loss for an eval batch "
                                         r"\(inputs: input_ids\); the eval dataset must carry labels"):
        trained(tmp_path, eval_=sequences(16, 1, labels=False), save_strategy="no", report_to=[])


def test_no_eval_dataset_or_an_optimizer_given_is_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match=r"^tune\(trainer\): the Trainer has no eval_dataset"):
        tune(Trainer(model=model(), args=arguments(tmp_path), train_dataset=TRAIN))
    net = model()
    given = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"^tune\(trainer\) builds the optimizer itself"):
        tune(Trainer(model=net, args=arguments(tmp_path), train_dataset=TRAIN, eval_dataset=EVAL,
                     optimizers=(given, None)))


def test_without_transformers_the_import_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)      # what Python does for a missing package
    monkeypatch.delitem(sys.modules, "onepass.integrations.transformers")
    with pytest.raises(ImportError) as info:
        importlib.import_module("onepass.integrations.transformers")
    assert str(info.value) == "onepass.integrations.transformers needs transformers: pip install 'onepass[transformers]'"


RANK_SCRIPT = """
import json, os, sys, warnings
import torch
warnings.filterwarnings("ignore")
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
import transformers
transformers.logging.set_verbosity_error()
import test_transformers as t
trainer = t.ddp_run({out!r}, int(os.environ["WORLD_SIZE"]))
with open(os.path.join({out!r}, "rank" + os.environ["RANK"] + ".json"), "w") as f:
    json.dump(t.summary(trainer), f)      # a file each: the ranks' stdout lines interleave
"""


def ddp_run(out: str, world: int) -> Trainer:
    """10 updates of 8 sequences (8 // world per rank), eval batches of 8 (likewise), no dropout."""
    trainer = tune(Trainer(model=model(0.0), args=arguments(Path(out), per_device_train_batch_size=8 // world,
                                                             per_device_eval_batch_size=8 // world,
                                                             save_strategy="no", report_to=[], max_steps=10),
                           train_dataset=TRAIN, eval_dataset=EVAL), update_interval=5, tune=("lr", "weight_decay"))
    trainer.train()
    return trainer


def summary(trainer: Trainer) -> dict:
    return {"hyperparameters": optimizer_of(trainer).tuner.hyperparameters,
            "weights": torch.cat([p.detach().flatten() for p in trainer.model.parameters()]).tolist()}


def test_ddp_on_two_ranks_equals_one_process(tmp_path):
    """torchrun, 2 CPU ranks (gloo): the differentiated updates run on the unwrapped model and the
    optimizer averages across ranks, so both ranks hold the same weights and hyperparameters, those
    of one process on the whole batches."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path / "out")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(port), str(script)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]
    alone = summary(ddp_run(str(tmp_path / "alone"), 1))
    assert ranks[0]["hyperparameters"] == pytest.approx(alone["hyperparameters"], rel=1e-5)
    assert ranks[0]["hyperparameters"]["lr"] != pytest.approx(LR, rel=1e-3)
    torch.testing.assert_close(torch.tensor(ranks[0]["weights"]), torch.tensor(alone["weights"]),
                               rtol=1e-4, atol=2e-5)   # float32 sums in another order


def test_training_stopped_before_the_fold_ends_on_the_best_weights(tmp_path):
    """Stopped at update 12 of 24 (the fold would start at 18): the weights of the lowest
    validation loss of the two hyperparameter steps are put back at the end."""
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= 12:
                control.should_training_stop = True

    trainer = tune(Trainer(model=model(), args=arguments(tmp_path, max_steps=24, save_strategy="no", report_to=[]),
                           train_dataset=TRAIN, eval_dataset=EVAL, callbacks=[Stop()]), update_interval=5)
    trainer.train()
    optimizer = onepass_of(trainer)
    assert optimizer.steps_taken == 12 and not optimizer.fold.folded and optimizer.validation.taken == 2
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    kept = optimizer.fold.best.copies[:len(params)]
    assert all(torch.equal(p, q) for p, q in zip(params, kept))
    assert optimizer.fold.best.loss == min(optimizer.fold.best.loss, torch.tensor(optimizer.validation.last))
