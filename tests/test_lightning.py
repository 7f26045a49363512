"""onepass.integrations.lightning: a real ``lightning.Trainer`` on CPU.

Each run is held to an independent one: the same training written as a plain
loop with ``onepass.optim`` (float64, so weights and hyperparameters agree to
rounding), with Lightning's gradient clipping and an LR scheduler; a resumed
run to the uninterrupted one; two accumulated micro-batches to one batch of
their concatenation; bf16-mixed to the plain loop under the same autocast.
The learned values are read back from the CSV logger's file.
"""
from __future__ import annotations

import csv
import importlib
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.functional import mse_loss
from torch.utils.data import DataLoader, TensorDataset

import lightning
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

import onepass.optim as oo
from onepass.integrations.lightning import OnepassCallback
from onepass.optim.recipe import recipe



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these models are tiny, and on a busy machine two threads
    that spin-wait for each other make a run ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


g = torch.Generator().manual_seed(0)
X, XV = torch.randn(96, 4, generator=g), torch.randn(32, 4, generator=g)
W = torch.randn(4, 1, generator=g)
Y, YV = torch.tanh(X @ W) + 0.1 * torch.randn(96, 1, generator=g), torch.tanh(XV @ W)
DOUBLE = torch.float64
INTERVAL = 5
SETTINGS = dict(lr=0.02, weight_decay=1e-2, update_interval=INTERVAL, tune=("lr", "weight_decay"))


def make_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


class Regression(lightning.LightningModule):
    def __init__(self, schedule: bool = False, optimizer: str = "onepass", dtype=DOUBLE):
        super().__init__()
        self.net = make_net().to(dtype)
        self.schedule, self.optimizer_kind = schedule, optimizer

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = mse_loss(self(x), y)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self):
        if self.optimizer_kind == "torch":
            return torch.optim.SGD(self.parameters(), lr=0.01)
        opt = oo.AdamW(self.parameters(), **SETTINGS)
        if not self.schedule:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, schedule),
                                                   "interval": "step"}}


def schedule(step: int) -> float:
    return min(1.0, (step + 1) / 8)


def loaders(batch_size: int = 16, dtype=DOUBLE):
    return (DataLoader(TensorDataset(X.to(dtype), Y.to(dtype)), batch_size=batch_size),
            DataLoader(TensorDataset(XV.to(dtype), YV.to(dtype)), batch_size=16))


def trainer(tmp_path: Path, callbacks=(), onepass: dict | None = None, **kwargs) -> lightning.Trainer:
    options = dict(accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="logs"), log_every_n_steps=1,
                   enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                   num_sanity_val_steps=0, limit_val_batches=0)
    options.update(kwargs)
    return lightning.Trainer(callbacks=[OnepassCallback(**(onepass or {})), *callbacks], **options)


def hypersteps(run: lightning.Trainer) -> int:
    (callback,) = [c for c in run.callbacks if isinstance(c, OnepassCallback)]
    return callback.val_batches_taken


def plain_loop(steps: int, *, dtype=torch.float64, clip=None, schedule_on=False, autocast=False, scaler=None,
               fold=None):
    """The same training with onepass.optim in a plain loop: batches in order,
    validation batches cycled; ``autocast``: bfloat16, or float16 with ``scaler``.
    The recipe's loop step as ``onepass.optim.Fold`` gives it (``fold``: its
    fraction, default the recipe's 0.25), with the callback's way of folding the
    validation data in: of the fold's batches, 2 validation batches to 6
    training batches, so every 4th is the next validation batch instead."""
    net = make_net().to(dtype)
    half = torch.float16 if scaler is not None else torch.bfloat16
    val_batches = [(XV[i:i + 16].to(dtype), YV[i:i + 16].to(dtype)) for i in range(0, 32, 16)]
    taken = [0]

    def val_loss():
        x, y = val_batches[taken[0] % len(val_batches)]
        taken[0] += 1
        with torch.autocast("cpu", half, enabled=autocast):
            return mse_loss(net(x), y)
    opt = oo.AdamW(net.parameters(), **SETTINGS, val_loss=val_loss, grad_scaler=scaler)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule) if schedule_on else None
    batches = [(X[i:i + 16].to(dtype), Y[i:i + 16].to(dtype)) for i in range(0, 96, 16)]
    loop_step = oo.Fold(opt, total_steps=steps, fraction=fold, model=net)
    drawn = used = 0
    for t in range(steps):
        x, y = batches[t % len(batches)]
        if loop_step.folded:
            drawn += 1
            if drawn % 4 == 0:
                x, y = val_batches[used % len(val_batches)]
                used += 1
        opt.zero_grad()
        with torch.autocast("cpu", half, enabled=autocast):
            loss = mse_loss(net(x), y)
        (loss if scaler is None else scaler.scale(loss)).backward(create_graph=opt.needs_graph)
        if scaler is not None:
            scaler.unscale_(opt)
        if clip is not None:
            nn.utils.clip_grad_norm_(net.parameters(), clip)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
        if scheduler is not None:
            scheduler.step()
        loop_step.step()
    if loop_step.fraction == 0:
        loop_step.restore_best()
    return net, opt


