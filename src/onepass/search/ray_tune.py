"""ASHA and PBT on Ray Tune, as the paper's baselines (``pip install 'onepass[ray]'``).

Each trial trains the base algorithm (default ``random_training_set_only``:
fixed hyperparameters, validation split kept unseen; ``ours_lr_momentum`` runs
the paper's method inside the scheduler) from hyperparameters drawn over the
protocol's ranges (lr ``10^U(-6,-1)``, weight decay ``10^U(-7,-2)``, momentum
``U(0,1)``), for at most ``max_steps`` (4,000) updates.

Reporting: the protocol reports after every weight update; here a trial
reports once per window of ``report_every`` updates (default 10), which costs a
tenth of the evaluations and changes the schedulers only by rounding their
milestones to multiples of 10 updates. Each report's metric ``val_loss`` is the
loss on the WHOLE validation set (a diverged trial reports
:data:`~onepass.search.trainable.DIVERGED_SCORE` and stops); ``step`` counts
weight updates and is the schedulers' ``time_attr``.

* ASHA: ``ASHAScheduler(time_attr="step", max_t=max_steps, grace_period=10,
  reduction_factor=4)``, minimising ``val_loss``.
* PBT: ``PopulationBasedTraining(time_attr="step", perturbation_interval=100)``
  over the same ranges (Ray's explore: resample with probability 0.25, else
  multiply by 0.8 or 1.2), momentum clipped to ``[0, 1 − 1e-6]``. A trial's
  checkpoint holds its model, tuner (optimiser state and hyperparameters),
  batch order, metrics so far and wall time; an exploit loads the donor's
  checkpoint (``metrics.csv`` then carries the donor's history up to that
  update) and sets the explored hyperparameters. With a tuning base
  (``ours_lr_momentum``) the explore step scales the donor's *current* values
  by the ratio Ray applied to its config values.

Each trial writes a run folder ``<root>/<method>/trial_<iii>/`` in the format
of :func:`~onepass.experiment.run.run_training` (``algorithm.name`` ``asha`` or
``pbt``); a trial stopped early by ASHA is recorded as ``finished`` with
``stopped_early: true``. ``summary.json["search"]`` records the study, the
trial and the seconds since the study started; ``<root>/<method>/study.json``
the settings, every trial's result, the best trial (lowest final validation
loss) and the study's wall-clock time. Ray's own files go to
``<root>/<method>/_ray/``. Against a cluster (``address``), the run folders
and the data directory must be on storage every node sees, and ``onepass``
must be installed on every node.

Interrupted studies continue. Every trial checkpoints each ``checkpoint_every``
reports (default 50: every 500 updates), and ``study.json`` is written with
the study's settings when it starts. Running the same command again after the
driver died (Ctrl-C, a crash, ``kill -9``) restores the study with
``ray.tune.Tuner.restore`` (ASHA and PBT alike): trials Ray had finished are
not run again, unfinished and errored ones continue from their last
checkpoint Ray's saved experiment state names (from the start if none), and
trials not yet started start. Ray saves that state every 10 s or more
(``TUNE_GLOBAL_CHECKPOINT_S`` sets the period); a trial whose run folder
says it finished after Ray's last save is closed at once without training
again. A state file of Ray's left truncated by the kill is put back from the
copy the driver kept (:mod:`onepass.search.ray_state`). A trial's checkpoint
is read as data only (:func:`~onepass.experiment.checkpoint.read_state`).
Other settings in the same folder are refused. The schedulers restart
from the state Ray pickled when the study began, so their decisions after a
resume may differ from those of an uninterrupted study; synchronous PBT
(``synch=True``) can stall after a restore in the Ray releases that lack
ray-project/ray#48616 (all trials left ``PAUSED``), asynchronous PBT does not.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from onepass.experiment.checkpoint import read_state, write_state
from onepass.experiment.record import RunRecord, atomic_write_bytes, find_record
from onepass.search import require
from onepass.search.ray_state import repair_state, state_keeper
from onepass.search.trainable import (
    BASES, DIVERGED_SCORE, MOMENTUM_MAX, SEARCH_SPACE, TrainingSession, score, trial_config,
)

STUDY = "study.json"
STATE_FILE = "state.pt"
STATIC = "_onepass"
FINAL = ("finished", "diverged")


def _trainable_class():
    tune = require("ray.tune", "ray")
    import torch

    class OnepassTrainable(tune.Trainable):
        """A Ray Tune trial: a :class:`TrainingSession` advanced one window per ``step``."""

        def setup(self, config):
            torch.set_num_threads(1)
            static = config[STATIC]
            # Ray sets the next trial's id before reset_config, whose _release
            # still closes this one's folder: record the id this setup is for.
            self.own_trial_id = self.trial_id
            self.static = static
            self.token = secrets.token_hex(8)
            index = self.own_trial_id.rsplit("_", 1)[-1]
            name = f"trial_{int(index):03d}" if index.isdigit() else f"trial_{self.own_trial_id}"
            self.run_dir = Path(static["root"]) / name
            hyper = {k: float(config[k]) for k in SEARCH_SPACE}
            cfg = trial_config(static["dataset"], static["base"], hyper, name=static["method"],
                               steps=static["max_steps"], seed=static["seed"],
                               overrides=static["overrides"])
            # The run folder is opened on first use (a step or a restore): an
            # actor that Ray sets up for a trial and stops at once must not
            # overwrite that trial's folder.
            self._trial_config, self.session = cfg, None
            # A trial that finished before the driver died, after Ray's last
            # saved experiment state: report its end, train nothing.
            self.finished = _finished_before(self.run_dir, self.own_trial_id, static["method"])

        def _open(self):
            if self.session is None:
                self.session = TrainingSession(
                    self._trial_config, self.run_dir, data_dir=self.static["data_dir"],
                    device=self.static["device"],
                    extra_summary={"search": self._search_info(), "session": self.token})
            return self.session

        def _search_info(self) -> dict:
            return {"method": self.static["method"], "study": self.static["root"],
                    "trial_id": self.own_trial_id, "base": self.static["base"],
                    "study_started_at": self.static["started_at"],
                    "started_at_study_s": time.time() - self.static["started_at"]}

        def step(self):
            if self.finished is not None:
                return _final_result(self.finished)
            row = self._open().advance(self.static["report_every"])
            result = {"val_loss": row["score"], "step": int(row["step"]), "done": bool(row["done"]),
                      "trial_wall_time_s": row.get("wall_time_s") or 0.0}
            for key in ("train_loss", "test_loss", "test_loss_unnormalised"):
                if row.get(key) is not None:
                    result[key] = row[key]
            hyper = self.session.tuner.hyperparameters
            for key in SEARCH_SPACE:
                value = hyper[key]
                result[f"hp_{key}"] = float(value) if isinstance(value, (int, float)) else math.nan
            return result

        def save_checkpoint(self, checkpoint_dir):
            if self.finished is not None:
                write_state({"finished": self.finished.to_dict()},
                            os.path.join(checkpoint_dir, STATE_FILE))
                return None
            state = self._open().state()
            state["trial_id"] = self.own_trial_id
            state["trial_config"] = {k: float(self.config[k]) for k in SEARCH_SPACE}
            write_state(state, os.path.join(checkpoint_dir, STATE_FILE))
            if self.static["keep_checkpoints"]:
                write_state(state, self.run_dir / "checkpoints" / f"step_{state['steps']:05d}.pt")
            return None

        def load_checkpoint(self, checkpoint):
            if isinstance(checkpoint, dict):
                state = checkpoint
            else:
                state = read_state(os.path.join(checkpoint, STATE_FILE))
            if self.finished is None and "finished" in state:
                self.finished = RunRecord.from_dict(state["finished"], "a trial checkpoint")
            if self.finished is not None:
                return  # never reopen (and so overwrite) a finished trial's folder
            donor = state["trial_id"]
            note = {"event": "exploit" if donor != self.own_trial_id else "restore",
                    "step": int(state["steps"]), "donor": donor,
                    "donor_run_dir": Path(state["run_dir"]).name,
                    "at_study_s": time.time() - self.static["started_at"]}
            self._open().load_state(state, note=note)
            restored = self.session.tuner.hyperparameters
            wanted = {k: float(self.config[k]) for k in SEARCH_SPACE}
            if self.session.tuner.tuned:  # explore around the donor's current (tuned) values
                old = state["trial_config"]
                wanted = {k: float(restored[k]) * wanted[k] / old[k] if old[k] > 0 else wanted[k]
                          for k in SEARCH_SPACE}
            self.session.set_hyperparameters(**wanted)
            note["hyperparameters_restored"] = {k: float(restored[k]) for k in SEARCH_SPACE}
            note["hyperparameters_explored"] = {k: float(v) for k, v in
                                                self.session.tuner.hyperparameters.items()}
            self.session.events[-1] = note
            if self.static["keep_checkpoints"]:
                write_state({"note": note, "model": {k: v.detach().cpu().clone() for k, v in
                                                     self.session.model.state_dict().items()}},
                            self.run_dir / "restored" / f"step_{note['step']:05d}_from_{donor}.pt")
            self.session.write_summary(search=self._search_info())

        def reset_config(self, new_config):
            """Ray reuses this actor for another trial, or (PBT) for this one
            after an exploit. Close the current folder if its trial is over
            (ASHA never pauses a trial, so one it stopped is over too), else
            hand it back unfinished (a paused PBT trial), then set up anew."""
            over = self.static["method"] == "asha" or (self.session is not None
                                                       and self.session.done)
            self._release(final=over)
            self.setup(new_config)
            return True

        def cleanup(self):
            self._release(final=True)

        def _release(self, final: bool):
            session = getattr(self, "session", None)
            if session is None:
                return
            self.session = None
            on_disk = find_record(self.run_dir)
            if on_disk is not None and on_disk.session not in (None, self.token):
                return  # a newer actor of this trial owns the folder now
            if not final:  # paused: keep status "running" with the progress so far
                session.logger.close()
                session.write_summary()
                return
            search = self._search_info()
            search["finished_at_study_s"] = time.time() - self.static["started_at"]
            session.summary["search"] = {**session.summary.get("search", {}), **{
                k: v for k, v in search.items() if k != "started_at_study_s"}}
            session.close()

    return OnepassTrainable


def _finished_before(run_dir: Path, trial_id: str, method: str) -> RunRecord | None:
    """The final record of ``trial_id``'s run folder if this trial already
    ended (a PBT trial whose actor stopped while paused has ``stopped_early``
    and is not over); else ``None``."""
    record = find_record(run_dir)
    if record is None:
        return None
    search = record.search or {}
    if (record.status not in FINAL or search.get("trial_id") != trial_id
            or "finished_at_study_s" not in search):
        return None
    if method == "pbt" and record.stopped_early:
        return None
    return record


def _record_score(record: RunRecord) -> float:
    """:func:`~onepass.search.trainable.score` of a run record."""
    return score(record.final.get("val_loss")) if record.status == "finished" else DIVERGED_SCORE


def _final_result(record: RunRecord) -> dict:
    """The last report of a trial that finished before, from its record."""
    final = record.final
    result = {"val_loss": _record_score(record), "step": int(record.steps or 0), "done": True,
              "trial_wall_time_s": record.wall_time_s or 0.0}
    for key in ("train_loss", "test_loss", "test_loss_unnormalised"):
        if final.get(key) is not None:
            result[key] = final[key]
    return result


def explore_clip(config: dict) -> dict:
    """PBT's ``custom_explore_fn``: keep the explored values inside the ranges
    a run accepts (momentum in ``[0, 1 − 1e-6]``, lr and weight decay positive)."""
    config["momentum"] = min(max(float(config["momentum"]), 0.0), MOMENTUM_MAX)
    config["lr"] = min(max(float(config["lr"]), 1e-10), 1.0)
    config["weight_decay"] = max(float(config["weight_decay"]), 0.0)
    return config


def search_space():
    tune = require("ray.tune", "ray")
    (lr_lo, lr_hi), (wd_lo, wd_hi), (m_lo, m_hi) = (SEARCH_SPACE[k] for k in
                                                     ("lr", "weight_decay", "momentum"))
    return {"lr": tune.loguniform(10.0 ** lr_lo, 10.0 ** lr_hi),
            "weight_decay": tune.loguniform(10.0 ** wd_lo, 10.0 ** wd_hi),
            "momentum": tune.uniform(m_lo, min(m_hi, MOMENTUM_MAX))}


def run_ray_search(
    method: str,
    dataset: str | os.PathLike,
    root: str | os.PathLike,
    *,
    base: str = "random_training_set_only",
    num_samples: int | None = None,
    max_steps: int = 4000,
    report_every: int = 10,
    grace_period: int = 10,
    reduction_factor: float = 4,
    perturbation_interval: int = 100,
    synch: bool = False,
    seed: int = 0,
    overrides: Sequence = (),
    data_dir=None,
    device: str = "cpu",
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_trial: float = 1.0,
    checkpoint_every: int = 50,
    keep_checkpoints: bool | None = None,
    verbose: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run an ASHA (``method="asha"``) or PBT (``"pbt"``) study; returns ``study.json``'s content.

    ``root`` is the study folder (``<log root>/asha``); ``dataset`` a dataset
    config (``uci_energy``). ``num_samples``: trials (ASHA, default 100) or the
    population (PBT, default 20). Uses a running Ray session if there is one,
    else ``ray.init(address=address)`` (a local one when ``address`` is None).
    ``cpus_per_trial`` equal to the CPUs Ray has runs one trial at a time,
    which makes ASHA's decisions reproducible (they otherwise depend on which
    trial reports first). Trials reuse actors (a new trial or a PBT exploit
    costs no process start); a paused PBT trial's folder keeps status ``running``.

    Trials checkpoint every ``checkpoint_every`` reports; running the same
    call again continues an interrupted study from those checkpoints (see the
    module's docstring) and refuses other settings in ``root`` with
    :class:`ValueError`. ``keep_checkpoints`` (default: PBT only) also keeps a
    copy of every checkpoint in the trial's run folder (``checkpoints/``,
    ``restored/``), to inspect exploits.
    """
    ray = require("ray", "ray")
    tune = require("ray.tune", "ray")
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
    from ray.tune.search import BasicVariantGenerator

    if method not in ("asha", "pbt"):
        raise ValueError(f"method must be asha or pbt, got {method!r}")
    if base not in BASES:
        raise ValueError(f"--base must be one of {', '.join(BASES)}, got {base!r}")
    log = log or (lambda text: None)
    root = Path(root).resolve()
    if num_samples is None:
        num_samples = 100 if method == "asha" else 20
    # Check the trial config (and the window) before starting Ray.
    probe = trial_config(str(dataset), base, {"lr": 1e-3, "weight_decay": 1e-5, "momentum": 0.5},
                         name=method, steps=max_steps, seed=seed, overrides=overrides)
    window = probe["algorithm"]["update_interval"] if probe["algorithm"]["tune"] else 1
    if report_every % window:
        raise ValueError(f"report_every ({report_every}) must be a multiple of the base's "
                         f"update_interval ({window}) so that trials can be checkpointed")
    if method == "pbt" and perturbation_interval % report_every:
        raise ValueError(f"perturbation_interval ({perturbation_interval}) must be a multiple of "
                         f"report_every ({report_every})")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be ≥ 1, got {checkpoint_every}")
    if keep_checkpoints is None:
        keep_checkpoints = method == "pbt"
    from onepass.experiment.tasks import check_data
    check_data(probe, data_dir)  # the data (or the user's targets) must be there; raises otherwise

    if Path(dataset).is_file():  # a config file of the user's: Ray's workers run elsewhere
        dataset = Path(dataset).resolve()
    static = {"method": method, "root": str(root), "dataset": str(dataset), "base": base,
              "max_steps": int(max_steps), "report_every": int(report_every), "seed": int(seed),
              "overrides": [_override_text(o) for o in overrides],
              "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
              "device": device, "keep_checkpoints": bool(keep_checkpoints)}
    settings = {**static, "num_samples": num_samples, "grace_period": grace_period,
                "reduction_factor": reduction_factor, "perturbation_interval": perturbation_interval,
                "synch": synch, "checkpoint_every": checkpoint_every}
    previous = _read_json(root / STUDY)
    if previous is not None and previous.get("settings") != _json_safe(settings):
        raise ValueError(f"{root} holds a study with other settings ({previous.get('settings')}); "
                         "choose another folder")
    experiment = root / "_ray" / method
    if previous is not None and experiment.is_dir():
        repair_state(experiment)
    resume = previous is not None and _restorable(experiment)
    if previous is not None and not resume:
        shutil.rmtree(experiment, ignore_errors=True)  # died before Ray saved a state: start over
    started = previous["started_at"] if resume else time.time()
    static["started_at"] = started
    resumes = previous.get("resumes", 0) + 1 if resume else 0
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / STUDY, {"settings": settings, "method": method, "status": "running",
                               "started_at": started, "resumes": resumes})
    if method == "asha":
        scheduler = ASHAScheduler(time_attr="step", metric="val_loss", mode="min", max_t=max_steps,
                                  grace_period=grace_period, reduction_factor=reduction_factor)
    else:
        scheduler = PopulationBasedTraining(
            time_attr="step", metric="val_loss", mode="min",
            perturbation_interval=perturbation_interval, hyperparam_mutations=search_space(),
            custom_explore_fn=explore_clip, synch=synch)
    # Every checkpoint is kept: Ray's saved experiment state may name an older one
    # than the newest (and a PBT exploit may load a donor's older one).
    checkpoint_config = tune.CheckpointConfig(checkpoint_frequency=checkpoint_every,
                                              checkpoint_at_end=False)

    started_ray = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": verbose > 0}
        if address is None:
            kwargs["num_cpus"] = num_cpus
        ray.init(address=address, **kwargs)
        started_ray = True
    try:
        trainable = tune.with_resources(_trainable_class(), {"cpu": cpus_per_trial})
        if resume:
            tuner = tune.Tuner.restore(str(experiment), trainable=trainable,
                                       resume_unfinished=True, resume_errored=True)
            log(f"{method}: continuing the study in {root} (resume {resumes})")
            if synch and method == "pbt":
                log("pbt: synchronous PBT may stall after a restore (ray-project/ray#48616)")
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={**search_space(), STATIC: static},
                tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=num_samples,
                                            search_alg=BasicVariantGenerator(random_state=seed),
                                            reuse_actors=True),
                run_config=tune.RunConfig(name=method, storage_path=str(experiment.parent),
                                          checkpoint_config=checkpoint_config, verbose=verbose,
                                          stop={"done": True},
                                          callbacks=[state_keeper(experiment)]))
            log(f"{method}: {num_samples} trials of at most {max_steps} updates, base {base}, "
                f"run folders under {root}")
        grid = tuner.fit()
        errors = [str(r.error) for r in grid if r.error is not None]
    finally:
        if started_ray:
            ray.shutdown()
    study = collect_study(root, method=method, settings=settings, elapsed_s=time.time() - started)
    study.update(errors=errors, status="finished", started_at=started, resumes=resumes)
    _write_json(root / STUDY, study)
    return study


