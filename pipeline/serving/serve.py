"""``make serve``: the champion over REST, MLflow's scoring app under uvicorn.

``serve_command`` resolves ``models:/<registered_model>@<alias>`` in the current tracking store
to its version (failing clearly when the alias is missing, when that version was trained for
other labels than the config's: ``pipeline.registry.check_fits``, or when its files are not those
recorded at registration: ``pipeline.registry.verified_download``), so every worker loads the same
version even if the alias moves meanwhile, and returns the ``uvicorn`` command line for
``pipeline.serving.rest`` (MLflow's own scoring app, what ``mlflow models serve --env-manager local``
runs, behind a request-size guard) and the environment it needs: the tracking URI, the model,
the body limit (413), the limits that the raw-text model enforces (``HAN_SERVE_MAX_TEXTS`` /
``HAN_SERVE_MAX_CHARACTERS``, answered with 400), and MLflow's request timeout (504).

The endpoint is MLflow's scoring protocol: ``POST /invocations`` with
``{"dataframe_records": [{"text": "..."}]}`` (or ``dataframe_split``, or ``{"inputs": {"text": [...]}}``)
returns ``{"predictions": [{"label", "probabilities", "sentences", "sentence_weights", ...}]}``;
``GET /ping`` answers 200 once the model is loaded.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from pipeline.config import PROJECT_ROOT, PipelineConfig


class ServeError(RuntimeError):
    """Nothing to serve; the message says what to do."""


@dataclass(frozen=True)
class ServeCommand:
    argv: list[str]
    env: dict[str, str]
    model_uri: str
    version: str
    url: str


def serve_command(config: PipelineConfig) -> ServeCommand:
    import mlflow

    from pipeline.registry import ModelIntegrityError, RegistryMismatch, alias_version, check_fits, verified_download
    from pipeline.serving import limits
    from pipeline.serving.rest import MODEL_URI_ENV
    from pipeline.tracking import connect, tracking_uri

    settings = config.serve
    name = config.tracking.registered_model
    connect()
    uri = tracking_uri()
    version = alias_version(mlflow.MlflowClient(), name, settings.alias)
    if version is None:
        raise ServeError(f"no model has the alias @{settings.alias} in the registry {name!r} at {uri}; "
                         f"run `{config.command('pipeline')}` (or `{config.command('dag-test')}`) so that a model passes the gate "
                         "and is promoted, "
                         "or serve another alias with SET=serve.alias=challenger")
    try:
        check_fits(config, mlflow.MlflowClient().get_model_version(name, version), name)
        # Checked here for a clear error before the server starts; each worker checks its own copy again.
        verified_download(f"models:/{name}/{version}")
    except (RegistryMismatch, ModelIntegrityError) as err:
        raise ServeError(f"not serving @{settings.alias}: {err}") from None
    model_uri = f"models:/{name}@{settings.alias}"
    argv = [sys.executable, "-m", "uvicorn", "--factory", "pipeline.serving.rest:create_app", "--host", settings.host,
            "--port", str(settings.port), "--workers", str(settings.workers), "--no-server-header"]
    # The workers import `pipeline` wherever the server is started from.
    python_path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": python_path, "MLFLOW_TRACKING_URI": uri,
           MODEL_URI_ENV: f"models:/{name}/{version}", **limits.environment(settings),
           "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": str(settings.timeout_seconds)}
    return ServeCommand(argv, env, model_uri, version, f"http://{settings.host}:{settings.port}")
