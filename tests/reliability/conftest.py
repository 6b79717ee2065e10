"""Shared by the bad-input and fault tests: one artifacts folder and MLflow store per test module."""

from __future__ import annotations

import pytest


@pytest.fixture
def env(tmp_path_factory, monkeypatch, request):
    """One artifacts folder and MLflow store for the module (each test uses its own pipeline name)."""
    root = tmp_path_factory.getbasetemp() / request.module.__name__.rsplit(".", 1)[-1]
    root.mkdir(exist_ok=True)
    monkeypatch.setenv("HAN_ARTIFACTS_DIR", str(root / "artifacts"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.delenv("HAN_DATA_DIR", raising=False)
    return root
