"""Shared fixtures. The tests read only files inside the checkout (the UCI
copies shipped as package data) or files they make under ``tmp_path``.

``ONEPASS_DATA_DIR`` is pointed at an empty folder for the whole session, so
neither the caller's environment nor a user cache (``~/.cache/onepass``) can
feed a test: a UCI set resolves to the shipped copy unless a test passes its
own data directory. ``tests/test_uci.py`` checks that the shipped copies are
what an unset environment finds.
"""
from pathlib import Path

import pytest

from onepass.data import PACKAGED_DATA_DIR


@pytest.fixture(autouse=True, scope="session")
def _isolated_data_dir(tmp_path_factory):
    """``$ONEPASS_DATA_DIR`` → an empty folder for every test (subprocesses included)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONEPASS_DATA_DIR", str(tmp_path_factory.mktemp("empty-data-dir")))
        yield


@pytest.fixture(autouse=True, scope="module")
def _no_cost_budget(request):
    """The recipe's ``cost_budget`` off (``None``, today's fixed interval) in every
    test but tests/test_budget.py, so that no test's schedule depends on how fast
    the machine is; test_budget.py tests the budget with an injected clock."""
    if request.module.__name__.rsplit(".", 1)[-1] == "test_budget":
        yield
        return
    from onepass.optim.recipe import RECIPES
    with pytest.MonkeyPatch.context() as patch:
        for table in RECIPES.values():
            patch.setitem(table["settings"], "cost_budget", None)
        yield


@pytest.fixture
def uci_data_dir() -> Path:
    """A data directory holding all eight UCI sets: the copies shipped with the package."""
    assert (PACKAGED_DATA_DIR / "uci" / "energy.txt.gz").is_file(), \
        f"the shipped UCI copies are missing from {PACKAGED_DATA_DIR / 'uci'}"
    return PACKAGED_DATA_DIR


@pytest.fixture
def shared_data(uci_data_dir) -> Path:
    """Former name of :func:`uci_data_dir` (no longer outside the checkout)."""
    return uci_data_dir
