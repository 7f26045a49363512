"""``onepass demo``: tune SGD's hyperparameters on scikit-learn's bundled diabetes data.

Needs no download. Trains the paper's MLP (10→50→1) twice from the same poor
start — hyperparameters kept fixed, and tuned in the same pass with the
paper's estimator (Ours, WD+LR+M) — and prints both test losses.
"""
from __future__ import annotations

import argparse

import torch
from tqdm import tqdm

from .core import NonFiniteError, Tuner
from .models import MLP


def diabetes_splits(seed: int = 0, dtype=torch.float32):
    """Standardised train / validation / test splits (300 / 70 / 72 rows)."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x, y = torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype).unsqueeze(1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    fit = slice(0, 370)
    x = (x - x[fit].mean(0)) / x[fit].std(0)
    y = (y - y[fit].mean(0)) / y[fit].std(0)
    return (x[:300], y[:300]), (x[300:370], y[300:370]), (x[370:], y[370:])


def train(splits, steps: int, tune: tuple[str, ...], hyperparameters: dict, seed: int, progress: bool):
    train_batch, val_batch, test_batch = splits
    torch.manual_seed(seed)
    model = MLP(train_batch[0].shape[1])
    tuner = Tuner(model, torch.nn.functional.mse_loss, hyperparameters=hyperparameters, tune=tune)
    label = "tuned" if tune else "fixed"
    status = "finished"
    with tqdm(range(steps), desc=label, disable=not progress, leave=False) as bar:
        for step in bar:
            try:
                result = tuner.step(train_batch, val_batch)
            except NonFiniteError:
                status = "diverged"
                break
            if step % 100 == 0:
                bar.set_postfix(loss=f"{result.loss.item():.3f}", lr=f"{tuner.hyperparameters['lr']:.2e}")
    with torch.no_grad():
        test = torch.nn.functional.mse_loss(model(test_batch[0]), test_batch[1]).item()
    return test, tuner.hyperparameters, status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="onepass demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="weight updates (default 2000)")
    parser.add_argument("--lr", type=float, default=1e-4, help="initial learning rate (default 1e-4)")
    parser.add_argument("--momentum", type=float, default=0.5, help="initial momentum (default 0.5)")
    parser.add_argument("--weight-decay", type=float, default=1e-5, help="initial weight decay")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the initial weights")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)

    splits = diabetes_splits(args.seed)
    start = dict(lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    print(f"diabetes (scikit-learn): 300 train / 70 validation / 72 test rows, MLP 10-50-1, "
          f"{args.steps} full-batch SGD updates from lr={args.lr:g}, momentum={args.momentum:g}, "
          f"weight_decay={args.weight_decay:g}")
    for tune in ((), ("lr", "momentum", "weight_decay")):
        test, final, status = train(splits, args.steps, tune, start, args.seed, not args.no_progress)
        values = ", ".join(f"{k}={v:.3g}" for k, v in final.items())
        label = "tuned (Ours, WD+LR+M)" if tune else "fixed hyperparameters"
        print(f"{label:<24} test MSE {test:.4f}  [{status}]  final {values}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
