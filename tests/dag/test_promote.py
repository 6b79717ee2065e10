"""Promotion: the verdict rules, and a promotion killed half way (on a copy of the DAG's registry)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from pipeline.config import PROJECT_ROOT
from pipeline.faults import KILL_ENV
from pipeline.stages import evaluate, promote
from pipeline.stages.promote import alias_version, decide
from tests.dag.conftest import NAME, WORSE
from tests.stages.conftest import SMALL, make_workspace, set_args

PASSED = {"passed": True, "reasons": ["min_accuracy passed"], "champion": "1"}
FAILED = {"passed": False, "reasons": ["beat_champion FAILED: 0.5 vs required 0.9"], "champion": "1"}


def test_verdicts():
    assert decide(PASSED, "2", "1", "1") == ("promoted", ["min_accuracy passed"])
    verdict, reasons = decide(FAILED, "2", "1", "1")
    assert verdict == "rejected" and reasons[0] == "the gate failed; the champion stays" and "beat_champion" in reasons[1]
    verdict, reasons = decide(PASSED, "3", "1", "2")  # someone promoted version 2 after version 3 was evaluated
    assert verdict == "stale" and "compared with version 1, now version 2" in reasons[0]
    assert decide({**PASSED, "champion": None}, "1", None, None)[0] == "promoted"  # the first champion
    assert decide(PASSED, "2", "1", "2")[0] == "already-champion"


def test_promote_before_evaluate_says_what_to_run(tmp_path, monkeypatch):
    workspace = make_workspace(tmp_path)
    workspace.activate(monkeypatch)
    with pytest.raises(promote.PromoteError, match="run `make train SET='data.demo.num_documents=800 "):
        promote.run(workspace.config)


@pytest.mark.parametrize("kill_at", ["promote:tagged", "promote:challenger"])
def test_kill_9_during_promotion_leaves_the_registry_consistent_and_a_rerun_completes_it(retrained, tmp_path,
                                                                                          monkeypatch, kill_at):
    """Version 2 (worse) is made to pass its gate once no champion is left to beat; ``promote`` is
    killed with SIGKILL after the verdict is tagged, or after the challenger alias moved; the
    registry still names no wrong champion; the rerun finishes the promotion and closes the
    MLflow run the dead process left RUNNING."""
    import mlflow

    shutil.copytree(retrained[0].root, tmp_path / "copy")
    workspace = make_workspace(tmp_path / "copy", SMALL + WORSE)
    workspace.activate(monkeypatch)
    client = mlflow.MlflowClient()
    client.delete_registered_model_alias(NAME, "champion")
    config = workspace.config
    assert evaluate.run(config).passed  # min_accuracy 0 and no champion: version 2 passes

    killed = subprocess.run([sys.executable, "-m", "pipeline", "promote", *set_args(workspace.overrides)],
                            cwd=PROJECT_ROOT, env={**os.environ, **workspace.env, KILL_ENV: kill_at},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert alias_version(client, NAME, "champion") is None  # unchanged: no champion, not a half-promoted one
    assert alias_version(client, NAME, "challenger") == "2"  # (already so after the DAG run that rejected it)
    assert client.get_model_version(NAME, "2").tags["promotion.verdict"] == "promoted"  # the recorded intent
    # The stage's own record is still the DAG run's earlier (rejected) decision: nothing half written.
    assert promote.read_json(config.stage_dir("promote") / "decision.json")["verdict"] == "rejected"
    orphans = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
               if r.info.status == "RUNNING"]
    assert [r.data.tags["han.stage"] for r in orphans] == ["promote"]

    done = promote.run(config)
    assert done.decision["verdict"] == "promoted" and done.decision["champion_after"] == "2"
    assert alias_version(client, NAME, "champion") == "2"
    assert mlflow.get_run(orphans[0].info.run_id).info.status == "KILLED"
    assert promote.run(config).skipped  # and a third run has nothing left to do

    if kill_at == "promote:tagged":
        return  # what follows does not depend on where the kill came: checked once
    # A scheduled rerun on unchanged data re-evaluates the champion itself: nothing moves, and
    # the version keeps the record of the promotion that made it champion.
    time.sleep(1.1)  # a new evaluation is told apart by its timestamp (seconds)
    evaluate.run(config)
    again = promote.run(config)
    assert again.decision["verdict"] == "already-champion" and not again.skipped
    tags = client.get_model_version(NAME, "2").tags
    assert tags["promotion.verdict"] == "promoted" and tags["promotion.previous_champion"] == "None"
    assert alias_version(client, NAME, "champion") == "2"