def assert_same(model: Regression, opt, net: nn.Module, ref_opt, rel: float = 1e-9) -> None:
    for p, q in zip(model.net.parameters(), net.parameters()):
        torch.testing.assert_close(p, q, rtol=rel, atol=rel)
    got, want = opt.hyperparameters, ref_opt.hyperparameters
    got.pop("skipped_hypersteps", None)
    want.pop("skipped_hypersteps", None)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=rel), k


def logged(tmp_path: Path) -> list[dict[str, str]]:
    (metrics,) = tmp_path.glob("logs/version_*/metrics.csv")
    with open(metrics) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("case", ["plain", "clip", "schedule"])
def test_a_lightning_run_equals_the_plain_loop_and_logs_the_hyperparameters(tmp_path, case):
    clip = 0.05 if case == "clip" else None
    model = Regression(schedule=case == "schedule")
    run = trainer(tmp_path, max_steps=23, gradient_clip_val=clip)
    run.fit(model, *loaders())
    net, ref = plain_loop(23, clip=clip, schedule_on=case == "schedule")
    opt = run.optimizers[0]
    # the recipe's fold: the last round(0.25 * 23) = 6 updates frozen, so 3 hyperparameter steps
    assert opt.steps_taken == 23 and hypersteps(run) == 3 and opt.is_frozen
    (callback,) = [c for c in run.callbacks if isinstance(c, OnepassCallback)]
    assert callback.folds[0].fold_at == 17 and callback.folds[0].best is not None
    assert callback._fold_batches.drawn == 6 and callback._fold_batches.taken == 1   # update 21's batch
    assert_same(model, opt, net, ref)
    assert opt.hyperparameters["lr/group0"] != pytest.approx(0.02 * (schedule(22) if case == "schedule" else 1))
    assert opt.hyperparameters["weight_decay/group0"] != pytest.approx(1e-2)

    rows = logged(tmp_path)
    lr = {int(r["step"]): float(r["onepass/lr/group0"]) for r in rows if r.get("onepass/lr/group0")}
    wd = {int(r["step"]): float(r["onepass/weight_decay/group0"]) for r in rows if r.get("onepass/weight_decay/group0")}
    val = {int(r["step"]): float(r["onepass/val_loss"]) for r in rows if r.get("onepass/val_loss")}
    assert sorted(lr) == list(range(23)) and sorted(wd) == list(range(23))   # one row per update
    assert lr[22] == pytest.approx(opt.hyperparameters["lr/group0"], rel=1e-6)
    assert wd[22] == pytest.approx(opt.hyperparameters["weight_decay/group0"], rel=1e-6)
    assert len(set(wd.values())) == 4    # the start and three hyperparameter steps
    assert len({wd[t] for t in range(17, 23)}) == 1    # frozen in the fold
    assert min(val) == INTERVAL - 1      # logged from the first hyperparameter step on


def test_clipping_was_active():
    """The clip case above clips: its gradients' norm exceeds 0.05 (so Lightning's
    clipping had to reach the hyperparameter step to match)."""
    net = make_net().double()
    mse_loss(net(X[:16].double()), Y[:16].double()).backward()
    assert float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in net.parameters()]))) > 0.5


