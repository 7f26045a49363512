from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The project-external copies of the UCI files (``../shared/data``)."""
    assert (SHARED_DATA / "uci").is_dir(), f"the local UCI copies must lie under {SHARED_DATA}"
    return SHARED_DATA
