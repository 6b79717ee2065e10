"""MLflow tracking: where runs go, and one run per stage (nested under a pipeline run when one is open).

Faults: a tracking server that does not answer is reported within seconds, before any run
is opened or any work is done (``connect``), and MLflow's HTTP retries are bounded (about ten
seconds in all, not MLflow's default of minutes) so a server that dies mid-stage stops the
stage quickly. A process killed with its run open (``kill -9``, a lost server) cannot close
that run; every run records its host and process, and the next stage started on that host
marks runs whose process is gone as KILLED (``close_orphaned_runs``).

A SQLite store that another process holds locked, or whose disk is full, is found before a
command does its work (``check_store_writable``: a lock is waited out for up to
``HAN_TRACKING_LOCK_WAIT`` seconds, default MLflow's own 20) and again before a stage commits its
outputs; one that fails later is reported as plainly (``describe_store_error``), and a run the
store refuses to close is named, for the next stage marks it KILLED.

Review: a stage's run spans the stage's work (``stage_run(started=...)``), the runs that read the
preprocessed splits name them as datasets (``log_datasets``), and the parent run of a pipeline
carries its headline figures (``log_pipeline_summary``). The project's experiments are marked as
model training, and the links printed open the UI's model-training view (``run_url``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import sys
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


class TrackingStoreError(RuntimeError):
    """The tracking store cannot be written (another process holds it locked, its disk is full);
    the message says which, what was left undone and what to do."""


# MLflow waits this long for a locked SQLite store in each of its writes (its ``PRAGMA busy_timeout``).
LOCK_WAIT_ENV, DEFAULT_LOCK_WAIT_SECONDS = "HAN_TRACKING_LOCK_WAIT", 20.0
# Room a stage's runs, params and metrics may need in the store; the check reserves it for a moment.
STORE_HEADROOM_BYTES = 1 << 20
# Runs this process could not close because their store refused the write; the CLI's error names them.
unclosed_runs: list[str] = []


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
    _quiet_store_errors()
    mlflow.set_tracking_uri(uri)
    return mlflow


# --------------------------------------------------------------------------- a store that refuses writes
def store_path(uri: str) -> Path | None:
    """The database file of a SQLite tracking URI (``sqlite:///<path>``), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _lock_wait() -> float:
    value = os.environ.get(LOCK_WAIT_ENV, str(DEFAULT_LOCK_WAIT_SECONDS))
    try:
        return max(0.0, float(value))
    except ValueError:
        raise ValueError(f"{LOCK_WAIT_ENV}={value!r}: expected the seconds to wait for a locked tracking store, "
                         f"e.g. {DEFAULT_LOCK_WAIT_SECONDS:g}") from None


def _store_message(problem: str, consequence: str | None, fix: str) -> str:
    return f"{problem}{f': {consequence}' if consequence else ''}; {fix}"


def _locked_message(uri: str, path: Path, waited: float | None, consequence: str | None) -> str:
    holders = _processes_with_open(path)
    details = ([f"waited {waited:g} s"] if waited is not None else []) + ([f"open in {', '.join(holders)}"] if holders else [])
    return _store_message(
        f"the MLflow tracking store at {uri} is locked by another process"
        + (f" ({'; '.join(details)})" if details else ""), consequence,
        f"wait for it to finish (or stop it), then run the command again, or set MLFLOW_TRACKING_URI to another store "
        f"({LOCK_WAIT_ENV} sets how many seconds to wait, now {_lock_wait():g})")


def _full_message(path: Path, error: BaseException, consequence: str | None) -> str:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e6:,.1f} MB free there now"
    except OSError:
        free = "free space unknown"
    reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
    if getattr(error, "errno", None) == errno.EFBIG:  # not the disk: this process may not write files that large
        return _store_message(f"the tracking store {path} may not grow: {reason}, over this process's file-size "
                              f"limit (`ulimit -f`; {free})", consequence,
                              "raise the limit, or set MLFLOW_TRACKING_URI to another store, then run the command again")
    return _store_message(f"the disk under the tracking store {path} is full ({reason}; {free})", consequence,
                          "free some space there, or set MLFLOW_TRACKING_URI to a store on a larger disk, "
                          "then run the command again")


def _processes_with_open(path: Path) -> list[str]:
    """The other processes that have the database (or its journal) open: among them, the lock's holder."""
    import psutil

    try:
        wanted = {str(path.resolve()) + suffix for suffix in ("", "-journal", "-wal", "-shm")}
    except OSError:
        return []
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if process.pid == os.getpid():
            continue
        try:
            if any(item.path in wanted for item in process.open_files()):
                command = " ".join(" ".join(process.info["cmdline"] or []).split())
                found.append(f"pid {process.pid}: {command[:80] + ('...' if len(command) > 80 else '')}")
        except (psutil.Error, OSError):
            continue
    return found


