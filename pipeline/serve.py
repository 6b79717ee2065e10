"""``make serve``: the champion over REST, with ``mlflow models serve``.

``serve_command`` resolves ``models:/<registered_model>@<alias>`` in the current tracking store
(failing clearly when the alias is missing), and returns the ``mlflow models serve`` command line
with ``--env-manager local`` (the project's environment: no download) and the environment it
needs: the tracking URI and the request limits that the raw-text model enforces
(``HAN_SERVE_MAX_TEXTS`` / ``HAN_SERVE_MAX_CHARACTERS``, answered with 400), plus MLflow's
request timeout (answered with 504).

The endpoint is MLflow's scoring protocol: ``POST /invocations`` with
``{"dataframe_records": [{"text": "..."}]}`` (or ``dataframe_split``, or ``{"inputs": {"text": [...]}}``)
returns ``{"predictions": [{"label", "probabilities", "sentences", "sentence_weights", ...}]}``;
``GET /ping`` answers 200 once the model is loaded.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import PipelineConfig


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

    from pipeline.serving import MAX_CHARACTERS_ENV, MAX_TEXTS_ENV
    from pipeline.stages.promote import alias_version
    from pipeline.tracking import tracking_uri

    settings = config.serve
    name = config.tracking.registered_model
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    version = alias_version(mlflow.MlflowClient(), name, settings.alias)
    if version is None:
        raise ServeError(f"no model has the alias @{settings.alias} in the registry {name!r} at {uri}; "
                         "run `make pipeline` (or `make dag-test`) so that a model passes the gate and is promoted, "
                         "or serve another alias with SET=serve.alias=challenger")
    model_uri = f"models:/{name}@{settings.alias}"
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "--model-uri", model_uri, "--env-manager", "local",
            "--host", settings.host, "--port", str(settings.port), "--workers", str(settings.workers),
            "--timeout", str(settings.timeout_seconds)]
    # MLflow runs `uvicorn` from PATH: the one beside this interpreter, also when .venv is not activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": uri, MAX_TEXTS_ENV: str(settings.max_texts),
           MAX_CHARACTERS_ENV: str(settings.max_characters)}
    return ServeCommand(argv, env, model_uri, version, f"http://{settings.host}:{settings.port}")
