"""The MLflow model registry as the pipeline uses it: one registered model per dataset.

Each pipeline (config ``name``) registers into ``tracking.registered_model`` (default
``han-<name>``), with its own ``champion`` and ``challenger`` aliases. Every version carries tags
saying what it was trained for (``han.pipeline``, ``han.labels``), so a version trained on other
labels is refused where it would otherwise be served or compared silently (``check_fits``).

A stage's manifest names the run and version it logged, but the tracking store in use may be
another one (a deleted ``mlflow.db``, another ``MLFLOW_TRACKING_URI``, a move to a server):
``registered_here`` tells whether the store in use holds that very version (same run id; version
numbers alone repeat across stores).
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.artifacts import read_json
from pipeline.config import PipelineConfig

CHAMPION, CHALLENGER = "champion", "challenger"
PIPELINE_TAG, LABELS_TAG = "han.pipeline", "han.labels"
_TAG_MAX = 5000  # MLflow's limit on a tag value


class RegistryMismatch(RuntimeError):
    """A registered version does not belong to this pipeline; the message says which and what to do."""


def alias_version(client, name: str, alias: str) -> str | None:
    """The version number an alias points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def version_tags(config: PipelineConfig, labels: list[str]) -> dict[str, str]:
    """The tags that say what a version was trained for (set when it is registered)."""
    text = json.dumps(sorted(labels), ensure_ascii=False)
    return {PIPELINE_TAG: config.name, LABELS_TAG: text if len(text) <= _TAG_MAX else "(too many labels to list)"}


def expected_labels(config: PipelineConfig) -> list[str] | None:
    """This pipeline's labels: its preprocessed corpus's, else ``data.labels``, else unknown (None)."""
    path = config.stage_dir("preprocess") / "labels.json"
    if path.is_file():
        return list(read_json(path))
    return list(config.data.labels) if config.data.labels else None


def version_labels(version) -> list[str] | None:
    """The labels a registered version was trained on, from its ``han.labels`` tag (None: not recorded)."""
    text = (version.tags or {}).get(LABELS_TAG)
    try:
        labels = json.loads(text) if text else None
    except ValueError:
        return None
    return labels if isinstance(labels, list) else None


def check_fits(config: PipelineConfig, version, name: str) -> None:
    """Raise ``RegistryMismatch`` unless ``version`` of ``name`` was trained for this pipeline's labels.

    Compared on labels where both sides know them; otherwise on the pipeline name it was trained by.
    """
    wanted, got = expected_labels(config), version_labels(version)
    trained_by = (version.tags or {}).get(PIPELINE_TAG)
    fix = (f"register this pipeline's models under their own name (tracking.registered_model, default han-{config.name}) "
           f"and run `{config.command('pipeline')}` so that one of them becomes its champion")
    if wanted is not None and got is not None:
        if sorted(wanted) != sorted(got):
            raise RegistryMismatch(
                f"{name} version {version.version} (trained by pipeline {trained_by!r}) knows the labels "
                f"{_short(sorted(got))}, but pipeline {config.name!r} has {_short(sorted(wanted))}; refusing to use it "
                f"for {config.name!r}: {fix}")
        return
    if trained_by is not None and trained_by != config.name:
        raise RegistryMismatch(
            f"{name} version {version.version} was trained by pipeline {trained_by!r}, not {config.name!r}; refusing "
            f"to use it for {config.name!r}: {fix}")


def _short(labels: list[str], shown: int = 8) -> str:
    return str(labels) if len(labels) <= shown else f"{labels[:shown]} and {len(labels) - shown} more"


def registered_here(client, tracked: dict[str, Any], name: str, fingerprint: str | None = None):
    """The registered version of ``name`` in the store in use that holds a stage's model, or None.

    First the version the manifest's ``mlflow`` section names, when it comes from the same run (version
    numbers alone repeat across stores); then, given the training ``fingerprint``, the newest version
    registered from outputs with that fingerprint (the same data and settings: the same model).
    """
    from mlflow.exceptions import MlflowException

    version = tracked.get("registered_version")
    if version and tracked.get("registered_model") == name:
        try:
            found = client.get_model_version(name, str(version))
        except MlflowException:
            found = None
        if found is not None and found.run_id == tracked.get("run_id"):
            return found
    if fingerprint is None:
        return None
    try:
        same = client.search_model_versions(f"name = '{name}' and tags.`han.fingerprint` = '{fingerprint}'")
    except MlflowException:
        return None
    return max(same, key=lambda v: int(v.version)) if same else None
