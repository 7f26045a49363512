"""``torch.optim`` optimizers that tune their own hyperparameters.

A plain loop changes in two lines::

    opt = onepass.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2,
                              val_loss=lambda: loss_fn(model(x_val), y_val))     # 1
    for x, y in loader:
        opt.zero_grad()
        loss_fn(model(x), y).backward(create_graph=opt.needs_graph)             # 2
        opt.step()

Every ``update_interval`` updates, the last update of the window also takes
one hyperparameter step with the chosen estimator (the paper's
implicit-function-theorem estimate by default), using the gradient of that
update as a function of the weights, hence ``create_graph`` on that one
update, and the validation loss at the new weights.

The window schedule, the hyper-optimiser, the estimators and checkpoints are
the :class:`~onepass.Tuner`'s own: the optimizer holds a ``Tuner`` on its
parameters (no model) and hands it each update's loss's part as a value
(:meth:`~onepass.Tuner.step_on`), built from ``p.grad``, the graph the
``create_graph`` backward kept, and ``val_loss`` (:mod:`.gradients`). An
optimizer run equals the same ``Tuner`` run update by update.
"""
from __future__ import annotations

import functools
import math
import warnings
from itertools import chain
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from ..core.budget import CostBudget, first_rank_choice
from ..core.estimators import ESTIMATORS
from ..core.execution import NonFiniteError
from ..core.tuner import DataParallel, Tuner
from . import distributed
from .gradients import GradientCapture, StepGradient
from .recipe import default_tune, recipe

# Our hook hands p.grad back detached, so the cycle this warns about is never made.
CREATE_GRAPH_WARNING = "Using backward\\(\\) with create_graph=True"
warnings.filterwarnings("ignore", message=CREATE_GRAPH_WARNING)

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _with_hooks(step: Callable) -> Callable:
    """What ``torch.optim.Optimizer`` wraps ``step`` in (its pre/post hooks), with
    the profiler's ``record_function`` scope only while a profiler runs: the
    scope costs ~2 µs per op inside it, and a hyperparameter step has hundreds."""
    from torch.optim import optimizer as _torch

    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        if torch.autograd._profiler_enabled():
            return torch.optim.Optimizer.profile_hook_step(step)(self, *args, **kwargs)
        for pre_hook in chain(getattr(_torch, "_global_optimizer_pre_hooks", {}).values(),
                              self._optimizer_step_pre_hooks.values()):
            result = pre_hook(self, args, kwargs)
            if result is not None:
                args, kwargs = result
        out = step(self, *args, **kwargs)
        self._optimizer_step_code()
        for post_hook in chain(self._optimizer_step_post_hooks.values(),
                               getattr(_torch, "_global_optimizer_post_hooks", {}).values()):
            post_hook(self, args, kwargs)
        return out
    wrapper.hooked = True   # torch.optim.Optimizer then leaves it as it is
    return wrapper


def _autocast_on() -> bool:
    return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")


class _NonFiniteWatch:
    """Where in a window the training gradient first was not finite, without a
    host sync per update on an accelerator.

    Each update of a window sets its own device-side flag with one fused op
    (``torch._amp_foreach_non_finite_check_and_unscale_``, as ``GradScaler``
    uses, at scale 1: the gradients keep their values bit for bit). On the
    CPU, where reading a flag costs nothing, a set flag is read at once and
    that update's gradients are searched for the parameter; on an accelerator
    the window's last update reads the flags once, and the parameter is named
    only where the gradients are still at hand (the last update's own)."""

    def __init__(self, params: list[torch.Tensor]):
        by_device: dict[torch.device, list[int]] = {}
        for i, p in enumerate(params):
            by_device.setdefault(p.device, []).append(i)
        self._groups = list(by_device.items())
        self._host = all(device.type == "cpu" for device in by_device)
        self._one = {device: torch.ones((), dtype=torch.float32, device=device) for device in by_device}
        self._flags: dict = {}   # device -> float32 flags of the window so far, and their one-element views
        self._found: tuple[int, int] | None = None
        self._open = False

    def restart(self) -> None:
        """Forget the window so far (a checkpoint was loaded)."""
        self._open = False

    def record(self, grads, position: int, interval: int) -> None:
        if position == 1 or not self._open:
            self._start(interval)
        for device, indices in self._groups:
            flag = self._flag(device, position)
            tensors = grads if len(self._groups) == 1 else [grads[i] for i in indices]
            torch._amp_foreach_non_finite_check_and_unscale_(tensors, flag, self._one[device])
            if self._host and self._found is None and flag.item():
                self._found = (position, _first_non_finite(grads))

    def first(self, position: int, grads) -> tuple[int, int | None] | None:
        """``(position, parameter index or None)`` of the window's first non-finite
        gradient, or ``None``; ``grads`` are the gradients of update ``position``."""
        if self._host:
            return self._found
        positions = [int(flags[:position].nonzero()[0]) + 1 for flags, _ in self._flags.values()
                     if bool(flags[:position].any())]
        if not positions:
            return None
        at = min(positions)
        return at, _first_non_finite(grads) if at == position else None

    def _start(self, interval: int) -> None:
        for device, _ in self._groups:
            flags = self._flags.get(device, (None,))[0]
            if flags is None:   # grown as the window goes (a window may be very long)
                self._flags[device] = self._allocate(min(interval, 64), device)
            else:
                flags.zero_()
        self._found = None
        self._open = True

    @staticmethod
    def _allocate(n: int, device) -> tuple:
        flags = torch.zeros(n, dtype=torch.float32, device=device)
        return flags, [flags[k:k + 1] for k in range(n)]

    def _flag(self, device, position: int) -> torch.Tensor:
        """Update ``position``'s flag (the buffer doubled where the window outgrew it)."""
        flags, views = self._flags[device]
        if position > flags.numel():
            grown, views = self._allocate(max(position, 2 * flags.numel()), device)
            grown[:flags.numel()].copy_(flags)
            self._flags[device] = (grown, views)
        return views[position - 1]