@pytest.mark.parametrize("epoch", [1, 3])
def test_resuming_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path, epoch):
    """Bit for bit. (The module is built in float64 rather than converted by precision="64-true":
    Lightning loads a checkpoint into the module before that conversion, rounding it to float32.)
    6 updates per epoch, 30 in all, a window of 5, the fold from update 22 on (round(7.5) = 8
    updates): the epoch-1 checkpoint (12 updates) is mid-window, with the validation data (2
    batches) in its second pass and the best weights so far kept; the epoch-3 one (24) is in
    the fold, frozen, 2 of its batches drawn."""
    save = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1)
    whole = Regression()
    trainer(tmp_path / "a", [save], max_epochs=5, enable_checkpointing=True).fit(whole, *loaders())
    (middle,) = (tmp_path / "ckpt").glob(f"epoch={epoch}-*.ckpt")

    resumed = Regression()
    with torch.no_grad():
        for p in resumed.parameters():
            p.add_(1.0)                      # the checkpoint, not the initialisation, decides
    run = trainer(tmp_path / "b", max_epochs=5)
    run.fit(resumed, *loaders(), ckpt_path=str(middle))
    opt, whole_opt = run.optimizers[0], whole.trainer.optimizers[0]
    assert opt.steps_taken == whole_opt.steps_taken == 30 and opt.is_frozen
    for p, q in zip(resumed.parameters(), whole.parameters()):
        assert torch.equal(p, q)
    assert opt.hyperparameters == whole_opt.hyperparameters
    assert hypersteps(run) == 4
    (callback,) = [c for c in run.callbacks if isinstance(c, OnepassCallback)]
    assert callback._fold_batches.drawn == 8 and callback._fold_batches.taken == 2
    net, ref = plain_loop(30)
    assert_same(resumed, opt, net, ref)


def test_two_accumulated_micro_batches_equal_one_batch_of_both(tmp_path):
    small = Regression()
    # No fold: it replaces whole micro-batches (12 to 2 validation batches here, 6 to 2 there)
    run_small = trainer(tmp_path / "a", max_steps=12, accumulate_grad_batches=2, onepass={"fold": 0})
    run_small.fit(small, *loaders(batch_size=8))
    big = Regression()
    run_big = trainer(tmp_path / "b", max_steps=12, onepass={"fold": 0})
    run_big.fit(big, *loaders(batch_size=16))
    assert run_small.optimizers[0].steps_taken == 12
    assert_same(small, run_small.optimizers[0], big.net, run_big.optimizers[0], rel=1e-10)
    assert run_small.optimizers[0].hyperparameters["lr/group0"] != pytest.approx(0.02)


def test_bf16_mixed_runs_and_equals_the_plain_loop_under_autocast(tmp_path):
    model = Regression(dtype=torch.float32)
    run = trainer(tmp_path, max_steps=15, precision="bf16-mixed")
    run.fit(model, *loaders(dtype=torch.float32))
    opt = run.optimizers[0]
    net, ref = plain_loop(15, dtype=torch.float32, autocast=True)
    assert hypersteps(run) == 2      # the fold from update 11 on
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # The callback sets skip_non_finite under a mixed precision, so the optimizer is in
    # AMP mode: a non-finite hypergradient would skip a hyperparameter step, not raise.
    assert opt.skip_non_finite is True and opt.val_loss is None   # the callback's val_loss is unset at teardown
    assert opt.hyperparameters.pop("skipped_hypersteps") == 0.0
    assert_same(model, opt, net, ref, rel=1e-5)
    assert opt.hyperparameters["lr/group0"] != pytest.approx(0.02)


def test_16_mixed_with_its_grad_scaler_equals_the_plain_loop_with_that_scaler(tmp_path):
    """float16 autocast and a GradScaler on CPU (Lightning's "16-mixed" is for GPUs; its plugin
    takes a CPU scaler): the callback hands the scaler to the optimizer, which divides its scale
    out of the hyperparameter step, as in a plain loop given grad_scaler=."""
    from lightning.pytorch.plugins import MixedPrecision
    model = Regression(dtype=torch.float32)
    plugin = MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0 ** 10))
    run = trainer(tmp_path, max_steps=10, precision=None, plugins=[plugin], gradient_clip_val=0.05)
    run.fit(model, *loaders(dtype=torch.float32))
    net, ref = plain_loop(10, dtype=torch.float32, autocast=True, clip=0.05,
                          scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 10))
    opt = run.optimizers[0]
    assert hypersteps(run) == 1      # the fold from update 8 on
    assert_same(model, opt, net, ref, rel=1e-5)
    assert opt.hyperparameters["lr/group0"] != pytest.approx(0.02)


