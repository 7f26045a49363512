"""Bayesian optimisation of (log10 lr, log10 weight decay, momentum), as in the paper.

The paper used the ``bayesian-optimization`` package (a Gaussian process with a
Matérn-5/2 kernel and an upper-confidence-bound acquisition); so does this
module (``pip install 'onepass[bayesopt]'``, ``bayesian-optimization>=2``): it
is small, pure Python on scikit-learn and SciPy (already dependencies), keeps
the paper's optimiser, and lets a study be replayed exactly.

A study is a folder ``<root>/bayesopt/`` holding ``study.json`` (settings, the
evaluations so far, the best one) and one ordinary run folder per evaluation,
``eval_000/``, ``eval_001/``, ... (``config.yaml``, ``metrics.csv``,
a run record whose ``search`` names the study and the point). Each evaluation is a full
training run of the base algorithm (default ``random_training_set_only``:
fixed hyperparameters, the validation split kept unseen) scored by its final
validation loss on the whole validation set (lower is better); a diverged run
scores :data:`~onepass.search.trainable.DIVERGED_SCORE`.

Evaluation ``i`` is chosen deterministically from the finished evaluations
before it: the first ``init_points`` come from ``numpy.random.default_rng(seed)``,
each later one from a fresh optimiser (``random_state = seed·100003 + i``) that
is given every earlier (point, score) with ``register`` and asked to
``suggest``. Re-running a study therefore continues it: finished (or
diverged) evaluations found on disk are read back, not re-run, and an
evaluation cut short (status running / interrupted / failed) is run again with
the same point. The result is the same as an uninterrupted study.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from onepass.experiment.record import atomic_write_bytes, find_record
from onepass.search import require
from onepass.search.trainable import BASES, SEARCH_SPACE, clip_hyperparameters, score

STUDY = "study.json"
PBOUNDS = {"log10_lr": SEARCH_SPACE["lr"], "log10_weight_decay": SEARCH_SPACE["weight_decay"],
           "momentum": SEARCH_SPACE["momentum"]}


def point_to_hyperparameters(point: Mapping[str, float]) -> dict:
    """A BO point (log10 lr, log10 wd, momentum) → natural hyperparameters."""
    return {"lr": 10.0 ** float(point["log10_lr"]),
            "weight_decay": 10.0 ** float(point["log10_weight_decay"]),
            "momentum": float(point["momentum"])}


def initial_points(seed: int, count: int) -> list[dict]:
    """The ``count`` random initial points of a study (uniform in the bounds)."""
    rng = np.random.default_rng(seed)
    return [{k: float(rng.uniform(*PBOUNDS[k])) for k in PBOUNDS} for _ in range(count)]


def suggest(history: Sequence[tuple[Mapping[str, float], float]], seed: int, index: int) -> dict:
    """The guided point of evaluation ``index`` after ``history`` ((point, score) pairs)."""
    bayes_opt = require("bayes_opt", "bayesopt")
    optimizer = bayes_opt.BayesianOptimization(
        f=None, pbounds=dict(PBOUNDS), random_state=seed * 100003 + index, verbose=0,
        allow_duplicate_points=True)
    for point, value in history:
        optimizer.register(params={k: float(point[k]) for k in PBOUNDS}, target=-float(value))
    suggestion = optimizer.suggest()
    return {k: float(np.clip(float(suggestion[k]), *PBOUNDS[k])) for k in PBOUNDS}


def run_bayesopt(
    configs: Sequence[str | os.PathLike],
    study_dir: str | os.PathLike,
    *,
    base: str = "random_training_set_only",
    init_points: int = 5,
    iterations: int = 25,
    seed: int = 0,
    overrides: Sequence = (),
    data_dir=None,
    device: str = "cpu",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run (or continue) a Bayesian-optimisation study; returns ``study.json``'s content.

    Args:
        configs: the dataset config layers (e.g. ``["uci_energy"]``).
        study_dir: the study folder (``<root>/bayesopt``).
        base: the algorithm config of each evaluation (see :data:`BASES`).
        init_points, iterations: random then guided evaluations (5 and 25).
        seed: seeds the initial points, the optimiser and every run's model.
        overrides: ``--set`` style overrides applied to every evaluation
            (e.g. ``training.steps=100`` for a small budget).
    """
    require("bayes_opt", "bayesopt")  # fail before any training when the extra is missing
    from onepass.experiment.config import load_config
    from onepass.experiment.run import run_training

    if base not in BASES:
        raise ValueError(f"--base must be one of {', '.join(BASES)}, got {base!r}")
    if init_points < 1 or iterations < 0:
        raise ValueError("a study needs init_points ≥ 1 and iterations ≥ 0")
    log = log or (lambda text: None)
    study_dir = Path(study_dir)
    settings = {"method": "bayesopt", "configs": [str(c) for c in configs], "base": base,
                "seed": int(seed), "overrides": [_override_text(o) for o in overrides],
                "bounds": {k: list(v) for k, v in PBOUNDS.items()}}
    study = _read_study(study_dir)
    if study is not None and study.get("settings") != settings:
        raise ValueError(f"{study_dir} holds a study with other settings ({study.get('settings')}); "
                         "choose another folder")
    study = {"settings": settings, "init_points": init_points, "iterations": iterations,
             "evaluations": [], "started_at": (study or {}).get("started_at", time.time())}
    total = init_points + iterations
    randoms = initial_points(seed, init_points)
    history: list[tuple[dict, float]] = []
    for index in range(total):
        run_dir = study_dir / f"eval_{index:03d}"
        record = find_record(run_dir)
        reused = record is not None and record.status in ("finished", "diverged") \
            and record.search is not None
        if reused:
            summary = record.to_dict()
            point = summary["search"]["point"]
        else:
            point = randoms[index] if index < init_points else suggest(history, seed, index)
            hyper = clip_hyperparameters(point_to_hyperparameters(point), tuned=base != BASES[0])
            config = load_config([*configs, base], [
                (("logging", "tensorboard"), False), *overrides,
                (("algorithm", "name"), "bayesopt"), (("seed",), int(seed)),
                *[(("hyperparameters", k), v) for k, v in hyper.items()]])
            log(f"bayesopt: eval {index + 1}/{total}: lr {hyper['lr']:.3g}, "
                f"weight decay {hyper['weight_decay']:.3g}, momentum {hyper['momentum']:.3g}")
            search = {"method": "bayesopt", "study": str(study_dir), "index": index,
                      "kind": "random" if index < init_points else "guided", "point": point}
            summary = run_training(config, run_dir, data_dir=data_dir, device=device,
                                   progress=progress,
                                   record_fields={"search": search, "init_index": index})
        value = score(summary)
        history.append((point, value))
        final = summary["final"]
        study["evaluations"].append({
            "index": index, "run_dir": run_dir.name, "point": point, "score": value,
            "status": summary["status"], "reused": reused, "val_loss": final["val_loss"],
            "test_loss": final["test_loss"],
            "test_loss_unnormalised": final["test_loss_unnormalised"],
            "wall_time_s": summary["wall_time_s"], "train_seconds": summary["train_seconds"]})
        if reused:
            log(f"bayesopt: eval {index + 1}/{total} found on disk (score {value:.4g})")
        _finish(study)
        _write_study(study_dir, study)
    return study


