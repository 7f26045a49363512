"""A cost budget: how often the hyperparameter step may be taken.

The user gives the ratio of wall-clock to the bare optimizer they accept
(``cost_budget=1.5``: at most 50% more). A run measures, on itself, what an
update costs with and without the hyperparameter step, then fixes the window
once, for the rest of the run::

    (plain × interval + extra) / (plain × interval) ≤ budget

where ``plain`` is a plain update's wall-clock (the median) and ``extra``
what a window costs beyond ``interval`` plain updates (the median window):
the update that closes it (its differentiated gradient, the validation
gradient, the K products) and any after-effect on the next update (freeing
that graph). The interval is never below the one
asked for (the recipe's), so a budget the run already keeps changes nothing.

What is timed is the span between the ends of consecutive updates: in a
user's loop that includes the forward and backward passes (the
``create_graph`` backward of the closing update too), data loading and
anything else the loop does, which the bare optimizer's loop would also do.
The first window is left out (allocation, caches, compilation); the next
``windows`` windows are measured (medians), and the choice is taken at the end
of the last of them. Only then, and only with a CUDA device, is the device
synchronised before the clock is read.

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


class CostBudget:
    """Measure early, then fix the hyperparameter step's interval.

    Args:
        ratio: the wall-clock the user accepts, as a multiple of the bare
            optimizer's (> 1).
        clock: seconds as a float (default :func:`time.perf_counter`); tests
            inject a fake one.
        windows: windows measured (after the first, left out) before the choice.
    """

    def __init__(self, ratio: float, *, clock: Callable[[], float] = time.perf_counter, windows: int = 3):
        ratio = float(ratio)
        if not (math.isfinite(ratio) and ratio > 1):
            raise ValueError(f"cost_budget must be a ratio > 1 (1.5: at most 50% more wall-clock than the "
                             f"bare optimizer), got {ratio!r}")
        if not isinstance(windows, int) or isinstance(windows, bool) or windows < 1:
            raise ValueError(f"windows must be an integer ≥ 1, got {windows!r}")
        self.ratio = ratio
        self.clock = clock
        self.windows = windows
        self.sync: Callable[[], None] | None = None
        self.agree: Callable[[int], int] | None = None
        self.chosen: int | None = None
        self.plain: list[float] = []
        self.closing: list[float] = []
        self.totals: list[float] = []   # each measured window's seconds
        self._last: float | None = None
        self._window = 0.0
        self._complete = True   # every update of the window timed (not so across a resume)

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

    def observe(self, window: int, closes: bool, interval: int) -> int | None:
        """After an update: ``window`` counts windows from 0, ``closes`` whether it
        took the hyperparameter step. Returns the interval once it is chosen
        (at the end of the last measured window), else ``None``."""
        if self.chosen is not None or window > self.windows or (window == 0 and not closes):
            return None   # the clock runs from the end of the first window
        if self.sync is not None:
            self.sync()
        now = self.clock()
        if window >= 1:
            if self._last is not None:
                (self.closing if closes else self.plain).append(now - self._last)
                self._window += now - self._last
            else:
                self._complete = False
            if closes:
                if self._complete:
                    self.totals.append(self._window)
                self._window, self._complete = 0.0, True
        self._last = now
        if not (closes and window == self.windows):
            return None
        chosen = self.choose(interval)
        if self.agree is not None:
            chosen = int(self.agree(chosen))
        self.chosen = chosen
        self._last = None
        return chosen

    def choose(self, interval: int) -> int:
        """The smallest interval ≥ ``interval`` whose windows keep the budget, from
        the medians of the samples."""
        if not self.plain or not self.closing:   # interval 1: no plain update to compare with
            return interval
        plain = statistics.median(self.plain)
        if plain <= 0:
            return interval
        window = statistics.median(self.totals) if self.totals else \
            statistics.median(self.closing) + (interval - 1) * plain
        extra = max(window - interval * plain, 0.0)
        needed = math.ceil(extra / (plain * (self.ratio - 1)) - 1e-9)
        return max(interval, needed)

    def state_dict(self) -> dict:
        return {"ratio": self.ratio, "chosen": self.chosen, "plain": list(self.plain),
                "closing": list(self.closing), "totals": list(self.totals)}

    def load_state_dict(self, state: dict) -> None:
        self.chosen = state["chosen"]
        self.plain, self.closing = list(state["plain"]), list(state["closing"])
        self.totals = list(state.get("totals", []))
        self._last, self._window, self._complete = None, 0.0, True


def first_rank_choice(group, device) -> Callable[[int], int]:
    """``interval ↦`` the first rank of ``group``'s (one broadcast)."""
    import torch.distributed as dist

    source = dist.get_global_rank(group, 0) if group is not dist.group.WORLD else 0

    def agree(interval: int) -> int:
        t = torch.tensor([interval], dtype=torch.int64, device=device)
        dist.broadcast(t, src=source, group=group)
        return int(t.item())
    return agree