# ------------------------------------------------------------------ bad input


def test_a_torch_optimizer_leaves_the_callback_idle(tmp_path):
    model = Regression(optimizer="torch")
    with pytest.warns(UserWarning, match="OnepassCallback is idle: configure_optimizers returned SGD"):
        trainer(tmp_path, max_steps=3).fit(model, *loaders())
    assert model.trainer.global_step == 3


def test_no_validation_data_is_one_clear_line(tmp_path):
    train_loader, _ = loaders()
    with pytest.raises(ValueError, match=r"^OnepassCallback: no validation data .*val_dataloader=") as info:
        trainer(tmp_path, max_steps=3).fit(Regression(), train_loader)
    assert "\n" not in str(info.value)


def test_a_validation_step_returning_nothing_is_one_clear_line(tmp_path):
    class Quiet(Regression):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", mse_loss(self(batch[0]), batch[1]))

    with pytest.raises(ValueError, match=r"^OnepassCallback: validation_step returned NoneType; return"):
        trainer(tmp_path, max_steps=8).fit(Quiet(), *loaders())


def test_value_clipping_multi_process_and_a_backward_without_kwargs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="gradient_clip_algorithm='value' is not supported"):
        trainer(tmp_path, max_steps=3, gradient_clip_val=1.0,
                gradient_clip_algorithm="value").fit(Regression(), *loaders())

    with pytest.MonkeyPatch.context() as patch:     # as a DDP run would see it, without starting one
        patch.setattr(lightning.Trainer, "world_size", property(lambda self: 2))
        with pytest.raises(ValueError, match=r"^OnepassCallback: multi-process training \(world_size=2\) is not"):
            trainer(tmp_path, max_steps=3).fit(Regression(), *loaders())

    class OwnBackward(Regression):
        def backward(self, loss):
            loss.backward()

    with pytest.raises(ValueError, match=r"OwnBackward.backward\(...\) takes no keyword arguments"):
        trainer(tmp_path, max_steps=3).fit(OwnBackward(), *loaders())


def test_an_explicit_val_loss_callable_and_loader(tmp_path):
    """``OnepassCallback(val_dataloader=..., val_loss=fn)`` replaces the module's validation data
    and ``validation_step``: here the second validation batch only, so it equals a plain loop on it."""
    seen = []

    def loss_fn(module, batch):
        seen.append(batch[0].dtype)
        return mse_loss(module(batch[0]), batch[1])
    only_second = DataLoader(TensorDataset(XV[16:], YV[16:]), batch_size=16)
    model = Regression(dtype=torch.float32)
    run = lightning.Trainer(callbacks=[OnepassCallback(val_dataloader=only_second, val_loss=loss_fn, fold=0,
                                                       keep_best=False)],
                            accelerator="cpu", max_steps=10, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, precision="64-true")
    run.fit(model, loaders(dtype=torch.float32)[0])
    assert seen == [torch.float64, torch.float64]    # 64-true: the precision plugin converted the batch
    net = make_net().double()
    opt = oo.AdamW(net.parameters(), **SETTINGS, val_loss=lambda: mse_loss(net(XV[16:].double()), YV[16:].double()))
    for t in range(10):
        opt.zero_grad()
        mse_loss(net(X[16 * (t % 6):16 * (t % 6) + 16].double()),
                 Y[16 * (t % 6):16 * (t % 6) + 16].double()).backward(create_graph=opt.needs_graph)
        opt.step()
    assert_same(model, run.optimizers[0], net, opt)


