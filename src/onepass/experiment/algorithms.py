"""The algorithms: one table of their names, paper labels and roles.

Everything that lists algorithms reads this table: the shipped configs
(:data:`onepass.experiment.config.ALGORITHMS`), the paper's sweep
(:data:`onepass.sweep.plan.PAPER_ALGORITHMS`, ``onepass reproduce``), the
report's row names and order (:mod:`onepass.analysis.statistics`) and the
benchmarks. A name is ``algorithm.name`` of a run's config, the name of its
shipped ``configs/<name>.yaml`` (when it has one) and its run folder in a sweep.

Imports nothing, so the analysis can read it without torch.
"""
from __future__ import annotations

from dataclasses import dataclass

KINDS = ("main", "variant", "derived", "search")


@dataclass(frozen=True)
class Algorithm:
    """One algorithm.

    Attributes:
        name: the config / folder name.
        label: its name in the paper's tables and the report.
        kind: ``main``: a shipped config of the paper's experiments;
            ``variant``: a shipped config beyond them (long Diff-through-Opt,
            Baydin's exact-derivative variant); ``derived``: built by the
            report from other runs; ``search``: a search baseline's trials.
        paper: one of the single-run algorithms of the paper's main table
            (``onepass sweep -a paper``, ``onepass reproduce``).
    """

    name: str
    label: str
    kind: str = "main"
    paper: bool = False


TABLE: tuple[Algorithm, ...] = (
    Algorithm("random", "Random", paper=True),
    Algorithm("random_stepped_lr", "Random (stepped LR)", paper=True),
    Algorithm("random_validation", "Random (validation)", paper=True),
    Algorithm("random_training_set_only", "Random (training set only)"),
    Algorithm("random_3_batched", "Random (3-batched)", kind="derived"),
    Algorithm("lorraine", "Lorraine", paper=True),
    Algorithm("baydin", "Baydin", paper=True),
    Algorithm("baydin_exact", "Baydin (exact derivative)", kind="variant"),
    Algorithm("ours_lr", "Ours (WD+LR)", paper=True),
    Algorithm("ours_lr_momentum", "Ours (WD+LR+M)", paper=True),
    Algorithm("ours_hdlr_momentum", "Ours (WD+HDLR+M)", paper=True),
    Algorithm("diff_through_opt", "Diff-through-Opt", paper=True),
    Algorithm("long_dto_standalone", "Long Diff-through-Opt (Standalone)", kind="variant"),
    Algorithm("long_dto_medium", "Long Diff-through-Opt (Medium)", kind="variant"),
    Algorithm("long_dto_full", "Long Diff-through-Opt (Full)", kind="variant"),
    Algorithm("bayesopt", "Bayesian optimisation", kind="search"),
    Algorithm("asha", "ASHA", kind="search"),
    Algorithm("pbt", "PBT", kind="search"),
)
"""Every algorithm, in the paper's row order."""

BY_NAME: dict[str, Algorithm] = {a.name: a for a in TABLE}


def names(*, kind: str | None = None, paper: bool | None = None) -> tuple[str, ...]:
    """Names in table order, optionally only of one ``kind`` / only the paper's."""
    return tuple(a.name for a in TABLE
                 if (kind is None or a.kind == kind) and (paper is None or a.paper == paper))


__all__ = ["Algorithm", "BY_NAME", "KINDS", "TABLE", "names"]
