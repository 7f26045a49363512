"""The tuner: weight updates every step, a hyperparameter update every window.

Used in a practitioner's own loop::

    tuner = Tuner(model, torch.nn.functional.mse_loss,
                  hyperparameters=dict(lr=1e-3, momentum=0.5, weight_decay=1e-5))
    for x, y in batches:
        tuner.step((x, y), val_batch=lambda: next(val_batches))

Weight updates take the module's parameters in place (the fast path: one
``torch.autograd.grad`` and a no-grad update).  The step that closes each
window of ``update_interval`` updates also computes a hypergradient with the
chosen ``method``:

* ``"neumann"`` — the paper's implicit-function-theorem estimate with
  ``neumann_terms`` terms through the most recent update ("Ours"; with
  ``tune=("weight_decay",)`` it is Lorraine et al.);
* ``"unroll"`` — exact differentiation through the last ``unroll_steps``
  updates of the window (Diff-through-Opt);
* ``"baydin"`` — hypergradient descent on the training loss, every step.

and takes one step of the hyper-optimiser on the raw hyperparameters.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from . import hyperparameters as hp
from .hypergradients import implicit_hypergradient, neumann_series
from .rules import UpdateRule, clip_gradients, get_rule

METHODS = ("neumann", "unroll", "baydin")
HYPER_OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class NonFiniteError(FloatingPointError):
    """A loss or hypergradient was NaN or infinite; nothing was updated.

    Attributes:
        quantity: ``"training loss"``, ``"validation loss"`` or ``"hypergradient"``.
        step: the 1-based index of the weight update that was refused.
    """

    def __init__(self, quantity: str, step: int):
        super().__init__(f"non-finite {quantity} at update {step}; weights and hyperparameters "
                         "were left as they were")
        self.quantity = quantity
        self.step = step


@dataclass
class StepResult:
    """What one call of :meth:`Tuner.step` computed (tensors, not synchronised).

    Attributes:
        loss: training loss at the weights before the update.
        val_loss: validation loss at the new weights, on steps that updated
            the hyperparameters with a validation batch, else ``None``.
        hypergradient: raw-space hypergradient per tuned name, when one was taken.
    """

    loss: Tensor
    val_loss: Tensor | None = None
    hypergradient: dict[str, list[Tensor]] | None = None


def default_batch_loss(loss_fn: Callable) -> Callable:
    """``batch = (inputs, targets)`` ↦ ``loss_fn(forward(inputs), targets)``."""
    def batch_loss(forward, batch):
        inputs, targets = batch
        return loss_fn(forward(inputs), targets)
    return batch_loss


class Tuner:
    """Trains ``model`` and tunes its optimiser's hyperparameters in the same pass.

    Args:
        model: any ``nn.Module``.
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
        method: ``"neumann"``, ``"unroll"`` or ``"baydin"`` (see module docs).
        neumann_terms: ``K`` for ``"neumann"``.
        unroll_steps: updates differentiated through by ``"unroll"``.
        update_interval: weight updates per hyperparameter update (``"baydin"``
            updates every step).
        hyper_optimizer: ``"adam"`` or ``"sgd"`` (default ``"sgd"`` for Baydin,
            else ``"adam"``), with learning rate ``hyper_lr`` (default 0.001 for
            Baydin, else 0.05).
        lr_bounds: the learning rate is clipped to this range after each
            hyperparameter update.
        hyper_space: where the hyper-optimiser steps: ``"transformed"`` (on
            ``log10 lr``, ``logit momentum``, ...; the paper's method) or
            ``"natural"`` (on ``lr`` itself, as Baydin et al.'s hypergradient
            descent does; SGD only). Default: natural for Baydin, else
            transformed.
        batch_loss: ``batch_loss(forward, batch) -> scalar`` where ``forward``
            calls the model (with the weights being differentiated).
        max_grad_norm: clip the training gradient to this joint 2-norm inside
            the update (so hypergradients see the clipping), as
            ``torch.nn.utils.clip_grad_norm_`` does.
        reset_each_window: at the start of every window after the first,
            restore the initial weights, buffers and optimiser state, so each
            hyperparameter update sees ``update_interval`` updates from the same
            start (long Diff-through-Opt, "Standalone"/"Full", with
            ``method="unroll"`` and ``unroll_steps == update_interval``).
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
        population: train ``P`` independent runs at once. Every parameter then
            has a leading dimension ``P`` (member ``m`` owns slice ``m``), the
            loss returns one value per member, shape ``(P,)``, and each
            hyperparameter value may be a sequence of ``P`` initial values.
            A member whose loss or hypergradient is not finite is marked in
            :attr:`diverged` and frozen (its weights and hyperparameters stop
            changing) instead of raising; the others go on undisturbed.
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
        lr_bounds: tuple[float, float] = (1e-10, 1.0),
        hyper_space: str | None = None,
        batch_loss: Callable | None = None,
        max_grad_norm: float | None = None,
        reset_each_window: bool = False,
        compile: bool = False,
        population: int | None = None,
    ):
        self.model = model
        self.rule = get_rule(rule)
        if (loss_fn is None) == (batch_loss is None):
            raise ValueError("give exactly one of loss_fn (for (inputs, targets) batches) or batch_loss")
        self._batch_loss = batch_loss or default_batch_loss(loss_fn)
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}{hp.closest(method, METHODS)} "
                             f"(choose one of {', '.join(METHODS)})")
        _check_int("update_interval", update_interval, 1)
        _check_int("neumann_terms", neumann_terms, 1)
        _check_int("unroll_steps", unroll_steps, 1)
        if method == "unroll" and unroll_steps > update_interval:
            raise ValueError(f"unroll_steps={unroll_steps} exceeds update_interval={update_interval}")
        if not 0 < lr_bounds[0] < lr_bounds[1]:
            raise ValueError(f"lr_bounds must satisfy 0 < low < high, got {lr_bounds}")
        self.method = method
        self.neumann_terms = neumann_terms
        self.unroll_steps = unroll_steps
        self.update_interval = 1 if method == "baydin" else update_interval
        self.lr_bounds = tuple(lr_bounds)
        if population is not None:
            _check_int("population", population, 1)
        self.population = population
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive, got {max_grad_norm!r}")
        self.max_grad_norm = max_grad_norm

        groups = _parameter_groups(model, params)
        self._params: list[nn.Parameter] = [p for group, _ in groups for p in group]
        names = {id(p): n for n, p in model.named_parameters()}
        missing = [i for i, p in enumerate(self._params) if id(p) not in names]
        if missing:
            raise ValueError("every tuned parameter must belong to the model")
        self._names = [names[id(p)] for p in self._params]
        self._buffer_names = [n for n, _ in model.named_buffers()]
        like = self._params[0]
        if population is not None:
            wrong = [n for n, p in zip(self._names, self._params) if p.dim() == 0 or p.shape[0] != population]
            if wrong:
                raise ValueError(f"with population={population} every parameter needs a leading dimension "
                                 f"of {population}; these do not: {', '.join(wrong)}")

        values = dict(self.rule.defaults)
        for name, value in (hyperparameters or {}).items():
            self._check_name(name)
            values[name] = self._member_values(name, value)
        tune = tuple(hyperparameters or {}) if tune is None else tuple(tune)
        for name in tune:
            self._check_name(name)
        if method == "baydin" and set(tune) - {"lr"}:
            raise ValueError(f"Baydin's hypergradient descent tunes only lr, not {sorted(set(tune) - {'lr'})}")
        for group, overrides in groups:
            for name in overrides:
                self._check_name(name)
        granularity = dict(granularity or {})
        for name, kind in granularity.items():
            self._check_name(name)
            if kind not in hp.GRANULARITIES:
                raise ValueError(f"unknown granularity {kind!r} for {name}; choose one of "
                                 f"{', '.join(hp.GRANULARITIES)}")

        # Each hyperparameter lives in slots; weight tensor i reads slot _slot_of[name][i].
        self.granularity: dict[str, str] = {}
        self._slot_of: dict[str, list[int]] = {}
        self._raw: dict[str, list[Tensor]] = {}      # tuned: leaves in transformed space
        self._fixed: dict[str, list[Tensor]] = {}    # fixed: natural values
        for name in self.rule.hyperparameter_names:
            per_group = [self._member_values(name, overrides.get(name, values[name])) for _, overrides in groups]
            kind = granularity.get(name, "scalar" if len(set(per_group)) == 1 else "group")
            if kind == "scalar" and len(set(per_group)) > 1:
                raise ValueError(f"{name} differs between parameter groups, so it cannot be scalar")
            if kind == "weight" and name not in tune:
                kind = "tensor"
            self.granularity[name] = kind
            group_of = [g for g, (group, _) in enumerate(groups) for _ in group]
            slot_of, slot_values, shapes = [], [], []
            for i, p in enumerate(self._params):
                if kind == "scalar":
                    slot = 0
                elif kind == "group":
                    slot = group_of[i]
                else:
                    slot = i
                slot_of.append(slot)
                if slot == len(slot_values):
                    slot_values.append(per_group[group_of[i]])
                    shapes.append(p.shape if kind == "weight" else (population,) if population else ())
            self._slot_of[name] = slot_of
            natural = [self._slot_tensor(v, shape, like) for shape, v in zip(shapes, slot_values)]
            if name in tune:
                for v in slot_values:
                    for member_value in (v if isinstance(v, tuple) else (v,)):
                        hp.check_tunable(name, member_value)
                self._raw[name] = [hp.to_raw(name, t).requires_grad_() for t in natural]
            else:
                self._fixed[name] = natural
        self.tuned = tuple(n for n in self.rule.hyperparameter_names if n in self._raw)

        leaves = self._raw_leaves()
        self._hyper_optimizer = None
        if leaves:
            kind = hyper_optimizer or ("sgd" if method == "baydin" else "adam")
            if kind not in HYPER_OPTIMIZERS:
                raise ValueError(f"unknown hyper_optimizer {kind!r}; choose one of {', '.join(HYPER_OPTIMIZERS)}")
            lr = hyper_lr if hyper_lr is not None else (0.001 if method == "baydin" else 0.05)
            self._hyper_optimizer = HYPER_OPTIMIZERS[kind](leaves, lr=lr)
        self.hyper_space = hyper_space or ("natural" if method == "baydin" else "transformed")
        if self.hyper_space not in ("transformed", "natural"):
            raise ValueError(f"hyper_space must be 'transformed' or 'natural', got {hyper_space!r}")
        if self.hyper_space == "natural" and self._hyper_optimizer is not None and \
                not isinstance(self._hyper_optimizer, torch.optim.SGD):
            raise ValueError("hyper_space='natural' takes plain SGD steps: use hyper_optimizer='sgd'")

        with torch.no_grad():
            self.state = self.rule.init(tuple(self._params))
        self.reset_each_window = bool(reset_each_window)
        self._initial = None
        if self.reset_each_window:
            self._initial = {"weights": [p.detach().clone() for p in self._params],
                             "buffers": {n: b.detach().clone() for n, b in model.named_buffers()}}
        self.steps_taken = 0
        self._hyper_cache: dict | None = None
        self._hyper_floats: dict | None = None
        self._unroll: tuple | None = None          # inside an unroll: (weights, state) with graph;
                                                   # compiled: (start weights, start state, batches)
        self._previous_update: tuple | None = None  # Baydin: inputs of the last update
        self._previous_output: tuple | None = None  # Baydin: its output, with graph to λ
        self._input_shapes: list | None = None
        self._compiled_gradient = self._compile_gradient() if compile else None
        self._compiled_neumann = self._compiled_unroll = self._compiled_baydin = None
        if compile and population is not None and self.tuned:
            if method == "neumann":
                self._compiled_neumann = self._compile_neumann()
            elif method == "unroll":
                self._compiled_unroll = self._compile_unroll()
            else:
                self._compiled_baydin = self._compile_baydin()
        self.diverged: Tensor | None = None   # population: bool (P,), members frozen for good
        if population is not None:
            self.diverged = torch.zeros(population, dtype=torch.bool, device=like.device)
        self._frozen = False   # whether any member is diverged (a Python bool: no sync per step)

    # ----------------------------------------------------------------- public

    def step(self, batch: Any, val_batch: Any = None) -> StepResult:
        """Take one weight update on ``batch``; on the last update of a window,
        also one hyperparameter update using ``val_batch``.

        ``val_batch`` may be a batch or a zero-argument callable returning one
        (it is only called when needed). Raises :class:`NonFiniteError`, with
        nothing changed, if a loss or hypergradient is not finite.
        """
        step = self.steps_taken + 1
        position = (step - 1) % self.update_interval + 1
        if self.reset_each_window and position == 1 and step > 1:
            self._reset_weights()
        closes_window = bool(self.tuned) and position == self.update_interval
        self._remember_input_shapes(batch)
        if closes_window and self.method != "baydin":
            val_batch = val_batch() if callable(val_batch) else val_batch
            if val_batch is None:
                raise ValueError(f"update {step} closes a window of update_interval="
                                 f"{self.update_interval}: pass a validation batch")
            self._check_val_batch(val_batch)
        if not self.tuned:
            result = self._plain_step(batch, step)
        elif self.method == "neumann":
            result = self._neumann_step(batch, val_batch, step) if closes_window else self._plain_step(batch, step)
        elif self.method == "unroll":
            if position > self.update_interval - self.unroll_steps:
                result = self._unrolled_step(batch, val_batch if closes_window else None, step,
                                             first=position == self.update_interval - self.unroll_steps + 1)
            else:
                result = self._plain_step(batch, step)
        else:
            result = self._baydin_step(batch, step)
        self.steps_taken = step
        return result

    def _reset_weights(self) -> None:
        """Back to the initial weights, buffers and optimiser state."""
        with torch.no_grad():
            for p, w in zip(self._params, self._initial["weights"]):
                p.data = w.clone()
            buffers = dict(self.model.named_buffers())
            for name, value in self._initial["buffers"].items():
                buffers[name].copy_(value)
            self.state = self.rule.init(tuple(self._params))

    @property
    def parameters(self) -> list[nn.Parameter]:
        """The trained parameter tensors, in the order of the rule's tuples."""
        return list(self._params)

    @property
    def hyperparameters(self) -> dict[str, float | list]:
        """Current values in natural units: a float for a scalar, a list of
        floats per group or tensor, a list of tensors for per-weight values."""
        out = {}
        with torch.no_grad():
            for name in self.rule.hyperparameter_names:
                values = self._natural_slots(name)
                kind = self.granularity[name]
                if kind == "weight":
                    out[name] = [v.clone() for v in values]
                elif kind == "scalar":
                    out[name] = values[0].tolist()
                else:
                    out[name] = [v.tolist() for v in values]
        return out

    def set_hyperparameters(self, **values) -> None:
        """Overwrite hyperparameters (natural units; one value for every slot,
        or with a population one value per member)."""
        if self._compiled_unroll is not None and self._unroll is not None:
            raise RuntimeError("a compiled population replays its unrolled window with the "
                               "hyperparameters at the window's end: change them between windows")
        for name, value in values.items():
            self._check_name(name)
            value = self._member_values(name, value)
            with torch.no_grad():
                for t in self._raw.get(name, []) + self._fixed.get(name, []):
                    new = self._slot_tensor(value, t.shape, t)
                    if name in self._raw:
                        for member_value in (value if isinstance(value, tuple) else (value,)):
                            hp.check_tunable(name, member_value)
                        new = hp.to_raw(name, new)
                    t.copy_(new)
        self._clip()
        self._invalidate_hyper()

    def state_dict(self) -> dict:
        """Everything but the model's own tensors needed to resume exactly
        (save ``model.state_dict()`` beside it)."""
        if self._unroll is not None:
            raise RuntimeError("cannot checkpoint in the middle of an unrolled window; "
                               "save after an update whose index is a multiple of update_interval")
        return {
            "steps_taken": self.steps_taken,
            "rule_state": _clone(self.state),
            "raw": {k: [t.detach().clone() for t in v] for k, v in self._raw.items()},
            "fixed": {k: [t.clone() for t in v] for k, v in self._fixed.items()},
            "hyper_optimizer": copy.deepcopy(self._hyper_optimizer.state_dict()) if self._hyper_optimizer else None,
            "previous_update": _clone(self._previous_update),
            "diverged": _clone(self.diverged),
            "initial": _clone(self._initial),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a :meth:`state_dict` of a tuner built with the same arguments."""
        if set(state.get("raw", {})) != set(self._raw):
            raise ValueError(f"checkpoint tunes {sorted(state.get('raw', {}))} but this tuner tunes "
                             f"{sorted(self._raw)}")
        with torch.no_grad():
            for store, key in ((self._raw, "raw"), (self._fixed, "fixed")):
                for name, tensors in store.items():
                    for t, saved in zip(tensors, state[key][name]):
                        t.copy_(saved)
        self.state = _clone(state["rule_state"])
        if self._hyper_optimizer is not None:
            self._hyper_optimizer.load_state_dict(state["hyper_optimizer"])
        self.steps_taken = int(state["steps_taken"])
        self._previous_update = _clone(state["previous_update"])
        self.diverged = _clone(state.get("diverged"))
        self._frozen = self.diverged is not None and bool(self.diverged.any())
        if self.reset_each_window:
            self._initial = _clone(state["initial"])
        self._previous_output = None
        self._unroll = None
        self._invalidate_hyper()

    # ------------------------------------------------------- the four steps

    def _gradients_now(self, batch, step: int):
        """``(loss, ∇L_T)`` at the current weights, without a graph."""
        if self._compiled_gradient is not None:
            grads, loss = self._compiled_gradient(tuple(p.detach() for p in self._params), batch)
            return loss, self._finish_gradients(grads, loss, step)
        loss = self._batch_loss(self.model, batch)
        return loss, self._training_gradients(loss, self._params, step)

    def _plain_step(self, batch, step: int) -> StepResult:
        loss, grads = self._gradients_now(batch, step)
        self._update_without_graph(grads)
        return StepResult(loss.detach())

    def _update_without_graph(self, grads) -> None:
        with torch.no_grad():
            if self.rule.update_in_place is not None:
                self.state = self.rule.update_in_place(tuple(self._params), self.state, grads,
                                                       self._hyper_in_place())
            else:
                self._commit(*self.rule.update(tuple(self._params), self.state, grads, self._hyper()))

    def _neumann_step(self, batch, val_batch, step: int) -> StepResult:
        if self._compiled_neumann is not None:
            return self._compiled_neumann_step(batch, val_batch, step)
        # w_t = u(w_{t-1}, λ) with the graph kept: the Hessian enters through Jᵀ s.
        weights = tuple(self._params)
        loss = self._batch_loss(self.model, batch)
        grads = self._training_gradients(loss, weights, step, create_graph=True)
        leaves = self._raw_leaves()
        new_weights, new_state = self.rule.update(weights, self.state, grads, self._hyper(graph=True))
        # v = ∂L_V/∂w at w_t.
        at_new = [w.detach().requires_grad_() for w in new_weights]
        val_loss = self._batch_loss(self._forward_with(at_new, keep_buffers=True), val_batch)
        v = torch.autograd.grad(self._total(val_loss), at_new)
        v = self._check_losses(val_loss, "validation loss", step, v)
        hypergradient = implicit_hypergradient(
            lambda s: torch.autograd.grad(new_weights, weights, s, retain_graph=True),
            lambda p: torch.autograd.grad(new_weights, leaves, p, allow_unused=True),
            v, self.neumann_terms)
        hypergradient = self._check_hypergradient(hypergradient, step)
        self._commit(new_weights, new_state)
        return StepResult(loss.detach(), val_loss.detach(), self._apply_hypergradient(hypergradient))

    def _unrolled_step(self, batch, val_batch, step: int, first: bool) -> StepResult:
        if self._compiled_unroll is not None:
            return self._compiled_unrolled_step(batch, val_batch, step, first)
        if first or self._unroll is None:
            weights, state = tuple(p.detach().requires_grad_() for p in self._params), self.state
        else:
            weights, state = self._unroll
        loss = self._batch_loss(self._forward_with(weights), batch)
        grads = self._training_gradients(loss, weights, step, create_graph=not first)
        new_weights, new_state = self.rule.update(weights, state, grads, self._hyper(graph=True))
        if val_batch is None:
            self._commit(new_weights, new_state)
            self._unroll = (new_weights, new_state)
            return StepResult(loss.detach())
        val_loss = self._batch_loss(self._forward_with(new_weights, keep_buffers=True), val_batch)
        self._check_losses(val_loss, "validation loss", step)
        hypergradient = torch.autograd.grad(self._total(val_loss, finite_only=True), self._raw_leaves(),
                                            allow_unused=True)
        hypergradient = self._check_hypergradient(hypergradient, step)
        self._commit(new_weights, new_state)
        self._unroll = None
        return StepResult(loss.detach(), val_loss.detach(), self._apply_hypergradient(hypergradient))

    def _baydin_step(self, batch, step: int) -> StepResult:
        if self._compiled_baydin is not None:
            return self._compiled_baydin_step(batch, step)
        loss, grads = self._gradients_now(batch, step)
        applied = None
        if self._previous_update is not None:
            # ∂L_T(w_t)/∂λ = ∇L_T(w_t) · ∂u(w_{t-1}, λ)/∂λ through the previous update.
            output = self._previous_output or self.rule.update(
                *self._previous_update, self._hyper(graph=True))[0]
            hypergradient = torch.autograd.grad(output, self._raw_leaves(), grads, allow_unused=True)
            applied = self._apply_hypergradient(self._check_hypergradient(hypergradient, step))
        inputs = (tuple(p.detach() for p in self._params), self.state, grads)
        new_weights, new_state = self.rule.update(*inputs, self._hyper(graph=True))
        self._commit(new_weights, new_state)
        self._previous_update, self._previous_output = inputs, new_weights
        return StepResult(loss.detach(), None, applied)

    # ------------------------------------------------------------ populations

    def _member_values(self, name: str, value):
        """A float, or with a population a tuple of ``P`` floats (one per member)."""
        if isinstance(value, Tensor):
            value = value.tolist()
        if isinstance(value, (list, tuple)):
            if self.population is None or len(value) != self.population:
                raise ValueError(f"{name} was given {len(value)} values; a sequence needs "
                                 f"population={len(value)} (one value per member)")
            values = tuple(float(v) for v in value)
            return values[0] if len(set(values)) == 1 else values
        return float(value)

    def _slot_tensor(self, value, shape, like: Tensor) -> Tensor:
        """A slot of ``shape`` holding ``value`` (per member along dimension 0)."""
        kwargs = dict(dtype=like.dtype, device=like.device)
        if not isinstance(value, tuple):
            return torch.full(tuple(shape), value, **kwargs)
        per_member = torch.tensor(value, **kwargs).view(-1, *[1] * (len(shape) - 1))
        return per_member.expand(tuple(shape)).clone()

    def _member_view(self, tensor: Tensor, like: Tensor) -> Tensor:
        """``tensor`` of shape ``(P,)`` reshaped to broadcast against ``like``."""
        return tensor.view(-1, *[1] * (like.dim() - 1))

    def _total(self, loss: Tensor, finite_only: bool = False) -> Tensor:
        if self.population is None:
            return loss
        return torch.where(self.diverged, 0.0, loss).sum() if finite_only else loss.sum()

    def _check_losses(self, loss: Tensor, quantity: str, step: int, grads=None):
        """Single run: raise :class:`NonFiniteError`. Population: freeze the
        members whose loss is not finite, and zero their gradients."""
        if self.population is None:
            if not torch.isfinite(loss):
                raise NonFiniteError(quantity, step)
        else:
            bad = ~torch.isfinite(loss)
            if bad.any():
                self.diverged = self.diverged | bad
                self._frozen = True
                self._invalidate_hyper()
            if grads is not None and self._frozen:
                grads = tuple(torch.where(self._member_view(self.diverged, g), 0.0, g) for g in grads)
        return grads

    def _training_gradients(self, loss: Tensor, weights, step: int, create_graph: bool = False):
        """``∇L_T`` (per member, with dead members zeroed), clipped if asked."""
        grads = torch.autograd.grad(self._total(loss), weights, create_graph=create_graph)
        return self._finish_gradients(grads, loss, step)

    def _finish_gradients(self, grads, loss: Tensor, step: int):
        grads = self._check_losses(loss, "training loss", step, grads)
        if self.max_grad_norm is not None:
            grads = clip_gradients(grads, self.max_grad_norm, per_member=self.population is not None)
        return grads

    # ---------------------------------------------------------------- helpers

    def _check_name(self, name: str) -> None:
        if name not in hp.TRANSFORMS:
            raise ValueError(f"unknown hyperparameter {name!r}{hp.closest(name, hp.TRANSFORMS)}")
        if name not in self.rule.defaults:
            raise ValueError(f"update rule {self.rule.name!r} has no hyperparameter {name!r} "
                             f"(it has {', '.join(self.rule.hyperparameter_names)})")

    def _raw_leaves(self) -> list[Tensor]:
        return [leaf for name in self.tuned for leaf in self._raw[name]]

    def _natural_slots(self, name: str) -> list[Tensor]:
        if name in self._raw:
            return [hp.to_natural(name, r) for r in self._raw[name]]
        return self._fixed[name]

    def _hyper(self, graph: bool = False) -> dict:
        """The rule's ``hyper`` mapping; with ``graph`` it is differentiable in λ.
        With a population each value broadcasts against its weight tensor, and
        the learning rate of a diverged member is zero."""
        if not graph and self._hyper_cache is not None:
            return self._hyper_cache
        with torch.set_grad_enabled(graph):
            frozen = self.diverged if self._frozen else None
            hyper = self._hyper_of(self._raw, self._fixed, frozen, self._zero_fixed())
        if not graph:
            self._hyper_cache = hyper
        return hyper

    def _zero_fixed(self) -> frozenset:
        """Fixed momentum / weight decay that are exactly zero: the rule skips
        their terms, as ``torch.optim`` does."""
        return frozenset(name for name in ("momentum", "weight_decay") if name in self._fixed
                         and all(not t.any() for t in self._fixed[name]))

    def _hyper_of(self, raw: Mapping, fixed: Mapping, frozen: Tensor | None, skip: frozenset) -> dict:
        """The rule's ``hyper`` from raw leaves and fixed natural values; a pure
        function of its tensors. ``frozen``: members whose learning rate is zero."""
        hyper = {}
        for name in self.rule.hyperparameter_names:
            if name in skip:
                continue
            slots = [hp.to_natural(name, r) for r in raw[name]] if name in raw else fixed[name]
            if self.population is None:
                hyper[name] = slots[0] if len(slots) == 1 else tuple(slots[k] for k in self._slot_of[name])
                continue
            values = []
            for k, w in zip(self._slot_of[name], self._params):
                value = slots[k] if self.granularity[name] == "weight" else self._member_view(slots[k], w)
                if name == "lr" and frozen is not None:
                    value = torch.where(self._member_view(frozen, w), 0.0, value)
                values.append(value)
            hyper[name] = tuple(values)
        return hyper

    def _compile_gradient(self) -> Callable:
        """``(weights, batch) -> (grads, loss)`` through ``torch.compile``."""
        def total_and_loss(weights, batch):
            loss = self._batch_loss(self._forward_with(weights), batch)
            return self._total(loss), loss

        gradient = torch.func.grad_and_value(total_and_loss, has_aux=True)

        def grads_and_loss(weights, batch):
            grads, (_, loss) = gradient(weights, batch)
            return grads, loss
        return torch.compile(grads_and_loss, dynamic=False)

    def _functional_loss(self, weights, batch):
        """``(summed loss, per-member losses)`` at ``weights``: a pure function for ``torch.func``."""
        loss = self._batch_loss(self._forward_with(weights), batch)
        return loss.sum(), loss

    def _masked(self, tensors, frozen: Tensor):
        """``tensors`` with the slices of ``frozen`` members zeroed."""
        return tuple(torch.where(self._member_view(frozen, t), 0.0, t) for t in tensors)

    def _functional_update(self, weights, state, raw, fixed, frozen, skip, batch):
        """One population update as a pure function of its tensors (gradients of
        frozen members zeroed, then clipped if asked): ``(weights, state, loss)``."""
        grads, loss = torch.func.grad(self._functional_loss, has_aux=True)(weights, batch)
        grads = self._masked(grads, frozen)
        if self.max_grad_norm is not None:
            grads = clip_gradients(grads, self.max_grad_norm, per_member=True)
        new_weights, new_state = self.rule.update(weights, state, grads,
                                                  self._hyper_of(raw, fixed, frozen, skip))
        return new_weights, new_state, loss

    def _compile_neumann(self) -> Callable:
        """A population's Neumann hyperstep as one ``torch.func`` function
        (:func:`~onepass.core.hypergradients.implicit_hypergradient_functional`'s
        arithmetic, with the population's masking) through ``torch.compile``:
        the eager double backward is bound by many small kernels there."""
        def hyperstep(weights, state, raw, fixed, frozen, skip, train_batch, val_batch):
            def update(w, r):
                new_w, new_state, loss = self._functional_update(w, state, r, fixed, frozen, skip,
                                                                 train_batch)
                return new_w, (new_state, loss)

            new_weights, vjp_fn, (new_state, loss) = torch.func.vjp(update, weights, raw, has_aux=True)
            v, val_loss = torch.func.grad(self._functional_loss, has_aux=True)(new_weights, val_batch)
            p = neumann_series(lambda s: vjp_fn(s)[0], self._masked(v, frozen), self.neumann_terms)
            return vjp_fn(p)[1], new_weights, new_state, loss, val_loss
        return torch.compile(hyperstep, dynamic=False)

    def _compile_unroll(self) -> Callable:
        """A population's unrolled window, replayed from its first weights and
        differentiated in ``λ`` (the eager ``_unrolled_step``'s arithmetic: the
        first update's gradient is a constant, later ones are differentiated),
        as one ``torch.func`` function through ``torch.compile``."""
        def replay(weights, state, raw, fixed, frozen, skip, batches, val_batch):
            def validation(r):
                w, s, loss = weights, state, None
                for batch in batches:
                    w, s, loss = self._functional_update(w, s, r, fixed, frozen, skip, batch)
                val_loss = self._batch_loss(self._forward_with(w), val_batch)
                total = torch.where(torch.isfinite(val_loss), val_loss, 0.0).sum()
                return total, (w, s, loss, val_loss)

            hypergradient, (w, s, loss, val_loss) = torch.func.grad(validation, has_aux=True)(raw)
            return hypergradient, w, s, loss, val_loss
        return torch.compile(replay, dynamic=False)

    def _compiled_unrolled_step(self, batch, val_batch, step: int, first: bool) -> StepResult:
        if first or self._unroll is None:  # plain steps update in place: keep copies
            self._unroll = (_clone(tuple(self._params)), _clone(self.state), [])
        weights, state, batches = self._unroll
        batches.append(batch)
        if val_batch is None:
            return self._plain_step(batch, step)
        self._unroll = None
        raw = self._detached_raw()
        hypergradient, new_weights, new_state, loss, val_loss = self._compiled_unroll(
            weights, state, raw, self._fixed, self.diverged, self._zero_fixed(), tuple(batches),
            val_batch)
        self._check_losses(loss, "training loss", step)
        self._check_losses(val_loss, "validation loss", step)
        hypergradient = self._check_hypergradient(
            self._by_leaf(hypergradient), step)
        if self._frozen:  # the replay froze them from the window's start: keep where they stopped
            new_weights, new_state = self._keep_members(
                self.diverged, tuple(p.detach() for p in self._params), self.state,
                new_weights, new_state)
        self._commit(new_weights, new_state)
        return StepResult(loss.detach(), val_loss.detach(), self._apply_hypergradient(hypergradient))

    def _compile_baydin(self) -> Callable:
        """Baydin's hypergradient ``∇L_T(w_t) · ∂u(w_{t-1}, λ)/∂λ`` (a VJP through
        the previous update) as one ``torch.func`` function through ``torch.compile``."""
        def hypergradient(weights, state, grads, raw, fixed, frozen, skip, cotangent):
            def output(r):
                return self.rule.update(weights, state, grads, self._hyper_of(r, fixed, frozen, skip))[0]
            return torch.func.vjp(output, raw)[1](cotangent)[0]
        return torch.compile(hypergradient, dynamic=False)

    def _compiled_baydin_step(self, batch, step: int) -> StepResult:
        loss, grads = self._gradients_now(batch, step)
        applied = None
        if self._previous_update is not None:
            raw = self._detached_raw()
            hypergradient = self._compiled_baydin(*self._previous_update, raw, self._fixed,
                                                  self.diverged, self._zero_fixed(), grads)
            applied = self._apply_hypergradient(self._check_hypergradient(
                self._by_leaf(hypergradient), step))
        # The update below writes weights and state in place: remember copies.
        self._previous_update = (_clone(tuple(self._params)), _clone(self.state), grads)
        self._update_without_graph(grads)
        return StepResult(loss.detach(), None, applied)

    def _compiled_neumann_step(self, batch, val_batch, step: int) -> StepResult:
        weights = tuple(p.detach() for p in self._params)
        raw = self._detached_raw()
        frozen = self.diverged
        hypergradient, new_weights, new_state, loss, val_loss = self._compiled_neumann(
            weights, self.state, raw, self._fixed, frozen, self._zero_fixed(), batch, val_batch)
        self._check_losses(loss, "training loss", step)
        self._check_losses(val_loss, "validation loss", step)
        newly = self.diverged & ~frozen
        if newly.any():  # members that diverged at this step keep their weights and state
            new_weights, new_state = self._keep_members(newly, weights, self.state,
                                                        new_weights, new_state)
        hypergradient = self._check_hypergradient(self._by_leaf(hypergradient), step)
        self._commit(new_weights, new_state)
        return StepResult(loss.detach(), val_loss.detach(), self._apply_hypergradient(hypergradient))

    def _detached_raw(self) -> dict[str, list[Tensor]]:
        """The raw hyperparameter leaves, detached: inputs of the compiled functions."""
        return {name: [leaf.detach() for leaf in self._raw[name]] for name in self.tuned}

    def _by_leaf(self, hypergradient: Mapping[str, Sequence[Tensor]]) -> list[Tensor]:
        """A ``{name: [tensor per slot]}`` hypergradient in the order of :meth:`_raw_leaves`."""
        return [g for name in self.tuned for g in hypergradient[name]]

    def _keep_members(self, mask: Tensor, old_weights, old_state, new_weights, new_state):
        """``(new_weights, new_state)`` with the members in ``mask`` taken from the old ones."""
        def keep(old, new):
            if new.dim() > 0 and new.shape[0] == self.population:
                return torch.where(self._member_view(mask, new), old, new)
            return new
        return (tuple(keep(o, n) for o, n in zip(old_weights, new_weights)),
                _map_pairs(keep, old_state, new_state))

    def _hyper_in_place(self) -> dict:
        """:meth:`_hyper` with scalars as Python floats, for ``update_in_place``."""
        if self._hyper_floats is None:
            self._hyper_floats = {name: value.item() if isinstance(value, Tensor) else value
                                  for name, value in self._hyper().items()}
        return self._hyper_floats

    def _forward_with(self, weights: Sequence[Tensor], keep_buffers: bool = False) -> Callable:
        """Call the model with ``weights`` in place of its parameters. With
        ``keep_buffers`` its running statistics are left untouched."""
        tensors = dict(zip(self._names, weights))
        if keep_buffers and self._buffer_names:
            buffers = dict(self.model.named_buffers())
            tensors.update({n: buffers[n].clone() for n in self._buffer_names})

        def forward(*args, **kwargs):
            return functional_call(self.model, tensors, args, kwargs)
        return forward

    def _commit(self, new_weights, new_state) -> None:
        # Swap storage instead of writing in place: graphs that saved the old
        # weights (Baydin, unrolling) stay valid.
        for p, w in zip(self._params, new_weights):
            p.data = w.detach()
        self.state = _detach(new_state)

    def _check_hypergradient(self, hypergradient, step: int) -> list[Tensor]:
        leaves = self._raw_leaves()
        hypergradient = [torch.zeros_like(l) if g is None else g for l, g in zip(leaves, hypergradient)]
        if self.population is None:
            if not all(torch.isfinite(g).all() for g in hypergradient):
                raise NonFiniteError("hypergradient", step)
            return hypergradient
        bad = torch.zeros_like(self.diverged)
        for g in hypergradient:
            bad = bad | ~torch.isfinite(g).reshape(self.population, -1).all(1)
        if bad.any():
            self.diverged = self.diverged | bad
            self._frozen = True
            self._invalidate_hyper()
        if not self._frozen:
            return hypergradient
        return [torch.where(self._member_view(self.diverged, g), 0.0, g) for g in hypergradient]

    def _apply_hypergradient(self, hypergradient: list[Tensor]) -> dict[str, list[Tensor]]:
        leaves = self._raw_leaves()
        frozen = self._frozen
        before = [leaf.detach().clone() for leaf in leaves] if frozen else None
        if self.hyper_space == "natural":
            self._natural_sgd_step(hypergradient)
        else:
            for leaf, g in zip(leaves, hypergradient):
                leaf.grad = g
            self._hyper_optimizer.step()
        self._clip()
        if frozen:
            with torch.no_grad():
                for leaf, old in zip(leaves, before):
                    leaf.copy_(torch.where(self._member_view(self.diverged, leaf), old, leaf))
        self._invalidate_hyper()
        out, i = {}, 0
        for name in self.tuned:
            n = len(self._raw[name])
            out[name] = hypergradient[i:i + n]
            i += n
        return out

    def _natural_sgd_step(self, hypergradient: list[Tensor]) -> None:
        """``λ ← λ − β ∂L/∂λ`` on natural values; ``∂L/∂λ = (∂L/∂raw) / (∂λ/∂raw)``."""
        step = self._hyper_optimizer.param_groups[0]["lr"]
        names = [name for name in self.tuned for _ in self._raw[name]]
        with torch.no_grad():
            for name, leaf, g in zip(names, self._raw_leaves(), hypergradient):
                transform = hp.TRANSFORMS[name]
                natural = transform.to_natural(leaf)
                natural = transform.into_domain(natural - step * g / transform.slope(natural))
                leaf.copy_(transform.to_raw(natural))

    def _invalidate_hyper(self) -> None:
        self._hyper_cache = self._hyper_floats = None

    def _clip(self) -> None:
        if "lr" in self._raw:
            low, high = (math.log10(b) for b in self.lr_bounds)
            with torch.no_grad():
                for leaf in self._raw["lr"]:
                    leaf.clamp_(low, high)

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


def _parameter_groups(model: nn.Module, params) -> list[tuple[list[nn.Parameter], dict]]:
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


def _map_pairs(fn, old, new):
    """``fn(old_leaf, new_leaf)`` over two trees of the same structure."""
    if isinstance(new, Tensor):
        return fn(old, new)
    if isinstance(new, dict):
        return {k: _map_pairs(fn, old[k], v) for k, v in new.items()}
    return type(new)(_map_pairs(fn, o, n) for o, n in zip(old, new))


def _map_tensors(fn, tree):
    """``fn`` applied to every tensor of a tree of dicts, tuples and lists."""
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _map_tensors(fn, v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(_map_tensors(fn, v) for v in tree)
    return tree


def _detach(tree):
    return _map_tensors(Tensor.detach, tree)


def _clone(tree):
    return _map_tensors(lambda t: t.detach().clone(), tree)
