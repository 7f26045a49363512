"""Keep and repair Ray Tune's driver state files, reading them as data only.

Ray copies its driver state files into its experiment folder in place, so a
driver killed during a copy can leave one truncated (often empty), which
``ray.tune.Tuner.restore`` cannot read; it then silently starts the experiment
over without the ``param_space``. :func:`state_keeper` keeps a copy of each
file once it is complete (in ``<experiment>/.onepass_kept_state/``) and
:func:`repair_state` puts it back before a restore.

Whether a file is complete is decided without running anything in it:
``experiment_state-*.json`` is parsed as JSON, and the pickle
``basic-variant-state-*.json`` is walked opcode by opcode with
:func:`pickletools.genops`, which reads a pickle's structure and never
imports or calls what it names; a pickle is complete when that walk reaches
its ``STOP`` opcode at the file's end. (Ray's own ``Tuner.restore`` then
unpickles that file, as Ray always does with the experiment folder it wrote:
restoring a study trusts its folder as Ray does.)
"""
from __future__ import annotations

import json
import pickletools
from pathlib import Path

from onepass.experiment.record import atomic_write_bytes
from onepass.search import require

KEPT_STATE = ".onepass_kept_state"
"""Folder (in Ray's experiment folder) with the last complete copy of each of Ray's state files."""
STATE_FILES = ("experiment_state-*.json", "basic-variant-state-*.json")
"""Ray's driver state files, read by ``Tuner.restore`` (the newest of each kind)."""


def state_keeper(experiment: Path):
    """A Tune callback (run in the driver) that keeps a copy of each of Ray's
    state files in ``experiment`` once it is complete."""
    tune = require("ray.tune", "ray")

    class KeepExperimentState(tune.Callback):
        def __init__(self):
            self.seen = {}

        def on_step_end(self, iteration, trials, **info):
            _keep_state(experiment, self.seen)

        def on_experiment_end(self, trials, **info):
            _keep_state(experiment, self.seen)

    return KeepExperimentState()


def complete_state_file(path: Path, data: bytes | None = None) -> bool:
    """Whether ``path`` (or ``data``, its content) is a complete state file:
    JSON that parses, or a pickle whose opcodes run to ``STOP`` at its end."""
    try:
        data = path.read_bytes() if data is None else data
        if path.name.startswith("experiment_state-"):
            json.loads(data)
            return True
        end = None
        for opcode, _, position in pickletools.genops(data):
            end = position + 1 if opcode.name == "STOP" else None
        return end == len(data)
    except (OSError, ValueError):  # truncated, empty, gone: not complete
        return False


def _keep_state(experiment: Path, seen: dict) -> None:
    for pattern in STATE_FILES:
        files = sorted(experiment.glob(pattern))
        if not files:
            continue
        newest = files[-1]
        try:
            stat = newest.stat()
            data = newest.read_bytes()
        except OSError:
            continue
        key = (newest.name, stat.st_mtime_ns, stat.st_size)
        if seen.get(pattern) == key or not complete_state_file(newest, data):
            continue  # unchanged, or Ray is still copying it
        atomic_write_bytes(experiment / KEPT_STATE / newest.name, data)
        seen[pattern] = key


def repair_state(experiment: Path) -> None:
    """Before a restore: replace each incomplete state file among the newest
    of its kind by its kept copy, or remove it when there is none (Ray then
    reads the previous session's file)."""
    for pattern in STATE_FILES:
        for path in sorted(experiment.glob(pattern), reverse=True):
            if complete_state_file(path):
                break
            kept = experiment / KEPT_STATE / path.name
            if kept.is_file() and complete_state_file(kept):
                atomic_write_bytes(path, kept.read_bytes())
                break
            path.unlink()


__all__ = ["KEPT_STATE", "STATE_FILES", "complete_state_file", "repair_state", "state_keeper"]
