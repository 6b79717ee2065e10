"""The train stage: outputs, the MLflow run tree, caching, and resume after ``kill -9``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.config import PROJECT_ROOT
from tests.stages.conftest import SMALL, make_workspace, set_args


def test_train_before_preprocessing_says_what_to_run(capsys):
    assert main(["train", *set_args(SMALL)]) == 2
    err = capsys.readouterr().err
    assert "no preprocessing outputs" in err and "make preprocess" in err


def test_outputs_and_manifest(workspace):
    out = workspace.config.stage_dir("train")
    manifest = json.loads((out / "manifest.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert manifest["epochs_run"] == 8 == len(history["history"]["loss"])
    assert manifest["best_epoch"] == history["best_epoch"]
    assert manifest["best_value"] == min(history["history"]["val_loss"])
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "bundle" / "model.keras").is_file()
    assert not (workspace.config.artifacts_dir() / "train.resume").exists()  # cleared after a finished run
    assert history["history"]["accuracy"][-1] > 0.8  # it learned (chance is 0.25)
    # Where the training peak comes from: resident memory and the peak so far after each phase.
    memory = manifest["memory_mb"]
    assert [m["phase"] for m in memory] == ["started", "model built", "first epoch", "last epoch", "released"]
    peaks = [m["peak"] for m in memory]
    assert peaks == sorted(peaks) and all(0 < m["rss"] <= m["peak"] for m in memory)
    assert memory[0]["rss"] > 200  # TensorFlow is loaded before training starts


def test_mlflow_run_tree_params_metrics_and_models(workspace):
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("demo")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.data.tags.get("han.stage") == "pipeline"]
    assert len(parent) == 1
    children = {r.data.tags["han.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id}
    assert set(children) == {"preprocess", "train", "evaluate", "promote", "explain"}
    run = children["train"]
    config = workspace.config.to_dict()
    assert run.data.params["train.epochs"] == str(config["train"]["epochs"])
    assert run.data.params["model.word_units"] == "16"
    assert run.data.params["seed"] == "42"
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 8  # one point per epoch
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, 9))
    paths = {a.path for a in client.list_artifacts(run.info.run_id, "train")}
    assert {"train/history.json", "train/training_curves.png", "train/manifest.json"} <= paths
    logged = {m.name: m for m in client.search_logged_models(experiment_ids=[experiment.experiment_id])}
    assert {"keras-model", "model"} <= set(logged)
    assert logged["model"].source_run_id == run.info.run_id
    version = client.get_model_version("han-demo", "1")
    assert version.run_id == run.info.run_id
    assert version.tags["han.train_run_id"] == run.info.run_id
    assert version.tags["gate.passed"] in {"true", "false"}  # evaluate recorded its verdict on the version


def test_unchanged_rerun_is_skipped_and_registers_nothing(workspace, capsys):
    assert main(["train", *set_args(workspace.overrides)]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert len(mlflow.MlflowClient().search_model_versions("name='han-demo'")) == 1


def _weights(path):
    import keras

    import pipeline.model.han  # noqa: F401

    return keras.saving.load_model(path, safe_mode=True).get_weights()


def _train_process(env: dict[str, str], overrides: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "train", *set_args(overrides)], cwd=PROJECT_ROOT,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_mid_training_resumes_and_ends_like_an_uninterrupted_run(tmp_path, monkeypatch):
    # With word2vec vectors: the resumed run restores its embeddings instead of learning them again.
    overrides = [*SMALL, "train.epochs=5", "data.demo.num_documents=300", "model.embedding.word2vec.epochs=1"]
    whole, killed = make_workspace(tmp_path / "whole", overrides), make_workspace(tmp_path / "killed", overrides)
    for workspace in (whole, killed):
        workspace.activate(monkeypatch)
        assert main(["preprocess", *set_args(overrides)]) == 0

    uninterrupted = _train_process(whole.env, overrides)
    _, err = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, err

    state = tmp_path / "killed" / "artifacts" / "demo" / "train.resume" / "state.json"
    victim = _train_process(killed.env, overrides)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and victim.poll() is None:
        if state.is_file() and json.loads(state.read_text())["epochs_done"] >= 2:
            break
        time.sleep(0.02)
    assert victim.poll() is None, "training finished before it could be killed; make it longer"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    done_when_killed = json.loads(state.read_text())["epochs_done"]
    assert 2 <= done_when_killed < 5

    resumed = _train_process(killed.env, overrides)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert f"resuming after epoch {done_when_killed}" in err
    assert "word2vec" not in err

    def result(workspace):
        out = workspace.root / "artifacts" / "demo" / "train"
        return json.loads((out / "history.json").read_text()), _weights(out / "model.keras")

    # The resumed run did not learn the vectors, but the time they took is kept from the first attempt.
    assert json.loads((killed.root / "artifacts" / "demo" / "train" / "manifest.json").read_text())["word2vec_seconds"] > 0
    (history_a, weights_a), (history_b, weights_b) = result(whole), result(killed)
    assert history_a == history_b  # every epoch's metrics, bit for bit
    for a, b in zip(weights_a, weights_b, strict=True):
        np.testing.assert_array_equal(a, b)
    killed.activate(monkeypatch)
    runs = mlflow.search_runs(experiment_names=["demo"], filter_string="tags.`han.stage` = 'train'", output_format="list")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 1 and "han.resumed_from" in finished[0].data.tags
    assert len(mlflow.MlflowClient().get_metric_history(finished[0].info.run_id, "loss")) == 5  # whole curve


def test_word2vec_vectors_are_learned_first_and_logged(tmp_path, monkeypatch, capsys):
    overrides = [*SMALL, "train.epochs=1", "data.demo.num_documents=300", "model.embedding.word2vec.epochs=3"]
    workspace = make_workspace(tmp_path, overrides)
    workspace.activate(monkeypatch)
    assert main(["preprocess", *set_args(overrides)]) == 0
    assert main(["train", *set_args(overrides)]) == 0
    assert "word2vec: epoch 3/3" in capsys.readouterr().err
    manifest = json.loads((workspace.root / "artifacts" / "demo" / "train" / "manifest.json").read_text())
    assert manifest["word2vec_seconds"] > 0  # outside train_seconds (make bench reports both)
    assert [m["phase"] for m in manifest["memory_mb"]][:3] == ["started", "word vectors learned", "model built"]
    client = mlflow.MlflowClient()
    [run] = mlflow.search_runs(experiment_names=["demo"], filter_string="tags.`han.stage` = 'train'", output_format="list")
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "word2vec_loss"), key=lambda m: m.step)]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert run.data.params["model.embedding.word2vec.epochs"] == "3"
    neighbours = client.download_artifacts(run.info.run_id, "train/word2vec_neighbours.txt", str(tmp_path))
    lines = open(neighbours).read().splitlines()
    assert lines and all(": " in line and len(line.split(": ")[1].split(", ")) == 8 for line in lines)

    # model.embedding.word2vec.text: train_validation reads the validation split's words too: more pairs per epoch.
    def pairs(err: str) -> int:
        [line] = [line for line in err.splitlines() if "word2vec: epoch 1/" in line]
        return int(re.search(r"([\d,]+) pairs", line).group(1).replace(",", ""))

    again = [*overrides, "model.embedding.word2vec.text=train_validation", "model.embedding.word2vec.epochs=1"]
    assert main(["train", "--force", *set_args(again)]) == 0
    err = capsys.readouterr().err
    assert "from the training and validation splits" in err
    assert main(["train", "--force", *set_args([*overrides, "model.embedding.word2vec.epochs=1"])]) == 0
    only_train = capsys.readouterr().err
    assert "from the training split" in only_train
    assert pairs(err) > 1.05 * pairs(only_train)  # a tenth of the documents are validation (the default split)


def test_fewer_length_groups_in_training_save_a_model_with_the_configured_groups(tmp_path, monkeypatch, capsys):
    import keras

    from pipeline.config import load_config
    from pipeline.data.batching import pad_batch
    from pipeline.data.shards import load_split
    from pipeline.model.han import build_han

    overrides = [*SMALL, "train.epochs=1", "data.demo.num_documents=300", "model.word_buckets=3",
                 "model.train_word_buckets=2", "model.word_bucket_sentences=2"]
    workspace = make_workspace(tmp_path, overrides)
    workspace.activate(monkeypatch)
    assert main(["preprocess", *set_args(overrides)]) == 0
    assert main(["train", *set_args(overrides)]) == 0
    assert "trained with 2 length groups in a model with 3" in capsys.readouterr().err
    saved = keras.saving.load_model(workspace.config.stage_dir("train") / "model.keras", safe_mode=True)
    assert saved.get_layer("split_by_length").buckets == 3
    # The training graph (2 groups) with the saved weights gives the saved model's outputs.
    config = load_config(None, overrides)
    trained = build_han(config.model.model_copy(update={"word_buckets": 2}), vocab_size=saved.get_layer("word_embedding").input_dim,
                        num_classes=4)
    trained.set_weights(saved.get_weights())
    batch = pad_batch(load_split(workspace.config.stage_dir("preprocess"), "validation").documents()[:16])
    np.testing.assert_allclose(trained(batch)["probabilities"], saved(batch)["probabilities"], atol=1e-6)


def test_malloc_trim_steps_hands_freed_memory_back_every_n_steps(tmp_path, monkeypatch):
    import weakref

    import pipeline.model.han
    import pipeline.runtime

    calls, trainer_gone = [], []
    real = pipeline.runtime.release_free_memory
    trainers = []
    real_compile = pipeline.model.han.compile_han
    monkeypatch.setattr(pipeline.model.han, "compile_han", lambda *a, **k: trainers.append(weakref.ref(real_compile(*a, **k)))
                        or trainers[-1]())

    def release():
        trainer_gone.append(trainers[0]() is None)
        calls.append(real())
        return calls[-1]

    monkeypatch.setattr(pipeline.runtime, "release_free_memory", release)
    overrides = [*SMALL, "train.epochs=2", "data.demo.num_documents=200", "runtime.malloc_trim_steps=3"]
    workspace = make_workspace(tmp_path, overrides)
    workspace.activate(monkeypatch)
    assert main(["preprocess", *set_args(overrides)]) == 0
    assert main(["train", *set_args(overrides)]) == 0
    steps = json.loads((workspace.config.stage_dir("train") / "manifest.json").read_text())["steps_per_epoch"]
    assert steps >= 3
    # Every third step of each epoch, counted from the epoch's start, and once when training ends
    # (the training graph and the optimizer dropped) before the outputs are written.
    assert len(calls) == 2 * (steps // 3) + 1
    # By that last call the compiled training model (its graphs and the optimizer's moments) is gone.
    assert trainer_gone[-1] and not any(trainer_gone[:-1])
    assert all(isinstance(released, bool) for released in calls)


def test_fit_iterates_training_and_validation_data_without_tf_data_autotuning(tmp_path, monkeypatch):
    # A new iterator of both every epoch; destroying one joins tf.data's autotuning thread, which held the
    # stage for seconds at some epoch ends (pipeline.data.batching.without_autotune).
    import keras

    fitted = []
    original_fit = keras.Model.fit

    def fit(self, x=None, *args, validation_data=None, **kwargs):
        fitted.append((x, validation_data))
        return original_fit(self, x, *args, validation_data=validation_data, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit)
    overrides = [*SMALL, "train.epochs=1", "data.demo.num_documents=200"]
    make_workspace(tmp_path, overrides).activate(monkeypatch)
    assert main(["preprocess", *set_args(overrides)]) == 0
    assert main(["train", *set_args(overrides)]) == 0
    [(training, validation)] = fitted
    assert training.options().autotune.enabled is False
    assert validation.options().autotune.enabled is False


def test_with_a_weight_average_the_saved_model_is_the_one_validation_scored(tmp_path, monkeypatch):
    from pipeline.data.shards import load_split
    from pipeline.model.han import inference_function, load_han
    from pipeline.stages.evaluate import predict_probabilities

    overrides = [*SMALL, "train.epochs=4", "data.demo.num_documents=300", "train.ema_decay=0.9"]
    workspace = make_workspace(tmp_path, overrides)
    workspace.activate(monkeypatch)
    assert main(["preprocess", *set_args(overrides)]) == 0
    assert main(["train", *set_args(overrides)]) == 0
    out = workspace.config.stage_dir("train")
    history = json.loads((out / "history.json").read_text())
    validation = load_split(workspace.config.stage_dir("preprocess"), "validation")
    probabilities = predict_probabilities(inference_function(load_han(out / "model.keras")), validation, 64)
    # val_loss (categorical cross-entropy; no penalty terms here) of the best epoch, recomputed from the saved model:
    # had validation read the weights as trained, or the average not been what was kept, these would differ.
    loss = -np.log(np.clip(probabilities[np.arange(len(validation)), validation.labels], 1e-7, 1.0)).mean()
    assert loss == pytest.approx(history["history"]["val_loss"][history["best_epoch"] - 1], abs=2e-4)
