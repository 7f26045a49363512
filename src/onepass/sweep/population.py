"""Many initialisations of one algorithm trained as ONE population computation.

:func:`train_population` is :func:`onepass.experiment.run.run_training` for
``P`` configs that differ only in their initialisation (``seed``, the
hyperparameters and ``algorithm.lr_multiplier``): one
:class:`~onepass.models.PopulationMLP` stacked from the per-member MLPs, built
exactly as ``run_training`` builds its model (``torch.manual_seed(seed)`` then
``task.build_model``), one Tuner from :func:`~onepass.experiment.loop.tuner_from_config`
with ``population=P``, and the same :class:`~onepass.experiment.loop.TrainingLoop`
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

from onepass.experiment.checkpoint import write_state
from onepass.experiment.config import resolve_config
from onepass.experiment.logging import RunLogger, versions, write_config
from onepass.experiment.loop import (
    Member, TrainClock, TrainingLoop, per_member, sigterm_raises_keyboard_interrupt, start_record,
    tuner_from_config,
)
from onepass.experiment.record import write_record
from onepass.experiment.run import resolve_device
from onepass.experiment.tasks import make_task
from onepass.models import PopulationMLP

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
            member's final state to: ``{"config", "steps", "model"}`` with
            ``model`` the member's ``MLP.state_dict()`` (cf. ``save_state_to``
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

    # ---- data (before any run folder): as run_training
    task = make_task(base, data_dir, device, population=P)

    # ---- model: member m is built exactly as run_training builds run m's model
    models = []
    for config in configs:
        torch.manual_seed(config["seed"])
        models.append(task.build_model().to(device))
    population = PopulationMLP.from_models(models)
    del models
    tuner = tuner_from_config(base, population, task.tuner_loss(), members=configs)

    clock = TrainClock(device, share=P)
    members = []
    for m, (config, run_dir, hyper) in enumerate(zip(configs, run_dirs, per_member(tuner, tuner.hyperparameters, P))):
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, config)
        logger = RunLogger(run_dir, hyper, tensorboard=base["logging"]["tensorboard"])
        record = start_record(config, run_dir, device, population={"size": P, "member": m},
                              **extra[m])
        write_record(run_dir, record)
        members.append(Member(run_dir, logger, record))

    steps = base["training"]["steps"]
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, disable=not progress, dynamic_ncols=True, unit="upd", leave=False,
               desc=f"{base['algorithm']['name']} {base['dataset']['name']} ×{P}")
    multipliers = [c["algorithm"]["lr_multiplier"] for c in configs]
    loop = TrainingLoop(base, task, population, tuner, members, clock,
                        multipliers=None if multipliers[0] is None else multipliers,
                        log_every=base["logging"]["interval"], bar=bar)
    status, error = "finished", None
    try:
        with sigterm_raises_keyboard_interrupt():
            loop.run(steps)
    except KeyboardInterrupt:
        status, error = "interrupted", "KeyboardInterrupt"
        raise
    except BaseException as err:
        status, error = "failed", f"{type(err).__name__}: {err}"
        raise
    finally:
        bar.close()
        loop.close()
        records = loop.finish(status, error)
        written = []
        for m, record in enumerate(records):
            target = save_states_to[m] if save_states_to else None
            if record.status == "finished" and target is not None:
                write_state({"config": configs[m], "steps": tuner.steps_taken,
                             "model": population.member(m).state_dict(),
                             "versions": versions()}, target)
                record = record.replace(state_saved_to=str(target))
            written.append(write_record(run_dirs[m], record))
    return written


__all__ = ["MEMBER_KEYS", "population_applies", "train_population"]
