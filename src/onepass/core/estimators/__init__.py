"""Hypergradient estimators, one file each, registered by name.

Every estimator holds its arithmetic once, as pure functions of explicit
tensors written against :class:`~onepass.core.products.Ops` (so the same
function runs eagerly on autograd or compiled on ``torch.func``, for one run
or a population), plus a small :class:`Estimator` that tells the
:class:`~onepass.Tuner` which updates it differentiates. Adding one means a
new file here that subclasses :class:`Estimator` and decorates it with
:func:`register`.

=================  ==============================================================
``neumann``        the paper's implicit estimate, Neumann-series solve (``implicit.py``)
``cg``             the same with a conjugate-gradient solve (``implicit.py``)
``unroll``         exact, through the window's last updates: Diff-through-Opt (``unroll.py``)
``baydin``         hypergradient descent as the paper ran it (``baydin.py``)
``baydin_exact``   hypergradient descent through the whole previous update (``baydin.py``)
=================  ==============================================================
"""
from .base import ESTIMATORS, Estimator, Schedule, StepResult, register
from . import baydin, implicit, unroll  # noqa: F401  (each registers itself)

__all__ = ["ESTIMATORS", "Estimator", "Schedule", "StepResult", "register"]
