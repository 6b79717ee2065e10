"""MLflow tracking: where runs go, and one run per stage (nested under a pipeline run when one is open).

Faults: a tracking server that does not answer is reported within seconds, before any run
is opened or any work is done (``connect``), and MLflow's HTTP retries are bounded (about ten
seconds in all, not MLflow's default of minutes) so a server that dies mid-stage stops the
stage quickly. A process killed with its run open (``kill -9``, a lost server) cannot close
that run; every run records its host and process, and the next stage started on that host
marks runs whose process is gone as KILLED (``close_orphaned_runs``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.config import PROJECT_ROOT, PipelineConfig

# MLflow's per-file download progress bars only clutter the stage output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# MLflow caps a param value at 6000 characters; longer values (label lists) are cut visibly.
_PARAM_MAX = 500


# Bounded retries against a tracking server (each may be overridden in the environment).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
PROBE_TIMEOUT_SECONDS = 5.0


class TrackingUnavailable(RuntimeError):
    """The tracking server does not answer; the message names it and what to do."""


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


def check_reachable(uri: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
    """Raise ``TrackingUnavailable`` unless the tracking server at ``uri`` answers (HTTP URIs only)."""
    if not uri.startswith(("http://", "https://")):
        return
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered (a proxy, authentication): MLflow's own calls say more
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingUnavailable(
            f"the MLflow tracking server at {uri} does not answer ({reason}); start it (e.g. `mlflow server "
            "--host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db`), fix MLFLOW_TRACKING_URI, "
            "or unset MLFLOW_TRACKING_URI to track into the project's SQLite store"
        ) from None


def connect():
    """Point MLflow at ``tracking_uri()`` once its server is known to answer; returns the mlflow module."""
    import mlflow  # slow import: only stages that log pay for it

    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return mlflow


def _process_tags() -> dict[str, str]:
    import psutil

    return {"han.host": socket.gethostname(), "han.pid": str(os.getpid()),
            "han.process_started": f"{psutil.Process().create_time():.3f}"}


def _alive(pid: int, started: float) -> bool:
    import psutil

    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0  # the same process, not a reused pid
    except (psutil.Error, ValueError):
        return False


def close_orphaned_runs(mlflow, experiment_id: str) -> list[str]:
    """Mark RUNNING runs of this host whose process has died as KILLED; return their ids."""
    active = mlflow.active_run()
    host = socket.gethostname().replace("'", "")
    runs = mlflow.search_runs([experiment_id], output_format="list", max_results=200,
                              filter_string=f"attributes.status = 'RUNNING' and tags.`han.host` = '{host}'")
    closed = []
    for run in runs:
        tags = run.data.tags
        if active is not None and run.info.run_id == active.info.run_id:
            continue
        try:
            pid, started = int(tags["han.pid"]), float(tags["han.process_started"])
        except (KeyError, ValueError):
            continue
        if not _alive(pid, started):
            mlflow.MlflowClient().set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
            print(f"tracking: run {run.info.run_id} ({tags.get('han.stage', '?')}) was left RUNNING by a process "
                  f"that died (pid {pid}): marked KILLED", flush=True)
    return closed


def _use_experiment(mlflow, name: str, uri: str) -> None:
    if mlflow.get_experiment_by_name(name) is None:
        try:
            mlflow.create_experiment(name, artifact_location=_artifact_root(uri))
        except Exception:  # created concurrently by another process: fine, use it
            if mlflow.get_experiment_by_name(name) is None:
                raise
    mlflow.set_experiment(name)


@contextlib.contextmanager
def stage_run(config: PipelineConfig, stage: str, extra_tags: Mapping[str, str] | None = None,
              run_name: str | None = None) -> Iterator[Any]:
    """Open an MLflow run for one stage (named ``run_name``, default the stage), nested when a
    pipeline or sweep run is already active.

    Every config value is logged as a param, so a run can be reproduced from the UI alone.
    """
    mlflow = connect()
    parent = mlflow.active_run()
    if parent is None:
        _use_experiment(mlflow, config.tracking.experiment or config.name, tracking_uri())
        close_orphaned_runs(mlflow, mlflow.get_experiment_by_name(config.tracking.experiment or config.name).experiment_id)
    tags = {"han.stage": stage, "han.pipeline": config.name, **_process_tags(), **(extra_tags or {})}
    with mlflow.start_run(run_name=run_name or stage, nested=parent is not None, tags=tags) as run:
        mlflow.log_params(flatten(config.to_dict()))
        yield run


@contextlib.contextmanager
def pipeline_run(config: PipelineConfig, stages: list[str]) -> Iterator[Any]:
    """The parent run of ``python -m pipeline run``: each stage's run nests under it."""
    mlflow = connect()
    _use_experiment(mlflow, config.tracking.experiment or config.name, tracking_uri())
    close_orphaned_runs(mlflow, mlflow.get_experiment_by_name(config.tracking.experiment or config.name).experiment_id)
    tags = {"han.stage": "pipeline", "han.pipeline": config.name, "han.stages": ",".join(stages), **_process_tags()}
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
    mlflow = connect()
    _use_experiment(mlflow, config.tracking.experiment or config.name, tracking_uri())
    experiment = mlflow.get_experiment_by_name(config.tracking.experiment or config.name)
    close_orphaned_runs(mlflow, experiment.experiment_id)
    escaped = key.replace("'", "\\'")
    found = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.`han.schedule_key` = '{escaped}'",
                               output_format="list", max_results=1)
    if found:
        with mlflow.start_run(run_id=found[0].info.run_id) as run:
            mlflow.set_tags(_process_tags())  # this task's process holds it now
            yield run
        return
    all_tags = {"han.stage": "pipeline", "han.pipeline": config.name, "han.schedule_key": key, **tags,
                **_process_tags()}
    with mlflow.start_run(run_name=f"retrain-{config.name}", tags=all_tags) as run:
        mlflow.log_params(flatten(config.to_dict()))
        yield run
