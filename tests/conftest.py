"""Shared test fixtures: where the real datasets live, and isolated artifact/MLflow locations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (PROJECT_ROOT / ".." / "shared" / "data").resolve()

# Keep TensorFlow quiet and deterministic in every test process.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real datasets (BBC, IMDB); tests that need them fail loudly if absent."""
    assert SHARED_DATA.is_dir(), f"real datasets expected at {SHARED_DATA} (see ../shared/data/README.md)"
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
