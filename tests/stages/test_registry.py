"""Several datasets in one tracking store, and one dataset over several stores.

Each pipeline registers its own model (``han-<name>``) with its own champion; a champion trained
on other labels is never served for a config; evaluate re-scores a champion over a test split
larger than the raw-text model's request limit; and a pipeline whose outputs are cached still
completes against a new, empty store (its model logged there from disk, not retrained) while an
unreachable store fails fast.
"""

from __future__ import annotations

import json
import socket
import time

import mlflow
import pytest

from pipeline.__main__ import main
from pipeline.artifacts import read_json, sha256_file
from pipeline.config import load_config
from pipeline.registry import ARTIFACT_SHA256_TAG, verified_model
from pipeline.serving.serve import ServeError, serve_command
from tests.stages.conftest import make_workspace, set_args

# Tiny: the model need not be good, only trained, registered and promoted.
TINY = ["data.demo.num_documents=200", "model.embedding.dim=16", "model.word_units=8", "model.sentence_units=8",
        "model.word_attention.context_dim=8", "model.sentence_attention.context_dim=8", "train.epochs=2",
        "train.batch_size=16", "evaluate.gate.min_accuracy=0.0", "explain.random_draws=1"]
OTHER = [*TINY, "name=other", "data.demo.num_classes=5"]


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """The demo pipeline (4 classes) and another (5 classes) run in one store, as ``make pipeline`` runs them."""
    workspace = make_workspace(tmp_path_factory.mktemp("registry"), TINY)
    with pytest.MonkeyPatch.context() as patch:
        workspace.activate(patch)
        assert main(["run", *set_args(TINY)]) == 0
        assert main(["run", *set_args(OTHER)]) == 0
    return workspace


@pytest.fixture
def store(two_datasets, monkeypatch):
    two_datasets.activate(monkeypatch)
    return two_datasets


def test_each_dataset_has_its_own_registered_model_and_champion(store):
    client = mlflow.MlflowClient()
    demo = client.get_model_version_by_alias("han-demo", "champion")
    other = client.get_model_version_by_alias("han-other", "champion")
    assert demo.tags["han.pipeline"] == "demo" and other.tags["han.pipeline"] == "other"
    assert len(json.loads(demo.tags["han.labels"])) == 4 and len(json.loads(other.tags["han.labels"])) == 5
    assert {m.name for m in client.search_registered_models()} == {"han-demo", "han-other"}
    command = serve_command(load_config(None, OTHER))
    assert command.model_uri == "models:/han-other@champion" and command.version == str(other.version)


def test_a_champion_trained_on_other_labels_is_refused_not_served(store):
    # The 5-class pipeline pointed at the 4-class pipeline's registered model, as a shared registry did.
    config = load_config(None, [*OTHER, "tracking.registered_model=han-demo"])
    with pytest.raises(ServeError) as refused:
        serve_command(config)
    message = str(refused.value)
    assert "han-demo version 1" in message and "knows the labels" in message and "tracking.registered_model" in message


def test_a_retrain_with_another_seed_rescores_the_champion_over_the_request_limit(store, monkeypatch, capsys):
    # The raw-text model takes at most 15 texts per request here; the test split has 40 documents.
    monkeypatch.setenv("HAN_SERVE_MAX_TEXTS", "15")
    assert main(["run", *set_args([*TINY, "seed=7"])]) == 0
    metrics = read_json(load_config(None, TINY).stage_dir("evaluate") / "metrics.json")
    champion = metrics["champion"]
    assert metrics["test_documents"] == 40 > 15
    assert champion["comparable"] is True and champion["version"] == "1"
    assert champion["metrics"]["documents"] == 40
    client = mlflow.MlflowClient()
    assert client.get_model_version("han-demo", "2").tags["gate.passed"] in ("true", "false")
    # The other dataset's registry is untouched by the demo's retraining.
    assert [str(v.version) for v in client.search_model_versions("name = 'han-other'")] == ["1"]


def test_a_new_empty_store_gets_the_cached_model_without_retraining(store, monkeypatch, capsys, tmp_path):
    config = load_config(None, OTHER)
    train_dir = config.stage_dir("train")
    model_hash = sha256_file(train_dir / "model.keras")
    created_before = read_json(train_dir / "manifest.json")["created"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'new-store.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'new-store.db'}")

    assert main(["run", *set_args(OTHER)]) == 0
    out = capsys.readouterr()
    assert "logged the model on disk there as han-other version 1" in out.err and "not retrained" in out.err
    manifest = read_json(train_dir / "manifest.json")
    assert sha256_file(train_dir / "model.keras") == model_hash and manifest["created"] == created_before
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("han-other", "champion")
    assert champion.run_id == manifest["mlflow"]["run_id"] and champion.tags["gate.passed"] == "true"
    assert manifest["mlflow"]["earlier_store"]["run_id"] != manifest["mlflow"]["run_id"]
    # The run logged from disk has the training's curves, so the new store's UI shows them too.
    history = client.get_metric_history(manifest["mlflow"]["run_id"], "val_loss")
    assert [m.step for m in history] == list(range(1, manifest["epochs_run"] + 1))

    # A second run against the new store finds everything in place: nothing logged again.
    assert main(["run", *set_args(OTHER)]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert len(client.search_model_versions("name = 'han-other'")) == 1


def test_a_version_registered_without_file_hashes_is_registered_again_not_retrained(store, monkeypatch, capsys,
                                                                                    tmp_path):
    """A store from before the hashes were recorded: every loader refuses its versions (B47), so the
    cached train registers the model on disk again, with them."""
    config = load_config(None, OTHER)
    train_dir = config.stage_dir("train")
    model_hash = sha256_file(train_dir / "model.keras")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'old-store.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'old-store.db'}")
    assert main(["train", *set_args(OTHER)]) == 0  # logged from disk there as version 1
    client = mlflow.MlflowClient()
    client.delete_model_version_tag("han-other", "1", ARTIFACT_SHA256_TAG)
    capsys.readouterr()

    assert main(["train", *set_args(OTHER)]) == 0
    err = capsys.readouterr().err
    assert "han-other version 1 of these outputs was registered without the hashes of its files" in err
    assert "registered the model on disk again as version 2" in err and "not retrained" in err
    assert sha256_file(train_dir / "model.keras") == model_hash
    assert read_json(train_dir / "manifest.json")["mlflow"]["registered_version"] == "2"
    assert client.get_model_version("han-other", "2").tags[ARTIFACT_SHA256_TAG]
    assert verified_model("models:/han-other/2") is not None
def test_an_unreachable_tracking_server_fails_fast_with_the_clear_message(store, monkeypatch, capsys):
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    assert main(["run", *set_args(TINY)]) == 2
    assert time.perf_counter() - started < 20
    err = capsys.readouterr().err
    assert f"the MLflow tracking server at http://127.0.0.1:{port} does not answer" in err
    assert "nothing to do" not in err  # it stopped before any stage
