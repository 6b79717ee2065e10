"""The retraining DAG with real Airflow (DagBag, ``airflow dags test``) and a real MLflow registry
(the two DAG runs of the session fixture ``retrained``, see conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from pipeline.config import PROJECT_ROOT, load_config
from pipeline.dagtest import airflow_env
from tests.dag.conftest import NAME, WORSE
from tests.stages.conftest import SMALL


def test_dag_file_parses_without_errors_or_tensorflow(tmp_path):
    """DagBag import: no errors, the intended tasks and dependencies, the config's schedule and retries."""
    code = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags["han_retrain"]
print(json.dumps({
    "errors": bag.import_errors, "dags": sorted(bag.dag_ids),
    "edges": sorted([t.task_id, d] for t in dag.tasks for d in sorted(t.downstream_task_ids)),
    "tasks": sorted(t.task_id for t in dag.tasks), "schedule": str(dag.schedule), "catchup": dag.catchup,
    "retries": {t.task_id: t.retries for t in dag.tasks}, "backoff": dag.tasks[0].retry_exponential_backoff,
    "delay": dag.tasks[0].retry_delay.total_seconds(), "max_active_runs": dag.max_active_runs,
    "tensorflow_imported": "tensorflow" in sys.modules, "queues": {t.task_id: t.queue for t in dag.tasks},
}))
"""
    done = subprocess.run([sys.executable, "-c", code, str(PROJECT_ROOT / "dags")], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, timeout=300, check=False,
                          env={**airflow_env(tmp_path, PROJECT_ROOT / "configs" / "default.yaml"), "HAN_SET": "retrain.retries=3 retrain.train_queue=gpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["errors"] == {} and info["dags"] == ["han_retrain"]
    assert info["tasks"] == ["evaluate", "explain", "preprocess", "promote", "train"]
    assert info["edges"] == [["evaluate", "promote"], ["preprocess", "train"], ["promote", "explain"], ["train", "evaluate"]]
    assert info["schedule"] == "@weekly" and info["catchup"] is False and info["max_active_runs"] == 1
    assert set(info["retries"].values()) == {3}  # HAN_SET reaches the DAG's settings
    assert info["backoff"] and info["delay"] == timedelta(seconds=300).total_seconds()
    assert info["tensorflow_imported"] is False  # parsing stays light: TensorFlow loads inside tasks only
    # Only training goes to the configured queue; the rest stay on the executor's default.
    assert info["queues"].pop("train") == "gpu" and set(info["queues"].values()) == {"default"}


def test_first_run_trains_and_promotes_the_champion(retrained, client):
    _, first, _ = retrained
    assert "DAG run succeeded" in first.stdout
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == "1"
    assert champion.tags["gate.passed"] == "true" and champion.tags["promotion.verdict"] == "promoted"
    assert champion.tags["promotion.previous_champion"] == "None"
    assert "verdict for version 1: promoted" in first.stdout + first.stderr


def test_the_stages_of_one_dag_run_nest_under_one_mlflow_run(retrained, client):
    import mlflow

    runs = mlflow.search_runs(experiment_names=["demo"], output_format="list")
    parents = [r for r in runs if "han.schedule_key" in r.data.tags]
    assert len(parents) == 2  # one per DAG run, however many tasks reopened it
    first = min(parents, key=lambda r: r.info.start_time)
    assert first.data.tags["airflow.dag_id"] == "han_retrain"
    children = sorted(r.data.tags["han.stage"] for r in runs if r.data.tags.get("mlflow.parentRunId") == first.info.run_id)
    assert children == ["evaluate", "explain", "preprocess", "promote", "train"]


def test_each_dag_runs_parent_carries_its_headline_figures(retrained, client):
    """The promote and explain tasks put the verdict, the test figures and faithfulness on the DAG run's parent."""
    import mlflow

    runs = mlflow.search_runs(experiment_names=["demo"], output_format="list")
    first, second = sorted((r for r in runs if "han.schedule_key" in r.data.tags), key=lambda r: r.info.start_time)
    evaluated = {r.data.tags["mlflow.parentRunId"]: r.data.metrics for r in runs
                 if r.data.tags.get("han.stage") == "evaluate" and "mlflow.parentRunId" in r.data.tags}
    for parent, verdict, version in ((first, "promoted", "1"), (second, "rejected", "2")):
        assert parent.data.tags["han.verdict"] == verdict and parent.data.tags["han.model_version"] == version
        assert parent.data.metrics["promoted"] == float(verdict == "promoted")
        for key in ("test.accuracy", "test.macro_f1", "baseline.accuracy", "baseline.macro_f1", "gate.passed"):
            assert parent.data.metrics[key] == evaluated[parent.info.run_id][key], key
    assert "faithfulness.comprehensiveness.attention.k1" in first.data.metrics
    # The second run skipped explain (retrain.explain=false): no figures from the first run's outputs.
    assert not any(key.startswith("faithfulness.") for key in second.data.metrics)


