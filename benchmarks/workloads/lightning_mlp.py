"""An MLP with dropout (40-256-256-10, dropout 0.2) on MNIST-1D trained by a
real ``lightning.Trainer``. Baselines: ``configure_optimizers`` returns the
row's optimizer (and its per-update scheduler), trained on train+validation.
onepass: ``configure_optimizers`` returns ``onepass.optim.AdamW(self.parameters())``,
``Trainer(callbacks=[OnepassCallback()])`` and ``fit(model, train, val)``:
the callback's default use (the recipe's fold included); an ablation's optimizer
settings go to the optimizer, its loop settings to the callback, ``onepass_sgd``
uses ``onepass.optim.SGD``."""
from __future__ import annotations

import time

import torch
from torch import nn

from . import mnist_1d
from .base import Workload, baseline_optimizer, integration_loop, optimizer_overrides, set_mode


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(40, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 256), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(256, 10))


def train(workload: Workload, row: str, seed: int, steps: int, options: dict):
    import logging

    import lightning
    import onepass.optim
    from onepass.integrations.lightning import OnepassCallback

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)   # "GPU available: ..." and tips
    data = workload.data
    net = workload.model(seed)
    loss_fn = workload.loss

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net
            self.opt = None

        def training_step(self, batch, batch_idx):
            x, y = batch
            return loss_fn(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            return loss_fn(self.net(x), y)

        def configure_optimizers(self):
            if row in ("onepass", "onepass_sgd"):
                cls = onepass.optim.SGD if row == "onepass_sgd" else onepass.optim.AdamW
                self.opt = cls(self.parameters(), **optimizer_overrides(options["config"]))
                return self.opt
            self.opt, schedule = baseline_optimizer(row, self.parameters(), steps, lr=options.get("lr"),
                                                    weight_decay=options.get("weight_decay", 0.0))
            set_mode(self.opt, True)
            if schedule is None:
                return self.opt
            return {"optimizer": self.opt, "lr_scheduler": {
                "scheduler": torch.optim.lr_scheduler.LambdaLR(self.opt, schedule), "interval": "step"}}

    def loader(x, y, shuffle, batch):
        g = torch.Generator().manual_seed(10_000 + seed)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch,
                                           shuffle=shuffle, drop_last=shuffle, generator=g)

    module = Module()
    trainer = lightning.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                num_sanity_val_steps=0, check_val_every_n_epoch=10**6,
                                callbacks=[OnepassCallback(**integration_loop(options["config"]))]
                                if row in ("onepass", "onepass_sgd") else [])
    start = time.perf_counter()
    if row in ("onepass", "onepass_sgd"):
        trainer.fit(module, loader(data.x_train, data.y_train, True, workload.batch),
                    loader(data.x_val, data.y_val, False, 256))
    else:
        x, y = (data.x_train, data.y_train) if options.get("on_train") else (data.x_trainval, data.y_trainval)
        trainer.fit(module, loader(x, y, True, workload.batch))
    seconds = time.perf_counter() - start
    hyper = module.opt.hyperparameters if row in ("onepass", "onepass_sgd") else None
    if row not in ("onepass", "onepass_sgd"):
        set_mode(module.opt, False)
    finite = all(torch.isfinite(p).all() for p in net.parameters())
    return net, seconds, finite, hyper


def workloads() -> list[Workload]:
    return [Workload(name="lightning_mlp", kind="classification", family="frameworks", steps=1500, batch=128,
                     build_data=mnist_1d.load, build_model=lambda seed: _net(), train=train)]
