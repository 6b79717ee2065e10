"""``make bench-groups`` (``benchmarks.length_groups``) on a small preprocessed corpus: the harness, not the speed.

The speed ratios it prints are measured by hand on IMDB (README, "Speed on a CPU"); here it must
train and infer every group count on the same documents and report each one.
"""

from __future__ import annotations

import json

from benchmarks import length_groups
from pipeline.config import load_config
from pipeline.stages import preprocess


def test_length_group_benchmark_times_each_group_count_on_the_same_batches(tmp_path, capsys):
    config = load_config(overrides=["data.demo.num_documents=200"])
    prep = preprocess.run(config).output_dir
    assert length_groups.main(["--prep", str(prep), "--batches", "3", "--epochs", "2", "--groups", "2:padding,1",
                               "--infer-batch", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    results = [json.loads(line) for line in lines if line.startswith("{")]
    assert [(r["groups"], r["cuts"]) for r in results] == [(2, "padding"), (1, "count")]
    for result in results:
        assert len(result["epoch_seconds"]) == 2 and all(s > 0 for s in result["epoch_seconds"])
        assert result["train_docs_per_s"] > 0 and result["infer_docs_per_s"] > 0
    documents = results[0]["documents"]
    assert results[1]["documents"] == documents and 3 < documents <= 3 * 32  # the same three batches
    (ratio,) = [line for line in lines if line.startswith("2 groups (padding cuts) / 1 (count):")]
    assert f"({documents} documents, 3 batches)" in ratio


def test_length_group_benchmark_builds_its_models_with_a_configs_settings(tmp_path, capsys, monkeypatch):
    from pipeline.config import PROJECT_ROOT

    monkeypatch.setenv("HAN_DATA_DIR", str(tmp_path))
    config = load_config(overrides=["data.demo.num_documents=200"])
    prep = preprocess.run(config).output_dir
    assert length_groups.main(["--prep", str(prep), "--batches", "2", "--epochs", "1", "--groups", "2",
                               "--config", str(PROJECT_ROOT / "configs" / "imdb.yaml")]) == 0
    (result,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    # configs/imdb.yaml's dropout mode and optimizer, not the defaults' (element dropout on a small corpus, Adam)
    assert (result["embedding_dropout"], result["optimizer"]) == ("word_type", "LazyAdam")
    assert length_groups.main(["--prep", str(prep), "--batches", "2", "--epochs", "1", "--groups", "2"]) == 0
    (result,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert (result["embedding_dropout"], result["optimizer"]) == ("element", "Adam")


def test_length_group_benchmark_says_what_to_run_without_a_preprocessed_corpus(tmp_path, capsys):
    assert length_groups.main(["--prep", str(tmp_path / "missing")]) == 2
    assert "run `make bench`" in capsys.readouterr().err