def test_a_worse_model_leaves_the_champion_and_says_why(retrained, client):
    workspace, _, second = retrained
    assert second.returncode == 0, second.stderr[-3000:]  # a failed gate ends the run cleanly
    assert "DAG run succeeded" in second.stdout
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    challenger = client.get_model_version_by_alias(NAME, "challenger")
    assert str(challenger.version) == "2"
    assert challenger.tags["gate.passed"] == "false" and challenger.tags["promotion.verdict"] == "rejected"
    assert "beat_champion FAILED" in challenger.tags["promotion.reasons"]
    metrics = json.loads((workspace.config.stage_dir("evaluate") / "metrics.json").read_text())
    assert metrics["champion"]["version"] == "1" and metrics["gate"]["passed"] is False
    decision = json.loads((workspace.config.stage_dir("promote") / "decision.json").read_text())
    assert (decision["verdict"], decision["champion_before"], decision["champion_after"]) == ("rejected", "1", "1")
    assert "verdict for version 2: rejected" in second.stdout + second.stderr


def test_repeating_tasks_duplicates_no_run_and_no_version(retrained, client, monkeypatch):
    """What an Airflow retry of each task does: train skips (no run, no version), promote changes nothing."""
    import mlflow

    from pipeline.stages import promote, train

    workspace = retrained[0]
    config = load_config(None, SMALL + WORSE)
    before_runs = len(mlflow.search_runs(experiment_names=["demo"], output_format="list"))
    versions = len(client.search_model_versions(f"name = '{NAME}'"))
    assert train.run(config).skipped
    again = promote.run(config)
    assert again.skipped and again.decision["verdict"] == "rejected"
    assert len(mlflow.search_runs(experiment_names=["demo"], output_format="list")) == before_runs
    assert len(client.search_model_versions(f"name = '{NAME}'")) == versions
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert Path(workspace.env["HAN_ARTIFACTS_DIR"]).is_dir()


def test_training_that_died_after_registering_reuses_its_version(retrained, client):
    from pipeline.stages.train import _version_of_earlier_attempt

    version_one = client.get_model_version(NAME, "1")
    found = _version_of_earlier_attempt(NAME, ["not-a-run", version_one.run_id])
    assert found is not None and str(found.version) == "1"
    assert _version_of_earlier_attempt(NAME, ["not-a-run"]) is None


def test_a_scheduled_run_against_a_new_store_completes_without_retraining(retrained, tmp_path, monkeypatch):
    """The same outputs, a new empty tracking store (a deleted mlflow.db, a move to a server): the DAG
    logs the model on disk into the new store, judges and promotes it there; nothing is retrained."""
    import shutil

    import mlflow

    from pipeline.artifacts import read_json, sha256_file
    from tests.dag.conftest import _dag_test
    from tests.stages.conftest import Workspace

    workspace = retrained[0]
    moved = Workspace(tmp_path, {"HAN_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
                                 "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'new-store.db'}"}, workspace.overrides)
    shutil.copytree(workspace.env["HAN_ARTIFACTS_DIR"], moved.env["HAN_ARTIFACTS_DIR"])
    train_dir = tmp_path / "artifacts" / "demo" / "train"
    before = read_json(train_dir / "manifest.json")
    model_hash = sha256_file(train_dir / "model.keras")

    done = _dag_test(moved, SMALL + WORSE)  # the settings of the last scheduled run: its outputs are cached
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = read_json(train_dir / "manifest.json")
    assert sha256_file(train_dir / "model.keras") == model_hash and after["created"] == before["created"]
    assert after["mlflow"]["earlier_store"]["run_id"] == before["mlflow"]["run_id"] != after["mlflow"]["run_id"]
    moved.activate(monkeypatch)
    champion = mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion")
    assert champion.run_id == after["mlflow"]["run_id"] and champion.tags["promotion.verdict"] == "promoted"
