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
