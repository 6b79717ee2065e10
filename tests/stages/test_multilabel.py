"""Multi-label documents end to end (issue #32): label lists read from JSON arrays or a delimited CSV
column, multi-hot shards, thresholds chosen on validation, micro/macro-F1 and per-label metrics beside a
one-vs-rest TF-IDF baseline, the gate on micro-F1, per-label evidence in the explanations, and the
raw-text model returning label sets."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.__main__ import main
from pipeline.artifacts import read_json
from pipeline.config import ConfigError, load_config
from pipeline.data.readers import ReadReport, read_documents
from pipeline.data.records import MISSING_LABEL, UNKNOWN_LABEL, UNPARSABLE, RawDocument, Rejected
from pipeline.data.shards import load_split
from pipeline.evaluation.metrics import choose_thresholds, multilabel_decisions, multilabel_metrics, tfidf_baseline
from pipeline.stages import preprocess
from tests.stages.conftest import make_workspace, set_args

TOPICS = {
    "health": ["Doctors warned about the flu season.", "The hospital opened a new cancer ward."],
    "politics": ["The minister announced a new budget in parliament.", "The senator opposed the bill."],
    "sport": ["The striker scored twice in the final match.", "The coach praised the goalkeeper."],
    "tech": ["The company released a faster processor.", "Engineers fixed the software bug overnight."],
}
FILLER = ["It was reported on Monday.", "Officials declined to comment further.", "More details are expected soon."]
MULTI = ["data.format=jsonl", "data.label_field=labels", "data.multilabel=true", "preprocess.vocab.min_count=1",
         "preprocess.split.validation=0.2", "model.embedding.dim=16", "model.word_units=16", "model.sentence_units=16",
         "model.word_attention.context_dim=16", "model.sentence_attention.context_dim=16", "train.epochs=12",
         "train.learning_rate=0.01", "train.batch_size=16", "train.early_stopping.patience=0",
         "evaluate.gate.min_accuracy=0.0", "explain.random_draws=1"]


def stories(count: int, seed: int) -> list[dict]:
    """Documents with one to three topics, each topic stated by one of its sentences among fillers."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        labels = sorted(rng.sample(sorted(TOPICS), rng.choice([1, 1, 2, 2, 3])))
        sentences = [rng.choice(TOPICS[label]) for label in labels] + rng.sample(FILLER, 2)
        rng.shuffle(sentences)
        out.append({"id": f"s{seed}-{i}", "text": " ".join(sentences), "labels": labels})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.label_delimiter=;"], "set data.multilabel: true too"),
    (["data.format=folder", "data.path=x", "data.multilabel=true"], "a folder corpus has one label per document"),
    (["model.multilabel=true"], "set data.multilabel: true"),
    (["data.multilabel=true", "train.class_weights=balanced"], "use none"),
])
def test_config_refuses_label_settings_that_contradict(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
        load_config(None, overrides)


def test_multilabel_data_sets_the_model_head_and_gates_on_micro_f1_unless_told():
    # configs/default.yaml says metric: auto, as every key's default
    assert load_config(Path("configs/default.yaml"), ["data.multilabel=true"]).evaluate.gate.metric == "micro_f1"
    config = load_config(None, ["data.multilabel=true"])
    assert config.model.multilabel and config.evaluate.gate.metric == "micro_f1"
    told = load_config(None, ["data.multilabel=true", "evaluate.gate.metric=macro_f1"])
    assert told.evaluate.gate.metric == "macro_f1"
    assert load_config(None).evaluate.gate.metric == "macro_f1" and not load_config(None).model.multilabel


# ------------------------------------------------------------------ reading label lists


def read(path: Path, *overrides: str) -> list[RawDocument | Rejected]:
    config = load_config(None, [f"data.path={path}", *overrides])
    return list(read_documents(config.data, path, ReadReport()))


def test_json_arrays_are_label_sets_and_bad_ones_are_quarantined_with_the_reason(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [
        {"id": "a", "text": "x", "labels": ["earn", "acq", "earn", " "]},
        {"id": "b", "text": "x", "labels": "grain"},
        {"id": "c", "text": "x", "labels": [1, 2.0, True]},
        {"id": "d", "text": "x", "labels": [["nested"]]},
        {"id": "e", "text": "x", "labels": {"earn": 1}},
        {"id": "f", "text": "x", "labels": []},
    ])
    records = read(path, "data.format=jsonl", "data.label_field=labels", "data.multilabel=true")
    assert [r.label for r in records[:3]] == [("acq", "earn"), ("grain",), ("1", "2", "true")]
    assert isinstance(records[3], Rejected) and records[3].reason == UNPARSABLE
    assert "list with a list item" in records[3].detail and records[3].id == "d"
    assert isinstance(records[4], Rejected) and "JSON object" in records[4].detail
    assert records[5].label is None  # an empty list: missing_label at validation

    single = read(path, "data.format=jsonl", "data.label_field=labels")
    assert single[0].reason == UNPARSABLE and "needs data.multilabel: true" in single[0].detail


def test_csv_label_column_split_at_the_delimiter(tmp_path):
    path = tmp_path / "docs.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "label"])
        writer.writerows([["1", "t", "earn|acq"], ["2", "t", "crude"], ["3", "t", " | "]])
    records = read(path, "data.format=csv", "data.multilabel=true", "data.label_delimiter='|'")
    assert [r.label for r in records] == [("acq", "earn"), ("crude",), None]


def test_preprocess_accounts_for_every_record_and_writes_multi_hot_shards(tmp_path):
    rows = stories(60, 1)
    rows += [{"id": "empty", "text": "Doctors warned.", "labels": []},
             {"id": "unknown", "text": "Doctors warned.", "labels": ["health", "weather"]},
             {"id": "nested", "text": "Doctors warned.", "labels": [["health"]]}]
    path = write_jsonl(tmp_path / "all.jsonl", rows)
    labels = "[health,politics,sport,tech]"
    result = preprocess.run(load_config(None, [*MULTI, f"data.path={path}", f"data.labels={labels}"]))
    counts = result.manifest["counts"]
    assert (counts["input"], counts["kept"], counts["quarantined"]) == (63, 60, 3)
    assert counts["by_reason"] == {MISSING_LABEL: 1, UNKNOWN_LABEL: 1, UNPARSABLE: 1}
    quarantined = {row["id"]: row for row in map(json.loads, (result.output_dir / "quarantine.jsonl").open())}
    assert "'weather' is not in data.labels" in quarantined["unknown"]["detail"]
    stats = read_json(result.output_dir / "stats.json")
    assert stats["multilabel"] and stats["labels"] == sorted(TOPICS)
    train = load_split(result.output_dir, "train")
    assert train.labels.shape == (len(train), 4) and set(np.unique(train.labels)) <= {0, 1}
    documents = [json.loads(line) for line in (result.output_dir / "train.documents.jsonl").open()]
    by_id = {row["id"]: row["labels"] for row in rows if isinstance(row["labels"], list)}
    for doc, hot in zip(documents, train.labels, strict=True):
        assert doc["label"] == by_id[doc["id"]] == [name for name, on in zip(stats["labels"], hot, strict=True) if on]
    # class_balance counts documents with each label: more than the documents when some have several
    assert sum(stats["class_balance"]["train"].values()) == int(train.labels.sum()) > len(train)


# ------------------------------------------------------------------ metrics, thresholds, baseline


def test_multilabel_metrics_on_known_decisions():
    truth = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 0]])
    probabilities = np.array([[0.9, 0.2, 0.6], [0.1, 0.4, 0.3], [0.7, 0.6, 0.1]])
    decided = multilabel_decisions(probabilities, 0.5)
    # the second document has no label over 0.5: it gets its most probable one
    assert decided.tolist() == [[1, 0, 1], [0, 1, 0], [1, 1, 0]]
    metrics = multilabel_metrics(truth, probabilities, ["a", "b", "c"], 0.5)
    assert metrics["accuracy"] == pytest.approx(2 / 3)  # exact label sets
    assert metrics["micro_precision"] == pytest.approx(4 / 5) and metrics["micro_recall"] == pytest.approx(1.0)
    assert metrics["micro_f1"] == pytest.approx(8 / 9)
    assert metrics["per_class"]["b"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1,
                                         "threshold": 0.5}
    assert metrics["macro_f1"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert metrics["hamming_loss"] == pytest.approx(1 / 9)


def test_thresholds_are_chosen_per_label_only_where_validation_can_tell():
    rng = np.random.default_rng(0)
    truth = np.zeros((200, 2), dtype=int)
    truth[:100, 0] = 1
    truth[:2, 1] = 1  # two positives: too few for a threshold of its own
    probabilities = np.column_stack([np.where(truth[:, 0] == 1, 0.3, 0.1) + rng.uniform(0, 0.05, 200),
                                     rng.uniform(0, 1, 200)])
    thresholds, info = choose_thresholds(truth, probabilities, "per_label", min_positives=5)
    assert 0.16 <= thresholds[0] <= 0.3  # separates 0.30-0.35 from 0.10-0.15, far below 0.5
    assert thresholds[1] == info["global"] and info["own_thresholds"] == 1
    overall, info = choose_thresholds(truth, probabilities, "global")
    assert overall[0] == overall[1] == info["global"] and info["own_thresholds"] == 0


def test_one_vs_rest_baseline_gives_each_label_its_own_probability():
    texts = ["oil prices rose", "wheat harvest grew", "oil and wheat exports", "shares of oil firms"] * 5
    targets = np.array([[1, 0], [0, 1], [1, 1], [1, 0]] * 5)
    probabilities, info = tfidf_baseline(texts, targets, ["oil wheat", "wheat"], 2, max_features=None, ngram_max=1,
                                         C=10.0, seed=0)
    assert info["one_vs_rest"] and probabilities.shape == (2, 2)
    assert probabilities[0].min() > 0.5 and probabilities[1, 1] > 0.5
    assert probabilities[1, 0] < probabilities[0, 0] - 0.1  # "wheat" alone says less of oil


# ------------------------------------------------------------------ the pipeline


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory):
    """``python -m pipeline run`` on label-set documents shipped as a train file and a test file."""
    root = tmp_path_factory.mktemp("multilabel")
    train = write_jsonl(root / "data" / "train.jsonl", stories(320, 1))
    test = write_jsonl(root / "data" / "test.jsonl", stories(80, 2))
    overrides = ["name=topics", *MULTI, f"data.path.train={train}", f"data.path.test={test}"]
    workspace = make_workspace(root, overrides)
    with pytest.MonkeyPatch.context() as patch:
        workspace.activate(patch)
        assert main(["run", *set_args(overrides)]) == 0
    return workspace


