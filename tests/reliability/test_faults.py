"""Faults, for real: ``kill -9`` of the CLI at its worst moments, a full disk, a tracking server that is gone.

Each test runs ``python -m pipeline`` in a subprocess (its own artifacts folder and MLflow store)
and checks what a user would see afterwards: no half-written outputs, a rerun that completes,
an MLflow store without runs stuck in RUNNING. The kill points are named in ``pipeline.faults``;
the process sends itself SIGKILL there, so nothing of Python's cleanup runs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
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


# ----------------------------------------------------------------------------- the tracking store under faults

# Holds the SQLite store's write lock, as another process writing to it would: "lock" takes it, "release" gives it back.
LOCK_HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
for command in sys.stdin:
    connection.execute("BEGIN EXCLUSIVE" if command.strip() == "lock" else "ROLLBACK")
    print(command.strip() + "ed", flush=True)
"""


class StoreLock:
    """Another process holding ``workspace``'s MLflow store locked, from ``take()`` to ``release()``."""

    def __init__(self, workspace) -> None:
        database = workspace.env["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")
        self.process = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, database], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def _say(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == command + "ed"

    def take(self) -> StoreLock:
        self._say("lock")
        return self

    def release(self) -> None:
        self._say("release")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=10)


def cli_lines(workspace, *argv: str, extra_env: dict[str, str]) -> subprocess.Popen:
    """The CLI started in the background, its stdout and stderr one stream of lines."""
    return subprocess.Popen([sys.executable, "-m", "pipeline", *argv], cwd=PROJECT_ROOT,
                            env={**os.environ, **workspace.env, **extra_env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def read_until(process: subprocess.Popen, marker: str, seen: list[str]) -> None:
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            return
    pytest.fail(f"the CLI ended without printing {marker!r}:\n{''.join(seen)}")


@pytest.fixture(scope="module")
def initialized_store(tmp_path_factory) -> Path:
    """An MLflow store with its tables made, for the tests that log to copy (MLflow takes seconds to make them)."""
    import mlflow

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def with_store(workspace, store: Path, folder: Path | None = None):
    """``workspace`` logging to a copy of ``store`` (in ``folder``, default the workspace's own store)."""
    if folder is not None:
        workspace.env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    shutil.copy(store, workspace.env["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))
    return workspace


def statuses(workspace) -> dict[str, list[str]]:
    import mlflow

    mlflow.set_tracking_uri(workspace.env["MLFLOW_TRACKING_URI"])
    found: dict[str, list[str]] = {}
    for run in mlflow.search_runs(search_all_experiments=True, output_format="list"):
        found.setdefault(run.info.run_name, []).append(run.info.status)
    return found


def test_a_locked_tracking_store_is_a_clear_error_naming_the_holder(tmp_path):
    workspace = make_workspace(tmp_path, TINY)
    lock = StoreLock(workspace).take()
    try:
        started = time.monotonic()
        done = cli(workspace, "preprocess", *set_args(TINY), extra_env={"HAN_TRACKING_LOCK_WAIT": "1"})
        elapsed = time.monotonic() - started
    finally:
        lock.close()
    assert done.returncode == 2, done.stderr
    uri = workspace.env["MLFLOW_TRACKING_URI"]
    assert f"the MLflow tracking store at {uri} is locked by another process (waited 1 s; open in pid " \
           f"{lock.process.pid}: " in done.stderr
    assert "nothing was done; wait for it to finish" in done.stderr and "HAN_TRACKING_LOCK_WAIT" in done.stderr
    assert "Traceback" not in done.stderr and elapsed < 30
    assert stage_entries(workspace) == []  # checked before the work


def test_a_short_lock_on_the_tracking_store_is_waited_out(tmp_path, initialized_store):
    workspace = with_store(make_workspace(tmp_path, TINY), initialized_store)
    lock = StoreLock(workspace).take()
    seen: list[str] = []
    try:
        running = cli_lines(workspace, "preprocess", *set_args(TINY), extra_env={"HAN_TRACKING_LOCK_WAIT": "120"})
        read_until(running, "is locked by another process", seen)
        assert "waiting up to 120 s for it" in seen[-1]
        lock.release()
        seen.extend(running.stdout)
        assert running.wait(timeout=120) == 0, "".join(seen)
    finally:
        lock.close()
    assert read_manifest(workspace.root / "artifacts" / "demo" / "preprocess") is not None
    assert statuses(workspace) == {"preprocess": ["FINISHED"]}


def test_a_store_locked_mid_stage_stops_it_before_the_commit_and_its_run_is_closed(tmp_path, initialized_store):
    """The lock comes after the command's first check: the stage finds it before putting its outputs in
    place, and the pipeline's run is marked FAILED once the lock is gone, not left RUNNING."""
    workspace = with_store(make_workspace(tmp_path, TINY), initialized_store)
    overrides = ["data.demo.num_documents=1000", "train.epochs=1"]  # a second's work after the lock; never trained
    lock = StoreLock(workspace)
    seen: list[str] = []
    try:
        running = cli_lines(workspace, "run", *set_args(overrides), extra_env={"HAN_TRACKING_LOCK_WAIT": "0.5"})
        read_until(running, "read documents:", seen)  # the pipeline's run is open, the stage at work
        lock.take()
        read_until(running, "is locked by another process", seen)  # before the commit
        time.sleep(3)  # its 0.5 s are over: the stage has given up
        lock.release()
        seen.extend(running.stdout)
        assert running.wait(timeout=120) == 2, "".join(seen)
    finally:
        lock.close()
    out = "".join(seen)
    assert "is locked by another process (waited 0.5 s" in out
    assert "the stage's new outputs were not put in place (the previous ones are unchanged)" in out
    assert "Traceback" not in out and "sqlalchemy" not in out.lower()
    assert stage_entries(workspace) == []
    assert statuses(workspace) == {"pipeline-demo": ["FAILED"]}


def test_a_store_that_may_not_grow_is_a_clear_error(tmp_path):
    workspace = make_workspace(tmp_path, TINY)
    # `ulimit -f` below the room the store is checked for (1 MiB): no file of the store may grow that far.
    done = cli(workspace, "preprocess", *set_args(TINY), preexec=_file_size_limit(512 * 1024))
    assert done.returncode == 2, done.stderr
    database = workspace.env["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")
    assert f"the tracking store {database} may not grow: File too large" in done.stderr
    assert "nothing was done" in done.stderr and "Traceback" not in done.stderr
    assert stage_entries(workspace) == [] and not list(Path(database).parent.glob(".mlflow.db.*"))


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MB file system (tmpfs) at ``tmp_path / "store"``; skipped where mounting is not allowed."""
    folder = tmp_path / "store"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_the_disk_under_the_store_filling_mid_stage_is_a_clear_error_and_the_run_is_closed_later(tmp_path, small_disk,
                                                                                                 initialized_store):
    """A real full disk (a small tmpfs holds the store): filled while the pipeline's run is open, the stage
    stops before its commit with the store's disk named; the run the full store would not close is marked
    KILLED by the next command, once there is space again."""
    workspace = with_store(make_workspace(tmp_path, TINY), initialized_store, small_disk)
    filler = small_disk / "filler"
    seen: list[str] = []
    running = cli_lines(workspace, "run", *set_args(["data.demo.num_documents=1000", "train.epochs=1"]), extra_env={})
    read_until(running, "read documents:", seen)
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as handle:  # until ENOSPC
        while True:
            handle.write(bytes(1 << 16))
    seen.extend(running.stdout)
    assert running.wait(timeout=120) == 2, "".join(seen)
    out = "".join(seen)
    assert f"the disk under the tracking store {small_disk / 'mlflow.db'} is full (No space left on device" in out
    assert "the stage's new outputs were not put in place" in out and "Traceback" not in out
    assert stage_entries(workspace) == []
    assert "the store refused to close MLflow run" in out and "the next command on this host marks it KILLED" in out

    filler.unlink()
    again = cli(workspace, "preprocess", *set_args(TINY))
    assert again.returncode == 0, again.stderr
    assert "(pipeline) was left RUNNING by a process that died" in again.stdout and "marked KILLED" in again.stdout
    assert statuses(workspace) == {"pipeline-demo": ["KILLED"], "preprocess": ["FINISHED"]}


def test_a_full_disk_while_writing_the_rejected_report_leaves_nothing_half_written(tmp_path):
    """Too much quarantined: the stage writes every rejected record to ``preprocess-rejected.jsonl`` and stops.
    A disk that fills up as it does must not leave a half report behind, or the message would not be true."""
    workspace = make_workspace(tmp_path, TINY)
    data = tmp_path / "mostly-empty.jsonl"
    good = [{"id": f"g{i}", "text": f"Story {i}. The apples grow well.", "label": "ab"[i % 2]} for i in range(40)]
    empty = [{"id": f"e{i}", "text": " ", "label": "a"} for i in range(12_000)]  # ~2 MB of quarantine lines
    data.write_text("".join(json.dumps(row) + "\n" for row in good + empty), encoding="utf-8")
    settings = ["data.format=jsonl", f"data.path={data}"]
    full = cli(workspace, "preprocess", *set_args(settings), preexec=_file_size_limit(3 << 19))  # 1.5 MiB a file
    assert full.returncode == 2, full.stderr
    assert "not enough disk space to write" in full.stderr and "nothing was half written" in full.stderr
    assert "Traceback" not in full.stderr
    assert stage_entries(workspace, "") == []  # no outputs, no report, no .tmp-/.partial leftovers


# Saves a training checkpoint and rewrites a file with ``replacing_file`` (a sweep's results), then does both
# again over `ulimit -f`; prints what is left.
OUTSIDE_THE_STAGE_FOLDERS = """
import json, resource, sys
from pathlib import Path
import numpy as np
from pipeline.artifacts import replacing_file
from pipeline.training.checkpoints import Checkpoints

folder = Path(sys.argv[1])
checkpoints = Checkpoints(folder / "train.resume", "key")
state = {"epochs_done": 1, "history": {}, "best_epoch": 1, "best_value": 0.5, "wait": 0}
checkpoints.save(state, iter([("v0000", np.ones(3))]), {"v0000": np.ones(3)})
with replacing_file(folder / "results.json") as handle:
    handle.write('{"finished_trials": 1}')
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
errors = []
try:
    checkpoints.save({**state, "epochs_done": 2}, iter([("v0000", np.ones(1 << 19))]), {"v0000": np.ones(3)})
except OSError as err:
    errors.append(err.errno)
try:
    with replacing_file(folder / "results.json") as handle:
        handle.write(json.dumps({"finished_trials": 2, "points": "x" * (2 << 20)}))
except OSError as err:
    errors.append(err.errno)
loaded = checkpoints.load()
print(json.dumps({"errors": errors, "epochs_done": loaded[0]["epochs_done"], "results": (folder / "results.json").read_text(),
                  "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))}))
"""


def test_a_full_disk_leaves_checkpoints_and_sweep_results_whole(tmp_path):
    """Files beside the stage folders (a checkpoint, a sweep's results) are replaced whole or not at all: a
    disk that fills up while they are written keeps the previous ones and leaves nothing half written."""
    done = subprocess.run([sys.executable, "-c", OUTSIDE_THE_STAGE_FOLDERS, str(tmp_path)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    left = json.loads(done.stdout.splitlines()[-1])
    assert left["errors"] == [errno.EFBIG] * 2  # both writes met the limit
    assert left["epochs_done"] == 1 and left["results"] == '{"finished_trials": 1}'
    assert left["files"] == ["results.json", "train.resume", "train.resume/epoch-0001", "train.resume/epoch-0001/best.npz",
                             "train.resume/epoch-0001/state.npz", "train.resume/state.json"]
