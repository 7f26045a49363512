"""Shared fixtures. The tests read only files inside the checkout (the UCI
copies shipped as package data) or files they make under ``tmp_path``.

``ONEPASS_DATA_DIR`` is pointed at an empty folder for the whole session, so
neither the caller's environment nor a user cache (``~/.cache/onepass``) can
feed a test: a UCI set resolves to the shipped copy unless a test passes its
own data directory. ``tests/test_uci.py`` checks that the shipped copies are
what an unset environment finds.

Each test process compiles into its own, new ``TORCHINDUCTOR_CACHE_DIR``
(set here, before anything is compiled, and removed at exit): the default
cache is shared in ``/tmp`` and a run killed mid-compile once left a 0-byte
file there that failed the next run's compile test.

Ray starts once per test process (:func:`ray_session`). The tests that use
Ray are in the xdist group ``"ray"`` so that ``-n 2 --dist loadgroup`` runs
them in one worker, one after the other, on the one Ray instance.
"""
import atexit
import os
import shutil
import tempfile

_INDUCTOR_CACHE = tempfile.mkdtemp(prefix="onepass-tests-inductor-")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE
atexit.register(shutil.rmtree, _INDUCTOR_CACHE, ignore_errors=True)

from pathlib import Path  # noqa: E402  (after the cache folder is set)

import pytest  # noqa: E402

from onepass.data import PACKAGED_DATA_DIR  # noqa: E402


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


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance (2 CPUs) for the whole test process, shut down at
    its end. A missing Ray fails the test that asks for it (the ``test`` extra
    installs it): no skip."""
    import ray
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
    """A test that asks for :func:`ray_session` is in the xdist group ``"ray"``."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ray"))