def _reserve_headroom(path: Path, consequence: str | None) -> None:
    """Reserve ``STORE_HEADROOM_BYTES`` beside the store for a moment: a full disk, a quota or a file-size
    limit (``ulimit -f``) says no here, before the work, instead of in the middle of logging a run."""
    from pipeline.artifacts import is_disk_full

    probe = path.parent / f".{path.name}.space-check-{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                os.posix_fallocate(descriptor, 0, STORE_HEADROOM_BYTES)
            except OSError as err:
                if is_disk_full(err):
                    raise
                os.write(descriptor, bytes(STORE_HEADROOM_BYTES))  # a file system without fallocate
        finally:
            os.close(descriptor)
    except OSError as err:
        if is_disk_full(err):
            raise TrackingStoreError(_full_message(path, err, consequence)) from None
        raise TrackingStoreError(_store_message(
            f"cannot write beside the tracking store {path} ({err.strerror or err})", consequence,
            "make the folder writable, or set MLFLOW_TRACKING_URI to a store in a writable folder")) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def _try_write_lock(path: Path, timeout: float) -> bool:
    """Take the database's write lock and give it back at once; False when another process held it past ``timeout``."""
    import sqlite3

    try:
        connection = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    except sqlite3.Error:
        return True  # not openable as SQLite: MLflow's own error says more
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
    except sqlite3.OperationalError as err:
        if "locked" in str(err) or "busy" in str(err):
            return False
    except sqlite3.Error:
        pass  # not a lock: MLflow's own error says more
    finally:
        connection.close()
    return True


def check_store_writable(uri: str | None = None, consequence: str | None = "nothing was done") -> None:
    """Raise ``TrackingStoreError`` unless the SQLite store at ``uri`` (default: ``tracking_uri()``) can be
    written now: its disk has room and no other process holds its write lock past ``HAN_TRACKING_LOCK_WAIT``
    seconds (a shorter one is waited out, and said so past a second). ``consequence``: what the message says was left
    undone. Other stores (a tracking server) are the server's to check."""
    uri = uri or tracking_uri()
    path = store_path(uri)
    if path is None:
        return
    _reserve_headroom(path, consequence)
    wait = _lock_wait()
    quietly = min(wait, 1.0)  # another process's ordinary write holds the lock for milliseconds: not worth a line
    if not path.is_file() or _try_write_lock(path, quietly):
        return
    holders = _processes_with_open(path)
    print(f"tracking: the MLflow tracking store {path} is locked by another process"
          f"{f' (open in {holders[0]})' if holders else ''}; waiting up to {wait:g} s for it", file=sys.stderr, flush=True)
    if not _try_write_lock(path, wait - quietly):
        raise TrackingStoreError(_locked_message(uri, path, wait, consequence))


def check_before_commit() -> None:
    """``check_store_writable`` just before a stage puts its outputs in place (inside its atomic directory):
    a store found locked or full after the commit would leave outputs that no run records."""
    check_store_writable(consequence="the stage's new outputs were not put in place (the previous ones are unchanged)")


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def describe_store_error(error: BaseException) -> str | None:
    """A plain message when ``error`` comes from the SQLite tracking store refusing a write (locked, its disk
    full) instead of SQLAlchemy's; None when it is something else."""
    from pipeline.artifacts import is_disk_full

    if isinstance(error, TrackingStoreError):
        return str(error)
    uri = tracking_uri()
    path = store_path(uri)
    if path is None:
        return None
    store_files = (path.resolve().parent / "mlartifacts", path.resolve())
    for cause in _causes(error):
        if is_disk_full(cause) and cause.filename and any(
                Path(str(cause.filename)).resolve().is_relative_to(place) for place in store_files):
            return _full_message(path, cause, None)
        if not type(cause).__module__.startswith(("sqlite3", "sqlalchemy", "mlflow")):
            continue  # the words below are SQLite's: only what SQLite, SQLAlchemy or MLflow raised is read
        text = str(cause)
        if "database is locked" in text:
            return _locked_message(uri, path, None, None)
        if "database or disk is full" in text:
            return _full_message(path, OSError("database or disk is full"), None)
        if "disk I/O error" in text:
            return _store_message(f"the MLflow tracking store {path} could not be written (disk I/O error)", None,
                                  "check the disk under it (full? a file-size limit, `ulimit -f`? failing?), or set "
                                  "MLFLOW_TRACKING_URI to a store on another disk, then run the command again")
    return None


class _ReportedByTheCommand(logging.Filter):
    """MLflow logs each failed store write with its traceback before raising it; the command reports it plainly."""

    def filter(self, record: logging.LogRecord) -> bool:
        return bool(os.environ.get("HAN_DEBUG")) or not record.getMessage().startswith("SQLAlchemy database error")


