"""A cost budget: how often the hyperparameter step may be taken.

The user gives the ratio of wall-clock to the bare optimizer they accept
(``cost_budget=1.5``: at most 50% more). A run measures, on itself, what an
update costs with and without the hyperparameter step, then fixes the window
for the rest of the run, the shortest that keeps::

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
onepass's plain update costing other than ``torch.optim``'s: 0.80–0.97×
of it in ``benchmarks/plain_update.py``, 1.4–1.5× for Adam with parameter groups
before 2026-12-07).

What is timed is the span between the ends of consecutive updates: in a
user's loop that includes the forward and backward passes (the
``create_graph`` backward of the closing update too), data loading and
anything else the loop does, which the bare optimizer's loop would also do.
The first window is left out (allocation, caches, compilation); the next
``windows`` (5) windows are measured, and the choice is taken at the end of
the last of them. So that the measurement itself keeps the budget, each
measured window after the first is as long as the samples so far ask (a
provisional choice), and the window after the measurement catches up: it is
long enough that the run so far, the first window and the measured ones
included, keeps the planned ratio (:meth:`CostBudget.catch_up_length`), and
the chosen interval follows it. Where the asked-for interval already keeps
the budget, none of this moves a window. Only while measuring, and only with
a CUDA device, is the device synchronised before the clock is read. The
choice is only as good as the timings: on a machine shared with other jobs it
varies from run to run.

The choices are state: :meth:`CostBudget.state_dict` keeps them (and the
samples of a measurement still under way), so a resume is exact wherever it
is taken. Under data parallelism ``agree`` hands every rank the first rank's
choices. ``cost_budget=None`` with the chosen interval as ``update_interval``
runs the chosen schedule without a clock (its first windows at the asked-for
interval). No I/O here.
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
    """Measure early, catch up, then fix the hyperparameter step's interval.

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
        self.chosen: int | None = None   # the interval for the rest of the run, once fixed
        self.asked: int | None = None    # the interval asked for (the recipe's), from the first update seen
        self.closed = 0                  # windows closed so far, the untimed first one included
        self.updates = 0                 # updates up to the end of the last measured window
        self.catch_up: int | None = None  # while the catch-up window runs: the interval after it
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
        """Until the interval is fixed (the measured windows and the catch-up)."""
        return self.chosen is None

    def observe(self, position: int, interval: int) -> int | None:
        """After an update: ``position`` is the update within its window from 1
        (``interval``, the current one, closes it with the hyperparameter
        step). Returns the interval of the windows that follow when this update
        closes one and the budget sets it (after each measured window, at the
        end of the measurement, at the end of the catch-up), else ``None``."""
        if self.chosen is not None:
            return None
        if self.asked is None:
            self.asked = interval
        closes = position == interval
        timed = 1 <= self.closed <= self.windows
        if timed or (self.closed == 0 and closes):   # the clock runs from the end of the first window
            if self.sync is not None:
                self.sync()
            now = self.clock()
            if timed and self._last is not None:
                kind = self.closing if closes else self.first if position == 1 else self.plain
                kind.append(now - self._last)
            self._last = now
        if self.closed <= self.windows:
            self.updates += 1
        if not closes:
            return None
        self.closed += 1
        if self.closed == 1:
            return None
        if self.closed <= self.windows:     # a provisional choice from the windows measured so far
            return self._agreed(self.choose(self.asked))
        if self.closed == self.windows + 1:
            self._last = None
            chosen = self._agreed(self.choose(self.asked))
            length = self._agreed(self.catch_up_length(chosen))
            if length > chosen:
                self.catch_up = chosen
                return length
            self.chosen = chosen
            return chosen
        self.chosen, self.catch_up = self.catch_up, None   # the catch-up window closed
        return self.chosen

    def _agreed(self, interval: int) -> int:
        return int(self.agree(interval)) if self.agree is not None else interval

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

    def catch_up_length(self, chosen: int) -> int:
        """The window that follows the measurement: long enough to win back what
        the measured windows (and the first) spent beyond the planned ratio, so
        that the run so far keeps it, and never shorter than ``chosen``."""
        costs = self.costs()
        if costs is None or costs[0] <= 0:
            return chosen
        plain, extra = costs
        allowed = plain * (self.planned - 1)          # the extra seconds each update may carry
        deficit = self.closed * extra - self.updates * allowed
        if deficit <= 0 or allowed <= 0:
            return chosen
        return max(chosen, math.ceil((deficit + extra) / allowed - 1e-9))

    def state_dict(self) -> dict:
        return {"ratio": self.ratio, "chosen": self.chosen, "asked": self.asked, "closed": self.closed,
                "updates": self.updates, "catch_up": self.catch_up, "first": list(self.first),
                "plain": list(self.plain), "closing": list(self.closing)}

    def load_state_dict(self, state: dict) -> None:
        self.chosen = state["chosen"]
        self.first, self.plain, self.closing = (list(state[k]) for k in ("first", "plain", "closing"))
        self.asked, self.catch_up = state.get("asked"), state.get("catch_up")
        # a state from before the catch-up counted no windows: its samples tell how many were measured
        self.closed = state.get("closed", len(self.closing) + 1 if self.closing else 0)
        self.updates = state.get("updates", len(self.first) + len(self.plain) + len(self.closing))
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
