"""``examples/plain_loop.py`` under DistributedDataParallel (CPU, gloo).

Run: ``torchrun --nproc_per_node 2 examples/ddp.py --steps 500`` (or plain
``python examples/ddp.py``: one process, no process group).

Each rank takes its shard of every minibatch and of the validation set. Besides
the lines a plain loop changes (``# onepass:``), DDP changes two things
(``# onepass (DDP):``):

* the updates whose gradient is differentiated (``opt.needs_graph``) run their
  forward/backward through the unwrapped module ``ddp_model.module``: DDP does
  not all-reduce higher-order gradients, so the optimizer averages that
  gradient, its Hessian-vector products and the validation gradient across
  ranks itself (it finds the initialised process group on its own);
* ``val_loss`` uses the unwrapped module too.

After training the ranks check that they hold identical weights and
hyperparameters (exit 1 if not); rank 0 then prints one JSON line, last::

    {"hyperparameters": {"lr/group0": ..., ...}, "val_loss": ...}
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys

import torch
import torch.distributed as dist
from sklearn.datasets import load_diabetes
from torch.nn.parallel import DistributedDataParallel

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


def ranks_agree(model: torch.nn.Module, opt: onepass.optim.TunedOptimizer) -> bool:
    """Whether every rank holds this rank's weights and hyperparameters, bit for bit."""
    hyper = opt.hyperparameters
    mine = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()]
                     + [torch.tensor([hyper[k] for k in sorted(hyper)], dtype=torch.float64)])
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    return all(torch.equal(other, mine) for other in gathered)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500, help="weight updates (default 500)")
    parser.add_argument("--batch-size", type=int, default=32, help="global minibatch, split across the ranks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")   # torchrun's MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE

    torch.manual_seed(args.seed)          # the same initial weights and batch order on every rank
    (x, y), (x_val, y_val) = diabetes(args.seed)
    model = torch.nn.Sequential(torch.nn.Linear(10, 50), torch.nn.ReLU(), torch.nn.Linear(50, 1))
    ddp_model = DistributedDataParallel(model) if world > 1 else model
    loss_fn = torch.nn.functional.mse_loss
    # this rank's part of the validation set (the optimizer averages the ranks' validation gradients,
    # so equal parts, as 100 rows on 2 ranks, give the whole set's)
    val_shard = torch.tensor_split(torch.arange(len(x_val)), world)[rank]

    opt = onepass.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2,  # onepass: was torch.optim.AdamW
                              # onepass: the validation loss; onepass (DDP): through the unwrapped module
                              val_loss=lambda: loss_fn(model(x_val[val_shard]), y_val[val_shard]),
                              model=ddp_model)   # optional: checks every trainable parameter is in opt

    order, start = torch.randperm(len(x)), 0
    for step in range(1, args.steps + 1):
        if start + args.batch_size > len(x):                  # a new epoch
            order, start = torch.randperm(len(x)), 0
        batch = order[start:start + args.batch_size]
        start += args.batch_size
        shard = torch.tensor_split(batch, world)[rank]        # this rank's part of the minibatch

        opt.zero_grad()
        net = model if opt.needs_graph else ddp_model         # onepass (DDP): the unwrapped module when needed
        loss = loss_fn(net(x[shard]), y[shard])
        loss.backward(create_graph=opt.needs_graph)           # onepass: a graph on the updates that need it
        opt.step()

        if rank == 0 and step % 100 == 0:
            values = ", ".join(f"{k}={v:.3g}" for k, v in opt.hyperparameters.items())
            print(f"step {step:5d}  rank-0 train loss {loss.item():.4f}  {values}", flush=True)

    agree = ranks_agree(model, opt) if world > 1 else True
    hyperparameters = opt.hyperparameters
    if world > 1:
        # DDP and the optimizer hold the process group: free them while Python still runs, so that
        # gloo's threads are not torn down during interpreter shutdown (an abort, once in ~40 runs)
        opt = ddp_model = net = None   # (net: unbound when --steps 0)
        gc.collect()
        dist.destroy_process_group()
    if not agree:
        print(f"rank {rank}: the ranks hold different weights or hyperparameters", file=sys.stderr, flush=True)
        return 1
    if rank == 0:
        with torch.no_grad():
            val_loss = loss_fn(model(x_val), y_val).item()
        print(json.dumps({"hyperparameters": hyperparameters, "val_loss": val_loss}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
