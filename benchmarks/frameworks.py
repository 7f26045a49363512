"""What the framework integrations add to onepass.optim's own overhead.

The paper's UCI setting: an MLP 8→50→1 (ReLU) on UCI Energy (614 training and
78 validation rows, the copy shipped with onepass), full batch, float32,
``--updates`` weight updates (default 200). Each of six runs times those
updates, from the start of the first training batch to the end of the last
(framework set-up and tear-down excluded):

* plain loop: ``torch.optim.AdamW`` / ``onepass.optim.AdamW``;
* Lightning: a ``LightningModule`` with ``torch.optim.AdamW`` / with
  ``onepass.optim.AdamW`` and ``OnepassCallback`` (CSV logger, every 50 steps);
* transformers: a ``Trainer`` with its AdamW (``adamw_torch``) / ``tune(trainer)``
  (defaults: linear schedule, ``max_grad_norm=1``; logs every 50 steps).

All in one process, repetitions interleaved so that drift hits every run alike;
each figure is the median, in this thread's CPU seconds (robust to other work
on the machine; with one intra-op thread the training runs on this thread)
and in wall seconds. Printed per framework: the ratio onepass/torch and how it
compares with the plain loop's ratio (the framework's own per-update cost,
the same in both runs, dilutes it), and the extra milliseconds per update
onepass costs there against those it costs in the plain loop: what the
integration adds on top of onepass.optim itself.

The Trainer runs with ``lr_scheduler_type="constant"`` and ``max_grad_norm=0``
so that it trains as the plain loop does (``--trainer-defaults``: its linear
schedule and clipping at 1, which cost onepass.optim more per update in any
loop: a schedule that changes every update rebuilds its cached update).

    python benchmarks/frameworks.py [--updates 200] [--repeats 5] [--threads 1] [--trainer-defaults] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn.functional import mse_loss

import onepass.optim
from onepass.data import load_uci

SETTINGS = dict(lr=1e-3, weight_decay=1e-2)


class _Clock:
    """Wall seconds and this thread's CPU seconds between :meth:`begin` and the last
    :meth:`end`. With one intra-op thread the training runs on this thread, so
    its CPU time is what the run costs, whatever else the machine is running."""

    def begin(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.thread_time()

    def end(self) -> None:
        self.seconds = (time.perf_counter() - self._wall, time.thread_time() - self._cpu)


def mlp(n_inputs: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_inputs, 50), nn.ReLU(), nn.Linear(50, 1))


# ------------------------------------------------------------------ plain loop

def plain(data, updates: int, tuned: bool) -> tuple[float, float]:
    model = mlp(data.n_inputs)
    x, y, x_val, y_val = data.x_train, data.y_train, data.x_val, data.y_val
    if tuned:
        opt = onepass.optim.AdamW(model.parameters(), **SETTINGS, val_loss=lambda: mse_loss(model(x_val), y_val))
    else:
        opt = torch.optim.AdamW(model.parameters(), **SETTINGS)
    clock = _Clock()
    clock.begin()
    for _ in range(updates):
        opt.zero_grad()
        mse_loss(model(x), y).backward(create_graph=tuned and opt.needs_graph)
        opt.step()
    clock.end()
    return clock.seconds


# ------------------------------------------------------------------ Lightning

def lightning_run(data, updates: int, tuned: bool, folder: Path) -> tuple[float, float]:
    import lightning
    from lightning.pytorch.loggers import CSVLogger

    from onepass.integrations.lightning import OnepassCallback

    class Regression(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp(data.n_inputs)

        def training_step(self, batch, batch_idx):
            loss = mse_loss(self.net(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            return mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            cls = onepass.optim.AdamW if tuned else torch.optim.AdamW
            return cls(self.parameters(), **SETTINGS)

    class Clock(_Clock, lightning.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                self.begin()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.end()

    clock = Clock()
    callbacks = [clock, OnepassCallback()] if tuned else [clock]
    trainer = lightning.Trainer(max_steps=updates, accelerator="cpu", devices=1, logger=CSVLogger(folder),
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks)
    full = [(data.x_train, data.y_train)] * updates          # one full batch per update, one epoch
    trainer.fit(Regression(), torch.utils.data.DataLoader(full, batch_size=None),
                torch.utils.data.DataLoader([(data.x_val, data.y_val)], batch_size=None))
    return clock.seconds


# ------------------------------------------------------------------ transformers

class _HFRegression(nn.Module):
    def __init__(self, n_inputs: int):
        super().__init__()
        self.net = mlp(n_inputs)

    def forward(self, x, labels=None):
        out = self.net(x)
        return {"loss": mse_loss(out, labels), "logits": out}


def transformers_run(data, updates: int, tuned: bool, folder: Path, defaults: bool = False) -> tuple[float, float]:
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from onepass.integrations.transformers import tune

    class Clock(_Clock, TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 0:
                self.begin()

        def on_step_end(self, args, state, control, **kwargs):
            self.end()

    clock = Clock()
    args = TrainingArguments(output_dir=str(folder), max_steps=updates, per_device_train_batch_size=1,
                             per_device_eval_batch_size=1, learning_rate=SETTINGS["lr"],
                             weight_decay=SETTINGS["weight_decay"], optim="adamw_torch", report_to=[],
                             logging_steps=50, **({} if defaults else dict(lr_scheduler_type="constant",
                                                                           max_grad_norm=0.0)),
                             save_strategy="no", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
    full = [{"x": data.x_train, "labels": data.y_train}] * updates
    trainer = Trainer(model=_HFRegression(data.n_inputs), args=args, train_dataset=full,
                      eval_dataset=[{"x": data.x_val, "labels": data.y_val}],
                      data_collator=lambda items: items[0], callbacks=[clock])
    trainer.remove_callback(PrinterCallback)
    if tuned:
        tune(trainer)
    trainer.train()
    return clock.seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=200, help="weight updates per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--trainer-defaults", action="store_true",
                        help="the Trainer's linear schedule and max_grad_norm=1 (default: constant, no clipping)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging

    import transformers
    transformers.logging.set_verbosity_error()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data = load_uci("energy")

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        timers = {
            "plain/torch": lambda: plain(data, args.updates, False),
            "plain/onepass": lambda: plain(data, args.updates, True),
            "lightning/torch": lambda: lightning_run(data, args.updates, False, folder / "l"),
            "lightning/onepass": lambda: lightning_run(data, args.updates, True, folder / "l"),
            "transformers/torch": lambda: transformers_run(data, args.updates, False, folder / "t",
                                                           args.trainer_defaults),
            "transformers/onepass": lambda: transformers_run(data, args.updates, True, folder / "t",
                                                             args.trainer_defaults),
        }
        for timer in timers.values():   # warm-up: imports and first-call costs
            timer()
        samples = {name: [] for name in timers}
        for _ in range(args.repeats):
            for name, timer in timers.items():
                samples[name].append(timer())
    frameworks = ("plain", "lightning", "transformers")
    print(f"{args.updates} updates, UCI Energy, MLP 8-50-1, full batch, median of {args.repeats}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    result = {}
    for index, kind in ((1, "cpu"), (0, "wall")):
        seconds = {name: statistics.median(s[index] for s in runs) for name, runs in samples.items()}
        ratio = {f: seconds[f"{f}/onepass"] / seconds[f"{f}/torch"] for f in frameworks}
        extra = {f: seconds[f"{f}/onepass"] - seconds[f"{f}/torch"] for f in frameworks}
        added = {f: ratio[f] / ratio["plain"] - 1 for f in frameworks if f != "plain"}
        more = {f: extra[f] / extra["plain"] - 1 for f in frameworks if f != "plain"}
        title = "thread CPU seconds" if kind == "cpu" else "wall seconds (this machine's load included)"
        print(f"\n{title}")
        print(f"{'':<14}{'torch s':>9}{'onepass s':>11}{'ratio':>8}{'vs plain':>10}{'extra ms/update':>17}"
              f"{'vs plain':>10}")
        for f in frameworks:
            vs = f"{added[f]:+.1%}" if f in added else ""
            vs_extra = f"{more[f]:+.1%}" if f in more else ""
            print(f"{f:<14}{seconds[f + '/torch']:>9.3f}{seconds[f + '/onepass']:>11.3f}{ratio[f]:>8.2f}{vs:>10}"
                  f"{1000 * extra[f] / args.updates:>17.3f}{vs_extra:>10}")
        result[kind] = {"seconds": seconds, "ratios": ratio, "ratio_vs_plain": added, "extra_seconds": extra,
                        "extra_vs_plain": more}
    print("\nratio: onepass/torch inside that framework (vs plain: over the plain loop's ratio); "
          "extra: onepass minus torch per update (vs plain: over the plain loop's extra)")
    result["samples"] = samples
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
