"""The suite's workloads, by name. ``SUITE`` chooses the recipe; ``HELDOUT``
(UCI Boston, Concrete, Wine, Yacht, and the token MLP a new user wrote) is kept out of every choice and only
checks it, as a test set is kept out of training."""
from __future__ import annotations

from . import digits, hf_trainer, lightning_mlp, mnist_1d, text_lm, tokens, uci
from .base import BASELINES, Data, Workload, onepass_config, run

ALL: dict[str, Workload] = {w.name: w for module in (uci, digits, mnist_1d, text_lm, hf_trainer, lightning_mlp, tokens)
                            for w in module.workloads()}
HELDOUT = tuple(f"uci_{n}" for n in uci.HELDOUT) + ("token_mlp",)
SUITE = tuple(n for n in ALL if n not in HELDOUT)

__all__ = ["ALL", "SUITE", "HELDOUT", "BASELINES", "Data", "Workload", "onepass_config", "run"]