def _first_non_finite(grads) -> int:
    return next(i for i, g in enumerate(grads) if not bool(torch.isfinite(g).all()))


class TunedOptimizer(torch.optim.Optimizer):
    """Base class of :class:`SGD`, :class:`Adam` and :class:`AdamW`.

    Every argument left at ``None`` (hyperparameter values included) takes the
    recommended recipe's value (:mod:`onepass.optim.recipe`).

    Args (besides the ``torch.optim`` namesake's):
        tune: hyperparameters to tune, in the rule's names (``"lr"``,
            ``"momentum"``, ``"weight_decay"``, ``"beta1"``, ``"beta2"``,
            ``"eps"``). Default (the recipe): Adam and AdamW ``lr`` only; SGD
            ``lr``, and ``momentum`` / ``weight_decay`` where they start above 0.
            ``()`` tunes nothing: the optimizer is then its ``torch.optim`` namesake.
        granularity: per name ``"scalar"``, ``"group"``, ``"tensor"`` or ``"weight"``.
        method: ``"neumann"`` (the paper), ``"cg"``, ``"unroll"``, ``"baydin"``, ``"baydin_exact"``.
        neumann_terms, unroll_steps, update_interval, hyper_optimizer, hyper_lr:
            as for :class:`~onepass.Tuner`.
        cost_budget: the wall-clock you accept, as a multiple of the bare
            ``torch.optim`` loop's (default: the recipe's, 1.5). Over its first
            windows the run times its own loop (your forward and backward
            included), then fixes the interval (never below
            ``update_interval``) so that a window costs at most this ratio;
            the measured windows are already lengthened as their timings ask,
            and one longer window after them wins back what they overspent.
            ``hyperparameters["interval"]`` shows the current one and
            ``state_dict()`` keeps the choices. ``None``: ``update_interval``
            throughout. A :class:`~onepass.core.budget.CostBudget` sets the
            clock. Under DDP every rank takes rank 0's choices.
        lr_bounds: the learned learning rate is kept in this range, one pair for
            all groups or a list with one per group (a group's ``"lr_bounds"``
            key also works). Default ``(1e-10, 1)``: a rate above 1 diverges on
            almost every network, and the clip keeps a runaway hypergradient
            from making it so.
        max_hyper_step: cap on how far one hyperparameter step moves each raw
            (``log10``/logit) value. Default ``None``: the default Adam
            hyper-optimiser moves each by about ``hyper_lr`` per step already.
        tune_after: updates before tuning starts (warm-up with fixed values).
            Default 0: the paper tunes from the first window.
        val_loss: zero-argument callable returning the validation loss (a
            scalar tensor) of the model at its current weights; it may also be
            given to :meth:`step`. It is called on the last update of each
            window, with the parameters holding the new weights. It should not
            change buffers you care about (call ``model.eval()`` inside for
            BatchNorm or dropout), and under DDP it must use the unwrapped
            module.
        grad_scaler: the ``torch.amp.GradScaler`` scaling the loss, if any, so
            that the hyperparameter step divides its scale out.
        skip_non_finite: a non-finite hypergradient or validation loss skips
            that hyperparameter step (the weights are still updated) and counts
            it in :attr:`skipped_hypersteps`, instead of raising
            :class:`~onepass.NonFiniteError`. Default: on under AMP (a
            ``grad_scaler``, low-precision parameters, or autocast active when
            :attr:`needs_graph` or :meth:`step` is called), else off.
        model: optional; checked to be supported (no FSDP; under DDP every
            trainable parameter in the optimizer), put in eval mode while
            ``val_loss`` runs, and kept as the public attribute ``model``
            (:class:`~onepass.optim.Fold` keeps its buffers with the weights).
        process_group: ranks to average the hyperparameter step over. Default:
            all ranks when ``torch.distributed`` is initialised with more than
            one; ``False`` for none.

    The loop's contract:

    * call ``loss.backward(create_graph=optimizer.needs_graph)``: the updates
      whose gradient is differentiated need its graph (under DDP, take that
      update's loss through ``ddp_model.module``; see ``examples/ddp.py``);
    * gradient accumulation, ``clip_grad_norm_`` and ``GradScaler`` work as
      with any optimizer; the hyperparameter step sees the clipping;
    * an LR scheduler sets the *schedule*: the learning rate used is
      ``learned lr × group["lr"] / group["base_lr"]``, where ``base_lr`` is
      the group's ``lr`` at construction. So the learned value multiplies the
      scheduled one (as in Prodigy and Mechanic) and a scheduler never
      overwrites it. Schedulers may also change fixed hyperparameters;
      changing a tuned one other than ``lr`` raises.
    """

    _rule_names: Mapping[str, str] = {}   # torch.optim group key -> the rule's name(s)

    def __init__(self, params, defaults: dict, rule: str, *, tune=None, granularity=None, method=None,
                 neumann_terms=None, unroll_steps=None, update_interval=None, hyper_optimizer=None,
                 hyper_lr=None, lr_bounds=(1e-10, 1.0), max_hyper_step=None, tune_after=None, val_loss=None,
                 grad_scaler=None, skip_non_finite=None, model=None, process_group=None, cost_budget="recipe"):
        table = recipe(rule)
        defaults = {k: table["values"][k] if v is None else v for k, v in defaults.items()}
        given = dict(granularity=granularity, method=method, neumann_terms=neumann_terms,
                     unroll_steps=unroll_steps, update_interval=update_interval, hyper_optimizer=hyper_optimizer,
                     hyper_lr=hyper_lr, tune_after=tune_after)
        settings = {k: table["settings"][k] if v is None else v for k, v in given.items()}
        if isinstance(cost_budget, str) and cost_budget == "recipe":
            cost_budget = table["settings"]["cost_budget"]
        granularity, method, neumann_terms, unroll_steps, update_interval, tune_after = (
            settings[k] for k in ("granularity", "method", "neumann_terms", "unroll_steps", "update_interval",
                                  "tune_after"))
        hyper_optimizer, hyper_lr = settings["hyper_optimizer"], settings["hyper_lr"]
        super().__init__(params, defaults)
        groups = []
        for index, group in enumerate(self.param_groups):
            values = self._natural_values(group, index)
            group.setdefault("base_lr", _check_range(f"param_groups[{index}] lr", group["lr"], 0.0, None,
                                                     low_open=True))
            groups.append((group["params"], values))
        params = [p for group in self.param_groups for p in group["params"]]
        distributed.check_supported(params, model)
        names = list(groups[0][1])
        tune = default_tune(rule, [values for _, values in groups]) if tune is None else tuple(tune)
        granularity = dict(granularity or {})
        if len(groups) > 1:   # fixed values stay per group, so a scheduler may change one group's
            granularity.update({n: "group" for n in names if n not in tune and n not in granularity})
        tuner_groups, pinned_groups = _pin_zero_groups(groups, tune)
        bounds = [tuple(g.get("lr_bounds", lr_bounds)) for g in self.param_groups]
        if "lr" in tune:
            for index, (pair, group) in enumerate(zip(bounds, self.param_groups)):
                if len(pair) == 2 and not pair[0] <= group["lr"] <= pair[1]:
                    raise ValueError(f"param_groups[{index}] lr={group['lr']!r} is outside its lr_bounds="
                                     f"{pair}: start the tuned lr inside them, or give lr_bounds= that contain it")
        group = distributed.process_group_for(process_group)
        self._group = group
        self._reduce = distributed.averaged(group) if group is not None else None
        self._agree = distributed.agreement(group) if group is not None else None
        if method in ESTIMATORS and ESTIMATORS[method].every_step:
            cost_budget = None   # a hyperparameter step every update: nothing to choose
        cost_budget = CostBudget.of(cost_budget)
        self._config = {"rule": rule, "method": method, "tune": tune, "granularity": sorted(granularity.items()),
                        "neumann_terms": neumann_terms, "unroll_steps": unroll_steps,
                        "update_interval": update_interval, "tune_after": tune_after,
                        "cost_budget": None if cost_budget is None else cost_budget.ratio,
                        "shapes": [tuple(p.shape) for p in params]}
        if group is not None:
            distributed.check_same_config(self._config, group)
        self._tuner = Tuner(
            None, params=[{"params": tensors, **values} for tensors, values in tuner_groups], rule=rule, tune=tune,
            granularity=granularity, method=method, neumann_terms=neumann_terms, unroll_steps=unroll_steps,
            update_interval=update_interval, hyper_optimizer=hyper_optimizer, hyper_lr=hyper_lr,
            lr_bounds=bounds, max_hyper_step=max_hyper_step, tune_after=tune_after, cost_budget=cost_budget,
            data_parallel=DataParallel(self._reduce, first_rank_choice(group, params[0].device))
            if group is not None else None)
        self._tuner.slots.set_pinned({name: [i for i, g in enumerate(self._tensor_groups(tuner_groups))
                                             if g in owners] for name, owners in pinned_groups.items()})
        self._model = model
        self._pinned_groups = pinned_groups
        self._params = params
        self._watch = _NonFiniteWatch(params)
        self._capture = GradientCapture(params)
        self._capture.armed = self._tuner.needs_graph
        self.val_loss = val_loss
        self.model = model
        self.grad_scaler = grad_scaler
        self.skip_non_finite = skip_non_finite
        self._autocast_seen = False
        self._seen = [dict(values) for _, values in groups]
        self._groups_seen = None
        self.skipped_hypersteps = 0
        self._frozen = False

    # ------------------------------------------------------------ construction helpers

    @staticmethod
    def _tensor_groups(groups) -> list[int]:
        return [g for g, (tensors, _) in enumerate(groups) for _ in tensors]

    @staticmethod
    def _write(slots, name: str, group: int, value: float) -> None:
        """A fixed hyperparameter's value for one group (a scheduler changed it)."""
        for k in {slots.slot_of[name][i] for i, g in enumerate(slots.group_of) if g == group}:
            slots.set_slot(name, k, value)

    def _natural_values(self, group: dict, index: int) -> dict[str, float]:
        """The rule's hyperparameters of one group, checked."""
        raise NotImplementedError

    # ------------------------------------------------------------ the loop's side

    @property
    def needs_graph(self) -> bool:
        """Whether the next :meth:`step` differentiates its gradient: pass it as
        ``loss.backward(create_graph=optimizer.needs_graph)``."""
        self._autocast_seen = self._autocast_seen or _autocast_on()
        needed = not self._frozen and self._tuner.needs_graph
        if needed and not self._capture.armed:   # armed after each step already: a Tuner changed from outside
            self._capture.armed = True
        return needed

    def _arm(self) -> None:
        """The hooks that keep the graph are on for the backward passes of an
        update whose gradient is differentiated, and off otherwise."""
        self._capture.armed = not self._frozen and self._tuner.needs_graph

    @property
    def steps_taken(self) -> int:
        return self._tuner.steps_taken

    # The constructor's val_loss, grad_scaler and skip_non_finite are also public,
    # settable attributes, so a framework's integration sets them instead of
    # wrapping step().

    @property
    def val_loss(self) -> Callable | None:
        """The validation loss callable (the constructor's ``val_loss``); settable.
        A ``val_loss=`` given to :meth:`step` takes precedence."""
        return self._val_loss

    @val_loss.setter
    def val_loss(self, value: Callable | None) -> None:
        if value is not None and not callable(value):
            raise ValueError("val_loss must be a zero-argument callable returning the validation loss")
        self._val_loss = value

    @property
    def grad_scaler(self):
        """The ``torch.amp.GradScaler`` scaling the loss, or ``None``; settable."""
        return self._grad_scaler

    @grad_scaler.setter
    def grad_scaler(self, value) -> None:
        if value is not None and not callable(getattr(value, "get_scale", None)):
            raise ValueError(f"grad_scaler must be a torch.amp.GradScaler (with get_scale()), got "
                             f"{type(value).__name__}")
        self._grad_scaler = value

    @property
    def skip_non_finite(self) -> bool | None:
        """The constructor's ``skip_non_finite`` (``None``: on under AMP); settable."""
        return self._skip_non_finite

    @skip_non_finite.setter
    def skip_non_finite(self, value: bool | None) -> None:
        self._skip_non_finite = None if value is None else bool(value)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._capture.clear()
        if not set_to_none or torch.autograd._profiler_enabled():
            super().zero_grad(set_to_none)
            return
        for p in self._params:   # torch's own loop, without its profiler scope
            p.grad = None

    @_with_hooks
    def step(self, closure: Callable | None = None, *, val_loss: Callable | None = None):
        """One weight update from ``p.grad``; on the last update of a window
        also one hyperparameter step (see the class docs). ``closure``, as in
        ``torch.optim``, re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._autocast_seen = self._autocast_seen or _autocast_on()
        tuner = self._tuner
        self._sync_groups()
        if self._frozen:
            return self._frozen_step(loss)
        step = tuner.steps_taken + 1
        position = tuner.position(step)
        validates = tuner.needs_validation
        val = val_loss if val_loss is not None else self._val_loss
        if validates and val is None:
            raise ValueError(f"update {step} closes a window of update_interval={tuner.update_interval}: "
                             "give the optimizer val_loss= (a callable returning the validation loss) "
                             "or pass it to step()")
        scale = float(self._grad_scaler.get_scale()) if self._grad_scaler is not None \
            and self._capture.has_graph else 1.0
        source = StepGradient.read(self._params, self._capture, scale)
        if len(source.missing) == len(self._params):   # no gradient at all: torch.optim moves nothing
            self._capture.clear()
            return loss
        if position is not None:
            self._watch.record(source.plain, position, tuner.update_interval)
            if position == tuner.update_interval:
                self._check_window(step, position, source.plain)
        part = source.part(val if validates else None, graph=tuner.needs_graph, reduce=self._reduce,
                           agree_on_max_norm=self._agree, model=self._model)
        try:
            tuner.step_on(part)
        except NonFiniteError:
            if not self._skips():
                raise
            self._skip(part)
        finally:
            self._capture.clear()
            self._arm()
        return loss

    def _frozen_step(self, loss):
        """After :meth:`freeze`: the namesake's update from ``p.grad``."""
        source = StepGradient.read(self._params, self._capture)
        try:
            if len(source.missing) < len(self._params):   # no gradient at all: torch.optim moves nothing
                self._tuner.step_without_tuning(source.part(None, graph=False))
        finally:
            self._capture.clear()
        return loss

    def _check_window(self, step: int, position: int, grads) -> None:
        """A non-finite training gradient in this window: name its update, and its parameter where known."""
        found = self._watch.first(position, grads)
        if found is None:
            return
        at, index = found
        update = step - position + at
        where = None
        if index is not None:
            group = self._tuner.slots.group_of[index]
            within = index - sum(1 for g in self._tuner.slots.group_of[:index] if g < group)
            where = f"param_groups[{group}]['params'][{within}] (shape {tuple(self._params[index].shape)})"
        if update == step:
            left = "weights and hyperparameters were left as they were"
        else:
            left = (f"updates {update}-{step - 1} were applied with it, as torch.optim would, so the weights "
                    f"are not finite now; update {step} and the hyperparameters were left as they were: "
                    "reload a checkpoint")
        raise NonFiniteError("training gradient", update, where=where, left=left)

    def _skips(self) -> bool:
        if self._skip_non_finite is not None:
            return bool(self._skip_non_finite)
        return (self._grad_scaler is not None or self._autocast_seen
                or any(p.dtype in _LOW_PRECISION for p in self._params))

    def _skip(self, part) -> None:
        """A non-finite hypergradient under AMP: the weights move, the hyperparameters do not."""
        tuner = self._tuner
        tuner.step_without_tuning(part)
        self.skipped_hypersteps += 1
        if self.skipped_hypersteps == 1:
            warnings.warn(f"onepass: skipped the hyperparameter step of update {tuner.steps_taken} (non-finite "
                          "hypergradient or validation loss under AMP); counted in skipped_hypersteps",
                          RuntimeWarning, stacklevel=3)

    def _sync_groups(self) -> None:
        """Read what schedulers (or the user) wrote into ``param_groups``."""
        slots = self._tuner.slots
        key = [[v for k, v in group.items() if k != "params"] for group in self.param_groups]
        if key == self._groups_seen:
            return
        self._groups_seen = key
        if self._frozen:   # every value is a float in use, the learned ones included
            in_use = self.in_use()
            slots.set_exact({name: [values[name] for values in in_use] for name in slots.names})
        factors = []
        exact = {name: [] for name in slots.fixed}
        group_of = slots.group_of
        for g, group in enumerate(self.param_groups):
            factors.append(group["lr"] / group["base_lr"])
            values = self._natural_values(group, g)
            for name in exact:
                exact[name].extend(values[name] for owner in group_of if owner == g)
            for name, value in values.items():
                if name == "lr" or value == self._seen[g][name]:
                    continue
                if name in slots.raw:
                    raise ValueError(f"param_groups[{g}][{self._torch_key(name)!r}] was changed to {value!r}, "
                                     f"but {name} is tuned; only lr may be scheduled (OneCycleLR: "
                                     "cycle_momentum=False)")
                self._write(slots, name, g, value)
                self._seen[g][name] = value
        slots.set_lr_factors(factors)
        if not self._frozen:
            slots.set_exact(exact)

    def _torch_key(self, name: str) -> str:
        return {"beta1": "betas", "beta2": "betas"}.get(name, name)

    # ------------------------------------------------------------ what users see

    @property
    def hyperparameters(self) -> dict[str, float]:
        """Current values per parameter group in natural units, for a logger:
        ``{"lr/group0": ..., "lr_in_use/group0": ..., "momentum/group0": ..., ...}``.
        ``name/groupN`` is the hyperparameter's own (learned) value;
        ``lr_in_use/groupN`` is the rate the update uses, learned × the
        scheduler's factor ``group["lr"] / group["base_lr"]``. Per-tensor and
        per-weight values give their mean over the group's weights. Under AMP
        also ``"skipped_hypersteps"``; when anything is tuned, ``"interval"``:
        the updates per hyperparameter step now (the cost budget's choice)."""
        slots = self._tuner.slots
        out = {}
        with torch.no_grad():
            for name in slots.names:
                natural = slots.natural_slots(name)
                for g, group in enumerate(self.param_groups):
                    members = [(natural[slots.slot_of[name][i]], slots.shapes[i].numel())
                               for i, owner in enumerate(slots.group_of) if owner == g]
                    if g in self._pinned_groups.get(name, ()):
                        value = 0.0
                    elif all(v.dim() == 0 for v, _ in members) and len({float(v) for v, _ in members}) == 1:
                        value = float(members[0][0])
                    else:
                        value = sum(float(v.sum()) if v.dim() else float(v) * n for v, n in members) / \
                            sum(n for _, n in members)
                    out[f"{name}/group{g}"] = value
                    if name == "lr":
                        out[f"lr_in_use/group{g}"] = value * group["lr"] / group["base_lr"]
        if self._skips():
            out["skipped_hypersteps"] = float(self.skipped_hypersteps)
        if slots.tuned:
            out["interval"] = float(self._tuner.update_interval)
        return out

    def back_off(self, factor: float = 0.5) -> None:
        """After the loss blew up, with the weights already put back (as
        :class:`~onepass.optim.Fold` does with its best weights): the learned
        learning rate times ``factor``, the rule's state (momentum buffers,
        Adam's moments) and the hyper-optimiser's started afresh. Call it
        after any ``step()``; tuning, or the frozen update, goes on from
        there."""
        self._tuner.back_off(factor)
        self._groups_seen = None   # frozen: the values in use are read again

    def freeze(self) -> None:
        """Stop tuning, in place: from now on :meth:`step` is the ``torch.optim``
        namesake's update at the values in use (:meth:`in_use`: the learned ones
        times the scheduler's factor, so an LR scheduler built on this optimizer
        keeps driving the rate), with the rule's state carried on. No further
        hyperparameter step is taken, ``val_loss`` is not called and
        :attr:`needs_graph` is ``False``. :meth:`state_dict` keeps the flag.
        Per-weight values have no ``torch.optim`` form and are refused."""
        self.in_use()   # refuses per-weight values now, not at the next step
        self._frozen = True
        self._groups_seen = None
        self._arm()

    @property
    def is_frozen(self) -> bool:
        """Whether :meth:`freeze` was called."""
        return self._frozen

    @property
    def tuner(self) -> Tuner:
        """The :class:`~onepass.Tuner` shell underneath (``.hyperparameters``
        gives the learned values themselves, per slot)."""
        return self._tuner

    def in_use(self) -> list[dict[str, float]]:
        """Per parameter tensor, the values its update uses now, as floats: a
        learned value times the scheduler's factor for ``lr``, 0 where a group
        keeps a tuned name off, and the ``param_groups`` value of a fixed one.
        Per-weight values have no such form and are refused."""
        slots = self._tuner.slots
        out = []
        with torch.no_grad():
            natural = {name: slots.natural_slots(name) for name in slots.tuned}
            fixed = [self._natural_values(group, g) for g, group in enumerate(self.param_groups)]
            for i in range(len(self._params)):
                g = slots.group_of[i]
                group = self.param_groups[g]
                values = dict(fixed[g])
                for name in slots.tuned:
                    value = natural[name][slots.slot_of[name][i]]
                    if value.numel() > 1:
                        raise ValueError(f"per-weight values have no torch.optim form ({name} has granularity "
                                         "'weight'): use scalar, group or tensor granularity")
                    values[name] = 0.0 if g in self._pinned_groups.get(name, ()) else float(value)
                    if name == "lr":
                        values[name] *= group["lr"] / group["base_lr"]
                out.append(values)
        return out

    def frozen(self) -> torch.optim.Optimizer:
        """The ``torch.optim`` namesake at the values in use now (:meth:`in_use`:
        learned × scheduled, one group per parameter tensor) with the rule's state
        (momentum buffers, Adam's moments) carried over: the hyperparameters stop moving.

        The recipe's last stretch (:mod:`onepass.optim.recipe`: train on
        train+validation once the values have settled) continues with it. A
        scheduler built on this optimizer does not drive the new one (:meth:`freeze`
        keeps it); per-weight values have no ``torch.optim`` form and are refused."""
        tuner = self._tuner
        state, rule = tuner.state, tuner.rule.name
        groups = list(zip(self._params, self.in_use()))
        if rule.startswith("sgd"):
            plain = torch.optim.SGD([{"params": [p], "lr": v["lr"], "momentum": v["momentum"],
                                      "weight_decay": v["weight_decay"]} for p, v in groups],
                                    momentum=groups[0][1]["momentum"], nesterov=rule == "sgd_nesterov")
            for (p, _), buffer in zip(groups, state["momentum_buffer"]):
                plain.state[p] = {"momentum_buffer": buffer.detach().clone()}
            return plain
        cls = torch.optim.AdamW if rule == "adamw" else torch.optim.Adam
        plain = cls([{"params": [p], "lr": v["lr"], "betas": (v["beta1"], v["beta2"]), "eps": v["eps"],
                      "weight_decay": v["weight_decay"]} for p, v in groups])
        step = torch.as_tensor(state["step"], dtype=torch.float32).detach().reshape(())
        for (p, _), m, v in zip(groups, state["exp_avg"], state["exp_avg_sq"]):
            plain.state[p] = {"step": step.clone(), "exp_avg": m.detach().clone(),
                              "exp_avg_sq": v.detach().clone()}
        return plain

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["onepass"] = {"config": dict(self._config), "tuner": self._tuner.state_dict(),
                            "seen": [dict(s) for s in self._seen], "skipped": self.skipped_hypersteps,
                            "frozen": self._frozen}
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("onepass", None)
        if extra is None:
            raise ValueError("this state_dict was not written by a onepass.optim optimizer")
        for key, value in self._config.items():
            if key != "cost_budget" and extra["config"].get(key) != value:   # the state holds the choice
                raise ValueError(f"state_dict is from a different configuration: {key} was "
                                 f"{extra['config'].get(key)!r}, this optimizer has {value!r}")
        super().load_state_dict(state_dict)
        self._tuner.load_state_dict(extra["tuner"])
        self._seen = [dict(s) for s in extra["seen"]]
        self._groups_seen = None
        self._watch.restart()
        self.skipped_hypersteps = int(extra["skipped"])
        self._frozen = bool(extra.get("frozen", False))   # checkpoints from before freeze() lack it
        self._arm()

    def add_param_group(self, param_group: dict) -> None:
        if hasattr(self, "_tuner"):
            raise ValueError("onepass.optim optimizers take all parameter groups at construction")
        super().add_param_group(param_group)


