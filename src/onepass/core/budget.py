"""A cost budget: how often the hyperparameter step may be taken.

The user gives the ratio of wall-clock to the bare optimizer they accept
(``cost_budget=1.5``: at most 50% more). A run measures, on itself, what an
update costs with and without the hyperparameter step, then fixes the window
once, for the rest of the run::

    (plain × interval + extra) / (plain × interval) ≤ 1 + (1 − margin) × (budget − 1)

where ``plain`` is a plain update's wall-clock and ``extra`` what a window
costs beyond ``interval`` plain updates: the update that closes it (its
differentiated gradient, the validation gradient, the K products) and its
after-effect on the update after it (freeing that graph: 5× a plain update on
a small MLP). Each is a median over the measured windows, per position (the
update after a closing one, the closing one, the others), so that a burst of
a neighbour's load on a shared machine moves none of them. The interval is
never below the one asked for (the recipe's), so a budget the run already
keeps changes nothing. The choice plans for only part of the extra the budget
allows (``margin``: 10% of it is left unplanned, so ``cost_budget=1.5`` plans
for 1.45): the budget is a ceiling, and the choice cannot see what moves the
ratio after it (the medians of a few windows, a neighbour's load that grows,
onepass's plain update costing 0–7% more than ``torch.optim``'s).

What is timed is the span between the ends of consecutive updates: in a
user's loop that includes the forward and backward passes (the
``create_graph`` backward of the closing update too), data loading and
anything else the loop does, which the bare optimizer's loop would also do.
The first window is left out (allocation, caches, compilation); the next
``windows`` (5) windows are measured, and the choice is taken at the end of
the last of them. Only then, and only with a CUDA device, is the device
synchronised before the clock is read. The choice is only as good as the
timings: on a machine shared with other jobs it varies from run to run.

The choice is state: :meth:`CostBudget.state_dict` keeps it (and the samples
of a measurement still under way), so a resume after the choice is exact.
Under data parallelism ``agree`` hands every rank the first rank's choice.
A run can be replayed without the clock by giving the chosen interval as
``update_interval`` and no budget. No I/O here.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import torch

MARGIN = 0.1
"""The share of the allowed extra wall-clock a choice leaves unplanned (by default)."""


class CostBudget:
    """Measure early, then fix the hyperparameter step's interval.

    Args:
        ratio: the wall-clock the user accepts, as a multiple of the bare
            optimizer's (> 1).
        clock: seconds as a float (default :func:`time.perf_counter`); tests
            inject a fake one.
        windows: windows measured (after the first, left out) before the choice:
            more steadies the medians, fewer fixes the interval sooner.
        margin: the share of the allowed extra wall-clock the choice leaves
            unplanned (0.1: a budget of 1.5 plans for 1.45); 0 plans for the
            budget itself.
    """

    def __init__(self, ratio: float, *, clock: Callable[[], float] = time.perf_counter, windows: int = 5,
                 margin: float = MARGIN):
        ratio = float(ratio)
        if not (math.isfinite(ratio) and ratio > 1):
            raise ValueError(f"cost_budget must be a ratio > 1 (1.5: at most 50% more wall-clock than the "
                             f"bare optimizer), got {ratio!r}")
        if not isinstance(windows, int) or isinstance(windows, bool) or windows < 1:
            raise ValueError(f"windows must be an integer ≥ 1, got {windows!r}")
        margin = float(margin)
        if not 0 <= margin < 1:
            raise ValueError(f"margin must be in [0, 1), got {margin!r}")
        self.ratio = ratio
        self.margin = margin
        self.clock = clock
        self.windows = windows
        self.sync: Callable[[], None] | None = None
        self.agree: Callable[[int], int] | None = None
        self.chosen: int | None = None
        self.first: list[float] = []     # seconds of the update after a closing one
        self.plain: list[float] = []     # ... of the other plain updates
        self.closing: list[float] = []   # ... of the updates that close a window
        self._last: float | None = None

    @classmethod
    def of(cls, value: "float | CostBudget | None") -> "CostBudget | None":
        """``None``, a ratio, or a :class:`CostBudget` as it is."""
        if value is None or isinstance(value, CostBudget):
            return value
        return cls(value)

    def attach(self, device: torch.device | None, agree: Callable[[int], int] | None = None) -> None:
        """Synchronise ``device`` while measuring (CUDA only); ``agree`` maps this
        rank's choice to the one every rank takes."""
        if device is not None and torch.device(device).type == "cuda":
            self.sync = torch.cuda.synchronize
        self.agree = agree

    @property
    def measuring(self) -> bool:
        return self.chosen is None

    def observe(self, window: int, position: int, interval: int) -> int | None:
        """After an update: ``window`` counts windows from 0, ``position`` the
        update within its window from 1 (``interval`` closes it with the
        hyperparameter step). Returns the interval once it is chosen (at the
        end of the last measured window), else ``None``."""
        closes = position == interval
        if self.chosen is not None or window > self.windows or (window == 0 and not closes):
            return None   # the clock runs from the end of the first window
        if self.sync is not None:
            self.sync()
        now = self.clock()
        if window >= 1 and self._last is not None:
            kind = self.closing if closes else self.first if position == 1 else self.plain
            kind.append(now - self._last)
        self._last = now
        if not (closes and window == self.windows):
            return None
        chosen = self.choose(interval)
        if self.agree is not None:
            chosen = int(self.agree(chosen))
        self.chosen = chosen
        self._last = None
        return chosen

    def costs(self) -> tuple[float, float] | None:
        """``(plain, extra)`` seconds from the medians, or ``None`` without the samples
        (interval 1 has no plain update to compare with)."""
        plain = self.plain or self.first   # interval 2: no update but the one after a closing
        if not plain or not self.closing:
            return None
        plain = statistics.median(plain)
        extra = max(statistics.median(self.closing) - plain, 0.0)
        if self.first and self.plain:
            extra += max(statistics.median(self.first) - plain, 0.0)
        return plain, extra

    def estimate(self, interval: int) -> float | None:
        """The ratio a window of ``interval`` updates costs, from what was measured."""
        costs = self.costs()
        return None if costs is None or costs[0] <= 0 else (interval * costs[0] + costs[1]) / (interval * costs[0])

    @property
    def planned(self) -> float:
        """The ratio the choice plans for: the budget less its ``margin``."""
        return 1 + (1 - self.margin) * (self.ratio - 1)

    def choose(self, interval: int) -> int:
        """The smallest interval ≥ ``interval`` whose windows keep the planned
        ratio (:attr:`planned`), from the medians of the samples."""
        costs = self.costs()
        if costs is None or costs[0] <= 0:
            return interval
        plain, extra = costs
        needed = math.ceil(extra / (plain * (self.planned - 1)) - 1e-9)
        return max(interval, needed)

    def state_dict(self) -> dict:
        return {"ratio": self.ratio, "chosen": self.chosen, "first": list(self.first), "plain": list(self.plain),
                "closing": list(self.closing)}

    def load_state_dict(self, state: dict) -> None:
        self.chosen = state["chosen"]
        self.first, self.plain, self.closing = (list(state[k]) for k in ("first", "plain", "closing"))
        self._last = None


def first_rank_choice(group, device) -> Callable[[int], int]:
    """``interval ↦`` the first rank of ``group``'s (one broadcast)."""
    import torch.distributed as dist

    source = dist.get_global_rank(group, 0) if group is not dist.group.WORLD else 0

    def agree(interval: int) -> int:
        t = torch.tensor([interval], dtype=torch.int64, device=device)
        dist.broadcast(t, src=source, group=group)
        return int(t.item())
    return agree
