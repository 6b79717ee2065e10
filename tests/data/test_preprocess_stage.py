"""The preprocessing stage end to end on real files: accounting, splits, determinism, caching, atomicity."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.data import shards
from pipeline.stages import preprocess
from pipeline.stages.preprocess import PreprocessError

SMALL_DEMO = ["data.demo.num_documents=160"]


def load_split(out: Path, name: str) -> dict[str, np.ndarray]:
    split = shards.load_split(out, name)
    return {key: getattr(split, key) for key in ("tokens", "sentence_lengths", "document_lengths", "labels", "ids")}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_demo_corpus_outputs_are_complete_and_consistent():
    result = preprocess.run(load_config(overrides=SMALL_DEMO))
    out = result.output_dir
    counts = result.manifest["counts"]
    assert counts == {"input": 160, "kept": 160, "quarantined": 0, "by_reason": {}}
    for name in ("vocab.json", "labels.json", "text_processor.json", "stats.json", "quarantine.jsonl", "manifest.json"):
        assert (out / name).is_file(), name
    assert set(result.manifest["outputs"]) >= {"train-00000.npz", "vocab.json", "stats.json"}
    vocab = json.loads((out / "vocab.json").read_text())
    total = 0
    for name in ("train", "validation", "test"):
        split = load_split(out, name)
        n = len(split["labels"])
        total += n
        assert len(split["ids"]) == len(split["document_lengths"]) == n
        assert split["document_lengths"].sum() == len(split["sentence_lengths"])
        assert split["sentence_lengths"].sum() == len(split["tokens"])
        assert split["tokens"].dtype == np.int32 and split["tokens"].min() >= 1  # no padding stored
        assert len(read_jsonl(out / f"{name}.documents.jsonl")) == n
    assert total == 160
    assert vocab["tokens"][:2] == ["<pad>", "<oov>"] and vocab["size"] == len(vocab["tokens"]) > 2
    stats = json.loads((out / "stats.json").read_text())
    assert stats["documents"] == {"train": 112, "validation": 16, "test": 32}
    assert stats["split_source"].startswith("stratified")
    # stratified: every split has every class
    assert all(len(balance) == 4 for balance in stats["class_balance"].values())


def test_demo_sentences_stay_aligned_with_evidence_positions():
    result = preprocess.run(load_config(overrides=SMALL_DEMO))
    for row in read_jsonl(result.output_dir / "train.documents.jsonl"):
        assert len(row["sentences"]) == row["meta"]["num_sentences"], row["id"]
        assert all(0 <= i < len(row["sentences"]) for i in row["meta"]["evidence"])


def test_limits_default_to_training_percentiles_and_truncation_is_recorded():
    result = preprocess.run(load_config(overrides=[*SMALL_DEMO, "preprocess.limits.percentile=50"]))
    stats = json.loads((result.output_dir / "stats.json").read_text())
    limits = stats["limits"]
    train = stats["splits"]["train"]
    assert limits["max_sentences"] == int(np.ceil(train["sentences_per_document"]["p50"]))
    assert train["truncation"]["documents_over_max_sentences"] > 0
    assert 0 < train["truncation"]["tokens_cut_fraction"] < 1
    split = load_split(result.output_dir, "train")
    assert split["document_lengths"].max() <= limits["max_sentences"]
    assert split["sentence_lengths"].max() <= limits["max_words"]


def test_same_seed_same_splits_and_vocabulary(tmp_path, monkeypatch):
    outputs = []
    for run, seed in enumerate([3, 3, 4]):
        monkeypatch.setenv("HAN_ARTIFACTS_DIR", str(tmp_path / f"run{run}"))
        result = preprocess.run(load_config(overrides=[*SMALL_DEMO, f"seed={seed}"]))
        outputs.append(result.output_dir)
    same = [(load_split(o, "test")["ids"].tolist(), (o / "vocab.json").read_text()) for o in outputs]
    assert same[0] == same[1]
    assert same[0][0] != same[2][0]


def test_unchanged_rerun_is_a_noop_and_a_change_is_not(capsys):
    config = load_config(overrides=SMALL_DEMO)
    first = preprocess.run(config)
    second = preprocess.run(config)
    assert not first.skipped and second.skipped
    assert second.manifest == first.manifest
    assert "nothing to do" in capsys.readouterr().err
    third = preprocess.run(load_config(overrides=[*SMALL_DEMO, "preprocess.vocab.min_count=1"]))
    assert not third.skipped
    # a corrupted output invalidates the cache
    (third.output_dir / "vocab.json").write_text("{}")
    assert not preprocess.run(load_config(overrides=[*SMALL_DEMO, "preprocess.vocab.min_count=1"])).skipped


def test_failure_while_writing_keeps_the_previous_outputs(monkeypatch):
    config = load_config(overrides=SMALL_DEMO)
    good = preprocess.run(config)
    before = (good.output_dir / "manifest.json").read_text()
    import pipeline.data.vocab

    def explode(self, path):
        raise OSError("No space left on device")

    monkeypatch.setattr(pipeline.data.vocab.Vocabulary, "save", explode)
    with pytest.raises(OSError, match="No space"):
        preprocess.run(config, force=True)
    assert (good.output_dir / "manifest.json").read_text() == before
    assert not list(good.output_dir.parent.glob("preprocess.tmp-*"))


BAD_RECORDS = [
    {"id": "ok1", "text": "A fine first document. It has two sentences.", "label": "a"},
    {"id": "ok2", "text": "Another good one here. Short but real.", "label": "b"},
    {"id": "ok3", "text": "Third document is fine too.", "label": "a"},
    {"id": "ok4", "text": "Fourth document, also fine.", "label": "b"},
    {"id": "empty", "text": "   \n\t ", "label": "a"},
    {"id": "nolabel", "text": "Text without a label."},
    {"id": "unknown", "text": "Text with a label nobody allowed.", "label": "zzz"},
    {"id": "ok1", "text": "A duplicate id.", "label": "a"},
    {"id": "huge", "text": "word " * 500, "label": "b"},
    {"id": "punct", "text": "... !!! ???", "label": "a"},
]


def write_bad_jsonl(path: Path) -> None:
    lines = [json.dumps(r) for r in BAD_RECORDS]
    lines.insert(3, "{this is not json")
    lines.insert(5, "[1, 2, 3]")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_every_quarantine_reason_is_accounted_for(tmp_path):
    data = tmp_path / "bad.jsonl"
    write_bad_jsonl(data)
    config = load_config(overrides=[
        "data.format=jsonl", f"data.path={data}", "data.labels=[a, b]", "data.max_chars=1000",
        "preprocess.max_quarantine_fraction=1.0", "preprocess.split.validation=0.0", "preprocess.split.test=0.0",
        "preprocess.vocab.min_count=1",
    ])
    result = preprocess.run(config)
    counts = result.manifest["counts"]
    assert counts["input"] == 12
    assert counts["kept"] == 4
    assert counts["quarantined"] == 8
    assert counts["by_reason"] == {"duplicate_id": 1, "empty_text": 1, "missing_label": 1, "no_tokens": 1,
                                   "too_large": 1, "unknown_label": 1, "unparsable": 2}
    rows = read_jsonl(result.output_dir / "quarantine.jsonl")
    assert len(rows) == 8
    assert all(row["source"].startswith(str(data)) and row["reason"] and row["detail"] for row in rows)
    assert {row["id"] for row in rows if row["reason"] == "duplicate_id"} == {"ok1"}


def test_too_much_quarantine_fails_the_run_and_keeps_the_evidence(tmp_path):
    data = tmp_path / "bad.jsonl"
    write_bad_jsonl(data)
    config = load_config(overrides=["data.format=jsonl", f"data.path={data}", "data.labels=[a, b]",
                                    "data.max_chars=1000", "preprocess.max_quarantine_fraction=0.1"])
    with pytest.raises(PreprocessError, match="max_quarantine_fraction") as err:
        preprocess.run(config)
    rejected = config.artifacts_dir() / "preprocess-rejected.jsonl"
    assert str(rejected) in str(err.value)
    assert len(read_jsonl(rejected)) >= 6
    assert not config.stage_dir("preprocess").exists()


def test_single_class_is_refused(tmp_path):
    data = tmp_path / "one.jsonl"
    data.write_text("\n".join(json.dumps({"id": str(i), "text": f"Document {i} text.", "label": "a"}) for i in range(5)))
    with pytest.raises(PreprocessError, match="only one label"):
        preprocess.run(load_config(overrides=["data.format=jsonl", f"data.path={data}"]))


def _add(tar: tarfile.TarFile, name: str, text: str) -> None:
    payload = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def test_dataset_own_split_is_kept(tmp_path):
    archive = tmp_path / "reviews.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        _add(tar, "reviews/README", "not a document")
        for split, n in (("train", 20), ("test", 6)):
            for label in ("pos", "neg"):
                for i in range(n):
                    mood = "great lovely fun" if label == "pos" else "awful boring bad"
                    _add(tar, f"reviews/{split}/{label}/{i}.txt", f"Review {i} was {mood}.<br /><br />The end came soon.")
    result = preprocess.run(load_config(overrides=["data.format=folder", f"data.path={archive}", "preprocess.vocab.min_count=1"]))
    stats = json.loads((result.output_dir / "stats.json").read_text())
    assert stats["split_source"] == "dataset"
    assert stats["documents"]["test"] == 12
    assert stats["documents"]["train"] + stats["documents"]["validation"] == 40
    assert stats["documents"]["validation"] == 4
    assert stats["skipped_files"] == 1
    test_ids = load_split(result.output_dir, "test")["ids"].tolist()
    assert all(i.startswith("test/") for i in test_ids)
    # <br /> separates sentences and never becomes a token
    vocab_text = (result.output_dir / "vocab.json").read_text()
    assert "<br" not in vocab_text.replace("<pad>", "").replace("<oov>", "")
    row = read_jsonl(result.output_dir / "test.documents.jsonl")[0]
    assert len(row["sentences"]) == 2


def test_stage_is_tracked_in_mlflow():
    from mlflow import MlflowClient

    from pipeline.tracking import tracking_uri

    preprocess.run(load_config(overrides=SMALL_DEMO))
    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name("demo")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["han.stage"] == "preprocess"
    assert run.data.params["preprocess.vocab.min_count"] == "2"
    assert run.data.metrics["counts.input"] == 160
    assert run.data.metrics["counts.quarantined"] == 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "preprocess")}
    assert {"preprocess/stats.json", "preprocess/manifest.json", "preprocess/quarantine.jsonl"} <= artifacts
    # artifacts sit beside the temporary SQLite store, not in the working directory
    assert run.info.artifact_uri.startswith(Path(tracking_uri().removeprefix("sqlite:///")).parent.as_uri())


@pytest.mark.real_data
def test_bbc_end_to_end(shared_data, monkeypatch):
    # Real data through the parallel tokenizer pool: 2,225 documents, five topics, nothing lost.
    monkeypatch.setenv("HAN_DATA_DIR", str(shared_data))
    from pipeline.config import PROJECT_ROOT

    result = preprocess.run(load_config(PROJECT_ROOT / "configs" / "bbc.yaml", ["preprocess.workers=2"]))
    assert result.manifest["counts"] == {"input": 2225, "kept": 2225, "quarantined": 0, "by_reason": {}}
    stats = json.loads((result.output_dir / "stats.json").read_text())
    total = {label: sum(split[label] for split in stats["class_balance"].values()) for label in stats["labels"]}
    assert total == {"business": 510, "entertainment": 386, "politics": 417, "sport": 511, "tech": 401}
    assert stats["decode_error_bytes"] == 1 and stats["documents_with_decode_errors"] == 1  # sport/199 is latin-1
    assert stats["files_read"] == 2225 and stats["skipped_files"] == 1  # README.TXT
    assert 10 <= stats["splits"]["train"]["sentences_per_document"]["mean"] <= 30
    assert stats["splits"]["test"]["oov_rate"] < 0.1
