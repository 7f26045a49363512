"""Experiment running: configs, one training run, its run folder."""
from onepass.experiment.config import (
    ALGORITHMS, DATASETS, ConfigError, draw_random_initialisation, load_config, resolve_config,
)
from onepass.experiment.run import run_training

__all__ = ["ALGORITHMS", "ConfigError", "DATASETS", "draw_random_initialisation", "load_config",
           "resolve_config", "run_training"]
