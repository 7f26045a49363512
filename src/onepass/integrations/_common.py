"""What the framework integrations share (no framework imported here)."""
from __future__ import annotations

import contextlib

import torch

from ..optim import TunedOptimizer
from ..core.losses import eval_mode  # noqa: F401  (the integrations import it from here)


def tuned_values(optimizer: TunedOptimizer) -> dict[str, float]:
    """``optimizer.hyperparameters`` for a logger, the tuned names only (``lr/group0``
    is the learned value, ``lr_in_use/group0`` the rate in use: learned × scheduled),
    with ``skipped_hypersteps`` under AMP."""
    tuned = set(optimizer.tuner.tuned)
    if "lr" in tuned:
        tuned.add("lr_in_use")
    return {k: float(v) for k, v in optimizer.hyperparameters.items()
            if k.split("/")[0] in tuned or k == "skipped_hypersteps"}


def differentiable_attention(optimizer: TunedOptimizer):
    """The forward of an update whose gradient is differentiated must take
    ``scaled_dot_product_attention``'s math kernel: the fused (flash,
    memory-efficient) kernels have no double backward. Other updates keep
    the fastest kernel."""
    if _sdpa_kernel is None or not optimizer.needs_graph:
        return contextlib.nullcontext()
    return _sdpa_kernel([_MATH])


def differentiated_forward(optimizer: TunedOptimizer):
    """What the forward of an update whose gradient is differentiated runs under:
    ``scaled_dot_product_attention``'s math kernel (:func:`differentiable_attention`)
    and, for a ``torch.compile``d model, the eager code (``torch.compiler``'s
    ``"force_eager"`` stance: compiled graphs have no double backward). Other
    updates keep the fast kernels and the compiled code."""
    if not optimizer.needs_graph:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(differentiable_attention(optimizer))
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    if set_stance is not None:   # torch >= 2.6
        stack.enter_context(set_stance("force_eager"))
    return stack


try:
    from torch.nn.attention import SDPBackend as _SDPBackend, sdpa_kernel as _sdpa_kernel
    _MATH = _SDPBackend.MATH
except ImportError:   # pragma: no cover - torch < 2.3
    _sdpa_kernel = _MATH = None


def own_randomness():
    """Validation for a hyperparameter step inside a training step must not move
    the training's random streams (a new DataLoader iterator draws its seed from
    the global generator): the global CPU and current CUDA generators are put
    back after the block, so dropout and shuffling match a run resumed elsewhere."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return torch.random.fork_rng(devices=devices)


class FoldBatches:
    """Which training batches of the fold are replaced by validation batches.

    In the recipe's fold (:class:`onepass.optim.Fold`) a plain loop draws its
    batches from train+validation. A framework's loop owns its training data,
    so the integrations replace some training batches with validation batches
    instead: of the fold's batches, the share ``val_batches / (train_batches +
    val_batches)`` (a pass over each at the same pace), spread evenly by a
    fixed rule (batch ``j`` is replaced when ``floor((j+1)·share)`` steps up).
    The rule depends on the count only, so a resumed run replaces the same
    batches; ``taken`` is how many validation batches were used so far (the
    position in the validation data, which the loader must give in the same
    order each pass)."""

    def __init__(self, train_batches: int, val_batches: int):
        if train_batches < 1 or val_batches < 1:
            raise ValueError(f"FoldBatches needs at least one batch of each, got {train_batches} and {val_batches}")
        self.train_batches, self.val_batches = int(train_batches), int(val_batches)
        self.drawn = 0          # batches of the fold so far (micro-batches under accumulation)

    def _taken_after(self, drawn: int) -> int:
        return drawn * self.val_batches // (self.train_batches + self.val_batches)

    @property
    def taken(self) -> int:
        return self._taken_after(self.drawn)

    def next_is_validation(self) -> bool:
        """Count one batch of the fold; True if it is to be a validation batch."""
        self.drawn += 1
        return self._taken_after(self.drawn) > self._taken_after(self.drawn - 1)


def cycled(make_iterator, skip: int = 0):
    """Batches of ``make_iterator()`` passed over again and again (a fresh iterator
    each pass), starting after ``skip`` batches."""
    position, length = 0, None
    while True:
        if length and skip - position >= length:   # whole passes need not be read
            position += (skip - position) // length * length
        start = position
        for batch in make_iterator():
            if position >= skip:
                yield batch
            position += 1
        if position == start:
            raise ValueError("onepass: the validation dataloader yields no batches")
        length = position - start
