"""The recommended recipe: what :mod:`onepass.optim` does with no ``tune`` and
no hyperparameter values.

One table per update rule: ``values`` are the starting values in
``torch.optim``'s names (used for every argument left at ``None``),
``settings`` the :class:`~onepass.optim.TunedOptimizer` arguments left at
``None``, and :func:`default_tune` decides what is tuned when ``tune`` is not
given. ``benchmarks/suite.py`` measures the recipe against Adam, AdamW (also
with warm-up + cosine), Prodigy, schedule-free, SGD and a grid search on
eleven workloads; ``benchmarks/README.md`` keeps the ablation that chose it.
"""
from __future__ import annotations

from typing import Mapping, Sequence

_SETTINGS = {"method": "neumann", "neumann_terms": 5, "unroll_steps": 5, "update_interval": 10,
             "hyper_optimizer": None, "hyper_lr": None, "tune_after": 0, "granularity": None,
             "cost_budget": 1.5}
# cost_budget: the wall-clock accepted, as a multiple of the bare optimizer's; the
# interval above is the shortest used (onepass.core.budget, which plans for 1.45 to
# keep 1.5). On the paper's UCI MLP AdamW's window of 20 measured 1.44x its plain
# updates in a quiet spell (the recipe's runs there are unchanged) but 1.74-1.8x in a
# busy one of a shared machine (then a longer one is chosen). cost_budget=None keeps
# the interval fixed, for runs that must repeat exactly across machines.

# Adam and AdamW: one hyperparameter step every 20 updates (not the paper's 10):
# as good on Energy and digits, and the overhead falls from ~1.6x to ~1.4x Adam's.
_ADAM_SETTINGS = {**_SETTINGS, "update_interval": 20}

RECIPES: dict[str, dict] = {
    "sgd": {"values": {"lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0}, "settings": dict(_SETTINGS),
            "start": {"lr": 1e-2, "momentum": 0.9}, "loop": {"fold": 0.25, "keep_best": True, "guard": 10.0}},
    "adam": {"values": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
             "settings": dict(_ADAM_SETTINGS), "loop": {"fold": 0.25, "keep_best": True}},
    "adamw": {"values": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
              "settings": dict(_ADAM_SETTINGS), "loop": {"fold": 0.25, "keep_best": True}},
}
"""``loop`` is the user's part of the recipe, which the optimizer cannot do
itself; :class:`onepass.optim.Fold` does it in a plain loop. ``keep_best``:
keep the weights (and the model's buffers) of the lowest validation loss seen
while tuning and restore them at the fold; ``fold``: the fraction of the
updates, at the end, trained on train+validation with the hyperparameters
frozen in place (``opt.freeze()``: the ``torch.optim`` namesake's update at the
learned values, moments carried over, the user's LR scheduler still driving
it). ``guard`` (SGD's): a validation loss above that many times the previous
one, or a training loss handed to ``fold.step(loss)`` (in the fold too),
puts the best weights back and halves the learned rate (``opt.back_off()``).

``start`` (SGD's): where ``onepass.optim.SGD`` starts when given neither
``lr`` nor ``momentum`` (nor ``tune`` or ``method``): lr 0.01 with momentum
0.9, both tuned. From torch's 1e-3 without momentum it crawls (the suite's
``onepass_sgd`` row: 2.4x the best default on average, 1.01-1.10x from this
start with the guard in three runs; without the guard, lr and momentum climb to the edge
of stability and full-batch Naval diverged on 4 of 5 seeds). Given either
value, the rest are torch's defaults, as a drop-in expects."""


def recipe(rule: str) -> dict:
    """The table for ``rule`` (``sgd_nesterov`` shares ``sgd``'s)."""
    return RECIPES["sgd" if rule.startswith("sgd") else rule]


def default_tune(rule: str, groups: Sequence[Mapping[str, float]]) -> tuple[str, ...]:
    """What is tuned when ``tune`` is not given, from each group's starting values
    (rule names). Adam and AdamW: ``lr`` only (a tuned weight decay random-walks
    over decades and one bad draw costs more than the tuned ones gain; see
    ``benchmarks/README.md``). SGD: ``lr``, and ``momentum`` / ``weight_decay``
    where every group starts them strictly inside their range (0 means "off")."""
    if rule.startswith("adam"):
        return ("lr",)
    names = groups[0]
    return ("lr",) + tuple(n for n in ("momentum", "weight_decay")
                           if n in names and all(0 < values[n] < 1 for values in groups))
