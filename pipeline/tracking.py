"""MLflow tracking: where runs go, and one run per stage (nested under a pipeline run when one is open).

Faults: a tracking server that does not answer is reported within seconds, before any run
is opened or any work is done (``connect``), and MLflow's HTTP retries are bounded (about ten
seconds in all, not MLflow's default of minutes) so a server that dies mid-stage stops the
stage quickly. A process killed with its run open (``kill -9``, a lost server) cannot close
that run; every run records its host and process, and the next stage started on that host
marks runs whose process is gone as KILLED (``close_orphaned_runs``).

Review: a stage's run spans the stage's work (``stage_run(started=...)``), the runs that read the
preprocessed splits name them as datasets (``log_datasets``), and the parent run of a pipeline
carries its headline figures (``log_pipeline_summary``). The project's experiments are marked as
model training, and the links printed open the UI's model-training view (``run_url``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping, Sequence
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

# MLflow's experiment type ("Machine learning" vs "GenAI apps & agents"), the tag its UI's selector writes.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
# MLflow 3.17's UI picks its view per browser (the sidebar's GenAI / Model training switch, GenAI until
# changed), not from that tag; this query parameter of a link opens the model-training view.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


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
    """Create the experiment when missing and make it current, marked as model training (new or not)."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        try:
            mlflow.create_experiment(name, artifact_location=_artifact_root(uri),
                                     tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        except Exception:  # created concurrently by another process: fine, use it
            if mlflow.get_experiment_by_name(name) is None:
                raise
    elif experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    mlflow.set_experiment(name)


def _start_run(mlflow, experiment: str, run_name: str, nested: bool, tags: Mapping[str, str], started: float | None):
    """``mlflow.start_run``, with the run's start time set to ``started`` (a ``time.perf_counter()``
    reading) when given: the stage's work began then, before its run was opened."""
    if started is None:
        return mlflow.start_run(run_name=run_name, nested=nested, tags=dict(tags))
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    # What start_run does for a new run (parent tag, run name, source/user/git tags), with a start time.
    parent = mlflow.active_run()
    all_tags = {**tags, MLFLOW_RUN_NAME: run_name}
    if parent is not None:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent.info.run_id
    start_ms = int((time.time() - (time.perf_counter() - started)) * 1000)
    experiment_id = (parent.info if parent is not None else mlflow.get_experiment_by_name(experiment)).experiment_id
    created = mlflow.MlflowClient().create_run(experiment_id, start_time=start_ms, tags=resolve_tags(all_tags),
                                               run_name=run_name)
    return mlflow.start_run(run_id=created.info.run_id, nested=nested)


@contextlib.contextmanager
def stage_run(config: PipelineConfig, stage: str, extra_tags: Mapping[str, str] | None = None,
              run_name: str | None = None, started: float | None = None) -> Iterator[Any]:
    """Open an MLflow run for one stage (named ``run_name``, default the stage), nested when a
    pipeline or sweep run is already active.

    ``started``: the ``time.perf_counter()`` at which the stage's work began, when that was before
    this run opens; the run's start time is set to it, so its duration is the stage's.
    Every config value is logged as a param, so a run can be reproduced from the UI alone.
    """
    mlflow = connect()
    parent = mlflow.active_run()
    experiment = config.tracking.experiment or config.name
    if parent is None:
        _use_experiment(mlflow, experiment, tracking_uri())
        close_orphaned_runs(mlflow, mlflow.get_experiment_by_name(experiment).experiment_id)
    tags = {"han.stage": stage, "han.pipeline": config.name, **_process_tags(), **(extra_tags or {})}
    with _start_run(mlflow, experiment, run_name or stage, parent is not None, tags, started) as run:
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


def run_url(run: Any, base: str = "http://127.0.0.1:5000") -> str:
    """Where a run is found, in the model-training view, in the MLflow UI of ``make ui`` (default port)."""
    return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?{MODEL_TRAINING_VIEW}"


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


def log_datasets(config: PipelineConfig, prep_dir: Path, splits: Sequence[str]) -> None:
    """Name the preprocessed ``splits`` this stage read as the active run's datasets (context: the split).

    Metadata only, no text is loaded: the digest is the preprocessing's fingerprint (a change of
    data or preprocessing is a new digest), the source is ``data.path`` (the generator's settings
    for the demo corpus), the profile the split's documents.
    """
    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, DataType, Schema

    from pipeline.artifacts import read_json, read_manifest

    fingerprint = str((read_manifest(prep_dir) or {}).get("fingerprint"))
    documents = read_json(prep_dir / "stats.json")["documents"]
    path = config.resolved_data_path()
    if path is None:
        source = CodeDatasetSource({"generator": "pipeline.data.demo", "seed": str(config.seed),
                                    **{k: str(v) for k, v in config.data.demo.model_dump().items()}})
    else:
        with warnings.catch_warnings():  # MLflow registers its local source for two schemes, and says so
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
            source = resolve_dataset_source(str(path.resolve()))
    schema = Schema([ColSpec(DataType.string, name) for name in ("id", "text", "label")])

    class SplitDataset(MetaDataset):
        def __init__(self, split: str) -> None:
            self.documents = int(documents[split])
            super().__init__(source, name=f"{config.name}-{split}", digest=fingerprint[:16], schema=schema)

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps({"documents": self.documents})}

    mlflow.log_inputs([SplitDataset(split) for split in splits], contexts=list(splits), tags_list=[None] * len(splits))


def log_pipeline_summary(config: PipelineConfig, stages: Sequence[str]) -> dict[str, float]:
    """Put the headline figures of the pipeline's ``stages`` that have them on the active (parent) run.

    From the stages' outputs: ``evaluate``: test accuracy and macro F1, the baseline's, the gate
    (1 = passed), the model version; ``promote``: the verdict (tag, and ``promoted`` 1/0) and the
    champion after it; ``explain``: the faithfulness figures, as the explain run names them. Only
    the given stages are read, so a stage skipped in this pipeline run shows no stale figures.
    Returns the metrics logged.
    """
    import mlflow

    from pipeline.artifacts import read_json

    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    if "evaluate" in stages:
        evaluated = read_json(config.stage_dir("evaluate") / "metrics.json")
        for prefix, scores in (("test", evaluated["model"]), ("baseline", evaluated.get("baseline"))):
            if scores is not None:
                metrics.update({f"{prefix}.accuracy": float(scores["accuracy"]),
                                f"{prefix}.macro_f1": float(scores["macro_f1"])})
        metrics["gate.passed"] = float(evaluated["gate"]["passed"])
        trained = (evaluated.get("train") or {}).get("mlflow") or {}
        tags.update({"han.registered_model": str(trained.get("registered_model")),
                     "han.model_version": str(trained.get("registered_version"))})
    if "promote" in stages:
        decision = read_json(config.stage_dir("promote") / "decision.json")
        metrics["promoted"] = float(decision["verdict"] == "promoted")
        tags.update({"han.verdict": decision["verdict"], "han.registered_model": decision["registered_model"],
                     "han.model_version": str(decision["version"]), "han.champion": str(decision["champion_after"])})
    if "explain" in stages:
        from pipeline.faithfulness import flat_metrics

        faith = read_json(config.stage_dir("explain") / "faithfulness.json")
        metrics.update(flat_metrics(faith))
        if "evidence" in faith:
            metrics["faithfulness.evidence_hit_rate"] = float(faith["evidence"]["hit_rate"])
    if metrics:
        mlflow.log_metrics(metrics)
    if tags:
        mlflow.set_tags(tags)
    return metrics
