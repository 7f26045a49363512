"""A plain PyTorch training loop whose AdamW tunes its own learning rate while
it trains (onepass.optim's recommended recipe; ``tune=("lr", "weight_decay")``
tunes the weight decay too).

Compared with the same loop on ``torch.optim.AdamW``, three lines change; they
are marked ``# onepass:``:

1. the optimizer is ``onepass.optim.AdamW``;
2. it is given ``val_loss=``, a zero-argument callable returning the
   validation loss of the model at its current weights;
3. ``loss.backward(create_graph=opt.needs_graph)``: the one update per window
   whose gradient is differentiated keeps its graph.

Data: scikit-learn's bundled diabetes set (442 rows, no download), an MLP
10-50-1, minibatches of 32. The last line printed is one JSON object::

    {"hyperparameters": {"lr/group0": ..., "weight_decay/group0": ..., ...}, "val_loss": ...}

Run: ``python examples/plain_loop.py --steps 500``.
"""
from __future__ import annotations

import argparse
import json

import torch
from sklearn.datasets import load_diabetes

import onepass.optim


def diabetes(seed: int):
    """Standardised (x, y) for training (342 rows) and validation (100 rows)."""
    x, y = load_diabetes(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32).unsqueeze(1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, val = order[:342], order[342:]
    x = (x - x[train].mean(0)) / x[train].std(0)
    y = (y - y[train].mean(0)) / y[train].std(0)
    return (x[train], y[train]), (x[val], y[val])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500, help="weight updates (default 500)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    (x, y), (x_val, y_val) = diabetes(args.seed)
    model = torch.nn.Sequential(torch.nn.Linear(10, 50), torch.nn.ReLU(), torch.nn.Linear(50, 1))
    loss_fn = torch.nn.functional.mse_loss

    opt = onepass.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2,  # onepass: was torch.optim.AdamW
                              val_loss=lambda: loss_fn(model(x_val), y_val))  # onepass: the validation loss

    order, start = torch.randperm(len(x)), 0
    for step in range(1, args.steps + 1):
        if start + args.batch_size > len(x):                  # a new epoch
            order, start = torch.randperm(len(x)), 0
        batch = order[start:start + args.batch_size]
        start += args.batch_size

        opt.zero_grad()
        loss = loss_fn(model(x[batch]), y[batch])
        loss.backward(create_graph=opt.needs_graph)           # onepass: a graph on the updates that need it
        opt.step()

        if step % 100 == 0:
            values = ", ".join(f"{k}={v:.3g}" for k, v in opt.hyperparameters.items())
            print(f"step {step:5d}  train loss {loss.item():.4f}  {values}", flush=True)

    with torch.no_grad():
        val_loss = loss_fn(model(x_val), y_val).item()
    print(json.dumps({"hyperparameters": opt.hyperparameters, "val_loss": val_loss}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
