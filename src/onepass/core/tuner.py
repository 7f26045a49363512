"""The tuner: weight updates every step, a hyperparameter update every window.

Used in a practitioner's own loop::

    tuner = Tuner(model, torch.nn.functional.mse_loss,
                  hyperparameters=dict(lr=1e-3, momentum=0.5, weight_decay=1e-5))
    for x, y in batches:
        tuner.step((x, y), val_batch=lambda: next(val_batches))

This file is the stateful shell only: the window schedule, the
hyper-optimiser and checkpoints. Where the hyperparameters live is
:class:`~onepass.core.hyperparameters.Slots`; how a step is differentiated
and executed (eager or compiled, one run or a population) is
:class:`~onepass.core.execution.Execution`; the loss's part of each update
(training gradient, Hessian–vector products, validation gradient) is a value,
:class:`~onepass.core.products.LossPart`, built here from batches on the
model (:class:`~onepass.core.losses.ModelLosses`) or given by the caller
(:meth:`Tuner.step_on`: the ``torch.optim`` front end builds it from the user's
``backward()``); each estimator's arithmetic is a file in
:mod:`onepass.core.estimators`:

* ``"neumann"`` — the paper's implicit-function-theorem estimate with
  ``neumann_terms`` terms through the most recent update ("Ours"; with
  ``tune=("weight_decay",)`` it is Lorraine et al.); ``"cg"`` solves the
  same linear system by conjugate gradients;
* ``"unroll"`` — exact differentiation through the last ``unroll_steps``
  updates of the window (Diff-through-Opt);
* ``"baydin"`` — hypergradient descent on the training loss, every step, as
  the paper ran it; ``"baydin_exact"`` differentiates the whole previous update.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from . import hyperparameters as hp
from .budget import CostBudget
from .estimators import ESTIMATORS, Schedule, StepResult
from .execution import Execution, NonFiniteError
from .losses import ModelLosses
from .products import LossPart, Tensors, clone
from .rules import UpdateRule, get_rule

METHODS = tuple(ESTIMATORS)
HYPER_OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD,
                    # sign-driven: the step grows ×1.2 while the hypergradient keeps its
                    # sign and halves when it flips, between 0.001 and 0.5 per raw unit
                    "rprop": functools.partial(torch.optim.Rprop, etas=(0.5, 1.2), step_sizes=(1e-3, 0.5))}

__all__ = ["DataParallel", "HYPER_OPTIMIZERS", "METHODS", "NonFiniteError", "StepResult", "Tuner"]


@dataclass(frozen=True)
class DataParallel:
    """How the ranks of a data-parallel run stay in step (for a :class:`Tuner`
    whose loss's parts already average the data-dependent vectors).

    Attributes:
        average: ``tensors ↦`` their mean over the ranks: the hypergradient is
            averaged before it is applied, so every rank holds the same hyperparameters.
        agree_on_interval: this rank's cost-budget choice ``↦`` the one every rank takes.
    """

    average: Callable[[Tensors], Tensors]
    agree_on_interval: Callable[[int], int] | None = None


def default_batch_loss(loss_fn: Callable) -> Callable:
    """``batch = (inputs, targets)`` ↦ ``loss_fn(forward(inputs), targets)``."""
    def batch_loss(forward, batch):
        inputs, targets = batch
        return loss_fn(forward(inputs), targets)
    return batch_loss


class Tuner:
    """Trains ``model`` and tunes its optimiser's hyperparameters in the same pass.

    Args:
        model: any ``nn.Module``; ``None`` for a tuner on ``params`` alone whose
            every update's loss's part is given to :meth:`step_on`.
        loss_fn: ``loss_fn(model(inputs), targets) -> scalar`` for batches
            ``(inputs, targets)``. Give ``batch_loss`` instead for other batches.
        params: the parameters to train: an iterable of tensors or of
            ``torch.optim``-style groups (dicts with ``"params"`` and optional
            hyperparameter values). Default: every parameter that requires grad.
        rule: ``"sgd"``, ``"sgd_nesterov"``, ``"adam"``, ``"adamw"`` or an
            :class:`~onepass.core.rules.UpdateRule`.
        hyperparameters: initial values in natural units; missing ones take the
            rule's defaults.
        tune: names to tune. Default: every name given in ``hyperparameters``.
            ``()`` trains with fixed hyperparameters.
        granularity: per name, ``"scalar"`` (one value), ``"group"`` (one per
            parameter group), ``"tensor"`` (one per parameter tensor) or
            ``"weight"`` (one per weight). Default ``"scalar"``, or ``"group"``
            when groups give different values.
        method: a name in :data:`~onepass.core.estimators.ESTIMATORS`:
            ``"neumann"``, ``"cg"``, ``"unroll"``, ``"baydin"`` or
            ``"baydin_exact"`` (see module docs).
        neumann_terms: ``K`` for ``"neumann"`` (iterations for ``"cg"``).
        unroll_steps: updates differentiated through by ``"unroll"``.
        update_interval: weight updates per hyperparameter update (``"baydin"``
            updates every step).
        hyper_optimizer: ``"adam"``, ``"sgd"`` or ``"rprop"`` (sign-driven steps
            that grow while the hypergradient keeps its sign; ``hyper_lr`` is the
            first step) (default ``"sgd"`` for the
            Baydin methods, else ``"adam"``), with learning rate ``hyper_lr``
            (default 0.001 for Baydin, else 0.05).
        lr_bounds: the learning rate is clipped to this range after each
            hyperparameter update; a list gives one range per parameter group.
        max_hyper_step: if given, one hyperparameter update moves each raw
            (transformed) value by at most this much (``0.1`` on ``log10 lr``
            is a factor of 1.26). Default ``None``: Adam, the default
            hyper-optimiser, already moves each raw value by about
            ``hyper_lr`` per update; the cap matters with ``"sgd"``.
        tune_after: plain updates before the first window starts (a warm-up
            during which the hyperparameters stay fixed). Default 0, as in the
            paper.
        hyper_space: where the hyper-optimiser steps: ``"transformed"`` (on
            ``log10 lr``, ``logit momentum``, ...; the paper's method) or
            ``"natural"`` (on ``lr`` itself, as Baydin et al.'s hypergradient
            descent does; SGD only). Default: natural for ``"baydin_exact"``,
            else transformed.
        batch_loss: ``batch_loss(forward, batch) -> scalar`` where ``forward``
            calls the model (with the weights being differentiated).
        max_grad_norm: clip the training gradient to this joint 2-norm inside
            the update (so hypergradients see the clipping), as
            ``torch.nn.utils.clip_grad_norm_`` does.
        reset_each_window: at the start of every window after the first,
            restore the initial weights and buffers, so each hyperparameter
            update sees ``update_interval`` updates from the same start (long
            Diff-through-Opt, "Standalone"/"Full", with ``method="unroll"`` and
            ``unroll_steps == update_interval``).
        reset_optimizer_state: with ``reset_each_window``, also restart the
            optimiser state (momentum buffer, Adam's moments). Default
            ``False``: the state is carried over, as the paper's reference
            code does.
        compile: compute the gradient of the steps that are not differentiated
            twice (all but the window's last for ``"neumann"``, every step for
            ``"baydin"``) with ``torch.compile``
            of a ``torch.func`` gradient. Worth it for long runs of small models
            and for populations (about 3× faster per step on the paper's UCI
            MLPs); the first step pays seconds of compilation. Results agree
            with the eager path to rounding. With a population the
            differentiated steps are compiled too: Neumann's hyperstep, and
            for ``"unroll"`` the window's unrolled updates are taken as plain
            steps and replayed, differentiated, in one compiled function at
            the window's last update (hyperparameters may then only be changed
            between windows).
        cost_budget: the wall-clock the user accepts as a multiple of the bare
            optimizer's (``1.5``: 50% more), or a
            :class:`~onepass.core.budget.CostBudget` (to inject a clock). The
            run times its own updates over its first windows (each as long as
            the timings so far ask), takes one longer window that wins back
            what they overspent, then fixes :attr:`update_interval` (never
            below ``update_interval``) so that a window costs at most that
            ratio of plain updates, and scales the
            hyper-optimiser's step by the same factor as the window, so the
            hyperparameters can move as far per weight update as before (the
            catch-up window takes the chosen window's step, not one as many
            times longer as it is); the choices are in :meth:`state_dict`. Default ``None``: ``update_interval`` throughout
            (the paper's schedule). Not for ``"baydin"`` methods (every
            update) or ``reset_each_window``.
        population: train ``P`` independent runs at once. Every parameter then
            has a leading dimension ``P`` (member ``m`` owns slice ``m``), the
            loss returns one value per member, shape ``(P,)``, and each
            hyperparameter value may be a sequence of ``P`` initial values.
            A member whose loss or hypergradient is not finite is marked in
            :attr:`diverged` and frozen (its weights and hyperparameters stop
            changing) instead of raising; the others go on undisturbed.
        data_parallel: a :class:`DataParallel` (with ``model=None``): the
            hypergradient is averaged across ranks, and the cost budget's choice agreed.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable | None = None,
        *,
        params: Iterable | None = None,
        rule: str | UpdateRule = "sgd",
        hyperparameters: Mapping[str, float] | None = None,
        tune: Sequence[str] | None = None,
        granularity: Mapping[str, str] | None = None,
        method: str = "neumann",
        neumann_terms: int = 5,
        unroll_steps: int = 5,
        update_interval: int = 10,
        hyper_optimizer: str | None = None,
        hyper_lr: float | None = None,
        lr_bounds: tuple[float, float] | Sequence[tuple[float, float]] = (1e-10, 1.0),
        max_hyper_step: float | None = None,
        tune_after: int = 0,
        hyper_space: str | None = None,
        batch_loss: Callable | None = None,
        max_grad_norm: float | None = None,
        reset_each_window: bool = False,
        reset_optimizer_state: bool = False,
        compile: bool = False,
        population: int | None = None,
        cost_budget: float | CostBudget | None = None,
        data_parallel: DataParallel | None = None,
    ):
        self.model = model
        self.rule = get_rule(rule)
        if model is None:
            if params is None or loss_fn is not None or batch_loss is not None or compile:
                raise ValueError("a Tuner without a model takes params=, no loss and no compile: "
                                 "each update's loss's part is given to step_on()")
        elif (loss_fn is None) == (batch_loss is None):
            raise ValueError("give exactly one of loss_fn (for (inputs, targets) batches) or batch_loss")
        if method not in ESTIMATORS:
            raise ValueError(f"unknown method {method!r}{hp.closest(method, METHODS)} "
                             f"(choose one of {', '.join(METHODS)})")
        estimator = ESTIMATORS[method]
        _check_int("update_interval", update_interval, 1)
        _check_int("neumann_terms", neumann_terms, 1)
        _check_int("unroll_steps", unroll_steps, 1)
        if method == "unroll" and unroll_steps > update_interval:
            raise ValueError(f"unroll_steps={unroll_steps} exceeds update_interval={update_interval}")
        _check_int("tune_after", tune_after, 0)
        if max_hyper_step is not None and not max_hyper_step > 0:
            raise ValueError(f"max_hyper_step must be positive, got {max_hyper_step!r}")
        if population is not None:
            _check_int("population", population, 1)
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive, got {max_grad_norm!r}")
        self.method = method
        self.neumann_terms = neumann_terms
        self.unroll_steps = unroll_steps
        self.update_interval = 1 if estimator.every_step else update_interval
        self.tune_after = tune_after
        self.max_hyper_step = max_hyper_step
        self.population = population
        self.max_grad_norm = max_grad_norm

        groups = _parameter_groups(model, params)
        params = [p for group, _ in groups for p in group]
        if model is not None and any(id(p) not in {id(q) for q in model.parameters()} for p in params):
            raise ValueError("every tuned parameter must belong to the model")
        if population is not None:
            names = {id(p): n for n, p in model.named_parameters()} if model is not None else \
                {id(p): str(i) for i, p in enumerate(params)}
            wrong = [names[id(p)] for p in params if p.dim() == 0 or p.shape[0] != population]
            if wrong:
                raise ValueError(f"with population={population} every parameter needs a leading dimension "
                                 f"of {population}; these do not: {', '.join(wrong)}")
        tune = tuple(hyperparameters or {}) if tune is None else tuple(tune)
        self.slots = hp.Slots(self.rule.hyperparameter_names, self.rule.defaults, groups,
                              dict(hyperparameters or {}), tune, dict(granularity or {}), population,
                              self._check_name)
        if estimator.tunable is not None and set(tune) - set(estimator.tunable):
            raise ValueError(f"{method} tunes only {', '.join(estimator.tunable)}, "
                             f"not {sorted(set(tune) - set(estimator.tunable))}")
        self.granularity = self.slots.granularity
        self.tuned = self.slots.tuned
        self.lr_bounds = self.slots.check_lr_bounds(lr_bounds)

        leaves = self.slots.leaves()
        self._hyper_optimizer = None
        if leaves:
            kind = hyper_optimizer or estimator.hyper_optimizer
            if kind not in HYPER_OPTIMIZERS:
                raise ValueError(f"unknown hyper_optimizer {kind!r}; choose one of {', '.join(HYPER_OPTIMIZERS)}")
            lr = hyper_lr if hyper_lr is not None else estimator.hyper_lr
            self._hyper_optimizer = HYPER_OPTIMIZERS[kind](leaves, lr=lr)
        self.hyper_space = hyper_space or estimator.hyper_space
        if self.hyper_space not in ("transformed", "natural"):
            raise ValueError(f"hyper_space must be 'transformed' or 'natural', got {hyper_space!r}")
        if self.hyper_space == "natural" and self._hyper_optimizer is not None and \
                not isinstance(self._hyper_optimizer, torch.optim.SGD):
            raise ValueError("hyper_space='natural' takes plain SGD steps: use hyper_optimizer='sgd'")

        self.data_parallel = data_parallel
        self._losses = None if model is None else \
            ModelLosses(model, params, batch_loss or default_batch_loss(loss_fn), compile=compile)
        self._execution = Execution(params, self.rule, self.slots, max_grad_norm=self.max_grad_norm,
                                    population=population, compile=compile,
                                    rebuild=self._losses.rebuild if self._losses is not None else None)
        self._estimator = estimator(Schedule(self.update_interval, neumann_terms, unroll_steps, population))
        self.reset_each_window = bool(reset_each_window)
        self.reset_optimizer_state = bool(reset_optimizer_state)
        self._initial = None
        if self.reset_each_window:
            self._initial = {"weights": [p.detach().clone() for p in params],
                             "buffers": {n: b.detach().clone() for n, b in model.named_buffers()}
                             if model is not None else {}}
        self.steps_taken = 0
        self._input_shapes: list | None = None
        self.cost_budget = CostBudget.of(cost_budget)
        if self.cost_budget is not None and (estimator.every_step or self.reset_each_window):
            raise ValueError(f"cost_budget needs windows of updates: {method!r}"
                             f"{' with reset_each_window' if self.reset_each_window else ''} has a fixed schedule")
        if self.cost_budget is not None:
            self.cost_budget.attach(params[0].device,
                                    data_parallel.agree_on_interval if data_parallel is not None else None)
        self._window_origin = self.tune_after   # windows count from the update after this one

    # ----------------------------------------------------------------- public

    def position(self, step: int) -> int | None:
        """Where update ``step`` (1-based) falls in its window, from 1, or
        ``None`` for an update that tunes nothing (``tune_after``, or nothing tuned)."""
        if not self.tuned or step <= self.tune_after:
            return None
        return (step - self._window_origin - 1) % self.update_interval + 1

    def step(self, batch: Any, val_batch: Any = None) -> StepResult:
        """Take one weight update on ``batch``; on the last update of a window,
        also one hyperparameter update using ``val_batch``.

        ``val_batch`` may be a batch or a zero-argument callable returning one
        (it is only called when needed). Raises :class:`NonFiniteError`, with
        nothing changed, if a loss or hypergradient is not finite.
        """
        if self._losses is None:
            raise ValueError("this Tuner has no model: give each update's loss's part to step_on()")
        self._remember_input_shapes(batch)
        if self.needs_validation:
            val_batch = val_batch() if callable(val_batch) else val_batch
            if val_batch is None:
                raise ValueError(f"update {self.steps_taken + 1} closes a window of update_interval="
                                 f"{self.update_interval}: pass a validation batch")
            self._check_val_batch(val_batch)
        else:
            val_batch = None
        return self.step_on(self._losses.part(batch, val_batch, self._execution.frozen()))

    def step_on(self, part: LossPart) -> StepResult:
        """:meth:`step` with the update's loss's part given as a value (a
        :class:`~onepass.core.products.LossPart`; its ``val_gradient`` is needed
        when :attr:`needs_validation`, its graph when :attr:`needs_graph`)."""
        step = self.steps_taken + 1
        position = self.position(step)
        if self.reset_each_window and position == 1 and step > self.tune_after + 1:
            self._reset_weights()
        if position is None:
            result = StepResult(self._execution.plain_step(part, step))
        else:
            if position == self.update_interval and self._estimator.validation and part.val_gradient is None:
                raise ValueError(f"update {step} closes a window of update_interval={self.update_interval}: "
                                 "its loss's part needs a validation gradient")
            result = self._estimator.step(self._execution, part, step, position, self._apply_hypergradient)
        self.steps_taken = step
        self._budget_after(step, position)
        return result

    def step_without_tuning(self, part: LossPart) -> None:
        """One plain weight update with no hyperparameter step (one that could
        not be taken, e.g. a non-finite hypergradient under AMP): the window's
        estimator state is dropped and the update counted."""
        self._execution.update_without_graph(self._execution.gradient_now(part, self.steps_taken + 1))
        self._estimator.reset()
        self.steps_taken += 1

    @property
    def needs_graph(self) -> bool:
        """Whether the next update differentiates its training gradient (its
        loss's part must then give Hessian–vector products)."""
        position = self.position(self.steps_taken + 1)
        return position is not None and self._estimator.graph_at(position)

    @property
    def needs_validation(self) -> bool:
        """Whether the next update closes a window with a hyperparameter step
        that needs the validation gradient."""
        position = self.position(self.steps_taken + 1)
        return position == self.update_interval and self._estimator.validation

    @property
    def parameters(self) -> list[nn.Parameter]:
        """The trained parameter tensors, in the order of the rule's tuples."""
        return list(self._execution.params)

    @property
    def state(self):
        """The update rule's state (momentum buffers, Adam's moments)."""
        return self._execution.state

    @property
    def diverged(self) -> Tensor | None:
        """Population: ``(P,)`` booleans, the members frozen after a non-finite
        loss or hypergradient; ``None`` for a single run."""
        return self._execution.diverged

    @property
    def hyperparameters(self) -> dict[str, float | list]:
        """Current values in natural units: a float for a scalar, a list of
        floats per group or tensor, a list of tensors for per-weight values."""
        return self.slots.public()

    def set_hyperparameters(self, **values) -> None:
        """Overwrite hyperparameters (natural units; one value for every slot,
        or with a population one value per member)."""
        if self._execution.compile_steps and self._estimator.in_window():
            raise RuntimeError("a compiled population replays its unrolled window with the "
                               "hyperparameters at the window's end: change them between windows")
        for name, value in values.items():
            self._check_name(name)
            self.slots.set(name, value)
        self.slots.clip_lr(self.lr_bounds)
        self._execution.invalidate()

    def back_off(self, factor: float) -> None:
        """After a blow-up, once the weights are put back: a tuned learning rate
        times ``factor`` (every slot, in place, within ``lr_bounds``), and the
        update rule's state (momentum buffers, Adam's moments) and the
        hyper-optimiser's started afresh, so neither carries the blow-up's
        gradients on. Inside an unrolled window the stretch so far is dropped:
        the window's hypergradient differentiates the updates after it."""
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must lie in (0, 1), got {factor}")
        self.slots.multiply_lr(factor)
        self.slots.clip_lr(self.lr_bounds)
        self._execution.restart_state()
        if self._hyper_optimizer is not None:
            self._hyper_optimizer.state.clear()
        self._estimator.reset()
        self._execution.invalidate()

    def state_dict(self) -> dict:
        """Everything but the model's own tensors needed to resume exactly
        (save ``model.state_dict()`` beside it)."""
        if self._estimator.in_window():
            raise RuntimeError("cannot checkpoint in the middle of an unrolled window; "
                               "save after an update whose index is a multiple of update_interval")
        return {
            "steps_taken": self.steps_taken,
            "rule_state": clone(self._execution.state),
            **self.slots.state_dict(),
            "hyper_optimizer": copy.deepcopy(self._hyper_optimizer.state_dict()) if self._hyper_optimizer else None,
            "estimator": self._estimator.state_dict(),
            "diverged": clone(self._execution.diverged),
            "initial": clone(self._initial),
            **({"cost_budget": self.cost_budget.state_dict(), "update_interval": self.update_interval,
                "window_origin": self._window_origin} if self.cost_budget is not None else {}),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a :meth:`state_dict` of a tuner built with the same arguments."""
        self.slots.load_state_dict(state)
        execution = self._execution
        execution.state = clone(state["rule_state"])
        if self._hyper_optimizer is not None:
            self._hyper_optimizer.load_state_dict(state["hyper_optimizer"])
        self.steps_taken = int(state["steps_taken"])
        self._estimator.reset()
        self._estimator.load_state_dict(state["estimator"])
        execution.diverged = clone(state.get("diverged"))
        execution.any_diverged = execution.diverged is not None and bool(execution.diverged.any())
        if self.reset_each_window:
            self._initial = clone(state["initial"])
        if "update_interval" in state:   # written with a budget: its choice holds
            self._set_interval(int(state["update_interval"]), int(state["window_origin"]))
        if self.cost_budget is not None:
            if "cost_budget" in state:
                self.cost_budget.load_state_dict(state["cost_budget"])
            else:   # written without one: its fixed interval goes on
                self.cost_budget.load_state_dict({"chosen": self.update_interval, "first": [], "plain": [],
                                                  "closing": []})
        execution.invalidate()

    # ------------------------------------------------------ the hyper-optimiser

    def _apply_hypergradient(self, hypergradient: list[Tensor]) -> dict[str, list[Tensor]]:
        """One step of the hyper-optimiser on the raw leaves (averaged across
        ranks first, with :attr:`data_parallel`), then clipping. Frozen
        population members keep their values."""
        if self.data_parallel is not None:
            hypergradient = list(self.data_parallel.average(tuple(hypergradient)))
        leaves = self.slots.leaves()
        execution = self._execution
        frozen = execution.frozen()
        keep = frozen is not None or self.max_hyper_step is not None
        before = [leaf.detach().clone() for leaf in leaves] if keep else None
        if self.hyper_space == "natural":
            self._natural_sgd_step(hypergradient)
        else:
            for leaf, g in zip(leaves, hypergradient):
                leaf.grad = g
            self._hyper_optimizer.step()
        if self.max_hyper_step is not None:
            with torch.no_grad():
                for leaf, old in zip(leaves, before):
                    leaf.copy_(old + (leaf - old).clamp(-self.max_hyper_step, self.max_hyper_step))
        self.slots.clip_lr(self.lr_bounds)
        if frozen is not None:
            with torch.no_grad():
                for leaf, old in zip(leaves, before):
                    leaf.copy_(torch.where(hp.member_view(frozen, leaf.dim()), old, leaf))
        execution.invalidate()
        return self.slots.by_name(hypergradient)

    def _natural_sgd_step(self, hypergradient: list[Tensor]) -> None:
        """``λ ← λ − β ∂L/∂λ`` on natural values; ``∂L/∂λ = (∂L/∂raw) / (∂λ/∂raw)``."""
        step = self._hyper_optimizer.param_groups[0]["lr"]
        names = [name for name in self.tuned for _ in self.slots.raw[name]]
        with torch.no_grad():
            for name, leaf, g in zip(names, self.slots.leaves(), hypergradient):
                transform = hp.TRANSFORMS[name]
                natural = transform.to_natural(leaf)
                natural = transform.into_domain(natural - step * g / transform.slope(natural))
                leaf.copy_(transform.to_raw(natural))

    # ------------------------------------------------------------ the cost budget

    def _budget_after(self, step: int, position: int | None) -> None:
        """Time update ``step``; where the budget sets the interval, take it from the next window."""
        budget = self.cost_budget
        if budget is None or position is None or not budget.measuring:
            return
        before = self._hyper_step_interval()
        interval = budget.observe(position, self.update_interval)
        if interval is not None and interval != self.update_interval:
            self._set_interval(interval, step)
            after = self._hyper_step_interval()
            if self._hyper_optimizer is not None and after != before:
                # as far per weight update as before: a longer window, a proportionally longer hyper-step
                for group in self._hyper_optimizer.param_groups:
                    group["lr"] *= after / before

    def _hyper_step_interval(self) -> int:
        """The window the hyper-step's length is scaled to: the current one, but
        the chosen one during the budget's catch-up window (one window long
        enough to win back an overspent measurement must not take a step as
        many times longer)."""
        budget = self.cost_budget
        return budget.catch_up if budget is not None and budget.catch_up is not None else self.update_interval

    def _set_interval(self, interval: int, origin: int) -> None:
        """Windows of ``interval`` updates from the update after ``origin``."""
        self.update_interval, self._window_origin = interval, origin
        if self._estimator.schedule.update_interval != interval:
            self._estimator.schedule = dataclasses.replace(self._estimator.schedule, update_interval=interval)

    # ---------------------------------------------------------------- helpers

    def _reset_weights(self) -> None:
        """Back to the initial weights and buffers (and optimiser state if asked)."""
        execution = self._execution
        with torch.no_grad():
            for p, w in zip(execution.params, self._initial["weights"]):
                p.data = w.clone()
            buffers = dict(self.model.named_buffers()) if self.model is not None else {}
            for name, value in self._initial["buffers"].items():
                buffers[name].copy_(value)
            if self.reset_optimizer_state:
                execution.restart_state()
        self._estimator.reset()

    def _check_name(self, name: str) -> None:
        if name not in hp.TRANSFORMS:
            raise ValueError(f"unknown hyperparameter {name!r}{hp.closest(name, hp.TRANSFORMS)}")
        if name not in self.rule.defaults:
            raise ValueError(f"update rule {self.rule.name!r} has no hyperparameter {name!r} "
                             f"(it has {', '.join(self.rule.hyperparameter_names)})")

    def _remember_input_shapes(self, batch) -> None:
        if self._input_shapes is None and isinstance(batch, (tuple, list)):
            self._input_shapes = [t.shape[1:] if isinstance(t, Tensor) else None for t in batch]

    def _check_val_batch(self, val_batch) -> None:
        if self._input_shapes is None or not isinstance(val_batch, (tuple, list)):
            return
        if len(val_batch) != len(self._input_shapes):
            raise ValueError(f"validation batch has {len(val_batch)} parts but training batches have "
                             f"{len(self._input_shapes)}")
        for k, (t, shape) in enumerate(zip(val_batch, self._input_shapes)):
            if shape is not None and (not isinstance(t, Tensor) or t.shape[1:] != shape):
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"validation batch part {k} has shape {got}, but training batches have "
                                 f"shape (batch, {', '.join(map(str, shape))})")


def _parameter_groups(model: nn.Module | None, params) -> list[tuple[list[nn.Parameter], dict]]:
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    params = list(params)
    if not params:
        raise ValueError("no parameters to train")
    if not isinstance(params[0], dict):
        return [(params, {})]
    groups = []
    for group in params:
        group = dict(group)
        tensors = group.pop("params")
        tensors = [tensors] if isinstance(tensors, Tensor) else list(tensors)
        groups.append((tensors, group))
    return groups


def _check_int(name: str, value: int, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
