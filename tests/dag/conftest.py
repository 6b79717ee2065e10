"""One workspace where the retraining DAG ran twice, exactly as ``make dag-test`` runs it.

First on the small demo config (the model passes the gate and becomes the champion, version 1),
then with a deliberately worse training config (one epoch at a tiny learning rate: version 2),
which must leave the champion where it was and record why. Shared by the DAG, promotion and REST
tests of this folder (session scope: the two runs take about two minutes on two cores).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.config import PROJECT_ROOT
from tests.stages.conftest import SMALL, make_workspace

NAME = "han-demo"
WORSE = ["train.epochs=1", "train.learning_rate=0.00001", "retrain.explain=false"]


def _dag_test(workspace, overrides: list[str]) -> subprocess.CompletedProcess:
    args = [arg for item in overrides for arg in ("--set", item)]
    env = {**os.environ, **workspace.env}
    return subprocess.run([sys.executable, "-m", "pipeline.dagtest", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="session")
def retrained(tmp_path_factory):
    workspace = make_workspace(tmp_path_factory.mktemp("dag"))
    first = _dag_test(workspace, SMALL)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = _dag_test(workspace, SMALL + WORSE)
    return workspace, first, second


@pytest.fixture
def client(retrained, monkeypatch):
    import mlflow

    retrained[0].activate(monkeypatch)
    return mlflow.MlflowClient()