@pytest.fixture
def topics(multilabel_run, monkeypatch):
    multilabel_run.activate(monkeypatch)
    return multilabel_run


def test_evaluate_reports_micro_and_macro_f1_per_label_beside_the_baseline(topics):
    config = topics.config
    metrics = read_json(config.stage_dir("evaluate") / "metrics.json")
    model, baseline = metrics["model"], metrics["baseline"]
    assert model["multilabel"] and set(model["per_class"]) == set(TOPICS)
    assert model["micro_f1"] > 0.8, model  # four topics stated outright: learnt in 12 epochs
    assert baseline["info"]["one_vs_rest"] and baseline["input"] == "full_text"
    thresholds = read_json(config.stage_dir("train") / "thresholds.json")
    assert [model["per_class"][label]["threshold"] for label in thresholds["labels"]] == thresholds["thresholds"]
    predictions = [json.loads(line) for line in (config.stage_dir("evaluate") / "predictions.jsonl").open()]
    assert len(predictions) == 80 and all(isinstance(p["predicted"], list) and p["predicted"] for p in predictions)
    assert np.mean([p["correct"] for p in predictions]) == pytest.approx(model["accuracy"])
    assert (config.stage_dir("evaluate") / "label_f1.png").stat().st_size > 1000
    assert [c["check"] for c in metrics["gate"]["checks"]] == ["min_accuracy", "min_macro_f1"]


