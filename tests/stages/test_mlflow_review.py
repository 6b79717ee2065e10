"""What a reviewer sees in the MLflow UI after ``python -m pipeline run`` (a tiny demo run, real MLflow):
the experiment marked as model training, the headline figures on the pipeline's run, stage runs
that span their stage's work, the learning rate each epoch trained with, the splits as datasets."""

from __future__ import annotations

import json

import pytest

from pipeline.__main__ import main
from tests.stages.conftest import make_workspace, set_args

# Two epochs of a cosine schedule: the rate falls within the run, and to 0 after its last step.
TINY = ["data.demo.num_documents=200", "model.embedding.dim=16", "model.word_units=8", "model.sentence_units=8",
        "model.word_attention.context_dim=8", "model.sentence_attention.context_dim=8", "train.epochs=2",
        "train.schedule=cosine", "train.learning_rate=0.002", "train.early_stopping.patience=0",
        "evaluate.gate.min_accuracy=0.0", "explain.random_draws=2"]


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    workspace = make_workspace(tmp_path_factory.mktemp("review"), TINY)
    with pytest.MonkeyPatch.context() as patch:
        workspace.activate(patch)
        assert main(["run", *set_args(workspace.overrides)]) == 0
    return workspace


@pytest.fixture
def runs(tiny_pipeline, monkeypatch):
    """The tiny pipeline's runs by stage (``pipeline`` for the parent)."""
    import mlflow

    tiny_pipeline.activate(monkeypatch)
    found = mlflow.search_runs(experiment_names=["demo"], output_format="list")
    by_stage = {run.data.tags["han.stage"]: run for run in found}
    assert sorted(by_stage) == ["evaluate", "explain", "pipeline", "preprocess", "promote", "train"]
    return by_stage


def _read(workspace, stage: str, name: str):
    return json.loads((workspace.config.stage_dir(stage) / name).read_text())


