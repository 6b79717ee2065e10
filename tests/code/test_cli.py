"""The command line as a user runs it: real subprocesses, real exit codes and messages."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from pipeline.config import PROJECT_ROOT


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_help_lists_every_stage():
    result = run_cli("--help")
    assert result.returncode == 0
    for stage in ("preprocess", "train", "evaluate", "promote", "explain", "run", "predict", "serve", "sweep"):
        assert stage in result.stdout
    assert "HAN_DATA_DIR" in result.stdout


def test_stage_help_documents_config_and_set():
    result = run_cli("preprocess", "--help")
    assert result.returncode == 0
    assert "--config" in result.stdout and "--set" in result.stdout


def test_stage_before_its_inputs_says_what_to_run():
    result = run_cli("train", "--set", "data.demo.num_documents=120")
    assert result.returncode == 2
    assert "no preprocessing outputs" in result.stderr and "make preprocess" in result.stderr
    assert "Traceback" not in result.stderr


def test_promote_and_serve_without_a_model_say_what_to_run():
    result = run_cli("promote")
    assert result.returncode == 2 and "run `make train`" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("serve")
    assert result.returncode == 2 and "no model has the alias @champion" in result.stderr
    assert "make pipeline" in result.stderr and "Traceback" not in result.stderr


def test_config_typo_is_a_clear_error_without_traceback():
    result = run_cli("preprocess", "--set", "preprocess.vocab.min_cout=2")
    assert result.returncode == 2
    assert "preprocess.vocab.min_cout: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_data_path_names_path_and_fix(tmp_path):
    result = run_cli("preprocess", "--config", str(PROJECT_ROOT / "configs" / "bbc.yaml"),
                     env={"HAN_DATA_DIR": str(tmp_path / "missing")})
    assert result.returncode == 2
    assert str(tmp_path / "missing" / "bbc") in result.stderr
    assert "HAN_DATA_DIR" in result.stderr


def test_preprocess_then_noop_rerun(tmp_path):
    args = ("preprocess", "--set", "data.demo.num_documents=120")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "preprocess: 120 input = 120 kept + 0 quarantined" in first.stderr
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stderr


def test_run_does_every_stage_and_says_where_to_look():
    tiny = ["data.demo.num_documents=120", "model.embedding.dim=16", "model.word_units=8", "model.sentence_units=8",
            "train.epochs=1", "evaluate.gate.min_accuracy=0", "explain.random_draws=1"]
    result = run_cli("run", *[arg for item in tiny for arg in ("--set", item)])
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    # Each stage's summary once: the stage's own line (stderr, also in the DAG's logs), not again by the CLI.
    for fact in ("120 input = 120 kept + 0 quarantined", "train: best epoch 1 of 1", "evaluate: HAN on",
                 "evaluate: gate ", "promote: han-demo version 1 is", "explain: comprehensiveness",
                 "explain: evidence hit rate", "explain/report.html"):
        assert console.count(fact) == 1, (fact, console)
    assert "train: MLflow run" in result.stdout and "evaluate: metrics in" in result.stdout
    assert "run: done. MLflow pipeline run" in result.stdout and "make ui" in result.stdout
    assert "train: epoch 1/1" in result.stderr  # the per-epoch line
    # TensorFlow's start-up lines (the CUDA driver probed on a machine without a GPU...) are in the log, not here.
    assert not re.search(r"cuInit|cuda|absl::InitializeLog|oneDNN custom operations", console, re.IGNORECASE), console


def test_a_missing_stage_names_the_command_with_the_config_and_overrides_used():
    result = run_cli("evaluate", "--config", "configs/bbc.yaml", "--set", "seed=7")
    assert result.returncode == 2
    assert "run `make preprocess CONFIG=configs/bbc.yaml SET=seed=7` (or `make pipeline CONFIG=configs/bbc.yaml " \
           "SET=seed=7`) first" in result.stderr, result.stderr


def test_make_passes_config_and_every_set_value():
    # `make -n` prints the command without running it: CONFIG= and SET= reach the CLI intact.
    result = subprocess.run(["make", "-n", "-W", "requirements.txt", "preprocess", "CONFIG=configs/bbc.yaml",
                             "SET=seed=7 preprocess.vocab.min_count=3"], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "-m pipeline preprocess --config configs/bbc.yaml --set seed=7 --set preprocess.vocab.min_count=3" in result.stdout


def test_make_sweep_passes_each_grid_axis_and_the_seeds():
    result = subprocess.run(["make", "-n", "-W", "requirements.txt", "sweep", "CONFIG=configs/bbc.yaml",
                             "GRID=train.learning_rate=0.001,0.002 model.dropout=0.1,0.3", "SEEDS=42,1"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert ("-m pipeline sweep --config configs/bbc.yaml  --grid train.learning_rate=0.001,0.002 "
            "--grid model.dropout=0.1,0.3 --seeds 42,1") in result.stdout


def test_make_help_lists_every_target():
    result = subprocess.run(["make", "help"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for target in ("install", "pipeline", "preprocess", "train", "evaluate", "promote", "explain", "serve", "sweep", "dag-test",
                   "test", "bench", "lint", "ui", "clean"):
        assert f"  {target} " in result.stdout, target


def test_make_clean_removes_the_sqlite_stores_artifact_folder_too():
    # `make -n` prints the commands without running them (a real clean would remove everyone's artifacts).
    result = subprocess.run(["make", "-n", "clean"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    removed = next(line.split()[2:] for line in result.stdout.splitlines() if line.startswith("rm -rf "))
    assert {"artifacts", "mlflow.db", "mlartifacts", "mlruns"} <= set(removed)
