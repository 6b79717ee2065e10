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
