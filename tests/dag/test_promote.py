"""Promotion: the verdict rules, and a promotion interrupted half way (on a copy of the DAG's registry)."""

from __future__ import annotations

import shutil
import time

import pytest

from pipeline.stages import evaluate, promote
from pipeline.stages.promote import alias_version, decide
from tests.dag.conftest import NAME, WORSE
from tests.stages.conftest import SMALL, make_workspace

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
    with pytest.raises(promote.PromoteError, match="run `make train`"):
        promote.run(workspace.config)


def test_an_interrupted_promotion_leaves_the_old_champion_and_a_rerun_completes_it(retrained, tmp_path, monkeypatch):
    """Version 2 (worse) is made to pass its gate once no champion is left to beat; the alias move
    is interrupted; the registry still names no wrong champion; the rerun finishes the promotion."""
    import mlflow

    shutil.copytree(retrained[0].root, tmp_path / "copy")
    workspace = make_workspace(tmp_path / "copy", SMALL + WORSE)
    workspace.activate(monkeypatch)
    client = mlflow.MlflowClient()
    client.delete_registered_model_alias(NAME, "champion")
    config = workspace.config
    assert evaluate.run(config).passed  # min_accuracy 0 and no champion: version 2 passes

    real = mlflow.MlflowClient.set_registered_model_alias

    def dies_moving_the_champion(self, name, alias, version):
        if alias == "champion":
            raise KeyboardInterrupt("killed while moving the champion")
        return real(self, name, alias, version)

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", dies_moving_the_champion)
    with pytest.raises(KeyboardInterrupt):
        promote.run(config)
    assert alias_version(client, NAME, "champion") is None  # unchanged: no champion, not a half-promoted one
    assert alias_version(client, NAME, "challenger") == "2"
    assert client.get_model_version(NAME, "2").tags["promotion.verdict"] == "promoted"  # the recorded intent
    # The stage's own record is still the DAG run's earlier (rejected) decision: nothing half written.
    assert promote.read_json(config.stage_dir("promote") / "decision.json")["verdict"] == "rejected"

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", real)
    done = promote.run(config)
    assert done.decision["verdict"] == "promoted" and done.decision["champion_after"] == "2"
    assert alias_version(client, NAME, "champion") == "2"
    assert promote.run(config).skipped  # and a third run has nothing left to do

    # A scheduled rerun on unchanged data re-evaluates the champion itself: nothing moves, and
    # the version keeps the record of the promotion that made it champion.
    time.sleep(1.1)  # a new evaluation is told apart by its timestamp (seconds)
    evaluate.run(config)
    again = promote.run(config)
    assert again.decision["verdict"] == "already-champion" and not again.skipped
    tags = client.get_model_version(NAME, "2").tags
    assert tags["promotion.verdict"] == "promoted" and tags["promotion.previous_champion"] == "None"
    assert alias_version(client, NAME, "champion") == "2"
