"""A tiny raw-text model registered as ``han-demo`` version 1 (@champion) in its own MLflow store,
without training (its weights are the initial ones) and without the DAG: what the loaders and the
server need, in seconds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import pytest

from pipeline.artifacts import read_json
from pipeline.data.vocab import Vocabulary
from pipeline.model.han import build_han
from pipeline.serving.bundle import log_raw_text_model, write_bundle
from pipeline.stages import preprocess
from tests.stages.conftest import Workspace, make_workspace

TINY = ["data.demo.num_documents=200", "model.embedding.dim=16", "model.word_units=8", "model.sentence_units=8",
        "model.word_attention.context_dim=8", "model.sentence_attention.context_dim=8"]


@dataclass
class Registered:
    workspace: Workspace
    name: str
    version: str

    @property
    def model_dir(self) -> Path:
        """The logged model's folder in the artifact store (under ``mlartifacts/``, beside the SQLite store)."""
        (mlmodel,) = (self.workspace.root / "mlartifacts").rglob("MLmodel")
        return mlmodel.parent


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Registered:
    import mlflow

    workspace = make_workspace(tmp_path_factory.mktemp("registered"), TINY)
    with pytest.MonkeyPatch.context() as patch:
        workspace.activate(patch)
        config = workspace.config
        out = preprocess.run(config).output_dir
        keras.utils.set_random_seed(0)
        model = build_han(config.model, vocab_size=len(Vocabulary.load(out / "vocab.json")),
                          num_classes=len(read_json(out / "labels.json")))
        model.save(workspace.root / "model.keras")
        bundle = write_bundle(workspace.root / "bundle", workspace.root / "model.keras", out)
        experiment = mlflow.create_experiment("registered", (workspace.root / "mlartifacts").as_uri())
        name = config.tracking.registered_model
        with mlflow.start_run(experiment_id=experiment):
            info = log_raw_text_model(bundle, registered_model_name=name,
                                      example_texts=["The match ended early. Everyone went home."])
        version = str(info.registered_model_version)
        mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    return Registered(workspace, name, version)
