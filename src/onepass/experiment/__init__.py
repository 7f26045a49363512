"""Experiment running: configs, the training loop, run folders and their records.

``run_training`` is imported on first use, so that the torch-free parts
(:mod:`.record`, :mod:`.algorithms`) load without the training code.
"""
from onepass.experiment.config import (
    ALGORITHMS, DATASETS, ConfigError, draw_random_initialisation, load_config, resolve_config,
)


def __getattr__(name):
    if name == "run_training":
        from onepass.experiment.run import run_training
        return run_training
    raise AttributeError(f"module 'onepass.experiment' has no attribute {name!r}")


__all__ = ["ALGORITHMS", "ConfigError", "DATASETS", "draw_random_initialisation", "load_config",
           "resolve_config", "run_training"]
