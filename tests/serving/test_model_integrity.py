"""A registered model is code: its files are hashed at registration, and every loader (predict
--model, the server, evaluate's champion re-scoring) checks a downloaded copy against those hashes
before anything of it is imported or run, then loads that very copy.

The tampering is real: a line appended to a file of the logged model in the artifact store
(``mlartifacts/`` beside the SQLite store) that writes a marker file when it runs. MLflow's own
loader runs it (the control); ours refuse and the marker never appears.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline.__main__ import main
from pipeline.artifacts import read_json
from pipeline.config import PROJECT_ROOT
from pipeline.registry import (
    ARTIFACT_SHA256_TAG,
    ModelIntegrityError,
    files_digest,
    model_file_hashes,
    verified_download,
    verified_model,
)
from pipeline.serving import rest
from pipeline.stages.evaluate import EvaluateError, score_champion
from tests.stages.conftest import set_args


@pytest.fixture
def model(registered, monkeypatch):
    registered.workspace.activate(monkeypatch)
    return registered


@contextmanager
def tampered(path: Path, marker: Path, text: str | None = None):
    """``path`` with a line appended that writes ``marker`` when run (or with ``text`` appended); put back after."""
    original = path.read_bytes() if path.exists() else None
    line = text if text is not None else f"\nimport pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n"
    path.write_bytes((original or b"") + line.encode())
    try:
        yield
    finally:
        if original is None:
            path.unlink()
        else:
            path.write_bytes(original)


def test_a_version_is_registered_with_the_hashes_of_its_stored_files_and_loads(model, tmp_path):
    version = mlflow.MlflowClient().get_model_version(model.name, model.version)
    stored = model_file_hashes(model.model_dir)
    assert {"MLmodel", "pyfunc_model.py", "code/pipeline/serving/bundle.py", "artifacts/bundle/model.keras",
            "requirements.txt"} <= set(stored)
    assert version.tags[ARTIFACT_SHA256_TAG] == files_digest(stored)
    local = verified_download(f"models:/{model.name}@champion")
    assert local.is_dir() and not str(local).startswith(str(model.model_dir))  # a copy: what is checked is loaded
    answer = verified_model(f"models:/{model.name}@champion").predict(pd.DataFrame({"text": ["One. Two words."]}))
    assert answer["error"].tolist() == [None] and np.isclose(sum(answer["probabilities"][0].values()), 1.0)


@pytest.mark.bad_input("B44")
def test_predict_refuses_a_tampered_model_without_running_its_code(model, tmp_path):
    marker = tmp_path / "ran"
    with tampered(model.model_dir / "pyfunc_model.py", marker):
        done = subprocess.run([sys.executable, "-m", "pipeline", "predict", "--model", f"models:/{model.name}@champion",
                               *set_args(model.workspace.overrides), "The match ended early."],
                              cwd=PROJECT_ROOT, env={**os.environ, **model.workspace.env}, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 2, done.stderr[-2000:]
        assert f"{model.name} version {model.version}" in done.stderr
        assert "the file pyfunc_model.py was changed since it was registered" in done.stderr
        assert "Traceback" not in done.stderr and not marker.exists()
        # The control: MLflow's own loader runs the appended line (so the refusal above is what kept it from running).
        mlflow.pyfunc.load_model(f"models:/{model.name}/{model.version}")
        assert marker.read_text() == "ran"


@pytest.mark.bad_input("B45")
def test_serve_and_its_worker_refuse_a_tampered_model_without_running_its_code(model, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "ran"
    with tampered(model.model_dir / "code" / "pipeline" / "serving" / "bundle.py", marker):
        assert main(["serve", "--print-command", *set_args(model.workspace.overrides)]) == 2
        err = capsys.readouterr().err
        assert "not serving @champion" in err and "the file code/pipeline/serving/bundle.py was changed" in err
        # The worker checks its own copy (the store may change after `serve` checked it).
        monkeypatch.setenv(rest.MODEL_URI_ENV, f"models:/{model.name}/{model.version}")
        with pytest.raises(ModelIntegrityError, match=f"{model.name} version {model.version}: the file code/pipeline/"):
            rest.create_app()
    assert not marker.exists()


@pytest.mark.bad_input("B46")
def test_evaluate_refuses_to_rescore_a_tampered_champion(model, tmp_path):
    marker = tmp_path / "ran"
    config = model.workspace.config
    prep_dir = config.stage_dir("preprocess")
    version = mlflow.MlflowClient().get_model_version_by_alias(model.name, "champion")
    labels = read_json(prep_dir / "labels.json")
    with tampered(model.model_dir / "pyfunc_model.py", marker), pytest.raises(EvaluateError) as refused:
        score_champion(config, version, prep_dir, labels, np.zeros(0, dtype=np.int64))
    message = str(refused.value)
    assert "cannot re-score the champion" in message and "pyfunc_model.py was changed" in message
    assert "delete_registered_model_alias" in message
    assert not marker.exists()


@pytest.mark.parametrize(("relative", "text", "says"), [
    ("artifacts/bundle/vocab.json", " ", "the file artifacts/bundle/vocab.json was changed"),
    ("requirements.txt", "evil-package==1.0\n", "the file requirements.txt was changed"),
    ("code/pipeline/sitecustomize.py", "import os\n", "the file code/pipeline/sitecustomize.py was added"),
])
def test_any_changed_or_added_file_is_named(model, relative, text, says):
    with tampered(model.model_dir / relative, Path(os.devnull), text), \
            pytest.raises(ModelIntegrityError, match=f"{model.name} version {model.version}: {says}"):
        verified_download(f"models:/{model.name}/{model.version}")


@pytest.mark.bad_input("B47")
def test_a_version_without_recorded_hashes_and_unregistered_uris_are_refused(model):
    client = mlflow.MlflowClient()
    source = client.get_model_version(model.name, model.version).source
    # Registered by hand (or before hashes were recorded): nothing to check it against.
    bare = mlflow.register_model(source, model.name)
    with pytest.raises(ModelIntegrityError, match=f"version {bare.version} has no recorded file hashes.*train"):
        verified_model(f"models:/{model.name}/{bare.version}")
    run_id = client.get_model_version(model.name, model.version).run_id
    for uri in (f"runs:/{run_id}/model", source):
        with pytest.raises(ModelIntegrityError, match="registered"):
            verified_model(uri)


def test_a_local_directory_is_the_callers_own_copy_and_loads_unchecked(model, capsys):
    local = verified_download(f"models:/{model.name}/{model.version}")
    capsys.readouterr()
    assert verified_download(str(local)) == local
    assert "loading the model in the local directory" in capsys.readouterr().err
