"""Shared test fixtures: where the real datasets live, and isolated artifact/MLflow locations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Root of the real datasets (BBC, IMDB); HAN_SHARED_DATA points the tests elsewhere.
SHARED_DATA = Path(os.environ.get("HAN_SHARED_DATA") or PROJECT_ROOT / ".." / "shared" / "data").resolve()
MISSING_DATA = (f"real datasets not found at {SHARED_DATA} (set HAN_SHARED_DATA; see ../shared/data/README.md "
                "or `make data`)")

# Keep TensorFlow quiet and deterministic in every test process.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")


def real_data_required() -> bool:
    """Whether a missing data root fails the ``real_data`` tests instead of skipping them.

    CI has the data, so there a missing root is a broken setup, never a reason to stop running tests:
    .ci/run exports HAN_REQUIRE_DATA=1, and a CI that calls ``make test`` itself is caught by its CI=true;
    HAN_REQUIRE_DATA=0 turns this off, and on a bare clone (neither set) the real-data tests skip.
    """
    flag = os.environ.get("HAN_REQUIRE_DATA", "").strip().lower()
    if flag:
        return flag not in ("0", "false", "no")
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config, items):
    """Without the data root (and outside CI), every ``real_data`` test skips, reported at its own line."""
    if SHARED_DATA.is_dir() or real_data_required():
        return
    for item in items:
        if item.get_closest_marker("real_data") is not None:
            item.add_marker(pytest.mark.skip(reason=MISSING_DATA))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Fail a test that reads the data root unmarked, and (in CI) a ``real_data`` test without the data."""
    marked = item.get_closest_marker("real_data") is not None
    if "shared_data" in getattr(item, "fixturenames", ()) and not marked:
        pytest.fail(f"{item.nodeid} uses the shared_data fixture (the real datasets) but is not marked "
                    "@pytest.mark.real_data: mark it, so it skips where the data is absent", pytrace=False)
    if marked and not SHARED_DATA.is_dir() and real_data_required():
        pytest.fail(f"{MISSING_DATA}; this run requires them (HAN_REQUIRE_DATA=1 or CI=true)", pytrace=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real datasets (BBC, IMDB); only for tests marked ``real_data``."""
    assert SHARED_DATA.is_dir(), MISSING_DATA
    return SHARED_DATA


@pytest.fixture(autouse=True)
def isolated_outputs(tmp_path, monkeypatch):
    """Every test writes artifacts and MLflow runs under its own temporary directory."""
    monkeypatch.setenv("HAN_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield


def pytest_xdist_make_scheduler(config, log):
    """How ``make test`` (``pytest -n 2``, pytest-xdist) shares the tests out between workers.

    Whole modules go to one worker, so each module-scoped fixture (a trained model, a running
    server) is built once; the DAG modules (``tests/dag/``) go together, since they share one
    session fixture: two real ``airflow dags test`` runs, over two minutes. (pytest-xdist's own
    ``xdist_group`` marks do not take effect under pytest 9, hence a scheduler.)
    """
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "tests/dag" if module.startswith("tests/dag/") else module

    return ModuleScheduling(config, log)
