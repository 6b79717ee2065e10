"""A small demo pipeline (preprocess -> train -> evaluate) run once per test module, for the stage tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.config import PipelineConfig, load_config

# Small enough for 2 CPU cores in seconds, big enough to learn the demo corpus well.
SMALL = [
    "data.demo.num_documents=800", "model.embedding.dim=32", "model.word_units=16", "model.sentence_units=16",
    "model.word_attention.context_dim=16", "model.sentence_attention.context_dim=16",
    "train.epochs=8", "train.learning_rate=0.005", "train.batch_size=16", "train.early_stopping.patience=0",
    "evaluate.gate.min_accuracy=0.0",
]


def set_args(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


@dataclass
class Workspace:
    root: Path
    env: dict[str, str]
    overrides: list[str]

    @property
    def config(self) -> PipelineConfig:
        return load_config(None, self.overrides)

    def activate(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
        import mlflow

        mlflow.set_tracking_uri(self.env["MLFLOW_TRACKING_URI"])


def make_workspace(root: Path, overrides: list[str] | None = None) -> Workspace:
    return Workspace(root, {"HAN_ARTIFACTS_DIR": str(root / "artifacts"),
                            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}, list(overrides or SMALL))


@pytest.fixture(scope="module")
def demo_pipeline(tmp_path_factory) -> Workspace:
    """``python -m pipeline run`` on the small demo config, in its own artifacts dir and MLflow store."""
    workspace = make_workspace(tmp_path_factory.mktemp("pipeline"))
    with pytest.MonkeyPatch.context() as patch:
        workspace.activate(patch)
        assert main(["run", *set_args(workspace.overrides)]) == 0
    return workspace


@pytest.fixture
def workspace(demo_pipeline, monkeypatch) -> Workspace:
    """The module's pipeline workspace, made current for this test (env and MLflow URI)."""
    demo_pipeline.activate(monkeypatch)
    return demo_pipeline
