"""Faults, for real: ``kill -9`` of the CLI at its worst moments, a full disk, a tracking server that is gone.

Each test runs ``python -m pipeline`` in a subprocess (its own artifacts folder and MLflow store)
and checks what a user would see afterwards: no half-written outputs, a rerun that completes,
an MLflow store without runs stuck in RUNNING. The kill points are named in ``pipeline.faults``;
the process sends itself SIGKILL there, so nothing of Python's cleanup runs.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.artifacts import outputs_intact, read_manifest
from pipeline.config import PROJECT_ROOT
from pipeline.faults import KILL_ENV
from tests.stages.conftest import make_workspace, set_args

TINY = ["data.demo.num_documents=200"]
# Files whose bytes a rerun must reproduce exactly (stats/manifest carry timings and times).
STABLE_OUTPUTS = ("train-00000.npz", "validation-00000.npz", "test-00000.npz", "train.documents.jsonl", "vocab.json", "labels.json")


def cli(workspace, *argv: str, kill_at: str | None = None, timeout: float = 300, preexec=None,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **workspace.env, **(extra_env or {})}
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.run([sys.executable, "-m", "pipeline", *argv], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=preexec)


def stage_entries(workspace, stage: str = "preprocess") -> list[str]:
    folder = workspace.root / "artifacts" / "demo"
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(stage)) if folder.is_dir() else []


def stable_hashes(workspace) -> dict[str, str]:
    outputs = read_manifest(workspace.root / "artifacts" / "demo" / "preprocess")["outputs"]
    return {name: outputs[name] for name in STABLE_OUTPUTS}


def running_runs(workspace) -> list:
    import mlflow

    mlflow.set_tracking_uri(workspace.env["MLFLOW_TRACKING_URI"])
    return [run for run in mlflow.search_runs(search_all_experiments=True, output_format="list")
            if run.info.status == "RUNNING"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted preprocess of the tiny demo corpus, to compare the interrupted ones with."""
    workspace = make_workspace(tmp_path_factory.mktemp("reference"), TINY)
    done = cli(workspace, "preprocess", *set_args(TINY))
    assert done.returncode == 0, done.stderr
    return stable_hashes(workspace)


def test_kill_9_while_preprocess_writes_leaves_nothing_visible_and_a_rerun_completes(tmp_path, reference):
    workspace = make_workspace(tmp_path, TINY)
    killed = cli(workspace, "preprocess", *set_args(TINY), kill_at="preprocess:writing")
    assert killed.returncode == -signal.SIGKILL
    entries = stage_entries(workspace)
    assert "preprocess" not in entries  # no outputs a later stage could read half of
    assert [e for e in entries if ".tmp-" in e]  # the half-written staging folder, set aside
    assert not running_runs(workspace)  # the stage logs to MLflow only once its outputs are in place

    again = cli(workspace, "preprocess", *set_args(TINY))
    assert again.returncode == 0, again.stderr
    assert stage_entries(workspace) == ["preprocess"]  # the leftovers are gone
    assert stable_hashes(workspace) == reference  # and the outputs are those of an uninterrupted run