def _finish(study: dict) -> None:
    evaluations = study["evaluations"]
    best = min(evaluations, key=lambda e: e["score"])
    study["best"] = best
    study["completed"] = len(evaluations)
    study["wall_time_s"] = float(sum(e["wall_time_s"] or 0.0 for e in evaluations))
    study["elapsed_s"] = time.time() - study["started_at"]
    # The search's answer at each evaluation: the test loss of the best so far.
    trace, best_score, best_eval, clock = [], math.inf, None, 0.0
    for e in evaluations:
        clock += e["wall_time_s"] or 0.0
        if e["score"] < best_score:
            best_score, best_eval = e["score"], e
        trace.append({"evaluations": e["index"] + 1, "wall_time_s": clock,
                      "best_index": best_eval["index"], "val_loss": best_eval["val_loss"],
                      "test_loss": best_eval["test_loss"],
                      "test_loss_unnormalised": best_eval["test_loss_unnormalised"]})
    study["trace"] = trace


def _override_text(item) -> str:
    if isinstance(item, str):
        return item
    path, value = item
    return f"{'.'.join(path)}={value!r}"


def _read_study(study_dir: Path) -> dict | None:
    try:
        return json.loads((study_dir / STUDY).read_text())
    except (OSError, ValueError):
        return None


def _write_study(study_dir: Path, study: Mapping) -> None:
    from onepass.experiment.logging import _json_safe
    atomic_write_bytes(study_dir / STUDY, (json.dumps(_json_safe(study), indent=2) + "\n").encode())


__all__ = ["PBOUNDS", "STUDY", "initial_points", "point_to_hyperparameters", "run_bayesopt",
           "suggest"]
