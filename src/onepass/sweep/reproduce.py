"""The paper's named experiments: a sweep of its algorithms, then the report.

``onepass reproduce uci_energy`` runs the nine single-run algorithms of the
main table (:data:`~onepass.sweep.plan.PAPER_ALGORITHMS`, the ``paper`` ones of
:data:`onepass.experiment.algorithms.TABLE`; not variants such as
``baydin_exact``) from 200 random
initialisations each (1,800 runs) into ``runs/uci_energy`` and writes the
report (table, figures, HTML) into ``runs/uci_energy/report``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from onepass.sweep.plan import PAPER_ALGORITHMS, SweepError


@dataclass(frozen=True)
class Experiment:
    """A named experiment: a dataset config, the algorithms, the paper's N."""

    name: str
    dataset: str
    algorithms: tuple[str, ...] = PAPER_ALGORITHMS
    inits: int = 200
    description: str = ""


EXPERIMENTS: dict[str, Experiment] = {
    f"uci_{name}": Experiment(f"uci_{name}", f"uci_{name}",
                              description=f"UCI {name.capitalize()}: 9 algorithms × 200 "
                                          "initialisations, 4,000 full-batch updates")
    for name in ("boston", "concrete", "energy", "kin8nm", "naval", "power", "wine", "yacht")
}
EXPERIMENTS.update({
    "fashion_mnist": Experiment("fashion_mnist", "fashion_mnist", inits=100,
                                description="Fashion-MNIST: 9 algorithms × 100 initialisations, "
                                            "10,000 mini-batch updates (single runs)"),
    "penn_treebank": Experiment("penn_treebank", "penn_treebank", inits=50,
                                description="Penn Treebank LSTM: 9 algorithms × 50 initialisations"),
    "cifar10": Experiment("cifar10", "cifar10", inits=50,
                          description="CIFAR-10 ResNet-18: 9 algorithms × 50 initialisations"),
})
"""The UCI experiments train in populations; Fashion-MNIST (mini-batch), Penn
Treebank and CIFAR-10 run as single runs (GPU advised: ``--device cuda``)."""


def reproduce(name: str, *, root: str | os.PathLike | None = None, inits: int | None = None,
              steps: int | None = None, workers: int = 2, data_dir=None, executor: str = "local",
              address: str | None = None, population: str = "auto",
              population_size: int | None = None, seed: int = 0, device: str = "cpu",
              progress: bool = True, report: bool = True, slurm=None, compile: bool = True):
    """Run (or continue) experiment ``name`` and write its report; returns
    ``(SweepOutcome, {file: path} of the report)``. With ``compile`` every run
    sets ``training.compile`` (torch.compile of the plain steps' gradient:
    seconds of compilation per process, then 2-3× faster small-model steps)."""
    from onepass.sweep import DEFAULT_POPULATION_SIZE, run_sweep

    if name not in EXPERIMENTS:
        raise SweepError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    experiment = EXPERIMENTS[name]
    root = Path(root) if root is not None else Path("runs") / name
    outcome = run_sweep(experiment.dataset, experiment.algorithms,
                        experiment.inits if inits is None else inits, root, seed=seed,
                        steps=steps, workers=workers, executor=executor, address=address,
                        population=population,
                        population_size=population_size or DEFAULT_POPULATION_SIZE,
                        data_dir=data_dir, device=device, progress=progress, slurm=slurm,
                        overrides=("training.compile=true",) if compile else ())
    written = {}
    if report:
        from onepass.analysis.report import write_report
        written = write_report(root)
    return outcome, written


__all__ = ["EXPERIMENTS", "Experiment", "reproduce"]