def test_manual_optimization_equals_the_plain_loop(tmp_path):
    class Manual(Regression):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(mse_loss(self(batch[0]), batch[1]))
            opt.step()

    model = Manual()
    run = trainer(tmp_path, max_steps=12)
    run.fit(model, *loaders())
    net, ref = plain_loop(12)
    assert hypersteps(run) == 1      # the fold from update 9 on
    assert_same(model, run.optimizers[0], net, ref)


def test_without_lightning_the_import_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)      # what Python does for a missing package
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "onepass.integrations.lightning")
    with pytest.raises(ImportError) as info:
        importlib.import_module("onepass.integrations.lightning")
    assert str(info.value) == "onepass.integrations.lightning needs Lightning: pip install 'onepass[lightning]'"


def test_attention_takes_the_math_kernel_on_the_differentiated_updates(tmp_path):
    """``scaled_dot_product_attention``'s fused CPU kernel has no double backward;
    the callback runs those updates' training_step on the math kernel."""
    class Attention(Regression):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(1, 8).double()

        def forward(self, x):
            h = self.embed(x.unsqueeze(-1)).unflatten(-1, (2, 4)).transpose(1, 2)    # (batch, heads, 4, 4)
            h = nn.functional.scaled_dot_product_attention(h, h, h, is_causal=True)
            return self.net(h.mean(dim=(1, 3)))

    q = torch.randn(2, 2, 4, 4, dtype=DOUBLE, requires_grad=True)      # as in the model
    g, = torch.autograd.grad(nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).sum(), q,
                             create_graph=True)
    with pytest.raises(RuntimeError, match="derivative for .* is not implemented"):
        g.sum().backward()                      # what a plain create_graph backward meets
    model = Attention()
    run = trainer(tmp_path, max_steps=10)
    run.fit(model, *loaders())
    assert hypersteps(run) == 1      # the fold from update 8 on
    assert run.optimizers[0].hyperparameters["lr/group0"] != pytest.approx(0.02)


def test_a_compiled_model_equals_the_plain_loop(tmp_path):
    """A module whose network is ``torch.compile``d: a compiled graph has no double backward,
    so the callback runs the differentiated updates' training_step on the eager code.
    (``trainer.fit(torch.compile(module))`` compiles training_step itself, whose ``self.log``
    torch.compile cannot trace, with any optimizer.)"""
    net = make_net().double()
    compiled = torch.compile(net, backend="aot_eager")
    loss = mse_loss(compiled(X[:16].double()), Y[:16].double())
    g = torch.autograd.grad(loss, list(net.parameters()), create_graph=True)
    with pytest.raises(RuntimeError, match="does not currently support double backward"):
        torch.autograd.grad(sum(v.sum() for v in g), list(net.parameters()))   # what the plain loop meets
    model = Regression()
    model.net = torch.compile(model.net, backend="aot_eager")
    run = trainer(tmp_path, max_steps=12)
    run.fit(model, *loaders())
    assert hypersteps(run) == 1      # the fold from update 9 on
    reference, ref = plain_loop(12)
    assert_same(model, run.optimizers[0], reference, ref)


def test_the_callback_sets_public_attributes_and_wraps_backward_and_training_step(tmp_path):
    """The optimizer gets the validation loss as its public ``val_loss`` attribute (unset at
    teardown); the module's ``backward`` is the one method the callback wraps, and
    ``training_step`` when the recipe folds validation batches into training."""
    seen = {}

    class Look(lightning.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            opt = trainer.optimizers[0]
            seen["module"] = sorted(k for k in vars(pl_module) if callable(vars(pl_module)[k]))
            seen["optimizer"] = sorted(k for k in vars(opt) if k in ("step", "zero_grad"))
            seen["val_loss"] = callable(opt.val_loss)

    model = Regression()
    run = trainer(tmp_path, max_steps=2, callbacks=[Look()])
    run.fit(model, *loaders())
    assert seen == {"module": ["backward", "training_step"], "optimizer": [], "val_loss": True}
    assert run.optimizers[0].val_loss is None and "backward" not in vars(model)
    assert "training_step" not in vars(model)
    model = Regression()
    trainer(tmp_path, max_steps=2, callbacks=[Look()], onepass={"fold": 0}).fit(model, *loaders())
    assert seen["module"] == ["backward"]


def test_the_one_private_name_fails_with_one_line_naming_the_fix(monkeypatch):
    """Lightning's ``_data_source`` (the loaders given to ``trainer.fit`` before its validation loop
    loads them) is read in one place; if a Lightning release moves it, one line says what to do."""
    from types import SimpleNamespace

    from onepass.integrations import _private
    moved = SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(val_loop=SimpleNamespace())))
    with pytest.raises(ValueError, match=r"^OnepassCallback: Lightning .* keeps its validation data elsewhere "
                                         r".*; pass the validation data to the callback: "
                                         r"OnepassCallback\(val_dataloader=\.\.\.\)$"):
        _private.lightning_fit_val_loader(moved)
    monkeypatch.setattr(lightning, "__version__", "3.0.0")
    with pytest.raises(ValueError, match=r"^OnepassCallback: Lightning 3.0.0 is outside the versions .*"
                                         r"OnepassCallback\(val_dataloader=\.\.\.\)$"):
        _private.lightning_fit_val_loader(moved)


