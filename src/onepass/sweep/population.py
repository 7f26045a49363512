"""Many initialisations of one algorithm trained as ONE population computation.

:func:`train_population` is :func:`onepass.experiment.run.run_training` for
``P`` configs that differ only in their initialisation (``seed``, the
hyperparameters and ``algorithm.lr_multiplier``): one
:class:`~onepass.models.PopulationMLP` stacked from the per-member MLPs, built
exactly as ``run_training`` builds its model and one Tuner with ``population=P``
(both by :func:`~onepass.experiment.runner.build_run`), the same run folders
(:func:`~onepass.experiment.runner.open_run`), and the same
:class:`~onepass.experiment.loop.TrainingLoop` trained to its end by
:func:`~onepass.experiment.runner.train_to_end`
(members whose loss or hypergradient is not finite are frozen and recorded
``diverged``; the stepped learning rate skips them).

Each member gets a run folder in ``run_training``'s format (``config.yaml``
with its own resolved config, ``metrics.csv`` with the same columns,
TensorBoard events, a :class:`~onepass.experiment.record.RunRecord`) so the
report cannot tell the two apart, except that ``population`` says which chunk
the member was trained in, ``wall_time_s`` is the chunk's wall time,
``train_seconds`` the chunk's step time divided by ``P``, and no
``checkpoint.pt`` is written (a killed chunk is rerun as a whole).

Applies to full-batch UCI runs of MLPs without BatchNorm, without gradient
clipping or per-window weight resets (:func:`population_applies`); mini-batch
runs draw a different batch order per member seed, so they stay single runs
(as do the long Diff-through-Opt configs).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import torch

from onepass.experiment.checkpoint import run_state, write_state
from onepass.experiment.config import resolve_config
from onepass.experiment.loop import TrainClock, TrainingLoop, per_member
from onepass.experiment.runner import build_run, open_run, resolve_device, train_to_end

MEMBER_SECTIONS = ("hyperparameters",)
MEMBER_KEYS = {("seed",), ("algorithm", "lr_multiplier")}
"""Config keys (and whole sections) that may differ between the members of one population."""


def population_applies(config: Mapping) -> bool:
    """Whether runs of ``config`` can be trained as population members."""
    return (config["dataset"]["kind"] == "uci" and config["model"]["kind"] == "mlp"
            and not config["model"]["batch_norm"] and config["training"]["batch_size"] is None
            and config["training"]["max_grad_norm"] is None
            and not config["algorithm"]["reset_each_window"])


def _shared_part(config: Mapping) -> dict:
    out = {}
    for head, section in config.items():
        if head in MEMBER_SECTIONS:
            out[head] = sorted(section)  # the names must agree, the values may not
        elif isinstance(section, Mapping):
            out[head] = {k: v for k, v in section.items() if (head, k) not in MEMBER_KEYS}
        elif (head,) not in MEMBER_KEYS:
            out[head] = section
    return out


def train_population(
    configs: Sequence[Mapping],
    run_dirs: Sequence[str | os.PathLike],
    *,
    data_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    extra_summary: Sequence[Mapping] | None = None,
    save_states_to: Sequence[str | os.PathLike | None] | None = None,
    progress: bool = False,
) -> list[dict]:
    """Train ``len(configs)`` runs as one population; return their records (as written).

    Args:
        configs: configs that differ only in ``seed``, ``hyperparameters`` and
            ``algorithm.lr_multiplier``, each accepted by :func:`population_applies`.
        run_dirs: one run folder per config.
        extra_summary: per member, fields of its :class:`~onepass.experiment.record.RunRecord`
            (e.g. ``{"init_index": 3}``), written with every record.
        save_states_to: per member, a file (or ``None``) to save a finished
            member's final state to, in the layout of
            :func:`~onepass.experiment.checkpoint.run_state` with ``model`` the
            member's ``MLP.state_dict()`` and nothing more (cf. ``save_state_to``
            of ``run_training``, which saves more: tuner and RNG states).
        progress: a tqdm bar over the updates.

    Raises:
        KeyboardInterrupt: after recording status ``interrupted`` for every member
            not yet final; anything else after recording ``failed``.
        ValueError: configs that cannot share a population.
    """
    configs = [resolve_config(c) for c in configs]
    run_dirs = [Path(d) for d in run_dirs]
    P = len(configs)
    if P == 0 or len(run_dirs) != P:
        raise ValueError("give one run folder per config (and at least one config)")
    base = configs[0]
    for config in configs:
        if not population_applies(config):
            raise ValueError("population mode needs full-batch UCI MLPs without BatchNorm")
        if _shared_part(config) != _shared_part(base):
            raise ValueError("population members may differ only in seed, hyperparameters and "
                             "algorithm.lr_multiplier")
    extra = [dict(e) for e in (extra_summary or [{}] * P)]
    device = resolve_device(device)

    # ---- data (before any run folder), then model and tuner: member m is
    # built exactly as run_training builds run m's model
    run = build_run(base, data_dir, device, members=configs)
    population, tuner = run.model, run.tuner

    clock = TrainClock(device, share=P)
    members = [open_run(config, run_dir, hyper, device,
                        tensorboard=base["logging"]["tensorboard"],
                        population={"size": P, "member": m}, **extra[m])
               for m, (config, run_dir, hyper) in enumerate(
                   zip(configs, run_dirs, per_member(tuner, tuner.hyperparameters, P)))]

    steps = base["training"]["steps"]
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, disable=not progress, dynamic_ncols=True, unit="upd", leave=False,
               desc=f"{base['algorithm']['name']} {base['dataset']['name']} ×{P}")
    multipliers = [c["algorithm"]["lr_multiplier"] for c in configs]
    loop = TrainingLoop(base, run.task, population, tuner, members, clock,
                        multipliers=None if multipliers[0] is None else multipliers,
                        log_every=base["logging"]["interval"], bar=bar)

    def save(m: int, path) -> None:
        write_state(run_state(configs[m], tuner.steps_taken, population.member(m).state_dict()),
                    path)

    return train_to_end(loop, steps, save_to=save_states_to or (), save=save)


__all__ = ["MEMBER_KEYS", "population_applies", "train_population"]