def test_the_baselines_thresholds_are_chosen_on_validation_as_the_hans_are(topics):
    from pipeline.stages.evaluate import document_texts, run_baseline

    config = topics.config
    prep = config.stage_dir("preprocess")
    train, validation, test = (load_split(prep, name) for name in ("train", "validation", "test"))
    _, described = run_baseline(config, prep, test)
    # The same one-vs-rest fit, asked for the validation documents: its thresholds are the best F1 there.
    held_out, _ = tfidf_baseline(document_texts(prep, "train")[1], train.labels, document_texts(prep, "validation")[1],
                                 len(TOPICS), max_features=None, ngram_max=2, C=10.0, seed=config.seed, min_df=2,
                                 pretokenized=False)
    expected, _ = choose_thresholds(validation.labels, held_out, config.train.thresholds)
    assert described["thresholds"] == pytest.approx(expected.tolist())
    assert described["threshold_info"]["validation_documents"] == len(validation)
    assert described["info"]["predicted_documents"] == len(validation) + len(test)
    metrics = read_json(config.stage_dir("evaluate") / "metrics.json")["baseline"]
    assert [metrics["per_class"][label]["threshold"] for label in sorted(TOPICS)] == pytest.approx(expected.tolist())
    # Learnt from the validation split too, it has none left to choose on: every label at 0.5.
    both = load_config(None, [*topics.overrides, "evaluate.baseline.fit_on=train_validation"])
    _, described = run_baseline(both, prep, test)
    assert described["thresholds"] == [0.5] * len(TOPICS) and described["threshold_info"]["mode"] == "fixed"