def test_a_fit_stopped_before_the_fold_ends_on_the_best_weights(tmp_path):
    """Stopped at update 12 of 23 (the fold would start at 17): the weights of the lowest
    validation loss of the two hyperparameter steps are put back at the end."""
    class Stop(lightning.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step >= 12:
                trainer.should_stop = True

    model = Regression()
    run = trainer(tmp_path, [Stop()], max_steps=23)
    run.fit(model, *loaders())
    (callback,) = [c for c in run.callbacks if isinstance(c, OnepassCallback)]
    (fold,) = callback.folds
    assert run.optimizers[0].steps_taken == 12 and not fold.folded and hypersteps(run) == 2
    kept = fold.best.copies[:len(list(model.parameters()))]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), kept))
    net, ref = plain_loop(12, fold=0.0)     # the same updates, then the best weights at the end
    assert_same(model, run.optimizers[0], net, ref)


def test_a_training_loader_without_a_length_folds_without_validation_batches(tmp_path):
    """An iterable training dataset (no length): the share of validation batches is unknown,
    so the fold freezes the optimizer and trains on the training data only, with a warning."""
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([(X[i:i + 16].double(), Y[i:i + 16].double()) for i in range(0, 96, 16)])

    model = Regression()
    run = trainer(tmp_path, max_steps=23)
    with pytest.warns(UserWarning, match="the fold trains on the training data only"):
        run.fit(model, DataLoader(Stream(), batch_size=None), loaders()[1])
    (callback,) = [c for c in run.callbacks if isinstance(c, OnepassCallback)]
    assert run.optimizers[0].is_frozen and callback._fold_batches is None and "training_step" not in vars(model)


class SpikedSGD(Regression):
    """``onepass.optim.SGD`` (its recipe's guard) whose training loss is scaled
    up a millionfold at one update of the fold."""

    def __init__(self, spike_at: int | None):
        super().__init__()
        self.spike_at = spike_at

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * 1e6 if self.global_step == self.spike_at else loss

    def configure_optimizers(self):
        return oo.SGD(self.parameters(), lr=0.02, momentum=0.5, update_interval=INTERVAL)


def test_the_sgd_recipes_guard_sees_the_training_loss_in_the_fold(tmp_path):
    """23 updates, the fold from update 17 on; the loss blown up at update 19 (global
    step 19, the 20th update): the callback hands it to the fold, whose guard puts
    the best weights back and halves the frozen rate at once."""
    rates = {}
    for spike_at in (None, 19):
        model = SpikedSGD(spike_at)
        run = trainer(tmp_path / str(spike_at), max_steps=23)
        run.fit(model, *loaders())
        (callback,) = [c for c in run.callbacks if isinstance(c, OnepassCallback)]
        (fold,) = callback.folds
        assert fold.guard == recipe("sgd")["loop"]["guard"] and fold.folded
        rates[spike_at] = (fold.backoffs, run.optimizers[0].in_use()[0]["lr"])
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert rates[None][0] == 0 and rates[19][0] == 1
    # the same frozen rate until the spike, then half of it (the guard's back-off)
    assert rates[19][1] == pytest.approx(rates[None][1] / 2, rel=1e-9)