def _pin_zero_groups(groups, tune):
    """HF's usual groups: a tuned ``weight_decay`` (or ``momentum``) that is 0 in
    some groups and not in others stays 0 there and is tuned in the rest. The
    Tuner gets a tunable stand-in for those groups (another group's value),
    which its slots pin to 0 there (``Slots.pinned``). Returns ``(groups,
    {name: pinned group indices})``."""
    pinned = {}
    for name in ("weight_decay", "momentum"):
        if name not in tune:
            continue
        zero = {g for g, (_, values) in enumerate(groups) if values.get(name) == 0}
        if zero and len(zero) < len(groups):
            stand_in = next(values[name] for g, (_, values) in enumerate(groups) if g not in zero)
            groups = [(tensors, {**values, name: stand_in} if g in zero else values)
                      for g, (tensors, values) in enumerate(groups)]
            pinned[name] = zero
    return groups, pinned


def _check_range(name: str, value, low: float, high: float | None, *, low_open: bool = False) -> float:
    value = float(value)
    bad = not math.isfinite(value) or value < low or (low_open and value == low) or \
        (high is not None and value >= high)
    if bad:
        span = f"{'(' if low_open else '['}{low:g}, {'1)' if high is not None else 'inf)'}"
        raise ValueError(f"{name} must be in {span}, got {value!r}")
    return value


