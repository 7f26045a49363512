"""Many initialisations of one algorithm trained as ONE population computation.

:func:`train_population` is :func:`onepass.experiment.run.run_training` for
``P`` configs that differ only in their initialisation (``seed``, the
hyperparameters and ``algorithm.lr_multiplier``): one
:class:`~onepass.models.PopulationMLP` stacked from the per-member MLPs, built
exactly as ``run_training`` builds its model (``torch.manual_seed(seed)`` then
``build_model``), one ``Tuner(population=P)``, and the same loop in the same
order of operations::

    for step in 1..steps:
        tuner.step((x_train, y_train), val_batch)   # members whose loss / hypergradient
                                                    # is not finite are frozen: "diverged"
        [stepped lr: lr_m *= multiplier_m at window ends, clipped; live members only]
        [log step: per-member losses; train loss of the batch, final row on the whole set]

Each member gets a run folder in ``run_training``'s format (``config.yaml``
with its own resolved config, ``metrics.csv`` with the same columns,
TensorBoard events, ``summary.json`` with the same keys) so the report cannot
tell the two apart, except that ``summary["population"]`` says which chunk the
member was trained in, ``wall_time_s`` is the chunk's wall time, and no
``checkpoint.pt`` is written (a killed chunk is rerun as a whole).

Applies to full-batch UCI runs of MLPs without BatchNorm, without gradient
clipping or per-window weight resets (:func:`population_applies`); mini-batch
runs draw a different batch order per member seed, so they stay single runs
(as do the long Diff-through-Opt configs).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from onepass.core import NonFiniteError, Tuner
from onepass.data.uci import load_uci
from onepass.experiment import run as _run
from onepass.experiment.config import LR_CLIP, resolve_config
from onepass.experiment.logging import RunLogger, atomic_torch_save, versions, write_config, write_summary
from onepass.models import PopulationMLP, build_model, member_mse

# Config keys that may differ between the members of one population.
MEMBER_KEYS = {("seed",), ("hyperparameters", "lr"), ("hyperparameters", "momentum"),
               ("hyperparameters", "weight_decay"), ("algorithm", "lr_multiplier")}


def population_applies(config: Mapping) -> bool:
    """Whether runs of ``config`` can be trained as population members."""
    return (config["dataset"]["kind"] == "uci" and config["model"]["kind"] == "mlp"
            and not config["model"]["batch_norm"] and config["training"]["batch_size"] is None
            and config["training"].get("max_grad_norm") is None
            and not config["algorithm"].get("reset_each_window", False))


def _mlp_spec(model: Mapping) -> dict:
    """The model spec ``build_model`` takes for an MLP (the keys that apply to it)."""
    return {"kind": "mlp", "hidden": list(model["hidden"]), "batch_norm": model["batch_norm"]}


def _shared_part(config: Mapping) -> dict:
    out = {}
    for head, section in config.items():
        if isinstance(section, Mapping):
            out[head] = {k: v for k, v in section.items() if (head, k) not in MEMBER_KEYS}
        elif (head,) not in MEMBER_KEYS:
            out[head] = section
    return out


class _MemberTuner:
    """What :func:`onepass.experiment.run._final_summary` reads of a tuner, for one member."""

    def __init__(self, hyperparameters: dict, steps_taken: int):
        self.hyperparameters = hyperparameters
        self.steps_taken = steps_taken


def _per_member(tuner: Tuner, values: Mapping[str, Any], P: int) -> list[dict]:
    """Per member, the tuner's hyperparameter ``values`` as its run records them
    (a float, a list per group or tensor, and per-weight values as one flat
    tensor: logs and summaries keep statistics and histograms, which do not
    depend on the layout), sliced from one batched copy."""
    out: list[dict] = [{} for _ in range(P)]
    for name, value in values.items():
        kind = tuner.granularity[name]
        if kind == "scalar":
            per_member = [float(v) for v in value]
        elif kind == "weight":
            per_member = list(torch.cat([t.detach().reshape(P, -1) for t in value], 1).double().cpu())
        else:
            per_member = [[float(v[m]) for v in value] for m in range(P)]
        for m in range(P):
            out[m][name] = per_member[m]
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
    """Train ``len(configs)`` runs as one population; return their summaries.

    Args:
        configs: configs that differ only in ``seed``, ``hyperparameters`` and
            ``algorithm.lr_multiplier``, each accepted by :func:`population_applies`.
        run_dirs: one run folder per config.
        extra_summary: per member, keys added to its ``summary.json`` (e.g.
            ``{"init_index": 3}``), written with every summary.
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
    device = _run.resolve_device(device)
    algo, training, log_cfg = base["algorithm"], base["training"], base["logging"]

    # ---- data: as run_training (train on train+val without a validation split)
    data = load_uci(base["dataset"]["name"], data_dir,
                    shuffle_seed=base["dataset"]["shuffle_seed"]).to(device)
    split = algo["validation"] == "split"
    x_train, y_train = (data.x_train, data.y_train) if split else (data.x_trainval, data.y_trainval)

    # ---- model: member m is built exactly as run_training builds run m's model
    models = []
    for config in configs:
        torch.manual_seed(config["seed"])
        models.append(build_model(_mlp_spec(config["model"]), data.n_inputs, 1).to(device))
    population = PopulationMLP.from_models(models)
    del models
    method = algo["method"]
    tuner = Tuner(
        population, member_mse, rule=algo["rule"],
        hyperparameters={k: [c["hyperparameters"][k] for c in configs]
                         for k in base["hyperparameters"]},
        tune=tuple(algo["tune"]), granularity=dict(algo["granularity"]) or None,
        method="neumann" if method == "none" else method, neumann_terms=algo["neumann_terms"],
        unroll_steps=algo["unroll_steps"], update_interval=algo["update_interval"],
        hyper_optimizer=algo["hyper_optimizer"], hyper_lr=algo["hyper_lr"], lr_bounds=LR_CLIP,
        compile=base["training"]["compile"], population=P,
    )
    multipliers = [c["algorithm"]["lr_multiplier"] for c in configs]
    train_batch, val_batch = (x_train, y_train), (data.x_val, data.y_val)

    hyper0 = _per_member(tuner, tuner.hyperparameters, P)
    summaries, loggers = [], []
    for m, (config, run_dir) in enumerate(zip(configs, run_dirs)):
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, config)
        loggers.append(RunLogger(run_dir, hyper0[m],
                                 tensorboard=log_cfg["tensorboard"]))
        summary = {
            "status": "running", "algorithm": algo["name"], "dataset": base["dataset"]["name"],
            "seed": config["seed"], "steps": 0, "steps_planned": training["steps"],
            "started_at": _run._now(), "run_dir": str(run_dir), "device": str(device),
            "resumed_from": None, "versions": versions(), **extra[m],
            "population": {"size": P, "member": m},
        }
        write_summary(run_dir, summary)
        summaries.append(summary)

    steps = training["steps"]
    window = tuner.update_interval
    log_every = log_cfg["interval"]
    last_rows: list[dict | None] = [None] * P
    final: list[dict | None] = [None] * P   # members already final (diverged)
    start = time.perf_counter()

    def wall() -> float:
        return time.perf_counter() - start

    def member_losses(x, y) -> list[float]:
        with torch.no_grad():
            was_training = population.training
            population.eval()
            try:
                return member_mse(population(x), y).tolist()
            finally:
                population.train(was_training)

    target_scale = data.unnormalise_mse(1.0)  # MSE in original units per standardised unit
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, disable=not progress, dynamic_ncols=True, unit="upd", leave=False,
               desc=f"{algo['name']} {base['dataset']['name']} ×{P}")
    status, error = "finished", None
    try:
        with _run._sigterm_raises_keyboard_interrupt():
            known = torch.zeros(P, dtype=torch.bool)
            for step in range(1, steps + 1):
                result = tuner.step(train_batch, val_batch=val_batch)
                diverged = tuner.diverged.cpu()
                if bool((diverged & ~known).any()):
                    _record_divergence(tuner, result, diverged & ~known, step, final, last_rows,
                                       wall())
                    known = diverged.clone()
                    if bool(known.all()):
                        break
                if algo["lr_multiplier"] is not None and step % window == 0:
                    lrs = tuner.hyperparameters["lr"]
                    tuner.set_hyperparameters(lr=[
                        lr if known[m] else min(max(lr * multipliers[m], LR_CLIP[0]), LR_CLIP[1])
                        for m, lr in enumerate(lrs)])
                if step % log_every == 0 or step == steps:
                    # Final losses are evaluated once more after the last update.
                    train = member_losses(*train_batch) if step == steps else result.loss.tolist()
                    val = member_losses(*val_batch) if split else [None] * P
                    test = member_losses(data.x_test, data.y_test)
                    hyper = _per_member(tuner, tuner.hyperparameters, P)
                    now = wall()
                    for m in range(P):
                        if known[m]:
                            continue
                        row = {"step": step, "train_loss": train[m], "val_loss": val[m],
                               "test_loss": test[m],
                               "test_loss_unnormalised": test[m] * target_scale,
                               "wall_time_s": now}
                        row = loggers[m].log(row, hyper[m])
                        if all(row.get(k) is None or math.isfinite(row[k]) for k in row):
                            last_rows[m] = row
                bar.update(1)
    except KeyboardInterrupt:
        status, error = "interrupted", "KeyboardInterrupt"
        raise
    except BaseException as err:
        status, error = "failed", f"{type(err).__name__}: {err}"
        raise
    finally:
        bar.close()
        hyper = _per_member(tuner, tuner.hyperparameters, P)
        for m in range(P):
            loggers[m].close()
            if final[m] is not None:
                summaries[m].update(final[m])
            else:
                member = _MemberTuner(hyper[m], tuner.steps_taken)
                summaries[m].update(_run._final_summary(status, member, last_rows[m], wall(),
                                                        error, None))
            summaries[m].update(extra[m])
            target = save_states_to[m] if save_states_to else None
            if status == "finished" and final[m] is None and target is not None:
                atomic_torch_save({"config": configs[m], "steps": tuner.steps_taken,
                                   "model": population.member(m).state_dict(),
                                   "versions": versions()}, target)
                summaries[m]["state_saved_to"] = str(target)
            write_summary(run_dirs[m], summaries[m])
    return summaries


def _record_divergence(tuner, result, newly, step, final, last_rows, wall_time) -> None:
    """Final summaries of members that diverged at ``step``: what a single run
    records when its tuner raises :class:`NonFiniteError` at that update."""
    hyper = _per_member(tuner, tuner.hyperparameters, tuner.population)
    loss = result.loss.detach().cpu()
    val = None if result.val_loss is None else result.val_loss.detach().cpu()
    for m in torch.nonzero(newly).flatten().tolist():
        if not math.isfinite(loss[m]):
            quantity = "training loss"
        elif val is not None and not math.isfinite(val[m]):
            quantity = "validation loss"
        else:
            quantity = "hypergradient"
        member = _MemberTuner(hyper[m], step - 1)
        final[m] = _run._final_summary("diverged", member, last_rows[m], wall_time,
                                       str(NonFiniteError(quantity, step)),
                                       {"step": step, "quantity": quantity})


__all__ = ["MEMBER_KEYS", "population_applies", "train_population"]
