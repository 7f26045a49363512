"""Experiment running: configs, the training loop, run folders and their records.

Names are imported on first use, so that the torch-free parts (:mod:`.record`,
:mod:`.algorithms`) load without the configs and the training code.
"""
_LAZY = {"ALGORITHMS": "config", "ConfigError": "config", "DATASETS": "config",
         "draw_random_initialisation": "config", "load_config": "config",
         "resolve_config": "config", "run_training": "run"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f"onepass.experiment.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'onepass.experiment' has no attribute {name!r}")


__all__ = sorted(_LAZY)