def _quiet_store_errors() -> None:
    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _ReportedByTheCommand) for f in logger.filters):
        logger.addFilter(_ReportedByTheCommand())


@contextlib.contextmanager
def _closed_on_exit(active: Any) -> Iterator[Any]:
    """``with active`` (an ``mlflow.start_run``), except that a store refusing to close the run (locked,
    full) neither hides the error that ended the stage nor goes unsaid: the run goes to ``unclosed_runs``."""
    import mlflow

    def end(status: str, raising: bool) -> None:
        current = mlflow.active_run()
        if current is None or current.info.run_id != active.info.run_id:
            return  # already ended inside
        try:
            mlflow.end_run(status)  # takes the run off MLflow's stack before writing its status
        except Exception:
            unclosed_runs.append(active.info.run_id)
            if raising:
                raise

    try:
        yield active
    except BaseException:
        end("FAILED", raising=False)
        raise
    end("FINISHED", raising=True)


def unclosed_runs_note() -> str:
    """What the error message adds when runs were left RUNNING; empty when none were."""
    if not unclosed_runs:
        return ""
    runs, them = (f"run {unclosed_runs[0]}", "it") if len(unclosed_runs) == 1 else (f"runs {', '.join(unclosed_runs)}", "them")
    return f" (the store refused to close MLflow {runs} too; the next command on this host marks {them} KILLED)"


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
    with _closed_on_exit(_start_run(mlflow, experiment, run_name or stage, parent is not None, tags, started)) as run:
        mlflow.log_params(flatten(config.to_dict()))
        yield run


@contextlib.contextmanager
def pipeline_run(config: PipelineConfig, stages: list[str]) -> Iterator[Any]:
    """The parent run of ``python -m pipeline run``: each stage's run nests under it."""
    mlflow = connect()
    _use_experiment(mlflow, config.tracking.experiment or config.name, tracking_uri())
    close_orphaned_runs(mlflow, mlflow.get_experiment_by_name(config.tracking.experiment or config.name).experiment_id)
    tags = {"han.stage": "pipeline", "han.pipeline": config.name, "han.stages": ",".join(stages), **_process_tags()}
    with _closed_on_exit(mlflow.start_run(run_name=f"pipeline-{config.name}", tags=tags)) as run:
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
        with _closed_on_exit(mlflow.start_run(run_id=found[0].info.run_id)) as run:
            mlflow.set_tags(_process_tags())  # this task's process holds it now
            yield run
        return
    all_tags = {"han.stage": "pipeline", "han.pipeline": config.name, "han.schedule_key": key, **tags,
                **_process_tags()}
    with _closed_on_exit(mlflow.start_run(run_name=f"retrain-{config.name}", tags=all_tags)) as run:
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
    paths = config.resolved_data_paths()  # {None: path}, or one per split (a split without one is carved from train)
    sources: dict[str | None, Any] = {}
    for key, path in paths.items():
        with warnings.catch_warnings():  # MLflow registers its local source for two schemes, and says so
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
            sources[key] = resolve_dataset_source(str(path.resolve()))
    if not sources:
        sources[None] = CodeDatasetSource({"generator": "pipeline.data.demo", "seed": str(config.seed),
                                           **{k: str(v) for k, v in config.data.demo.model_dump().items()}})
    schema = Schema([ColSpec(DataType.string, name) for name in ("id", "text", "label")])

    class SplitDataset(MetaDataset):
        def __init__(self, split: str) -> None:
            self.documents = int(documents[split])
            source = sources.get(split) or sources.get("train") or sources[None]
            super().__init__(source, name=f"{config.name}-{split}", digest=fingerprint[:16], schema=schema)

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps({"documents": self.documents})}

    mlflow.log_inputs([SplitDataset(split) for split in splits], contexts=list(splits), tags_list=[None] * len(splits))


def log_pipeline_summary(config: PipelineConfig, stages: Sequence[str]) -> dict[str, float]:
    """Put the headline figures of the pipeline's ``stages`` that have them on the active (parent) run.

    From the stages' outputs: ``evaluate``: test accuracy, macro and micro F1, the baseline's, the gate
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
                metrics.update({f"{prefix}.{name}": float(scores[name])
                                for name in ("accuracy", "macro_f1", "micro_f1") if name in scores})
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
        from pipeline.evaluation.faithfulness import flat_metrics

        faith = read_json(config.stage_dir("explain") / "faithfulness.json")
        metrics.update(flat_metrics(faith))
        if "evidence" in faith:
            metrics["faithfulness.evidence_hit_rate"] = float(faith["evidence"]["hit_rate"])
    if metrics:
        mlflow.log_metrics(metrics)
    if tags:
        mlflow.set_tags(tags)
    return metrics
