"""MLflow tracking: where runs go, and one run per stage (nested under a pipeline run when one is open)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.config import PROJECT_ROOT, PipelineConfig

# MLflow's per-file download progress bars only clutter the stage output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# MLflow caps a param value at 6000 characters; longer values (label lists) are cut visibly.
_PARAM_MAX = 500


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the project's SQLite store ``mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become their string form."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            text = str(value)
            flat[dotted] = text if len(text) <= _PARAM_MAX else text[: _PARAM_MAX - 3] + "..."
    return flat


def _artifact_root(uri: str) -> str | None:
    """For a SQLite store, artifacts live beside the database (``mlartifacts/``), not in the cwd."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return None


def _use_experiment(mlflow, name: str, uri: str) -> None:
    if mlflow.get_experiment_by_name(name) is None:
        try:
            mlflow.create_experiment(name, artifact_location=_artifact_root(uri))
        except Exception:  # created concurrently by another process: fine, use it
            if mlflow.get_experiment_by_name(name) is None:
                raise
    mlflow.set_experiment(name)


@contextlib.contextmanager
def stage_run(config: PipelineConfig, stage: str, extra_tags: Mapping[str, str] | None = None) -> Iterator[Any]:
    """Open an MLflow run for one stage, nested when a pipeline run is already active.

    Every config value is logged as a param, so a run can be reproduced from the UI alone.
    """
    import mlflow  # slow import: only stages that log pay for it

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    parent = mlflow.active_run()
    if parent is None:
        _use_experiment(mlflow, config.tracking.experiment or config.name, uri)
    tags = {"han.stage": stage, "han.pipeline": config.name, **(extra_tags or {})}
    with mlflow.start_run(run_name=stage, nested=parent is not None, tags=tags) as run:
        mlflow.log_params(flatten(config.to_dict()))
        yield run


@contextlib.contextmanager
def pipeline_run(config: PipelineConfig, stages: list[str]) -> Iterator[Any]:
    """The parent run of ``python -m pipeline run``: each stage's run nests under it."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    _use_experiment(mlflow, config.tracking.experiment or config.name, uri)
    tags = {"han.stage": "pipeline", "han.pipeline": config.name, "han.stages": ",".join(stages)}
    with mlflow.start_run(run_name=f"pipeline-{config.name}", tags=tags) as run:
        mlflow.log_params(flatten(config.to_dict()))
        yield run


def run_url(run: Any) -> str:
    """Where a run is found in the MLflow UI started by ``make ui`` (default port)."""
    return f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"


@contextlib.contextmanager
def scheduled_run(config: PipelineConfig, key: str, tags: Mapping[str, str]) -> Iterator[Any]:
    """The parent run of one scheduled (Airflow) pipeline run, reopened by each of its tasks.

    ``key`` (the DAG run id) finds the run again, so the stages of one DAG run nest under one
    parent in the MLflow UI wherever and however often (retries) their tasks run.
    """
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    _use_experiment(mlflow, config.tracking.experiment or config.name, uri)
    experiment = mlflow.get_experiment_by_name(config.tracking.experiment or config.name)
    escaped = key.replace("'", "\\'")
    found = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.`han.schedule_key` = '{escaped}'",
                               output_format="list", max_results=1)
    if found:
        with mlflow.start_run(run_id=found[0].info.run_id) as run:
            yield run
        return
    all_tags = {"han.stage": "pipeline", "han.pipeline": config.name, "han.schedule_key": key, **tags}
    with mlflow.start_run(run_name=f"retrain-{config.name}", tags=all_tags) as run:
        mlflow.log_params(flatten(config.to_dict()))
        yield run
