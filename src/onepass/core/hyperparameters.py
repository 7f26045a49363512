"""Hyperparameters: transforms to an unconstrained space, and the slots that hold them.

``lr = 10^a``, ``weight_decay = 10^b``, ``eps = 10^e``, ``momentum = sigmoid(c)``,
``beta1 = sigmoid(d)``, ``beta2 = sigmoid(f)``.  Hypergradients are taken with
respect to the raw values ``a, b, c, ...``; the transform is part of the graph.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor

_LN10 = math.log(10.0)


@dataclass(frozen=True)
class Transform:
    """Maps a raw, unconstrained value to the hyperparameter's natural value."""

    to_natural: Callable[[Tensor], Tensor]
    to_raw: Callable[[Tensor], Tensor]
    domain: str
    contains: Callable[[float], bool]
    slope: Callable[[Tensor], Tensor]          # d natural / d raw, as a function of natural
    into_domain: Callable[[Tensor], Tensor]    # clamp a natural value into the open domain


LOG10 = Transform(lambda a: torch.exp(a * _LN10), torch.log10, "positive", lambda x: x > 0,
                  lambda x: x * _LN10, lambda x: x.clamp_min(1e-30))
LOGIT = Transform(torch.sigmoid, torch.logit, "strictly between 0 and 1", lambda x: 0 < x < 1,
                  lambda x: x * (1 - x), lambda x: x.clamp(1e-6, 1 - 1e-6))

TRANSFORMS: dict[str, Transform] = {
    "lr": LOG10,
    "weight_decay": LOG10,
    "eps": LOG10,
    "momentum": LOGIT,
    "beta1": LOGIT,
    "beta2": LOGIT,
}

GRANULARITIES = ("scalar", "group", "tensor", "weight")


# Spellings people use for our names; difflib alone cannot see these.
ALIASES = {
    "learning_rate": "lr", "learningrate": "lr", "step_size": "lr", "eta": "lr",
    "wd": "weight_decay", "weightdecay": "weight_decay", "l2": "weight_decay",
    "mu": "momentum", "beta_1": "beta1", "beta_2": "beta2", "epsilon": "eps",
}