class SGD(TunedOptimizer):
    """``torch.optim.SGD`` (no dampening) that tunes ``lr`` (and ``momentum``,
    ``weight_decay`` where they start above 0) during training; see
    :class:`TunedOptimizer` for the extra arguments and the loop's contract.
    Given neither ``lr`` nor ``momentum`` (nor ``tune`` or ``method``) it
    starts from the recipe's lr 0.01 with momentum 0.9, both tuned
    (``recipe("sgd")["start"]``); given either, the rest take
    ``torch.optim.SGD``'s defaults."""

    def __init__(self, params: Iterable, lr: float | None = None, momentum: float | None = None,
                 dampening: float = 0.0, weight_decay: float | None = None, nesterov: bool = False, **tuning):
        if dampening != 0:
            raise ValueError("onepass.optim.SGD supports dampening=0 only")
        if lr is None and momentum is None and tuning.get("tune") is None and tuning.get("method") is None:
            start = recipe("sgd")["start"]                                   # the default use
            lr, momentum = start["lr"], start["momentum"]
        if momentum is None:
            momentum = recipe("sgd")["values"]["momentum"]
        if nesterov and not momentum > 0:
            raise ValueError("nesterov=True needs momentum > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov),
                         "sgd_nesterov" if nesterov else "sgd", **tuning)

    def _natural_values(self, group, index):
        if group["nesterov"] != self.defaults["nesterov"]:
            raise ValueError(f"param_groups[{index}] sets nesterov differently: one rule for all groups")
        return {"lr": _check_range(f"param_groups[{index}] lr", group["lr"], 0.0, None),   # a schedule may reach 0
                "momentum": _check_range(f"param_groups[{index}] momentum", group["momentum"], 0.0, 1.0),
                "weight_decay": _check_range(f"param_groups[{index}] weight_decay", group["weight_decay"],
                                             0.0, None)}


