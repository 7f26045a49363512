"""Data-parallel training: what a hyperparameter step averages across ranks.

DDP all-reduces the plain updates' gradients itself. A differentiated update
runs on the unwrapped module (``backward(create_graph=True)`` through a
DDP-wrapped module fails, and DDP does not synchronise higher-order
gradients, pytorch#63929), so the optimizer averages the loss's part itself:
the gradient, every Hessian–vector product and the validation gradient
(:class:`~onepass.core.products.Ops` ``reduce``). The rule's part is applied
to the averaged vectors, which matters for Adam, whose update is not linear
in the gradient. The hypergradient is averaged too, so that every rank holds
bit-identical hyperparameters.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

Tensors = tuple[Tensor, ...]


def process_group_for(process_group):
    """The group to average over: the one given, else the default group when
    ``torch.distributed`` is initialised with more than one rank, else ``None``."""
    if process_group is False:
        return None
    if process_group is not None:
        return process_group
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def averaged(group) -> Callable[[Tensors], Tensors]:
    """``tensors ↦`` their mean over the ranks of ``group`` (one all-reduce)."""
    size = dist.get_world_size(group)

    def reduce(tensors: Tensors) -> Tensors:
        tensors = tuple(tensors)
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, group=group)
        flat = flat / size
        out, start = [], 0
        for t in tensors:
            out.append(flat[start:start + t.numel()].view_as(t))
            start += t.numel()
        return tuple(out)
    return reduce


def agreement(group) -> Callable[[float, bool], tuple[float, bool]]:
    """``(max_norm, problem) ↦`` the smallest clipping threshold any rank saw and
    whether any rank found a problem (one all-reduce)."""
    def reduce(max_norm: float, problem: bool) -> tuple[float, bool]:
        t = torch.tensor([max_norm if math.isfinite(max_norm) else float("inf"), -float(problem)],
                         dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
        return float(t[0]), bool(t[1] < 0)
    return reduce


def check_same_config(config: dict, group) -> None:
    """Every rank must run the same schedule and estimator; name the first difference."""
    gathered = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, config, group=group)
    for rank, other in enumerate(gathered):
        for key in config:
            if other.get(key) != config[key]:
                raise ValueError(f"ranks disagree on {key}: this rank has {config[key]!r}, rank {rank} has "
                                 f"{other.get(key)!r}; every rank must build the optimizer alike")


def check_supported(params: list[Tensor], model: nn.Module | None) -> None:
    """Refuse what the hyperparameter step cannot average: sharded parameters
    (FSDP, DTensor) and a DDP model with trainable parameters the optimizer lacks."""
    for p in params:
        if getattr(p, "_is_flat_param", False) or type(p).__name__ in ("DTensor", "FlatParameter"):
            raise ValueError("onepass.optim does not support sharded parameters (FSDP or DTensor); "
                             "use DistributedDataParallel")
    if model is None:
        return
    if type(model).__name__ == "FullyShardedDataParallel" or hasattr(model, "_fsdp_wrapped_module"):
        raise ValueError("onepass.optim does not support FSDP; use DistributedDataParallel")
    owned = {id(p) for p in params}
    missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in owned]
    if missing:
        raise ValueError(f"model parameter {missing[0]} requires grad but is not in the optimizer "
                         f"({len(missing)} such): give the optimizer every trainable parameter, or freeze them")
