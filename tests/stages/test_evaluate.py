"""The evaluate stage: metrics equal scikit-learn's, the raw-text model agrees with it, the gate judges."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import mlflow
import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from pipeline.__main__ import main
from pipeline.config import GateConfig
from pipeline.data.demo import generate_demo_corpus
from pipeline.stages import evaluate
from tests.stages.conftest import set_args


def _outputs(workspace):
    out = workspace.config.stage_dir("evaluate")
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return out, metrics, rows


def test_metrics_equal_scikit_learn_on_the_same_predictions(workspace):
    out, metrics, rows = _outputs(workspace)
    labels = metrics["labels"]
    truth = [labels.index(r["label"]) for r in rows]
    guess = [labels.index(r["predicted"]) for r in rows]
    model = metrics["model"]
    assert len(rows) == metrics["test_documents"] == model["documents"] == 160  # 20% of 800
    assert model["accuracy"] == accuracy_score(truth, guess)
    assert model["macro_f1"] == f1_score(truth, guess, average="macro", labels=range(len(labels)), zero_division=0)
    assert model["micro_f1"] == f1_score(truth, guess, average="micro")
    assert model["confusion_matrix"] == confusion_matrix(truth, guess, labels=range(len(labels))).tolist()
    with open(out / "confusion_matrix.csv") as handle:
        table = list(csv.reader(handle))
    assert [[int(x) for x in row[1:]] for row in table[1:]] == model["confusion_matrix"]
    assert metrics["baseline"]["documents"] == 160 and 0.0 <= metrics["baseline"]["accuracy"] <= 1.0
    for name in ("confusion_matrix.png", "baseline_confusion_matrix.png", "reliability.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_run_logs_metrics_artifacts_and_the_verdict(workspace):
    _, metrics, _ = _outputs(workspace)
    runs = mlflow.search_runs(experiment_names=["demo"], filter_string="tags.`han.stage` = 'evaluate'", output_format="list")
    run = runs[0]
    assert run.data.metrics["test.accuracy"] == metrics["model"]["accuracy"]
    assert run.data.metrics["baseline.macro_f1"] == metrics["baseline"]["macro_f1"]
    assert run.data.tags["gate.passed"] == str(metrics["gate"]["passed"]).lower()
    assert run.data.tags["baseline.input"] == "full_text" and run.data.tags["baseline.fit_on"] == "train"
    assert run.data.params["evaluate.baseline.input"] == "full_text" and run.data.params["evaluate.baseline.min_df"] == "2"
    paths = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluate")}
    assert {"evaluate/metrics.json", "evaluate/confusion_matrix.png", "evaluate/confusion_matrix.csv"} <= paths


def test_raw_text_model_in_a_fresh_process_predicts_what_evaluate_scored(workspace):
    _, _, rows = _outputs(workspace)
    config = workspace.config
    raw = {doc.id: doc.text for doc in generate_demo_corpus(config.data.demo, config.seed)}
    texts = [raw[row["id"]] for row in rows]
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model('models:/han-demo/1')\n"
        "out = model.predict(pd.DataFrame({'text': json.load(sys.stdin)}))\n"
        "print(json.dumps({'label': list(out['label']), 'probabilities': list(out['probabilities']),"
        " 'weights': [list(map(float, w)) for w in out['sentence_weights']]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(texts), capture_output=True, text=True,
                          cwd=workspace.root, env={**os.environ, **workspace.env}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["label"] == [row["predicted"] for row in rows]
    for got, row in zip(answer["probabilities"], rows, strict=True):
        assert got.keys() == row["probabilities"].keys()
        np.testing.assert_allclose([got[k] for k in row["probabilities"]], list(row["probabilities"].values()), atol=1e-5)
    assert all(abs(sum(w) - 1.0) < 1e-4 for w in answer["weights"])


def test_gate_refuses_a_model_worse_than_the_champion(workspace, capsys):
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("han-demo", "champion", "1")
    champion_accuracy = _outputs(workspace)[1]["model"]["accuracy"]
    assert champion_accuracy > 0.6
    # A model that learns nothing: one epoch at a tiny learning rate (different settings: retrained, version 2).
    worse = [*workspace.overrides, "train.epochs=1", "train.learning_rate=1e-7", "evaluate.gate.metric=accuracy",
             "evaluate.gate.champion_margin=0.01"]
    assert main(["train", *set_args(worse)]) == 0
    assert main(["evaluate", *set_args(worse)]) == 0
    _, metrics, _ = _outputs(workspace)
    gate = metrics["gate"]
    assert gate["passed"] is False
    check = next(c for c in gate["checks"] if c["check"] == "beat_champion")
    assert check["passed"] is False and check["champion_version"] == "1"
    assert metrics["champion"]["metrics"]["accuracy"] == champion_accuracy  # re-scored on the same split
    assert check["threshold"] == champion_accuracy + 0.01
    assert "beat_champion FAILED" in capsys.readouterr().err
    version = client.get_model_version("han-demo", "2")
    assert version.tags["gate.passed"] == "false" and "beat_champion FAILED" in version.tags["gate.reasons"]
    assert str(client.get_model_version_by_alias("han-demo", "champion").version) == "1"  # untouched


def test_baseline_reads_the_full_raw_text_of_the_same_split(workspace):
    """The baseline's predictions are what scikit-learn makes of the raw demo documents of the same split
    (not of the HAN's truncated, out-of-vocabulary-replaced tokens), and metrics.json says so."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    _, metrics, rows = _outputs(workspace)
    config = workspace.config
    prep = config.stage_dir("preprocess")
    labels = metrics["labels"]
    raw = {doc.id: doc for doc in generate_demo_corpus(config.data.demo, config.seed)}
    train_ids = [json.loads(line)["id"] for line in (prep / "train.documents.jsonl").read_text().splitlines()]
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    classifier = LogisticRegression(C=10.0, max_iter=2000, random_state=config.seed)
    classifier.fit(vectorizer.fit_transform([raw[i].text for i in train_ids]),
                   [labels.index(raw[i].label) for i in train_ids])
    predicted = classifier.predict(vectorizer.transform([raw[row["id"]].text for row in rows]))
    truth = [labels.index(row["label"]) for row in rows]
    baseline = metrics["baseline"]
    assert baseline["confusion_matrix"] == confusion_matrix(truth, predicted, labels=range(len(labels))).tolist()
    assert baseline["input"] == "full_text"
    assert baseline["settings"] == {"input": "full_text", "fit_on": "train", "max_features": None, "min_df": 2,
                                    "sublinear_tf": True, "ngram_max": 2, "C": 10.0}
    assert baseline["info"]["train_documents"] == len(train_ids)
    assert baseline["info"]["features"] == len(vectorizer.vocabulary_)


def test_baseline_can_learn_from_validation_too_or_read_the_hans_tokens(workspace):
    from pipeline.config import load_config
    from pipeline.data.shards import load_split

    prep = workspace.config.stage_dir("preprocess")
    test = load_split(prep, "test")
    sizes = {name: len(load_split(prep, name)) for name in ("train", "validation")}
    both = load_config(None, [*workspace.overrides, "evaluate.baseline.fit_on=train_validation"])
    probabilities, described = evaluate.run_baseline(both, prep, test)
    assert probabilities.shape == (len(test), len(_outputs(workspace)[1]["labels"]))
    assert described["info"]["train_documents"] == sizes["train"] + sizes["validation"]
    tokens = load_config(None, [*workspace.overrides, "evaluate.baseline.input=tokens"])
    _, described = evaluate.run_baseline(tokens, prep, test)
    assert described["input"] == "tokens" and described["info"]["train_documents"] == sizes["train"]
    full = _outputs(workspace)[1]["baseline"]["info"]["features"]
    assert described["info"]["features"] != full  # the HAN's vocabulary and truncation: other n-grams


def test_judge_checks_thresholds_baseline_and_champion():
    model = {"accuracy": 0.80, "macro_f1": 0.75, "micro_f1": 0.80}
    baseline = {"accuracy": 0.85, "macro_f1": 0.70, "micro_f1": 0.85}
    champion = {"version": "3", "comparable": True, "metrics": {"accuracy": 0.79, "macro_f1": 0.74, "micro_f1": 0.79}}
    passed = evaluate.judge(GateConfig(min_accuracy=0.8, metric="macro_f1", champion_margin=0.01), model, baseline, champion)
    assert passed["passed"], passed["reasons"]
    stricter = evaluate.judge(GateConfig(champion_margin=0.02), model, baseline, champion)
    assert not stricter["passed"] and any("beat_champion FAILED" in r for r in stricter["reasons"])
    assert not evaluate.judge(GateConfig(min_accuracy=0.81), model, None, None)["passed"]
    by_accuracy = evaluate.judge(GateConfig(metric="accuracy", must_beat_baseline=True), model, baseline, None)
    assert not by_accuracy["passed"] and "beat_baseline FAILED" in " ".join(by_accuracy["reasons"])
    foreign = {"version": "4", "comparable": False, "reason": "other labels"}
    assert not evaluate.judge(GateConfig(), model, None, foreign)["passed"]


def test_predict_cli_answers_raw_text(workspace, capsys):
    config = workspace.config
    doc = generate_demo_corpus(config.data.demo, config.seed)[0]
    assert main(["predict", *set_args(workspace.overrides), "--explain", doc.text]) == 0
    out = capsys.readouterr().out
    assert out.startswith("label: ") and "probabilities:" in out and "sentences by attention" in out
    assert main(["predict", *set_args(workspace.overrides), "   "]) == 2
    assert "nothing to classify" in capsys.readouterr().err


def test_evaluate_before_training_says_what_to_run(tmp_path, capsys):
    assert main(["preprocess", "--set", "data.demo.num_documents=100"]) == 0
    assert main(["evaluate", "--set", "data.demo.num_documents=100"]) == 2
    assert "no trained model" in capsys.readouterr().err