class Adam(TunedOptimizer):
    """``torch.optim.Adam`` (L2 weight decay) that tunes ``lr`` (the recipe;
    ``tune=("lr", "weight_decay")`` for more); see :class:`TunedOptimizer`."""

    _rule = "adam"

    def __init__(self, params: Iterable, lr: float | None = None, betas: Sequence[float] | None = None,
                 eps: float | None = None, weight_decay: float | None = None, amsgrad: bool = False, **tuning):
        if amsgrad:
            raise ValueError("onepass.optim does not support amsgrad")
        super().__init__(params, dict(lr=lr, betas=None if betas is None else tuple(betas), eps=eps,
                                      weight_decay=weight_decay), self._rule, **tuning)

    def _natural_values(self, group, index):
        betas = tuple(group["betas"])
        if len(betas) != 2:
            raise ValueError(f"param_groups[{index}] betas must be a pair, got {betas!r}")
        return {"lr": _check_range(f"param_groups[{index}] lr", group["lr"], 0.0, None),   # a schedule may reach 0
                "beta1": _check_range(f"param_groups[{index}] betas[0]", betas[0], 0.0, 1.0),
                "beta2": _check_range(f"param_groups[{index}] betas[1]", betas[1], 0.0, 1.0),
                "eps": _check_range(f"param_groups[{index}] eps", group["eps"], 0.0, None),
                "weight_decay": _check_range(f"param_groups[{index}] weight_decay", group["weight_decay"],
                                             0.0, None)}


class AdamW(Adam):
    """``torch.optim.AdamW`` (decoupled weight decay, default 0.01) that tunes
    ``lr`` (the recipe; ``tune=("lr", "weight_decay")`` for more); see
    :class:`TunedOptimizer`."""

    _rule = "adamw"

    def __init__(self, params: Iterable, lr: float | None = None, betas: Sequence[float] | None = None,
                 eps: float | None = None, weight_decay: float | None = None, amsgrad: bool = False, **tuning):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         **tuning)