@pytest.mark.parametrize("kill_at", ["commit:staged", "commit:retired"])
def test_kill_9_while_replacing_outputs_keeps_the_old_ones(tmp_path, reference, kill_at):
    """A rerun with another config is killed as it swaps the new outputs in: the old ones survive."""
    workspace = make_workspace(tmp_path, TINY)
    assert cli(workspace, "preprocess", *set_args(TINY)).returncode == 0
    changed = [*TINY, "preprocess.vocab.min_count=3"]
    killed = cli(workspace, "preprocess", *set_args(changed), kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL

    # The previous config's outputs come back untouched (put back from where the kill left them).
    unchanged = cli(workspace, "preprocess", *set_args(TINY))
    assert unchanged.returncode == 0, unchanged.stderr
    assert "nothing to do" in unchanged.stdout + unchanged.stderr
    assert stable_hashes(workspace) == reference
    assert stage_entries(workspace) == ["preprocess"]
    # And the interrupted change completes when asked again.
    done = cli(workspace, "preprocess", *set_args(changed))
    assert done.returncode == 0, done.stderr
    assert stable_hashes(workspace)["vocab.json"] != reference["vocab.json"]


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child, before exec: `ulimit -f` (CPython ignores SIGXFSZ, so writes get EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


def test_a_full_disk_is_a_clear_error_and_leaves_the_previous_outputs(tmp_path, reference):
    workspace = make_workspace(tmp_path, TINY)
    assert cli(workspace, "preprocess", *set_args(TINY)).returncode == 0
    out = workspace.root / "artifacts" / "demo" / "preprocess"
    before = read_manifest(out)
    database = Path(workspace.env["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))
    # Every file may grow to 1 MB beyond the store's current size: the store fits, the bigger corpus does not.
    limit = database.stat().st_size + (1 << 20)
    bigger = ["data.demo.num_documents=3000"]
    full = cli(workspace, "preprocess", *set_args(bigger), preexec=_file_size_limit(limit))
    assert full.returncode == 2, full.stderr
    assert "not enough disk space to write" in full.stderr and str(out) in full.stderr
    assert "HAN_ARTIFACTS_DIR" in full.stderr and "Traceback" not in full.stderr
    assert read_manifest(out) == before and outputs_intact(out, before)  # nothing corrupt, nothing half new
    assert stage_entries(workspace) == ["preprocess"]

    done = cli(workspace, "preprocess", *set_args(bigger))  # space again: the same command completes
    assert done.returncode == 0, done.stderr
    assert read_manifest(out)["counts"]["input"] == 3000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_tracking_server_is_a_clear_error_within_seconds(tmp_path):
    workspace = make_workspace(tmp_path, TINY)
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    started = time.monotonic()
    done = cli(workspace, "preprocess", *set_args(TINY), extra_env={"MLFLOW_TRACKING_URI": url})
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert f"MLflow tracking server at {url} does not answer" in done.stderr
    assert "MLFLOW_TRACKING_URI" in done.stderr and "Traceback" not in done.stderr
    assert elapsed < 30, elapsed  # the Python start-up and imports included; the probe itself waits 5 s at most
    assert not (workspace.root / "artifacts" / "demo" / "preprocess").exists()  # nothing done untracked


@pytest.mark.slow  # about 85 s: two server starts and two trainings (make test-slow)
def test_the_tracking_server_dying_mid_stage_fails_fast_and_the_run_is_closed_later(tmp_path):
    """A real ``mlflow server`` is killed while training logs to it: the stage stops with a clear
    error in seconds (not MLflow's minutes of retries); once the store is reachable again, the
    next attempt marks the orphaned run KILLED and trains."""
    workspace = make_workspace(tmp_path, TINY)
    store = f"sqlite:///{tmp_path / 'server.db'}"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"MLFLOW_TRACKING_URI": url}

    def start_server() -> subprocess.Popen:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
                                   "--default-artifact-root", (tmp_path / "server-artifacts").as_uri(),
                                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                  cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return server
            except OSError:
                time.sleep(0.3)
        os.killpg(server.pid, signal.SIGKILL)
        pytest.fail("mlflow server did not start")

    def stop(server: subprocess.Popen) -> None:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()

    overrides = [*TINY, "model.embedding.dim=16", "model.word_units=8", "model.sentence_units=8", "train.epochs=30",
                 "train.early_stopping.patience=100"]
    server = start_server()
    try:
        assert cli(workspace, "preprocess", *set_args(overrides), extra_env=env).returncode == 0
        state = workspace.root / "artifacts" / "demo" / "train.resume" / "state.json"
        training = subprocess.Popen([sys.executable, "-m", "pipeline", "train", *set_args(overrides)], cwd=PROJECT_ROOT,
                                    env={**os.environ, **workspace.env, **env}, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not (state.is_file() and json.loads(state.read_text())["epochs_done"] >= 1):
            assert training.poll() is None and time.monotonic() < deadline, training.communicate()
            time.sleep(0.05)
        stop(server)
        killed_at = time.monotonic()
        _, err = training.communicate(timeout=120)
        assert training.returncode == 2, err
        assert time.monotonic() - killed_at < 60
        assert url.removeprefix("http://") in err and "Traceback" not in err

        # The next attempt, with the store reachable again (here: the server's own database), closes
        # the run the dead process left open and trains.
        again = {"MLFLOW_TRACKING_URI": store}
        resumed = cli(workspace, "train", *set_args([*overrides[:-2], "train.epochs=2"]), extra_env=again)
        assert resumed.returncode == 0, resumed.stderr
        assert "marked KILLED" in resumed.stdout
        import mlflow

        mlflow.set_tracking_uri(store)
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        assert not [run for run in runs if run.info.status == "RUNNING"]
        assert [run for run in runs if run.info.status == "KILLED" and run.data.tags["han.stage"] == "train"]
    finally:
        if server.poll() is None:
            stop(server)
