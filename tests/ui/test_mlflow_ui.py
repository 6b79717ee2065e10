"""The MLflow UI in a real headless Chromium, over the store of a tiny ``python -m pipeline run``.

The link the pipeline prints must open the model-training view (MLflow 3.17 opens the GenAI one
by default) and show the pipeline run's headline figures. Needs a ``chromium`` executable (Debian:
``apt-get install chromium``); skipped without one. Screenshots of each page are left in the
module's temporary folder (``pytest --basetemp=DIR``: ``DIR/ui0/*.png``).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.__main__ import main
from tests.servers import free_port, server_process
from tests.stages.conftest import make_workspace, set_args

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable (apt-get install chromium) for the "
                                                         "headless-browser check of the MLflow UI")

TINY = ["data.demo.num_documents=200", "model.embedding.dim=16", "model.word_units=8", "model.sentence_units=8",
        "model.word_attention.context_dim=8", "model.sentence_attention.context_dim=8", "train.epochs=2",
        "evaluate.gate.min_accuracy=0.0", "explain.random_draws=2"]
# Navigation of the GenAI view only; the model-training view has Runs, Models and Traces.
GENAI_ONLY = ("Judges", "Evaluation runs", "Sessions", "Playground")


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """The tiny pipeline's store behind ``mlflow ui`` on a loopback port (as ``make ui`` starts it)."""
    root = tmp_path_factory.mktemp("ui")
    workspace = make_workspace(root, TINY)
    with pytest.MonkeyPatch.context() as patch:
        workspace.activate(patch)
        assert main(["run", *set_args(workspace.overrides)]) == 0
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "ui", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", workspace.env["MLFLOW_TRACKING_URI"], "--workers", "1"]
    base = f"http://127.0.0.1:{port}"
    with open(root / "mlflow-ui.log", "w") as log, server_process(
            command, ready_url=f"{base}/health", describe=lambda _: (root / "mlflow-ui.log").read_text(), cwd=root,
            stdout=log, stderr=subprocess.STDOUT):
        yield root, workspace, base


def browse(root: Path, url: str, screenshot: str) -> str:
    """The page's text once its scripts have run, in a fresh browser profile (no remembered view); a screenshot too."""
    profile = root / f"profile-{screenshot}"
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
              "--window-size=1600,1200", "--virtual-time-budget=15000"]
    subprocess.run([*common, f"--screenshot={root / screenshot}", url], capture_output=True, timeout=180, check=True)
    shutil.rmtree(profile, ignore_errors=True)
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True).stdout
    shutil.rmtree(profile, ignore_errors=True)
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


def _parent_run():
    import mlflow

    (parent,) = mlflow.search_runs(experiment_names=["demo"], filter_string="tags.`han.stage` = 'pipeline'",
                                   output_format="list")
    return parent


def test_the_printed_link_opens_the_model_training_view_with_the_pipeline_runs_figures(ui, monkeypatch):
    from pipeline.tracking import run_url

    root, workspace, base = ui
    workspace.activate(monkeypatch)
    parent = _parent_run()
    page = browse(root, run_url(parent, base=base), "pipeline_run.png")
    assert "pipeline-demo" in page and "Model training" in page
    assert not [item for item in GENAI_ONLY if item in page], page[:2000]
    evaluated = json.loads((workspace.config.stage_dir("evaluate") / "metrics.json").read_text())
    decision = json.loads((workspace.config.stage_dir("promote") / "decision.json").read_text())
    # The run's metrics table, as the UI prints it (Python's and JavaScript's shortest forms of a float agree).
    shown = {"test.accuracy": evaluated["model"]["accuracy"], "test.macro_f1": evaluated["model"]["macro_f1"],
             "baseline.accuracy": evaluated["baseline"]["accuracy"]}
    for name, value in shown.items():
        assert re.search(rf"\b{re.escape(name)} {re.escape(repr(float(value)))}\b", page), name
    for name in ("promoted", "faithfulness.comprehensiveness.attention.k1", "faithfulness.sufficiency.random.k1"):
        assert f" {name} " in page, name
    assert re.search(rf"han\.verdict ?: {decision['verdict']}\b", page)


def test_the_experiment_page_in_that_view_lists_the_runs_and_the_default_view_is_genai(ui, monkeypatch):
    root, workspace, base = ui
    workspace.activate(monkeypatch)
    experiment = _parent_run().info.experiment_id
    page = browse(root, f"{base}/#/experiments/{experiment}?workflowType=machine_learning", "experiment.png")
    assert "pipeline-demo" in page and "Duration" in page and "Dataset" in page
    assert not [item for item in GENAI_ONLY if item in page], page[:2000]
    # The check tells the views apart: without the link's parameter a fresh browser gets MLflow's GenAI view.
    default = browse(root, f"{base}/#/experiments/{experiment}", "experiment_default_view.png")
    assert [item for item in GENAI_ONLY if item in default], default[:2000]
