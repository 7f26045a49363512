"""The recipe's step in your loop: keep the best-validation weights, then fold
the validation split into training with the hyperparameters frozen.

An optimizer cannot change what data your loop feeds it, so this part of the
recipe (:mod:`onepass.optim.recipe`, ``loop``) is a small object your loop
asks::

    opt = onepass.optim.AdamW(model.parameters(), val_loss=val_loss, model=model)
    fold = onepass.optim.Fold(opt, total_steps=steps)
    for step in range(steps):
        x, y = next(train_and_val if fold.folded else train)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward(create_graph=opt.needs_graph)
        opt.step()
        scheduler.step()          # yours, if you have one: it keeps driving opt
        fold.step(loss)           # the loss lets a guard (SGD's recipe) see a blow-up at once

Until the fold, it watches the optimizer's ``val_loss`` and keeps a copy of the
weights (and the model's buffers, BatchNorm's statistics) at the lowest
validation loss it has seen, on the device and without a host sync. At the
fold it restores them and calls ``opt.freeze()``: the same optimizer goes on as
its ``torch.optim`` namesake at the learned values, so your LR scheduler still
drives it. Without a fold (``fraction=0``) call :meth:`restore_best` at the end.
``average`` (off in the recipe; an ablation) averages the weights and the
model's floating-point buffers over that last share of the updates and puts
the average in at the last update.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .recipe import recipe

__all__ = ["BestWeights", "Fold"]


class BestWeights:
    """The tensors' values at the lowest loss passed to :meth:`observe`; the
    comparison and the copy stay on the device (``torch.where``, no sync). A
    non-finite loss is never the best."""

    def __init__(self, tensors):
        self.tensors = list(tensors)
        self.loss: Tensor | None = None
        self.copies: list[Tensor] = []

    def observe(self, loss: Tensor) -> None:
        with torch.no_grad():
            loss = loss.detach().float().reshape(())
            if self.loss is None:
                finite = torch.isfinite(loss)
                self.loss = torch.where(finite, loss, torch.full_like(loss, float("inf")))
                self.copies = [t.detach().clone() for t in self.tensors]
                return
            better = loss < self.loss
            self.loss = torch.where(better, loss, self.loss)
            for copy, t in zip(self.copies, self.tensors):
                copy.copy_(torch.where(better, t.detach(), copy))

    def restore(self) -> bool:
        """Copy the best values back; False if nothing was observed (or no
        observed loss was finite)."""
        if self.loss is None or not bool(torch.isfinite(self.loss)):
            return False
        with torch.no_grad():
            for t, copy in zip(self.tensors, self.copies):
                t.copy_(copy)
        return True

    def state_dict(self) -> dict:
        return {"loss": self.loss, "copies": self.copies}

    def load_state_dict(self, state: dict) -> None:
        self.loss = state["loss"]
        self.copies = [c.clone() for c in state["copies"]]


class Fold:
    """The recipe's loop step for ``optimizer`` over ``total_steps`` updates.

    ``fraction`` (default: the recipe's ``fold``) of the updates, at the end,
    are the fold: :attr:`folded` turns true, and your loop feeds
    train+validation. ``keep_best`` (default: the recipe's) restores the
    weights of the lowest validation loss seen before the fold. ``model``
    (default: the optimizer's ``model=``) adds its buffers to what is kept.
    ``guard`` (default: the recipe's: SGD's 10, AdamW's none) needs
    ``keep_best``: a validation loss above ``guard`` times the previous one
    (or, given to :meth:`step`, a training loss above it, in the fold too)
    puts the best weights back and calls ``optimizer.back_off()`` (the
    learned lr halved, the rule's state restarted); :attr:`backoffs` counts
    them.
    Call :meth:`step` once after every ``optimizer.step()``.
    """

    def __init__(self, optimizer, total_steps: int, *, fraction: float | None = None,
                 keep_best: bool | None = None, model: nn.Module | None = None, average: float | None = None,
                 guard: float | None = None):
        loop = recipe(optimizer.tuner.rule.name).get("loop", {})
        self.fraction = float(loop.get("fold", 0.0) if fraction is None else fraction)
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"fraction must lie in [0, 1), got {self.fraction}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {total_steps}")
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.fold_at = self._from_end(self.fraction)
        self.steps = 0
        self.best: BestWeights | None = None
        model = model if model is not None else getattr(optimizer, "model", None)
        tensors = [p for group in optimizer.param_groups for p in group["params"]]
        if model is not None:
            tensors += list(model.buffers())
        average = float(loop.get("average", 0.0) if average is None else average)
        if not 0.0 <= average < 1.0:
            raise ValueError(f"average must lie in [0, 1), got {average}")
        self.average_from = self._from_end(average) if average > 0 else None
        self.averaged = [t for t in tensors if t.is_floating_point()]
        self.mean: list[Tensor] = []
        keep_best = bool(loop.get("keep_best", False) if keep_best is None else keep_best)
        # the recipe's guard goes with its best weights; one asked for without them is refused
        self.guard = (loop.get("guard") if keep_best else None) if guard is None else (guard or None)
        if self.guard is not None and (not keep_best or self.guard <= 1.0):
            raise ValueError(f"guard needs keep_best and a factor above 1, got {self.guard} with keep_best={keep_best}")
        self.last: Tensor | None = None        # the guard: the previous validation loss
        self.blown: Tensor | None = None       # and whether the latest one blew up
        self.backoffs = 0
        if keep_best:
            self.best = BestWeights(tensors)
            watched = optimizer.val_loss
            if watched is not None:
                optimizer.val_loss = self._watch(watched)

    def _from_end(self, share: float) -> int:
        """The update from which the last ``share`` of the run begins."""
        return self.total_steps - int(round(share * self.total_steps))

    def _watch(self, val_loss: Callable) -> Callable:
        def watched():
            value = val_loss()
            if not self.folded:
                self.best.observe(value)
                if self.guard is not None:
                    self._check(value)
            return value
        return watched

    def _flag(self, value: Tensor) -> Tensor:
        """The guard: a loss that is not finite, or above ``guard`` times the
        previous validation loss, has blown up (flagged on the device)."""
        with torch.no_grad():
            value = value.detach().float().reshape(())
            blown = ~torch.isfinite(value)
            if self.last is not None:
                blown = blown | (value > self.guard * self.last)
            self.blown = blown if self.blown is None else self.blown | blown
        return value

    def _check(self, value: Tensor) -> None:
        """A validation loss: flagged, then the next one's reference."""
        value = self._flag(value)
        self.last = torch.where(torch.isfinite(value), value, self.last if self.last is not None else value)

    @property
    def folded(self) -> bool:
        """True from the fold on: feed train+validation."""
        return self.fraction > 0 and self.steps >= self.fold_at

    def step(self, loss: Tensor | None = None) -> None:
        """Count one update; at the fold restore the best weights and freeze the
        optimizer. With ``guard``, give the update's training ``loss`` to also
        catch a blow-up inside a window (one host sync per update then)."""
        self.steps += 1
        if loss is not None and self.guard is not None:
            self._flag(loss)
        if self.blown is not None:
            blown, self.blown = bool(self.blown), None     # one host sync per window, with the guard on
            if blown and self.restore_best():
                self.optimizer.back_off(0.5)
                self.last = self.best.loss.clone()
                self.backoffs += 1
        if self.fraction > 0 and self.steps == self.fold_at:
            self.restore_best()
            self.optimizer.freeze()
        if self.average_from is not None and self.steps >= self.average_from:
            self._average()

    def _average(self) -> None:
        """Running mean of the weights after each update from ``average_from`` on;
        at the last update it replaces them."""
        with torch.no_grad():
            n = self.steps - self.average_from
            if n == 0:
                self.mean = [t.detach().clone() for t in self.averaged]
            else:
                for mean, t in zip(self.mean, self.averaged):
                    mean.add_(t.detach() - mean, alpha=1.0 / (n + 1))
            if self.steps == self.total_steps:
                for t, mean in zip(self.averaged, self.mean):
                    t.copy_(mean)

    def restore_best(self) -> bool:
        """Put the best-validation weights back (False if none were kept)."""
        return self.best.restore() if self.best is not None else False

    def state_dict(self) -> dict:
        return {"steps": self.steps, "best": self.best.state_dict() if self.best is not None else None,
                "mean": list(self.mean), "last": self.last, "backoffs": self.backoffs}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        self.last = state.get("last")
        self.backoffs = state.get("backoffs", 0)
        self.mean = [m.clone() for m in state.get("mean", [])]
        if self.best is not None and state["best"] is not None:
            self.best.load_state_dict(state["best"])