def test_a_second_model_is_gated_on_micro_f1_against_the_champion(topics):
    assert main(["train", "--force", *set_args([*topics.overrides, "seed=7"])]) == 0
    assert main(["evaluate", *set_args([*topics.overrides, "seed=7"])]) == 0
    metrics = read_json(topics.config.stage_dir("evaluate") / "metrics.json")
    check = metrics["gate"]["checks"][-1]
    assert check["check"] == "beat_champion" and check["metric"] == "micro_f1"
    assert check["threshold"] == pytest.approx(metrics["champion"]["metrics"]["micro_f1"])
    assert metrics["champion"]["comparable"] and metrics["champion"]["metrics"]["multilabel"]


def test_explanations_name_the_sentence_each_predicted_label_rests_on(topics):
    explain_dir = topics.config.stage_dir("explain")
    explanations = [json.loads(line) for line in (explain_dir / "explanations.jsonl").open()]
    with_evidence = [e for e in explanations if e.get("label_evidence")]
    assert with_evidence
    for e in with_evidence:
        assert set(e["label_evidence"]) == set(e["predicted"])
    # Where a predicted topic is stated by one sentence, removing it lowers that label most.
    hits = total = 0
    for e in with_evidence:
        for label, evidence in e["label_evidence"].items():
            stating = [i for i, s in enumerate(e["sentences"]) if s["text"] in TOPICS[label]]
            if label in e["label"] and len(stating) == 1:
                total += 1
                hits += evidence["sentence"] == stating[0]
    assert total and hits / total >= 0.8, (hits, total)
    page = (explain_dir / "report.html").read_text(encoding="utf-8")
    assert 'data-multi="1"' in page and "without it p falls" in page


def test_the_raw_text_model_returns_label_sets(topics):
    import mlflow

    model = mlflow.pyfunc.load_model("models:/han-topics@champion")
    answers = model.predict(pd.DataFrame({"text": [
        "The striker scored twice in the final match. It was reported on Monday. Doctors warned about the flu season.",
        "The company released a faster processor. More details are expected soon.", ""]}))
    assert set(answers.columns) >= {"label", "probabilities", "sentences", "sentence_weights"}
    assert sorted(answers["label"][0]) == ["health", "sport"] and answers["label"][1] == ["tech"]
    assert answers["label"][2] is None and answers["error"][2]
    assert set(answers["probabilities"][0]) == set(TOPICS)


def test_rest_serving_returns_label_sets(topics):
    import os
    import subprocess
    import sys
    import urllib.request

    from pipeline.config import PROJECT_ROOT
    from tests.servers import free_port, server_process

    port = free_port()
    command = [sys.executable, "-m", "pipeline", "serve", *set_args([*topics.overrides, f"serve.port={port}"])]
    url = f"http://127.0.0.1:{port}"
    with server_process(command, ready_url=f"{url}/ping", describe=lambda p: p.stdout.read(), cwd=PROJECT_ROOT,
                        env={**os.environ, **topics.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True):
        body = json.dumps({"dataframe_records": [
            {"text": "The senator opposed the bill. The coach praised the goalkeeper. More details are expected soon."}]})
        request = urllib.request.Request(f"{url}/invocations", data=body.encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())["predictions"][0]
    assert sorted(answer["label"]) == ["politics", "sport"]
    assert set(answer["probabilities"]) == set(TOPICS) and len(answer["sentence_weights"]) == len(answer["sentences"])
