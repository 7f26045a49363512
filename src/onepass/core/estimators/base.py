"""What every estimator is to the :class:`~onepass.Tuner`: the :class:`Estimator`
interface, the registry and the per-step result."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

ESTIMATORS: dict[str, type["Estimator"]] = {}


@dataclass
class StepResult:
    """What one call of :meth:`Tuner.step` computed (tensors, not synchronised).

    Attributes:
        loss: training loss at the weights before the update (``None`` when
            the loss's part does not carry it: the loop computed it).
        val_loss: validation loss at the new weights, on steps that updated
            the hyperparameters with a validation batch, else ``None``.
        hypergradient: raw-space hypergradient per tuned name, when one was taken.
    """

    loss: Tensor | None
    val_loss: Tensor | None = None
    hypergradient: dict[str, list[Tensor]] | None = None

    def __post_init__(self):
        self.loss = None if self.loss is None else self.loss.detach()
        self.val_loss = None if self.val_loss is None else self.val_loss.detach()


@dataclass(frozen=True)
class Schedule:
    """The Tuner's settings an estimator reads."""

    update_interval: int
    neumann_terms: int
    unroll_steps: int
    population: int | None


class Estimator:
    """How the :class:`~onepass.Tuner` drives one estimator.

    Class attributes give its defaults: ``every_step`` (a hyperparameter
    update after every weight update), ``validation`` (needs a validation
    batch), ``tunable`` (the names it can tune, or ``None`` for any),
    ``hyper_optimizer``, ``hyper_lr`` and ``hyper_space``.
    """

    name = ""
    every_step = False
    validation = True
    tunable: tuple[str, ...] | None = None
    hyper_optimizer = "adam"
    hyper_lr = 0.05
    hyper_space = "transformed"

    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def step(self, execution, part, step: int, position: int,
             apply: Callable[[list[Tensor]], dict]) -> StepResult:
        """One weight update (``position`` counts from 1 within the window)
        with the loss's part ``part`` (a :class:`~onepass.core.products.LossPart`,
        whose ``val_gradient`` is given on the window's last update).
        ``apply`` takes a checked hypergradient (one tensor per raw leaf),
        steps the hyperparameters and returns it by name."""
        raise NotImplementedError

    def graph_at(self, position: int) -> bool:
        """Whether the training gradient of the update at ``position`` is
        differentiated (its Hessian–vector products are needed)."""
        return False

    def in_window(self) -> bool:
        """Whether a checkpoint now would lose state held across updates."""
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def reset(self) -> None:
        """Forget state held across updates (the weights were reset)."""


def register(cls: type[Estimator]) -> type[Estimator]:
    """Class decorator: make ``cls`` available as ``Tuner(method=cls.name)``."""
    ESTIMATORS[cls.name] = cls
    return cls
