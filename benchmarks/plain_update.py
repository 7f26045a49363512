"""Wall time of onepass's plain (undifferentiated) update against its
``torch.optim`` namesake, across rules, parameter groups and granularities.

The cost budget compares a hyperparameter step with onepass's own plain
update, so a plain update dearer than ``torch.optim``'s is overhead the budget
cannot see. Each row runs 300 updates of a small MLP (32-128-128-4, batch 64)
with no hyperparameter step in them (``update_interval`` past the end), five
rounds interleaved in one process; the figure is the median over rounds,
as a multiple of ``torch.optim``'s time on the same model with the same groups.

    python benchmarks/plain_update.py [--updates 300] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import onepass.optim

RULES = {"adamw": (torch.optim.AdamW, onepass.optim.AdamW, {}),
         "adam": (torch.optim.Adam, onepass.optim.Adam, {}),
         "sgd": (torch.optim.SGD, onepass.optim.SGD, {"lr": 0.01, "momentum": 0.9})}
# (parameter groups?, onepass granularity of lr)
SHAPES = {"one group": (False, None), "two groups": (True, None), "lr per group": (True, "group"),
          "lr per tensor": (False, "tensor"), "lr per weight": (False, "weight")}


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                               torch.nn.ReLU(), torch.nn.Linear(128, 4))


def _params(model, groups: bool):
    if not groups:
        return list(model.parameters())
    return [{"params": list(model[0].parameters()), "weight_decay": 0.0},
            {"params": list(model[2].parameters()) + list(model[4].parameters())}]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    x, y = torch.randn(64, 32), torch.randint(0, 4, (64,))
    runs = {}
    for rule, (torch_cls, onepass_cls, kwargs) in RULES.items():
        for shape, (groups, granularity) in SHAPES.items():
            m_torch, m_onepass = _model(), _model()
            tuned = {"granularity": {"lr": granularity}} if granularity else {}
            runs[rule, shape] = (
                (m_torch, torch_cls(_params(m_torch, groups), **kwargs)),
                (m_onepass, onepass_cls(_params(m_onepass, groups), **kwargs, **tuned, cost_budget=None,
                                        update_interval=10 ** 9,
                                        val_loss=lambda m=m_onepass: F.cross_entropy(m(x), y))))
    seconds = {key: ([], []) for key in runs}
    for _ in range(args.rounds):
        for key, pair in runs.items():
            for (model, opt), out in zip(pair, seconds[key]):
                start = time.perf_counter()
                for _ in range(args.updates):
                    opt.zero_grad()
                    F.cross_entropy(model(x), y).backward(create_graph=getattr(opt, "needs_graph", False))
                    opt.step()
                out.append(time.perf_counter() - start)
    ratios = {}
    print(f"{'rule':6} {'parameters':15} onepass / torch.optim (plain updates)")
    for (rule, shape), (torch_s, onepass_s) in seconds.items():
        ratios[f"{rule}/{shape}"] = statistics.median(onepass_s) / statistics.median(torch_s)
        print(f"{rule:6} {shape:15} {ratios[f'{rule}/{shape}']:.2f}")
    return ratios


if __name__ == "__main__":
    main()
