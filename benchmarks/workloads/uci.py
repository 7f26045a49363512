"""UCI regression with the paper's MLP (d-50-1), full batch, on the shipped data
(``onepass.data.uci``: the paper's split, standardised on train+validation;
test MSE in original units). Energy, Kin8nm, Power and Naval are in the suite;
Boston, Concrete, Wine and Yacht are held out (never used to choose anything)."""
from __future__ import annotations

from onepass.data.uci import load_uci
from onepass.models.mlp import MLP

from .base import Data, Workload

SUITE = ("energy", "kin8nm", "power", "naval")
HELDOUT = ("boston", "concrete", "wine", "yacht")
STEPS = {"energy": 4000, "kin8nm": 3000, "power": 1000, "naval": 1000,
         "boston": 4000, "concrete": 4000, "wine": 4000, "yacht": 4000}


def _data(name: str) -> Data:
    d = load_uci(name)
    return Data(d.x_train, d.y_train, d.x_val, d.y_val, d.x_test, d.y_test, scale=float(d.y_std) ** 2)


def workload(name: str) -> Workload:
    return Workload(name=f"uci_{name}", kind="regression", family="uci", steps=STEPS[name],
                    build_data=lambda: _data(name),
                    build_model=lambda seed: MLP(int(load_uci(name).x_train.shape[1])))


def workloads() -> list[Workload]:
    return [workload(n) for n in SUITE + HELDOUT]
