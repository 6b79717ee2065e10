"""The MLflow model registry as the pipeline uses it: one registered model per dataset.

Each pipeline (config ``name``) registers into ``tracking.registered_model`` (default
``han-<name>``), with its own ``champion`` and ``challenger`` aliases. Every version carries tags
saying what it was trained for (``han.pipeline``, ``han.labels``), so a version trained on other
labels is refused where it would otherwise be served or compared silently (``check_fits``).

A stage's manifest names the run and version it logged, but the tracking store in use may be
another one (a deleted ``mlflow.db``, another ``MLFLOW_TRACKING_URI``, a move to a server):
``registered_here`` tells whether the store in use holds that very version (same run id; version
numbers alone repeat across stores).

A logged model is code (the raw-text model runs its own ``pyfunc_model.py`` and ``pipeline``
package when loaded), so every version is registered with the sha256 of each of its files
(``integrity_tags``), and ``verified_model`` loads a version only from a local copy whose files
match them: downloaded, hashed, compared, and only then loaded from that same copy.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipeline.artifacts import read_json
from pipeline.config import PipelineConfig

CHAMPION, CHALLENGER = "champion", "challenger"
PIPELINE_TAG, LABELS_TAG = "han.pipeline", "han.labels"
_TAG_MAX = 5000  # MLflow's limit on a tag value
# One digest over every file of the logged model, and a short hash per file to name the one that changed.
ARTIFACT_SHA256_TAG, ARTIFACT_FILES_TAG = "han.artifact_sha256", "han.artifact_files"
# Written by MLflow into every download of a registered version (its name and number), never stored.
_DOWNLOAD_ONLY = ("registered_model_meta",)


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


# --------------------------------------------------------------------------- the files of a version
class ModelIntegrityError(RuntimeError):
    """A model version's files are not the ones recorded at registration (or none were recorded)."""


def model_file_hashes(directory: str | Path) -> dict[str, str]:
    """sha256 of every file under a logged model's directory, keyed by its relative POSIX path."""
    directory = Path(directory)
    hashes = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if path.is_file() and relative not in _DOWNLOAD_ONLY:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            hashes[relative] = digest.hexdigest()
    return hashes


def files_digest(hashes: dict[str, str]) -> str:
    """One sha256 over the sorted (path, sha256) pairs: any file changed, added or removed changes it."""
    return hashlib.sha256("".join(f"{path}\0{sha}\n" for path, sha in sorted(hashes.items())).encode()).hexdigest()


def integrity_tags(directory: str | Path) -> dict[str, str]:
    """The version tags that record a logged model's files (set when it is registered)."""
    hashes = model_file_hashes(directory)
    listing = json.dumps({path: sha[:16] for path, sha in sorted(hashes.items())}, separators=(",", ":"))
    return {ARTIFACT_SHA256_TAG: files_digest(hashes),
            ARTIFACT_FILES_TAG: listing if len(listing) <= _TAG_MAX else "(too many files to list)"}


def _difference(hashes: dict[str, str], listing: str | None) -> str:
    """Which file differs from the registered short hashes (the digest already said something does)."""
    try:
        recorded = json.loads(listing) if listing else None
    except ValueError:
        recorded = None
    if not isinstance(recorded, dict):
        return "its files differ from those recorded at registration"
    for path in sorted(set(recorded) | set(hashes)):
        if path not in hashes:
            return f"the file {path} is missing"
        if path not in recorded:
            return f"the file {path} was added"
        if hashes[path][:16] != recorded[path]:
            return f"the file {path} was changed"
    return "its files differ from those recorded at registration"


def verified_download(uri: str) -> Path:
    """A local copy of a registered model version whose files match the hashes recorded at its
    registration, or ``ModelIntegrityError`` saying which version, which file and what to do.

    ``uri``: ``models:/<name>/<version>``, ``models:/<name>@<alias>`` (resolved to its version first)
    or a local directory, which is the caller's own copy and is returned unchecked (said on stderr).
    Other URIs (``runs:/``, ``models:/<model id>``, artifact-store paths) are refused: only a
    registered version has recorded hashes. The copy lives until the process exits.
    """
    import mlflow
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    if not uri.startswith("models:/"):
        if "://" not in uri and ":/" not in uri and Path(uri).is_dir():
            print(f"note: loading the model in the local directory {uri} as it is (only registered versions are "
                  "checked against the hashes recorded at registration)", file=sys.stderr)
            return Path(uri)
        raise ModelIntegrityError(
            f"{uri}: only registered model versions are loaded from the tracking store, since loading runs the "
            "model's code and only a registered version has its files' hashes recorded; pass "
            "models:/<registered model>/<version> or models:/<registered model>@<alias>")
    client = mlflow.MlflowClient()
    resolved = get_model_name_and_version(client, uri)
    if len(resolved) != 2:
        raise ModelIntegrityError(f"{uri} names a logged model, not a registered version; only registered versions "
                                  "have their files' hashes recorded: pass models:/<registered model>/<version>")
    name, number = resolved
    version = client.get_model_version(name, str(number))
    tags = version.tags or {}
    expected = tags.get(ARTIFACT_SHA256_TAG)
    what = f"{name} version {number}" + ("" if uri == f"models:/{name}/{number}" else f" ({uri})")
    if not expected:
        raise ModelIntegrityError(
            f"{what} has no recorded file hashes ({ARTIFACT_SHA256_TAG}): it was registered before they were "
            "recorded, or not by this pipeline's train stage. Loading runs a model's code, so it is not loaded. "
            "Register the trained model again (`python -m pipeline train` re-registers one whose version lacks "
            "them, without retraining; or `python -m pipeline train --force`) and use that version")
    local = Path(tempfile.mkdtemp(prefix="han-model-"))
    atexit.register(shutil.rmtree, local, ignore_errors=True)
    # The version's own number, not the alias: what is checked is what is loaded, from this copy.
    path = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{number}", dst_path=str(local)))
    hashes = model_file_hashes(path)
    if files_digest(hashes) != expected:
        shutil.rmtree(local, ignore_errors=True)
        raise ModelIntegrityError(
            f"{what}: {_difference(hashes, tags.get(ARTIFACT_FILES_TAG))} since it was registered "
            f"(source {version.source}); refusing to load it, since loading runs the model's code. Find out who "
            "changed the artifact store; then train and register a new version (`python -m pipeline train --force`) "
            "or point the alias at another version")
    return path


def verified_model(uri: str):
    """``mlflow.pyfunc.load_model`` of ``verified_download(uri)``: nothing of the model is imported or
    run before its files are checked, and it loads from the very copy that was checked."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(verified_download(uri)))
