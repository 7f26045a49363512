"""A Lightning module whose AdamW tunes its own learning rate while it trains
(onepass.optim + onepass.integrations.lightning; ``tune=("lr", "weight_decay")``
would tune the weight decay too).

Compared with the same module on ``torch.optim.AdamW``, four lines change;
they are marked ``# onepass:``:

1. ``from onepass.integrations.lightning import OnepassCallback``;
2. ``configure_optimizers`` returns ``onepass.optim.AdamW``;
3. ``validation_step`` returns its loss (the callback takes the validation
   loss of each hyperparameter step from it, on the validation data cycled);
4. the Trainer gets ``callbacks=[OnepassCallback()]``.

The callback gives the differentiated updates their ``create_graph``
backward, takes the recipe's loop step (the best-validation weights kept,
the last quarter of the updates frozen with validation batches folded in)
and logs the tuned values (``onepass/lr/group0``, ...) to the
Trainer's loggers (``--log-dir DIR`` writes a CSV log there).

Data: scikit-learn's bundled diabetes set (442 rows, no download), an MLP
10-50-1, minibatches of 32. The last line printed is one JSON object::

    {"hyperparameters": {"lr/group0": ..., "weight_decay/group0": ..., ...}, "val_loss": ...}

(AdamW's recipe takes one hyperparameter step every 20 updates.)
"""
from __future__ import annotations

import argparse
import json

import lightning
import torch
from lightning.pytorch.loggers import CSVLogger
from sklearn.datasets import load_diabetes
from torch.utils.data import DataLoader, TensorDataset

import onepass.optim
from onepass.integrations.lightning import OnepassCallback   # onepass: the callback


def diabetes(seed: int):
    """Standardised (x, y) for training (342 rows) and validation (100 rows)."""
    x, y = load_diabetes(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32).unsqueeze(1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, val = order[:342], order[342:]
    x = (x - x[train].mean(0)) / x[train].std(0)
    y = (y - y[train].mean(0)) / y[train].std(0)
    return (x[train], y[train]), (x[val], y[val])


class Regression(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(10, 50), torch.nn.ReLU(), torch.nn.Linear(50, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("val_loss", loss)
        return loss                                                     # onepass: return the loss

    def configure_optimizers(self):
        return onepass.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=1e-2)   # onepass: was torch.optim.AdamW


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500, help="weight updates (default 500)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", help="write Lightning's CSV log (with the tuned values) here")
    args = parser.parse_args(argv)

    lightning.seed_everything(args.seed, verbose=False)
    (x, y), (x_val, y_val) = diabetes(args.seed)
    train = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True, drop_last=True)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=50)
    model = Regression()
    trainer = lightning.Trainer(
        max_steps=args.steps, accelerator="cpu", devices=1, log_every_n_steps=10, val_check_interval=None,
        logger=CSVLogger(args.log_dir) if args.log_dir else False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[OnepassCallback()])                                  # onepass: the callback
    trainer.fit(model, train, val)

    with torch.no_grad():
        val_loss = torch.nn.functional.mse_loss(model(x_val), y_val).item()
    print(json.dumps({"hyperparameters": trainer.optimizers[0].hyperparameters, "val_loss": val_loss}),
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
