"""``python -m pipeline sweep``: a grid of real train stages, ranked on validation, logged to MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from pipeline.__main__ import main
from pipeline.config import PROJECT_ROOT, ConfigError
from pipeline.stages import sweep
from tests.stages.conftest import SMALL, make_workspace, set_args

# Two epochs: enough for the learning rates to give different validation losses, quick on 2 cores.
TINY = [*SMALL, "data.demo.num_documents=400", "train.epochs=2"]


def test_grid_values_split_on_top_level_commas_only():
    assert sweep.split_values("0.1, 0.2,0.3") == ["0.1", "0.2", "0.3"]
    assert sweep.split_values("[1, 2],[3]") == ["[1, 2]", "[3]"]
    assert sweep.split_values("{score: dot, heads: 2},'a,b'") == ["{score: dot, heads: 2}", "'a,b'"]
    axes = sweep.parse_grid(["train.learning_rate=0.001,0.002", "model.dropout=0.1"])
    assert [(a.key, a.values) for a in axes] == [("train.learning_rate", ("0.001", "0.002")), ("model.dropout", ("0.1",))]


@pytest.mark.parametrize(("grid", "message"), [
    ([], "at least one --grid"),
    (["preprocess.vocab.min_count=1,2"], "model.* and train.* keys only"),
    (["runtime.intra_op_threads=1,2"], "model.* and train.* keys only"),
    (["seed=1,2"], "--seeds"),
    (["train.learning_rate=0.001,,0.002"], "an empty value"),
    (["train.learning_rate=0.001,0.001"], "repeated"),
    (["model.dropout=0.1", "model.dropout=0.2"], "already swept"),
    (["train.learning rate=0.1"], "expected key.path=value"),
])
def test_grids_a_sweep_cannot_run_are_refused_with_the_reason(grid, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace(".", r"\.")):
        sweep.parse_grid(grid)


def test_the_printed_train_command_quotes_values_for_the_shell():
    command = sweep.train_command("configs/bbc.yaml", ["seed=7"], ["model.sentence_attention={score: dot}", "model.dropout=0.3"])
    assert command == ("python -m pipeline train --config configs/bbc.yaml --set seed=7 "
                       "--set 'model.sentence_attention={score: dot}' --set model.dropout=0.3")


def test_seeds_are_whole_numbers_and_default_to_the_configs():
    assert sweep.parse_seeds("42, 1,2", default=7) == [42, 1, 2]
    assert sweep.parse_seeds(None, default=7) == [7]
    with pytest.raises(ConfigError, match="whole numbers"):
        sweep.parse_seeds("42,one", default=7)


def test_points_are_ranked_by_their_mean_with_ties_to_the_lower_loss():
    # Accuracies of a 223-article validation split: a=1 and a=2 tie, but a=1's float mean is one bit below
    # a=2's, so only the tie-break by val_loss (a=1 0.11 against 0.25) puts a=1 ahead.
    trials = [sweep.Trial(1, 0, 42, ("a=1",), value=214 / 223, val_loss=0.10), sweep.Trial(2, 0, 1, ("a=1",), value=220 / 223, val_loss=0.12),
              sweep.Trial(3, 1, 42, ("a=2",), value=217 / 223, val_loss=0.30), sweep.Trial(4, 1, 1, ("a=2",), value=217 / 223, val_loss=0.20),
              sweep.Trial(5, 2, 42, ("a=3",), value=221 / 223, val_loss=0.40), sweep.Trial(6, 2, 1, ("a=3",), value=200 / 223, val_loss=0.50)]
    assert sweep.rank([("a=1",), ("a=2",), ("a=3",)], trials[:4], "val_accuracy")[0]["mean"] < 217 / 223  # the bit
    ranked = sweep.rank([("a=1",), ("a=2",), ("a=3",)], trials, "val_accuracy")
    assert [p["settings"] for p in ranked] == [["a=1"], ["a=2"], ["a=3"]]
    assert ranked[1]["mean"] == 217 / 223 and ranked[0]["stdev"] == pytest.approx(0.01903, abs=1e-5)
    losses = [sweep.Trial(t.index, t.point, t.seed, t.overrides, value=t.val_loss, val_loss=t.val_loss) for t in trials]
    ranked = sweep.rank([("a=1",), ("a=2",), ("a=3",)], losses, "val_loss")
    assert [p["settings"] for p in ranked] == [["a=1"], ["a=2"], ["a=3"]]  # lower is better: 0.11, 0.25, 0.45


def test_an_invalid_value_is_reported_with_its_point_before_anything_trains(tmp_path, monkeypatch, capsys):
    workspace = make_workspace(tmp_path, TINY)
    workspace.activate(monkeypatch)
    assert main(["preprocess", *set_args(TINY)]) == 0
    assert main(["sweep", *set_args(TINY), "--grid", "model.dropout=0.2,1.5"]) == 2
    err = capsys.readouterr().err
    assert "sweep point model.dropout=1.5" in err and "model.dropout" in err
    assert not (workspace.config.artifacts_dir() / "sweep").exists()


def test_sweep_trains_every_point_per_seed_ranks_on_validation_and_its_winner_retrains_the_same(
        tmp_path, monkeypatch, capsys):
    overrides = [*TINY, "model.embedding.word2vec.epochs=1"]
    workspace = make_workspace(tmp_path, overrides)
    workspace.activate(monkeypatch)
    assert main(["preprocess", *set_args(overrides)]) == 0
    assert main(["sweep", *set_args(overrides), "--grid", "train.learning_rate=0.002,0.01", "--seeds", "42,1"]) == 0
    out, err = capsys.readouterr()
    # Word vectors are learned once per seed; the other point's trials reuse them.
    assert err.count("word2vec: learning") == 2 and err.count("not learned again") == 2
    (folder,) = (workspace.config.artifacts_dir() / "sweep").iterdir()
    results = json.loads((folder / "results.json").read_text())
    trials = results["trials"]
    assert [(t["overrides"], t["seed"]) for t in trials] == [
        (["train.learning_rate=0.002"], 42), (["train.learning_rate=0.002"], 1),
        (["train.learning_rate=0.01"], 42), (["train.learning_rate=0.01"], 1)]
    for trial in trials:  # each trial is a real training: its ranked value is its history's at its best epoch
        history = json.loads((folder / f"trial-{trial['index']:03d}" / "history.json").read_text())
        assert trial["value"] == history["history"]["val_loss"][trial["best_epoch"] - 1] == min(history["history"]["val_loss"])
        assert not (folder / f"trial-{trial['index']:03d}" / "model.keras").exists()
    means = {p["settings"][0]: p["mean"] for p in results["points"]}
    assert means["train.learning_rate=0.002"] == pytest.approx((trials[0]["value"] + trials[1]["value"]) / 2)
    assert results["points"][0]["mean"] == min(means.values())  # val_loss (the demo's monitor): lower is better
    assert len({round(v, 6) for v in means.values()}) == 2  # the learning rates made a difference
    best = results["points"][0]["settings"]
    assert "sweep: to train it: python -m pipeline train --config" in out and f"--set {best[0]}" in out
    assert (folder / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # MLflow: one sweep run, the four trials nested under it, no model logged or registered by them.
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("han.stage") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_id for r in children) == sorted(t["run_id"] for t in trials)
    assert {r.data.tags["han.sweep.seed"] for r in children} == {"42", "1"}
    assert parent.data.metrics["best_val_loss"] == pytest.approx(results["points"][0]["mean"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} == {
        "sweep/results.json", "sweep/results.md", "sweep/sweep.png"}
    assert client.search_model_versions() == []

    # The second point's seed-42 trial ran third in the sweep's process, with the first trial's word
    # vectors; the train stage, learning its own, reproduces it.
    assert main(["train", *set_args([*overrides, "train.learning_rate=0.01"])]) == 0
    retrained = json.loads((workspace.config.stage_dir("train") / "history.json").read_text())["history"]
    trial = json.loads((folder / "trial-003" / "history.json").read_text())["history"]
    assert retrained["val_loss"] == trial["val_loss"] and retrained["loss"] == trial["loss"]


def test_a_sweep_killed_after_a_trial_keeps_that_trials_result(tmp_path, monkeypatch):
    workspace = make_workspace(tmp_path, TINY)
    workspace.activate(monkeypatch)
    assert main(["preprocess", *set_args(TINY)]) == 0
    killed = subprocess.run([sys.executable, "-m", "pipeline", "sweep", *set_args(TINY), "--grid", "model.dropout=0.1,0.2"],
                            cwd=PROJECT_ROOT, env={**os.environ, **workspace.env, "HAN_KILL_AT": "sweep:trial_recorded"},
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    (folder,) = (workspace.config.artifacts_dir() / "sweep").iterdir()
    results = json.loads((folder / "results.json").read_text())
    assert results["finished_trials"] == 1
    assert results["trials"][0]["value"] is not None and results["trials"][1]["value"] is None
    assert "model.dropout=0.1" in (folder / "results.md").read_text()
    # The killed sweep's MLflow run was left RUNNING; the next stage's start marks it KILLED (README, faults).
    from pipeline.tracking import close_orphaned_runs, connect

    tracking = connect()
    assert close_orphaned_runs(tracking, tracking.get_experiment_by_name("demo").experiment_id) == [results["mlflow_run_id"]]


def test_plot_labels_use_the_last_key_part_unless_that_is_ambiguous():
    from pipeline.evaluation.metrics import _short_settings

    assert _short_settings(["train.learning_rate=0.002", "model.dropout=0.3"]) == "learning_rate=0.002\ndropout=0.3"
    assert _short_settings(["model.word_attention.score=dot", "model.sentence_attention.score=dot"]) == (
        "model.word_attention.score=dot\nmodel.sentence_attention.score=dot")


def test_a_diverged_trial_leaves_its_point_unranked_at_the_bottom():
    trials = [sweep.Trial(1, 0, 42, ("a=1",), value=0.30, val_loss=0.30), sweep.Trial(2, 1, 42, ("a=2",), value=float("nan")),
              sweep.Trial(3, 2, 42, ("a=3",), value=0.50, val_loss=0.50)]
    ranked = sweep.rank([("a=1",), ("a=2",), ("a=3",)], trials, "val_loss")
    assert [p["settings"] for p in ranked] == [["a=1"], ["a=3"], ["a=2"]]
    assert ranked[-1]["mean"] is None
    result = sweep.SweepResult(Path("."), "val_loss", [42], trials, ranked)
    assert "trial 2 (a=2, seed 42): diverged (val_loss nan)" in sweep.markdown(result, "c.yaml")


def test_a_failing_trial_is_recorded_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    workspace = make_workspace(tmp_path, TINY)
    workspace.activate(monkeypatch)
    assert main(["preprocess", *set_args(TINY)]) == 0
    missing = tmp_path / "no-such-vectors.txt"
    assert main(["sweep", *set_args([*TINY, "train.epochs=1"]), "--grid", f"model.embedding.pretrained_path={missing},null"]) == 2
    out, err = capsys.readouterr()
    assert "trial 1/2 FAILED" in err and "1 of 2 trials failed" in err
    (folder,) = (workspace.config.artifacts_dir() / "sweep").iterdir()
    results = json.loads((folder / "results.json").read_text())
    assert results["failed_trials"] == [1] and str(missing) in results["trials"][0]["error"]
    assert results["trials"][1]["value"] is not None  # the point after the failure was trained
    assert results["points"][0]["settings"] == ["model.embedding.pretrained_path=null"]
    assert "failed:" in (folder / "results.md").read_text() and "sweep: to train it:" in out
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("han.stage") == "sweep"]
    assert parent.data.tags["han.sweep.failed_trials"] == "1"
    assert parent.data.tags["han.sweep.best"] == "model.embedding.pretrained_path=null"
    # The failed trial stopped before its run opened (reading the vectors); the other one finished.
    assert [r.info.status for r in runs if r.data.tags.get("han.sweep.seed")] == ["FINISHED"]
