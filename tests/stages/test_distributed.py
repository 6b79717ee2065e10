"""Training under tf.distribute: batch shares per replica, TF_CONFIG checks, two real workers on loopback.

The two-worker test runs the train stage in two processes with ``TF_CONFIG`` and
``MultiWorkerMirroredStrategy``, exactly as on two machines (the artifacts folder is the shared
storage); the mirrored test splits the CPU into two logical devices.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import mlflow
import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.config import PROJECT_ROOT, load_config
from pipeline.training import distribute
from tests.stages.conftest import SMALL, make_workspace, set_args


# --------------------------------------------------------------------------- batch shares
def test_replica_batches_merge_short_tails_and_keep_every_document():
    batches = [np.arange(0, 8), np.arange(8, 9), np.arange(9, 17), np.arange(17, 18)]
    merged = distribute.replica_batches(batches, replicas=2)
    assert [len(b) for b in merged] == [9, 9]
    assert sorted(np.concatenate(merged).tolist()) == list(range(18))
    assert distribute.replica_batches(batches, replicas=1) is batches
    # A short first batch joins the next one.
    assert [len(b) for b in distribute.replica_batches([np.arange(1), np.arange(1, 5)], replicas=2)] == [5]
    with pytest.raises(distribute.DistributeError, match="only 1 documents for 2 replicas"):
        distribute.replica_batches([np.arange(1)], replicas=2)


def test_each_worker_reads_its_replicas_strided_shares_of_every_global_batch():
    batches = [np.arange(0, 8), np.arange(8, 13)]
    # 4 replicas on 2 workers: worker 1 holds replicas 2 and 3.
    shares = distribute.worker_batches(batches, replicas=4, workers=2, worker=1)
    assert [s.tolist() for s in shares] == [[2, 6], [3, 7], [10], [11]]
    everyone = [distribute.worker_batches(batches, 4, 2, w) for w in (0, 1)]
    assert sorted(np.concatenate([s for shares in everyone for s in shares]).tolist()) == list(range(13))


@pytest.mark.parametrize(("value", "message"), [
    ("", "needs the TF_CONFIG environment variable"),
    ("{not json", "not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "no cluster.worker list"),
    ('{"cluster": {"worker": ["a:1"]}}', "no task.type and task.index"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}', "is not in cluster.worker"),
])
def test_a_wrong_tf_config_says_what_is_wrong_and_how_it_should_look(value, message):
    with pytest.raises(distribute.DistributeError, match=message) as caught:
        distribute.read_tf_config({"TF_CONFIG": value})
    assert "cluster" in str(caught.value)


def test_run_refuses_multi_worker_and_says_which_commands_to_run(tmp_path, monkeypatch, capsys):
    make_workspace(tmp_path).activate(monkeypatch)
    assert main(["run", "--set", "train.distribute.strategy=multi_worker"]) == 2
    err = capsys.readouterr().err
    assert "python -m pipeline train` on every worker" in err


# --------------------------------------------------------------------------- real strategies
def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _train_process(workspace, overrides: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, **workspace.env, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
           **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "train", *set_args(overrides)], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, timeout: float = 400) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"training did not finish in {timeout} s:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    return output


def epoch_lines(log: str) -> list[str]:
    """The one-per-epoch summary lines (not the progress lines a slow epoch prints every 15 s)."""
    return [line for line in log.splitlines() if line.startswith("train: epoch ") and "  loss " in line]


def _train_runs(workspace) -> list:
    client = mlflow.MlflowClient(workspace.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(workspace.config.tracking.experiment or workspace.config.name)
    runs = client.search_runs([experiment.experiment_id], "tags.`han.stage` = 'train'")
    return runs


# Per replica half the single-device SMALL batch, so the global batch (and, scaled, the learning rate) match it.
DISTRIBUTED = [*SMALL, "train.batch_size=8", "train.learning_rate=0.0025", "train.epochs=7"]


def test_two_workers_on_loopback_train_one_model_that_loads_and_predicts_like_a_single_worker_one(tmp_path, monkeypatch):
    workspace = make_workspace(tmp_path, [*DISTRIBUTED, "train.distribute.strategy=multi_worker"])
    workspace.activate(monkeypatch)
    assert main(["preprocess", *set_args(workspace.overrides)]) == 0
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = [_train_process(workspace, workspace.overrides,
                              {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
               for i in range(2)]
    chief_log, worker_log = (_finish(p) for p in workers)

    assert "CollectiveAllReduceStrategy: 2 replicas, worker 0 of 2 (chief)" in chief_log
    assert "16 (8 per replica x 2, learning rate 0.005)" in chief_log
    assert "worker 1 done after 7 epochs; the chief writes the outputs" in worker_log
    # Both workers saw the same (all-reduced) metrics every epoch.
    metrics = [[line.split("  lr")[0] for line in epoch_lines(log)] for log in (chief_log, worker_log)]
    assert len(metrics[0]) == 7
    assert metrics[0] == metrics[1]

    # The chief alone logged: one train run, one registered version.
    runs = _train_runs(workspace)
    assert len(runs) == 1
    assert runs[0].data.params["distribute.replicas"] == "2"
    assert runs[0].data.params["train.global_batch_size"] == "16"
    assert len(mlflow.MlflowClient().search_model_versions("name = 'han-demo'")) == 1
    assert not (workspace.root / "artifacts" / "demo" / "train.resume").exists()

    # The model is an ordinary single-device model: same structure, loads, predicts, and learned.
    from pipeline.data.batching import pad_batch
    from pipeline.data.shards import load_split
    from pipeline.model.han import build_han, load_han

    config = workspace.config
    model = load_han(workspace.root / "artifacts" / "demo" / "train" / "model.keras")
    reference = build_han(config.model, vocab_size=model.get_layer("word_embedding").input_dim, num_classes=4)
    def structure(m):
        return [(layer.name, [tuple(w.shape) for w in layer.weights]) for layer in m.layers]

    assert structure(model) == structure(reference)
    test = load_split(workspace.root / "artifacts" / "demo" / "preprocess", "test")
    tokens = pad_batch(test.documents())
    outputs = model(tokens, training=False)
    expected = reference(tokens, training=False)
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    accuracy = float(np.mean(np.argmax(outputs["probabilities"], axis=-1) == test.labels))
    assert accuracy >= 0.8, accuracy  # chance 0.25; TF-IDF + LR about 0.5 on this corpus


def test_mirrored_strategy_over_two_logical_cpus_doubles_the_global_batch_and_resumes_after_kill_9(tmp_path, monkeypatch):
    overrides = [*SMALL, "data.demo.num_documents=200", "train.epochs=2", "train.distribute.strategy=mirrored",
                 "train.distribute.cpu_replicas=2", "train.distribute.scale_learning_rate=false"]
    workspace = make_workspace(tmp_path, overrides)
    workspace.activate(monkeypatch)
    assert main(["preprocess", *set_args(overrides)]) == 0
    # Killed with SIGKILL right after the first epoch's checkpoint, under the strategy...
    killed = _train_process(workspace, overrides, {"HAN_KILL_AT": "train:checkpointed"})
    output, _ = killed.communicate(timeout=400)
    assert killed.returncode == -9, output[-3000:]
    assert "MirroredStrategy: 2 replicas, worker 0 of 1 (chief)" in output
    assert "up to 32 (16 per replica x 2, learning rate 0.005)" in output
    # ... the next start restores the mirrored variables and finishes the second epoch only.
    log = _finish(_train_process(workspace, overrides))
    assert "resuming after epoch 1" in log
    assert [line.split("/")[0] for line in epoch_lines(log)] == ["train: epoch 2"]
    runs = _train_runs(workspace)
    assert len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED", "KILLED"}
    finished = next(run for run in runs if run.info.status == "FINISHED")
    assert finished.data.params["distribute.replicas"] == "2"
    assert finished.data.params["train.effective_learning_rate"] == "0.005"
    manifest = json.loads((workspace.root / "artifacts" / "demo" / "train" / "manifest.json").read_text())
    assert manifest["epochs_run"] == 2
    assert load_config(None, overrides).train.distribute.cpu_replicas == 2


@pytest.mark.slow
def test_workers_that_read_different_data_stop_with_a_clear_error_instead_of_training(tmp_path, monkeypatch):
    # Each worker with its own artifacts folder, preprocessed from a different seed: not shared storage.
    overrides = [*SMALL, "data.demo.num_documents=200", "train.epochs=1", "train.distribute.strategy=multi_worker"]
    workspaces = [make_workspace(tmp_path / f"w{i}", [*overrides, f"seed={i + 1}"]) for i in range(2)]
    for workspace in workspaces:
        workspace.activate(monkeypatch)
        assert main(["preprocess", *set_args(workspace.overrides)]) == 0
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers = [_train_process(w, w.overrides, {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
               for i, w in enumerate(workspaces)]
    for process in workers:
        output, _ = process.communicate(timeout=400)
        assert process.returncode == 2, output[-3000:]
        assert "the workers disagree on data and settings fingerprint" in output
        assert "HAN_ARTIFACTS_DIR on storage all of them share" in output
    assert not any((w.root / "artifacts" / "demo" / "train").exists() for w in workspaces)