def test_experiments_are_marked_model_training_and_links_open_that_view(tiny_pipeline, runs, monkeypatch):
    import mlflow

    from pipeline.config import load_config
    from pipeline.tracking import EXPERIMENT_KIND_TAG, run_url, stage_run

    assert mlflow.get_experiment_by_name("demo").tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert run_url(runs["pipeline"]).endswith(f"/runs/{runs['pipeline'].info.run_id}?workflowType=machine_learning")
    # An experiment made elsewhere (another tool, an older version of the project) is marked when used.
    mlflow.create_experiment("made-elsewhere", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    with stage_run(load_config(None, [*TINY, "tracking.experiment=made-elsewhere"]), "probe"):
        pass
    assert mlflow.get_experiment_by_name("made-elsewhere").tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_pipeline_run_carries_the_headline_figures(tiny_pipeline, runs):
    from pipeline.evaluation.faithfulness import flat_metrics

    parent = runs["pipeline"].data
    evaluated = _read(tiny_pipeline, "evaluate", "metrics.json")
    decision = _read(tiny_pipeline, "promote", "decision.json")
    faith = _read(tiny_pipeline, "explain", "faithfulness.json")
    assert parent.metrics["test.accuracy"] == pytest.approx(evaluated["model"]["accuracy"])
    assert parent.metrics["test.macro_f1"] == pytest.approx(evaluated["model"]["macro_f1"])
    assert parent.metrics["baseline.accuracy"] == pytest.approx(evaluated["baseline"]["accuracy"])
    assert parent.metrics["baseline.macro_f1"] == pytest.approx(evaluated["baseline"]["macro_f1"])
    assert parent.metrics["gate.passed"] == float(evaluated["gate"]["passed"])
    assert parent.tags["han.verdict"] == decision["verdict"]
    assert parent.metrics["promoted"] == float(decision["verdict"] == "promoted")
    assert parent.tags["han.registered_model"] == "han-demo" and parent.tags["han.model_version"] == decision["version"]
    # Comprehensiveness and sufficiency at every k, attention and random, as the explain run names them.
    faithfulness = {k: v for k, v in parent.metrics.items() if k.startswith("faithfulness.")}
    expected = {**flat_metrics(faith), "faithfulness.evidence_hit_rate": faith["evidence"]["hit_rate"]}
    assert faithfulness == pytest.approx(expected)
    assert {f"faithfulness.{m}.{kind}.k{k}" for m in ("comprehensiveness", "sufficiency")
            for kind in ("attention", "random") for k in faith["ks"]} <= set(faithfulness)
    assert faithfulness == pytest.approx({k: v for k, v in runs["explain"].data.metrics.items() if k in faithfulness})


def test_each_stage_run_spans_the_work_its_stage_measured(tiny_pipeline, runs):
    measured = {"preprocess": _read(tiny_pipeline, "preprocess", "stats.json")["seconds"],
                "train": _read(tiny_pipeline, "train", "manifest.json")["train_seconds"],
                "evaluate": _read(tiny_pipeline, "evaluate", "metrics.json")["seconds"]}
    parent = runs["pipeline"].info
    for stage, seconds in measured.items():
        info = runs[stage].info
        assert (info.end_time - info.start_time) / 1000 >= seconds, stage
        assert parent.start_time <= info.start_time and info.end_time <= parent.end_time, stage
    # A run opened with its stage's start time is otherwise one that mlflow.start_run opens.
    tags = runs["evaluate"].data.tags
    assert tags["mlflow.parentRunId"] == parent.run_id and tags["mlflow.runName"] == "evaluate"
    assert "mlflow.user" in tags and "mlflow.source.name" in tags
    assert runs["evaluate"].info.status == "FINISHED"


def test_learning_rate_is_the_rate_each_epoch_trained_with(tiny_pipeline, runs):
    import keras
    import mlflow

    from pipeline.training.optimization import current_learning_rate

    history = mlflow.MlflowClient().get_metric_history(runs["train"].info.run_id, "learning_rate")
    rates = [m.value for m in sorted(history, key=lambda m: m.step)]
    # Epoch 1 starts at the configured rate (the decimal, not float32's 0.0020000000949949026); epoch 2
    # at the cosine's midpoint; never the 0 the schedule reaches after the last step.
    assert rates[0] == 0.002
    assert rates[1] == pytest.approx(0.001, rel=1e-6)
    assert current_learning_rate(keras.optimizers.Adam(learning_rate=0.002)) == 0.002


def test_runs_name_the_splits_they_read_as_datasets(tiny_pipeline, runs):
    fingerprint = _read(tiny_pipeline, "preprocess", "manifest.json")["fingerprint"]
    documents = _read(tiny_pipeline, "preprocess", "stats.json")["documents"]
    expected = {"preprocess": ["test", "train", "validation"], "train": ["train", "validation"], "evaluate": ["test"]}
    for stage, splits in expected.items():
        inputs = runs[stage].inputs.dataset_inputs
        contexts = {i.tags[0].value: i.dataset for i in inputs if i.tags[0].key == "mlflow.data.context"}
        assert sorted(contexts) == splits, stage
        for split, dataset in contexts.items():
            assert dataset.name == f"demo-{split}" and dataset.digest == fingerprint[:16]
            assert json.loads(dataset.profile) == {"documents": documents[split]}
            assert dataset.source_type == "code" and json.loads(dataset.source)["tags"]["num_documents"] == "200"
    assert not runs["promote"].inputs.dataset_inputs


def test_a_dataset_read_from_a_path_has_that_path_as_its_source(tiny_pipeline, runs, tmp_path):
    import mlflow

    from pipeline.config import load_config
    from pipeline.tracking import log_datasets, stage_run

    data = tmp_path / "reviews.csv"
    data.write_text("text,label\nGood film.,pos\n")
    # Its own experiment: MLflow keeps one source per dataset name and digest (the demo's, in "demo").
    config = load_config(None, [*TINY, "data.format=csv", f"data.path={data}", "tracking.experiment=csv"])
    with stage_run(config, "probe") as run:
        log_datasets(config, tiny_pipeline.config.stage_dir("preprocess"), ["test"])
    (logged,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert logged.dataset.source_type == "local" and str(data) in logged.dataset.source
