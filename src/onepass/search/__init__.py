"""Hyperparameter-search baselines of the paper, each trial a run folder.

* :mod:`onepass.search.bayesopt` — Gaussian-process Bayesian optimisation
  (``onepass bayesopt``; extra ``onepass[bayesopt]``);
* :mod:`onepass.search.ray_tune` — ASHA and PBT on Ray Tune
  (``onepass asha`` / ``onepass pbt``; extra ``onepass[ray]``);
* :mod:`onepass.search.trainable` — a training run driven window by window
  (no optional dependency).

The optional libraries are imported only when a search runs; without them the
commands raise :class:`MissingExtra`, which names the extra to install.
"""
from __future__ import annotations


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message says which extra provides it."""

    def __init__(self, module: str, extra: str):
        super().__init__(f"{module} is not installed; install it with: pip install 'onepass[{extra}]'")
        self.module, self.extra = module, extra


def require(module: str, extra: str):
    """Import ``module`` or raise :class:`MissingExtra` naming ``extra``."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = MissingExtra(module.split(".")[0], extra)
        if getattr(error, "name", None) and not module.startswith(error.name.split(".")[0]):
            missing.args = (f"{missing.args[0]} ({error})",)  # a dependency of it is missing
        raise missing from None


__all__ = ["MissingExtra", "require"]