def closest(name: str, choices) -> str:
    """A 'did you mean' suffix for an unknown name, or an empty string."""
    choices = list(choices)
    alias = ALIASES.get(name.lower())
    match = [alias] if alias in choices else difflib.get_close_matches(name, choices, n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def check_tunable(name: str, value: float) -> None:
    """Refuse an initial value that the transform cannot represent."""
    transform = TRANSFORMS[name]
    if not (math.isfinite(value) and transform.contains(value)):
        raise ValueError(
            f"cannot tune {name}={value!r}: it is optimised in a transformed space and must be "
            f"{transform.domain} (for example start weight_decay at 1e-7 rather than 0)")


def to_raw(name: str, natural: Tensor) -> Tensor:
    return TRANSFORMS[name].to_raw(natural)


def to_natural(name: str, raw: Tensor) -> Tensor:
    return TRANSFORMS[name].to_natural(raw)


class Slots:
    """Where every hyperparameter value lives, and how it reaches the update rule.

    Each hyperparameter is held in *slots*: one slot (``"scalar"``), one per
    parameter group (``"group"``), one per weight tensor (``"tensor"``) or one
    tensor of the weight's shape per weight tensor (``"weight"``). Weight
    tensor ``i`` reads slot ``slot_of[name][i]``. A tuned hyperparameter's slots
    are leaves in the transformed space (:attr:`raw`); a fixed one's are natural
    values (:attr:`fixed`). With a population of ``P`` runs every scalar slot
    has shape ``(P,)`` (one value per member).

    Args:
        names: the rule's hyperparameter names, in its order.
        defaults: the rule's default values.
        groups: ``[(tensors, overrides)]`` as given to a ``torch.optim`` optimiser.
        values: initial natural values, per name (overriding ``defaults``).
        tune: names to tune.
        granularity: per name, one of :data:`GRANULARITIES`.
        population: ``P`` or ``None``.
        check_name: raises for a name the rule lacks.
    """

    def __init__(self, names, defaults, groups, values, tune, granularity, population, check_name):
        self.names = tuple(names)
        self.population = population
        params = [p for group, _ in groups for p in group]
        self.shapes = [p.shape for p in params]
        # Hyperparameters are at least float32, whatever the weights' dtype (AMP).
        like = torch.empty((), dtype=torch.promote_types(params[0].dtype, torch.float32),
                           device=params[0].device)
        self.group_count = len(groups)
        merged = dict(defaults)
        for name, value in values.items():
            check_name(name)
            merged[name] = self.member_values(name, value)
        for name in tune:
            check_name(name)
        for _, overrides in groups:
            for name in overrides:
                check_name(name)
        for name, kind in granularity.items():
            check_name(name)
            if kind not in GRANULARITIES:
                raise ValueError(f"unknown granularity {kind!r} for {name}; choose one of "
                                 f"{', '.join(GRANULARITIES)}")

        self.granularity: dict[str, str] = {}
        self.slot_of: dict[str, list[int]] = {}
        self.raw: dict[str, list[Tensor]] = {}      # tuned: leaves in transformed space
        self.fixed: dict[str, list[Tensor]] = {}    # fixed: natural values
        group_of = [g for g, (group, _) in enumerate(groups) for _ in group]
        self.group_of = group_of
        for name in self.names:
            per_group = [self.member_values(name, overrides.get(name, merged[name])) for _, overrides in groups]
            kind = granularity.get(name, "scalar" if len(set(per_group)) == 1 else "group")
            if kind == "scalar" and len(set(per_group)) > 1:
                raise ValueError(f"{name} differs between parameter groups, so it cannot be scalar")
            if kind == "weight" and name not in tune:
                kind = "tensor"
            self.granularity[name] = kind
            slot_of, slot_values, shapes = [], [], []
            for i, p in enumerate(params):
                slot = {"scalar": 0, "group": group_of[i]}.get(kind, i)
                slot_of.append(slot)
                if slot == len(slot_values):
                    slot_values.append(per_group[group_of[i]])
                    shapes.append(p.shape if kind == "weight" else (population,) if population else ())
            self.slot_of[name] = slot_of
            natural = [self.slot_tensor(v, shape, like) for shape, v in zip(shapes, slot_values)]
            if name in tune:
                for v in slot_values:
                    for member_value in (v if isinstance(v, tuple) else (v,)):
                        check_tunable(name, member_value)
                self.raw[name] = [to_raw(name, t).requires_grad_() for t in natural]
            else:
                self.fixed[name] = natural
        self.tuned = tuple(n for n in self.names if n in self.raw)
        self._zero_fixed: frozenset | None = None
        self.pinned: dict[str, frozenset[int]] = {}
        """``{name: weight tensor indices}`` whose value is 0 while the name is
        tuned for the others (a group that keeps weight decay off)."""
        self.lr_factors: tuple[float, ...] | None = None
        """Per parameter group, the factor the learning rate in use is the
        slot's value times (a front end's LR schedule); ``None``: all 1."""
        self.exact: dict = {}
        """Fixed values as Python floats (one, or one per weight tensor) that
        in-place updates use instead of their slots' float32 (a front end's
        ``param_groups`` values, so that nothing tuned is its namesake bit for bit)."""
        self.values_version = 0   # bumped when slot values are written
        self.scale_version = 0    # bumped when lr_factors or exact change

    # ------------------------------------------------------------ reading

    def leaves(self) -> list[Tensor]:
        """The tuned raw leaves, name by name in the rule's order: what the hyper-optimiser steps."""
        return [leaf for name in self.tuned for leaf in self.raw[name]]

    def detached_raw(self) -> dict[str, list[Tensor]]:
        return {name: [leaf.detach() for leaf in self.raw[name]] for name in self.tuned}

    def by_leaf(self, per_name) -> list[Tensor]:
        """A ``{name: [tensor per slot]}`` mapping in the order of :meth:`leaves`."""
        return [g for name in self.tuned for g in per_name[name]]

    def by_name(self, per_leaf) -> dict[str, list[Tensor]]:
        """The inverse of :meth:`by_leaf`."""
        out, i = {}, 0
        for name in self.tuned:
            n = len(self.raw[name])
            out[name] = list(per_leaf[i:i + n])
            i += n
        return out

    def natural_slots(self, name: str) -> list[Tensor]:
        if name in self.raw:
            return [to_natural(name, r) for r in self.raw[name]]
        return self.fixed[name]

    def zero_fixed(self) -> frozenset:
        """Fixed momentum / weight decay that are exactly zero: the rule skips
        their terms, as ``torch.optim`` does."""
        if self._zero_fixed is None:
            self._zero_fixed = frozenset(name for name in ("momentum", "weight_decay") if name in self.fixed
                                         and all(not t.any() for t in self.fixed[name]))
        return self._zero_fixed

    def hyper(self, raw: Mapping, fixed: Mapping, frozen: Tensor | None, skip: frozenset) -> dict:
        """The rule's ``hyper`` mapping from raw leaves and fixed natural values:
        a pure function of its tensors (differentiable in ``raw``). With a
        population each value broadcasts against its weight tensor, and the
        learning rate of a ``frozen`` member is zero."""
        hyper = {}
        for name in self.names:
            if name in skip:
                continue
            slots = [to_natural(name, r) for r in raw[name]] if name in raw else fixed[name]
            if self.population is None:
                hyper[name] = slots[0] if len(slots) == 1 else tuple(slots[k] for k in self.slot_of[name])
                continue
            values = []
            for k, shape in zip(self.slot_of[name], self.shapes):
                value = slots[k] if self.granularity[name] == "weight" else member_view(slots[k], len(shape))
                if name == "lr" and frozen is not None:
                    value = torch.where(member_view(frozen, len(shape)), 0.0, value)
                values.append(value)
            hyper[name] = tuple(values)
        return hyper

    def pin(self, hyper: dict) -> dict:
        """``hyper`` with the :attr:`pinned` values 0 for their tensors."""
        if not self.pinned:
            return hyper
        hyper = dict(hyper)
        n = len(self.shapes)
        for name, indices in self.pinned.items():
            if name not in hyper:
                continue
            value = hyper[name]
            values = [value if isinstance(value, (Tensor, float, int)) else value[i] for i in range(n)]
            hyper[name] = tuple(v * 0 if i in indices else v for i, v in enumerate(values))
        return hyper

    def scale_lr(self, hyper: dict) -> dict:
        """The learning rate times each group's :attr:`lr_factors` (one value
        when every group has the same factor, so a rule keeps its fast path)."""
        factors = self.lr_factors
        if factors is None or "lr" not in hyper:
            return hyper
        lr, group_of = hyper["lr"], self.group_of
        hyper = dict(hyper)
        if isinstance(lr, Tensor) and len(set(factors)) == 1:
            hyper["lr"] = lr * factors[0]
        else:
            hyper["lr"] = tuple((lr if isinstance(lr, Tensor) else lr[i]) * factors[group_of[i]]
                                for i in range(len(group_of)))
        return hyper

    def set_lr_factors(self, factors) -> None:
        """One learning-rate factor per parameter group (see :attr:`lr_factors`)."""
        factors = None if all(f == 1.0 for f in factors) else tuple(float(f) for f in factors)
        if factors != self.lr_factors:
            self.lr_factors = factors
            self.scale_version += 1

    def set_exact(self, exact: Mapping[str, list]) -> None:
        """Fixed values as floats, ``{name: value per weight tensor}`` (see :attr:`exact`)."""
        exact = {name: values[0] if len(set(values)) == 1 else tuple(values) for name, values in exact.items()}
        if exact != self.exact:
            self.exact = exact
            self.scale_version += 1

    def set_pinned(self, pinned: Mapping[str, list[int]]) -> None:
        """Names held at 0 for some weight tensors (see :attr:`pinned`)."""
        self.pinned = {name: frozenset(indices) for name, indices in pinned.items() if indices}
        self.values_version += 1

    def public(self) -> dict:
        """Natural values: a float for a scalar, a list per group or tensor,
        a list of tensors for per-weight values (lists per member in a population)."""
        out = {}
        with torch.no_grad():
            for name in self.names:
                values = self.natural_slots(name)
                kind = self.granularity[name]
                if kind == "weight":
                    out[name] = [v.clone() for v in values]
                elif kind == "scalar":
                    out[name] = values[0].tolist()
                else:
                    out[name] = [v.tolist() for v in values]
        return out

    # ------------------------------------------------------------ writing

    def set(self, name: str, value) -> None:
        """Overwrite every slot of ``name`` (natural units; per member in a population)."""
        value = self.member_values(name, value)
        self._zero_fixed = None
        self.values_version += 1
        with torch.no_grad():
            for t in self.raw.get(name, []) + self.fixed.get(name, []):
                new = self.slot_tensor(value, t.shape, t)
                if name in self.raw:
                    for member_value in (value if isinstance(value, tuple) else (value,)):
                        check_tunable(name, member_value)
                    new = to_raw(name, new)
                t.copy_(new)

    def check_lr_bounds(self, bounds) -> list[tuple[float, float]]:
        """``bounds`` as one ``(low, high)`` per learning-rate slot: one pair for
        every group, or a list of pairs, one per parameter group."""
        pairs = list(bounds)
        if len(pairs) == 2 and not isinstance(pairs[0], (tuple, list)):
            pairs = [tuple(pairs)] * self.group_count
        if len(pairs) != self.group_count:
            raise ValueError(f"lr_bounds gives {len(pairs)} ranges for {self.group_count} parameter groups")
        for pair in pairs:
            if len(pair) != 2 or not 0 < pair[0] < pair[1]:
                raise ValueError(f"lr_bounds must satisfy 0 < low < high, got {tuple(pair)}")
        slots = {}
        for i, slot in enumerate(self.slot_of["lr"]):
            pair = tuple(float(b) for b in pairs[self.group_of[i]])
            if slots.setdefault(slot, pair) != pair:
                raise ValueError("a learning rate shared by parameter groups (granularity 'scalar') needs "
                                 "the same lr_bounds for each of them")
        return [slots[k] for k in sorted(slots)]

    def multiply_lr(self, factor: float) -> None:
        """Multiply a tuned learning rate by ``factor``, every slot (``log10`` of it, in place)."""
        if "lr" in self.raw:
            self.values_version += 1
            with torch.no_grad():
                for leaf in self.raw["lr"]:
                    leaf.add_(math.log10(factor))

    def clip_lr(self, bounds: list[tuple[float, float]]) -> None:
        """Clip a tuned learning rate to ``bounds`` (one range per slot; ``log10`` of it, in place)."""
        if "lr" in self.raw:
            with torch.no_grad():
                for leaf, (low, high) in zip(self.raw["lr"], bounds):
                    leaf.clamp_(math.log10(low), math.log10(high))

    def set_slot(self, name: str, slot: int, value: float) -> None:
        """Overwrite one slot of a fixed hyperparameter (natural units)."""
        self._zero_fixed = None
        self.values_version += 1
        with torch.no_grad():
            self.fixed[name][slot].fill_(float(value))

    def state_dict(self) -> dict:
        return {"raw": {k: [t.detach().clone() for t in v] for k, v in self.raw.items()},
                "fixed": {k: [t.clone() for t in v] for k, v in self.fixed.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        if set(state.get("raw", {})) != set(self.raw):
            raise ValueError(f"checkpoint tunes {sorted(state.get('raw', {}))} but this tuner tunes "
                             f"{sorted(self.raw)}")
        self._zero_fixed = None
        self.values_version += 1
        with torch.no_grad():
            for store, key in ((self.raw, "raw"), (self.fixed, "fixed")):
                for name, tensors in store.items():
                    for t, saved in zip(tensors, state[key][name]):
                        t.copy_(saved)

    # ------------------------------------------------------------ helpers

    def member_values(self, name: str, value):
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

    @staticmethod
    def slot_tensor(value, shape, like: Tensor) -> Tensor:
        """A slot of ``shape`` holding ``value`` (per member along dimension 0)."""
        kwargs = dict(dtype=like.dtype, device=like.device)
        if not isinstance(value, tuple):
            return torch.full(tuple(shape), value, **kwargs)
        per_member = torch.tensor(value, **kwargs).view(-1, *[1] * (len(shape) - 1))
        return per_member.expand(tuple(shape)).clone()


def member_view(tensor: Tensor, dim: int) -> Tensor:
    """A ``(P,)`` tensor reshaped to broadcast against a tensor of ``dim`` dimensions."""
    return tensor.view(-1, *[1] * (dim - 1))
