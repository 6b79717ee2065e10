"""Real-data tests (``@pytest.mark.real_data``) skip on a bare clone, fail in CI, and cannot go unmarked."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

TESTS = Path(__file__).resolve().parents[1]
# Direct ways to the data root that would bypass the shared_data fixture (and so the marker check).
ROOT_NAMES = {"SHARED_DATA", "MISSING_DATA"}
ROOT_STRINGS = ("HAN_SHARED_DATA", "shared/data", "/shared")

PROBE = '''
import pytest


@pytest.fixture
def bbc(shared_data):
    return shared_data / "bbc"


@pytest.mark.real_data
def test_marked(shared_data):
    assert shared_data.name == "data-root"


def test_unmarked_through_another_fixture(bbc):
    pass


def test_no_data():
    pass
'''


def _docstrings(tree: ast.Module) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef))]
    return {id(n.body[0].value) for n in nodes if n.body and isinstance(n.body[0], ast.Expr)}


def test_test_modules_reach_the_data_root_only_through_the_fixture():
    offences = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name == "conftest.py" and path.parent == TESTS or path == Path(__file__).resolve():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            named = (isinstance(node, ast.Name) and node.id in ROOT_NAMES
                     or isinstance(node, ast.alias) and node.name in ROOT_NAMES)
            spelled = (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                       and (node.value == "shared" or any(s in node.value for s in ROOT_STRINGS)))
            if named or spelled:
                offences.append(f"{path.relative_to(TESTS)}:{getattr(node, 'lineno', '?')}")
    assert not offences, f"use the shared_data fixture (and @pytest.mark.real_data) instead: {offences}"


@pytest.fixture(scope="module")
def probe_project(tmp_path_factory) -> Path:
    """A throwaway pytest project with this suite's conftest and three tests."""
    root = tmp_path_factory.mktemp("probe")
    shutil.copy(TESTS / "conftest.py", root / "conftest.py")
    (root / "pytest.ini").write_text("[pytest]\nmarkers =\n    real_data: reads the real datasets\n")
    (root / "test_probe.py").write_text(PROBE)
    (root / "data-root").mkdir()
    return root


def _run(root: Path, data: Path, **env: str) -> dict[str, str]:
    """Run the probe; return each test's outcome and message, e.g. ``skipped: real datasets not found ...``."""
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "HAN_REQUIRE_DATA") and not k.startswith("PYTEST_")}
    report = root / "report.xml"
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-n", "0",
                             f"--junitxml={report}", str(root)], cwd=root, capture_output=True, text=True,
                            timeout=120, env={**base, "HAN_SHARED_DATA": str(data), **env})
    assert report.exists(), result.stdout + result.stderr
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        problems = [child for child in case if child.tag in ("skipped", "error", "failure")]
        outcomes[case.get("name")] = (f"{problems[0].tag}: {problems[0].get('message')}" if problems else "passed")
    assert set(outcomes) == {"test_marked", "test_unmarked_through_another_fixture", "test_no_data"}, outcomes
    return outcomes


def test_without_the_data_root_marked_tests_skip_with_the_reason(probe_project):
    missing = probe_project / "nowhere"
    outcomes = _run(probe_project, missing)
    assert outcomes["test_marked"].startswith("skipped")
    assert f"real datasets not found at {missing}" in outcomes["test_marked"]
    assert outcomes["test_no_data"] == "passed"
    # An unmarked test that reaches the data, even through another fixture, is an error here too.
    assert outcomes["test_unmarked_through_another_fixture"].startswith("error")
    assert "not marked @pytest.mark.real_data" in outcomes["test_unmarked_through_another_fixture"]


@pytest.mark.parametrize("env", [{"HAN_REQUIRE_DATA": "1"}, {"CI": "true"}], ids=["HAN_REQUIRE_DATA", "CI"])
def test_in_ci_a_missing_data_root_fails_the_marked_tests(probe_project, env):
    outcomes = _run(probe_project, probe_project / "nowhere", **env)
    assert outcomes["test_marked"].startswith("error")
    assert "this run requires them" in outcomes["test_marked"]


def test_with_the_data_root_marked_tests_run_on_it(probe_project):
    outcomes = _run(probe_project, probe_project / "data-root", CI="true")
    assert outcomes["test_marked"] == "passed"
    assert outcomes["test_unmarked_through_another_fixture"].startswith("error")
