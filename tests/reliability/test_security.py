"""Security promises that are properties of the code: no pickle, safe model loading, loopback binds."""

from __future__ import annotations

import re

import pytest

from pipeline.config import PROJECT_ROOT, load_config

SOURCES = sorted([*(PROJECT_ROOT / "pipeline").rglob("*.py"), *(PROJECT_ROOT / "dags").rglob("*.py")])


@pytest.mark.parametrize("pattern", [
    r"^\s*(import|from)\s+(pickle|cloudpickle|joblib|dill)\b",  # no pickle-based persistence at all
    r"allow_pickle\s*=\s*True",
    r"safe_mode\s*=\s*False",
    r"\bpickle\.loads?\(",
    r"yaml\.load\(",  # yaml.safe_load only
])
def test_no_unsafe_deserialization_in_the_package(pattern):
    found = [f"{path.relative_to(PROJECT_ROOT)}:{number}" for path in SOURCES
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(pattern, line)]
    assert found == []


def test_keras_models_are_only_loaded_in_safe_mode():
    calls = [(path, line) for path in SOURCES for line in path.read_text(encoding="utf-8").splitlines()
             if "load_model(" in line and "keras" in line]
    assert calls and all("safe_mode=True" in line for _, line in calls)


def test_ui_and_serving_bind_to_loopback_by_default():
    assert load_config().serve.host == "127.0.0.1"
    makefile = (PROJECT_ROOT / "Makefile").read_text(encoding="utf-8")
    (ui,) = [line for line in makefile.splitlines() if "mlflow ui" in line]
    assert "--host 127.0.0.1" in ui