def _restorable(experiment: Path) -> bool:
    """Whether Ray saved enough of the study in ``experiment`` to restore it."""
    from ray.tune import Tuner
    return Tuner.can_restore(str(experiment)) and any(experiment.glob("experiment_state-*.json"))


def collect_study(root: Path, *, method: str, settings: Mapping, elapsed_s: float) -> dict:
    """Read the trials' run folders into a study record (best = lowest final validation loss)."""
    trials = []
    for folder in sorted(Path(root).glob("trial_*")):
        record = find_record(folder)
        if record is None:
            continue
        final = record.final
        trials.append({"run_dir": folder.name, "status": record.status,
                       "steps": record.steps, "score": _record_score(record),
                       "val_loss": final.get("val_loss"), "test_loss": final.get("test_loss"),
                       "test_loss_unnormalised": final.get("test_loss_unnormalised"),
                       "wall_time_s": record.wall_time_s,
                       "stopped_early": record.stopped_early,
                       "exploits": sum(1 for e in record.events
                                       if isinstance(e, Mapping) and e.get("event") == "exploit")})
    best = min(trials, key=lambda t: t["score"]) if trials else None
    return {"settings": dict(settings), "method": method, "trials": trials, "best": best,
            "completed": len(trials), "elapsed_s": elapsed_s,
            "wall_time_s": float(sum(t["wall_time_s"] or 0.0 for t in trials)),
            "updates": int(sum(t["steps"] or 0 for t in trials))}


def _override_text(item) -> str:
    if isinstance(item, str):
        return item
    path, value = item
    return f"{'.'.join(path)}={json.dumps(value)}"


def _json_safe(data):
    from onepass.experiment.logging import _json_safe
    return json.loads(json.dumps(_json_safe(data)))


def _write_json(path: Path, data) -> None:
    atomic_write_bytes(path, (json.dumps(_json_safe(data), indent=2) + "\n").encode())


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


__all__ = ["collect_study", "explore_clip", "run_ray_search", "search_space"]
