"""Scheduled retraining: preprocess -> train -> evaluate -> promote (-> explain).

Each task calls the same stage function as ``python -m pipeline <stage>`` and hands the next one
artifact paths, fingerprints and MLflow ids (XCom), never data. The model becomes the registry's
``champion`` only when its gate passed; a failed gate ends the run *successfully* with the
champion untouched and the verdict and reasons tagged on the new version (the ``challenger``).

Which pipeline: ``HAN_CONFIG`` (a config path, default ``configs/default.yaml``) and ``HAN_SET``
(space-separated ``key.path=value`` overrides) in the scheduler's environment; a run may override
both with its conf, e.g. ``airflow dags test han_retrain -c '{"set": ["train.epochs=3"]}'``.
Outputs follow ``HAN_ARTIFACTS_DIR`` and ``MLFLOW_TRACKING_URI`` as for the CLI. The schedule,
start date and retries come from the config's ``retrain`` section (default: weekly, no catchup,
2 retries with exponential backoff).

Retries are safe: preprocess and train skip when their inputs and settings are unchanged,
training resumes from its last finished epoch and never registers a model twice, and promote
finds what an interrupted attempt already did. TensorFlow is imported inside the tasks only, so
parsing this file stays fast.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # the scheduler puts dags/ on the path, not the project
    sys.path.insert(0, str(PROJECT_ROOT))

import pendulum  # noqa: E402
from airflow.sdk import Param, dag, get_current_context, task  # noqa: E402

from pipeline.config import PipelineConfig, load_config  # noqa: E402 - light: pydantic and YAML only

CONFIG_ENV, SET_ENV = "HAN_CONFIG", "HAN_SET"
BASE_CONFIG = os.environ.get(CONFIG_ENV) or str(PROJECT_ROOT / "configs" / "default.yaml")
BASE_SET = os.environ.get(SET_ENV, "").split()
SETTINGS = load_config(BASE_CONFIG, BASE_SET).retrain


def _config() -> PipelineConfig:
    """This DAG run's config: the run conf's ``config`` and ``set`` over the scheduler's defaults."""
    params = get_current_context()["params"]
    return load_config(params["config"], [*BASE_SET, *params["set"]])


def _parent(config: PipelineConfig):
    """The MLflow parent run of this DAG run, under which every stage's run nests."""
    from pipeline.tracking import scheduled_run

    context = get_current_context()
    dag_run = context["dag_run"]
    return scheduled_run(config, f"{dag_run.dag_id}/{dag_run.run_id}",
                         {"airflow.dag_id": dag_run.dag_id, "airflow.run_id": dag_run.run_id})


def _same_on_disk(stage_dir: str, fingerprint: str | None, what: str) -> None:
    """The artifacts a task received by path are still the ones its upstream task produced."""
    from pipeline.artifacts import read_manifest

    manifest = read_manifest(Path(stage_dir)) or {}
    if manifest.get("fingerprint") != fingerprint:
        raise RuntimeError(f"{what} in {stage_dir} changed since the upstream task ran (another run?); "
                           "clear this DAG run to start it again")


@dag(
    dag_id=SETTINGS.dag_id,
    description="retrain the HAN and promote it when it beats the champion",
    schedule=SETTINGS.schedule,
    start_date=pendulum.parse(SETTINGS.start_date, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": SETTINGS.retries,
        "retry_delay": timedelta(seconds=SETTINGS.retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(seconds=SETTINGS.max_retry_delay_seconds),
    },
    params={
        "config": Param(BASE_CONFIG, type="string", description="pipeline config (YAML path)"),
        "set": Param([], type="array", items={"type": "string"},
                     description="key.path=value overrides for this run"),
    },
    tags=["han", "retraining"],
    doc_md=__doc__,
)
def han_retrain():
    @task
    def preprocess() -> dict[str, Any]:
        from pipeline.stages import preprocess as stage

        config = _config()
        with _parent(config):
            result = stage.run(config)
        return {"output_dir": str(result.output_dir), "fingerprint": result.manifest["fingerprint"],
                "counts": result.manifest["counts"], "skipped": result.skipped}

    # The train task can go to its own executor queue (the machine with the GPUs); the others run anywhere.
    @task(**({"queue": SETTINGS.train_queue} if SETTINGS.train_queue else {}))
    def train(prep: dict[str, Any]) -> dict[str, Any]:
        from pipeline.stages import train as stage

        config = _config()
        _same_on_disk(prep["output_dir"], prep["fingerprint"], "the preprocessed corpus")
        with _parent(config):
            result = stage.run(config)
        tracked = result.manifest["mlflow"]
        return {"output_dir": str(result.output_dir), "fingerprint": result.manifest["fingerprint"],
                "run_id": tracked["run_id"], "model_uri": tracked["model_uri"],
                "version": tracked["registered_version"], "skipped": result.skipped}

    @task
    def evaluate(trained: dict[str, Any]) -> dict[str, Any]:
        from pipeline.stages import evaluate as stage

        config = _config()
        _same_on_disk(trained["output_dir"], trained["fingerprint"], "the trained model")
        with _parent(config):
            result = stage.run(config)
        gate = result.metrics["gate"]
        return {"output_dir": str(result.output_dir), "version": trained["version"], "passed": gate["passed"],
                "reasons": gate["reasons"], "accuracy": result.metrics["model"]["accuracy"]}

    @task
    def promote(evaluated: dict[str, Any]) -> dict[str, Any]:
        from pipeline.stages import promote as stage
        from pipeline.tracking import log_pipeline_summary

        config = _config()
        with _parent(config):
            result = stage.run(config)
            log_pipeline_summary(config, ["evaluate", "promote"])  # the headline figures on the parent run
        decision = result.decision
        if decision["version"] != evaluated["version"]:
            raise RuntimeError(f"promote decided on version {decision['version']}, but evaluate scored "
                               f"version {evaluated['version']}; clear this DAG run to start it again")
        print(f"verdict for version {decision['version']}: {decision['verdict']}: " + "; ".join(decision["reasons"]))
        return {key: decision[key] for key in ("version", "verdict", "reasons", "champion_before", "champion_after",
                                               "challenger")}

    @task
    def explain(decision: dict[str, Any]) -> dict[str, Any]:
        from pipeline.stages import explain as stage
        from pipeline.tracking import log_pipeline_summary

        config = _config()
        if not config.retrain.explain:
            return {"skipped": True}
        with _parent(config):
            result = stage.run(config)
            log_pipeline_summary(config, ["explain"])
        return {"output_dir": str(result.output_dir), "version": decision["version"], "skipped": False}

    explain(promote(evaluate(train(preprocess()))))


han_retrain()
