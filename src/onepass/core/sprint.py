"""A hyper-optimiser that sprints at the start: Adam, except that each raw value
first takes sign steps that grow while its hypergradient keeps its sign.

From a start decades away from the right learning rate, Adam on ``log10 lr``
moves about ``lr`` (0.05) per hyperparameter step: three decades take 60
windows, more than many runs have. Here every raw value starts with a step of
``lr`` that grows ×``growth`` per hyperparameter step (at most ``max_step``)
for as long as its hypergradient keeps the sign it had; at its first sign
flip the value hands over to Adam for the rest of the run, and never sprints
again. Adam's moments are kept up to date throughout, so the hand-over takes
no restart.
"""
from __future__ import annotations

import torch


class SprintAdam(torch.optim.Adam):
    """``torch.optim.Adam`` with a sign-driven sprint until each value's first
    sign flip (see the module docs)."""

    def __init__(self, params, lr: float = 0.05, growth: float = 1.2, max_step: float = 0.5):
        if growth < 1 or max_step <= 0:
            raise ValueError(f"SprintAdam needs growth >= 1 and max_step > 0, got {growth}, {max_step}")
        super().__init__(params, lr=lr)
        for group in self.param_groups:
            group.setdefault("growth", growth)
            group.setdefault("max_step", max_step)

    @torch.no_grad()
    def step(self, closure=None):
        before = [(group, p, p.detach().clone(), p.grad.detach())
                  for group in self.param_groups for p in group["params"] if p.grad is not None]
        loss = super().step(closure)
        for group, p, old, grad in before:
            state, sign = self.state[p], grad.sign()
            if "sprinting" not in state:
                state["sprinting"] = torch.ones_like(p, dtype=torch.bool)
                state["sprint_step"] = torch.full_like(p, group["lr"])
                state["last_move"] = torch.zeros_like(p)
            flipped = state["sprinting"] & (state["last_move"] * sign > 0)
            sprinting = state["sprinting"] & ~flipped
            move = -state["sprint_step"] * sign
            # at the first flip the last sprint step overshot: take it back, and start
            # Adam's mean from this hypergradient, not from the sprint's run of one sign
            p.copy_(torch.where(sprinting, old + move, torch.where(flipped, old - state["last_move"], p)))
            beta1 = group["betas"][0]
            state["exp_avg"].copy_(torch.where(
                flipped, grad * (1 - beta1 ** float(state["step"])), state["exp_avg"]))
            state["sprint_step"] = torch.where(
                sprinting, (state["sprint_step"] * group["growth"]).clamp(max=group["max_step"]),
                state["sprint_step"])
            state["sprinting"], state["last_move"] = sprinting, torch.where(sprinting, move, 0.0)
        return loss
