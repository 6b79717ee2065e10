"""Metrics equal scikit-learn's; calibration error on cases with a known answer; figures and the baseline."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, precision_recall_fscore_support

from pipeline.evaluation.metrics import (
    classification_metrics,
    expected_calibration_error,
    flat_metrics,
    plot_reliability,
    plot_training_curves,
    reliability_bins,
    tfidf_baseline,
    write_confusion_matrix,
)

LABELS = ["business", "sport", "tech/it", "world news"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def random_predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    probabilities = rng.dirichlet(np.ones(4), 200)
    probabilities[:120][np.arange(120), y[:120]] += 1.0  # better than chance, not perfect
    return y, probabilities / probabilities.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- metrics
def test_metrics_equal_scikit_learn(random_predictions):
    y, p = random_predictions
    pred = p.argmax(axis=1)
    m = classification_metrics(y, p, LABELS)
    assert m["documents"] == 200
    assert m["accuracy"] == accuracy_score(y, pred)
    assert m["macro_f1"] == f1_score(y, pred, average="macro")
    assert m["micro_f1"] == f1_score(y, pred, average="micro")
    assert m["weighted_f1"] == f1_score(y, pred, average="weighted")
    macro = precision_recall_fscore_support(y, pred, average="macro")
    assert (m["macro_precision"], m["macro_recall"]) == (macro[0], macro[1])
    precision, recall, f1, support = precision_recall_fscore_support(y, pred)
    for i, label in enumerate(LABELS):
        assert m["per_class"][label] == {"precision": precision[i], "recall": recall[i], "f1": f1[i],
                                         "support": support[i]}
    assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    assert m["log_loss"] == pytest.approx(log_loss(y, p, labels=range(4)))
    assert m["ece"] == expected_calibration_error(y, p, 15)


def test_metrics_are_plain_json(random_predictions):
    m = classification_metrics(*random_predictions, LABELS)
    assert json.loads(json.dumps(m)) == m  # numpy scalars would make dumps fail
    assert type(m["per_class"]["sport"]["support"]) is int and type(m["confusion_matrix"][0][0]) is int


def test_a_class_absent_from_the_split_is_still_reported():
    m = classification_metrics(np.array([0, 1, 1]), np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.6, 0.4, 0]]),
                               ["a", "b", "c"])
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)  # the absent class counts in the macro mean


def test_log_loss_is_clipped_not_infinite():
    m = classification_metrics(np.array([1]), np.array([[1.0, 0.0]]), ["a", "b"])
    assert m["log_loss"] == pytest.approx(-np.log(1e-12))


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="labels but 3 probability columns"):
        classification_metrics(np.array([0]), np.array([[0.2, 0.3, 0.5]]), ["a", "b"])
    with pytest.raises(ValueError, match="2 labels but 1 probability rows"):
        classification_metrics(np.array([0, 1]), np.array([[0.5, 0.5]]), ["a", "b"])


# --------------------------------------------------------------------------- calibration
def test_calibration_error_on_known_cases():
    y = np.array([0, 1] * 50)
    overconfident = np.tile([[0.99, 0.01]], (100, 1))  # 99% sure, right half the time
    assert expected_calibration_error(y, overconfident) == pytest.approx(0.49)
    # Perfectly calibrated over five different bins: confidence c, right on exactly c of the rows.
    ys, rows = [], []
    for c in (0.55, 0.65, 0.75, 0.85, 0.95):
        right = round(c * 100)
        ys += [0] * right + [1] * (100 - right)
        rows += [[c, 1 - c]] * 100
    assert expected_calibration_error(np.array(ys), np.array(rows)) == pytest.approx(0.0, abs=1e-12)
    assert sum(row["count"] > 0 for row in reliability_bins(np.array(ys), np.array(rows))) == 5


def test_calibration_error_by_hand():
    # 5 bins of width 0.2. Confidences 0.95 (right), 0.85 (wrong) -> bin (0.8, 1]: conf 0.9, acc 0.5;
    # 0.7 (right) -> bin (0.6, 0.8]; 0.55 (wrong: argmax is class 1) -> bin (0.4, 0.6].
    # ECE = (2 * 0.4 + 1 * 0.3 + 1 * 0.55) / 4 = 0.4125
    y = np.array([0, 1, 1, 0])
    p = np.array([[0.95, 0.05], [0.85, 0.15], [0.3, 0.7], [0.45, 0.55]])
    assert expected_calibration_error(y, p, bins=5) == pytest.approx(0.4125)
    table = reliability_bins(y, p, bins=5)
    assert [row["count"] for row in table] == [0, 0, 1, 1, 2]
    assert table[4] == pytest.approx({"lower": 0.8, "upper": 1.0, "count": 2, "confidence": 0.9, "accuracy": 0.5})
    assert table[2]["accuracy"] == 0.0 and table[3]["accuracy"] == 1.0


def test_bin_edges_belong_to_the_lower_bin():
    table = reliability_bins(np.array([0, 0]), np.array([[0.5, 0.5], [1.0, 0.0]]), bins=2)
    assert [row["count"] for row in table] == [1, 1]  # 0.5 in (0, 0.5], 1.0 in (0.5, 1]


# --------------------------------------------------------------------------- MLflow names
def test_flat_metric_names_are_valid_for_mlflow(random_predictions):
    from mlflow.utils.validation import _validate_metric_name

    flat = flat_metrics(classification_metrics(*random_predictions, LABELS), prefix="baseline.")
    assert len(flat) == 8 + 3 * len(LABELS)
    assert flat["baseline.accuracy"] > 0.25
    assert "baseline.f1.tech/it" in flat and "baseline.recall.world news" in flat and "baseline.ece" in flat
    for name, value in flat.items():
        assert name.startswith("baseline.") and type(value) is float
        _validate_metric_name(name)


def test_awkward_labels_become_distinct_valid_names():
    from mlflow.utils.validation import _validate_metric_name

    labels = ["a//b", "x/", "../up", "café", "a:b", "a_b", "a?b"]
    n = len(labels)
    metrics = classification_metrics(np.arange(n), np.eye(n), labels)
    flat = flat_metrics(metrics, prefix="test.")
    assert len(flat) == 8 + 3 * n  # no class overwrote another
    assert {"test.f1.a/b", "test.f1.x", "test.f1._/up", "test.f1.caf_", "test.f1.a_b", "test.f1.a_b_2",
            "test.f1.a_b_3"} <= set(flat)
    for name in flat:
        _validate_metric_name(name)


def test_flat_metrics_skips_what_is_missing():
    assert flat_metrics({"accuracy": 0.8, "macro_f1": 0.7}) == {"accuracy": 0.8, "macro_f1": 0.7}


# --------------------------------------------------------------------------- files and figures
def test_confusion_matrix_files(tmp_path, random_predictions):
    m = classification_metrics(*random_predictions, LABELS)
    write_confusion_matrix(m["confusion_matrix"], LABELS, tmp_path / "cm.png", tmp_path / "cm.csv")
    with open(tmp_path / "cm.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["true\\predicted", *LABELS]
    assert [row[0] for row in rows[1:]] == LABELS
    assert [[int(v) for v in row[1:]] for row in rows[1:]] == m["confusion_matrix"]
    assert (tmp_path / "cm.png").read_bytes()[:8] == PNG_MAGIC


def test_confusion_matrix_with_many_classes_and_an_empty_row(tmp_path):
    labels = [f"class, number {i}" for i in range(20)]  # commas must be quoted in the CSV
    matrix = np.random.default_rng(1).integers(0, 30, (20, 20))
    matrix[3] = 0
    write_confusion_matrix(matrix, labels, tmp_path / "big.png", tmp_path / "big.csv", title="20 classes")
    with open(tmp_path / "big.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][1:] == labels and [[int(v) for v in row[1:]] for row in rows[1:]] == matrix.tolist()
    assert (tmp_path / "big.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="does not fit"):
        write_confusion_matrix(matrix, labels[:5], tmp_path / "x.png", tmp_path / "x.csv")


def test_plots_write_pngs_and_close_their_figures(tmp_path, random_predictions):
    import matplotlib.pyplot as plt

    plot_reliability(*random_predictions, tmp_path / "r.png")
    plot_training_curves({"loss": [1.0], "val_loss": [1.2], "accuracy": [0.5], "learning_rate": [0.1]},
                         tmp_path / "one.png", best_epoch=1)
    history = {"loss": [1.2, 0.8, 0.6, 0.5], "val_loss": [1.1, 0.9, 0.95, 1.0], "accuracy": [0.4, 0.6, 0.7, 0.8],
               "val_accuracy": [0.5, 0.6, 0.58, 0.57], "learning_rate": [1e-3] * 4, "val_macro_f1": [0.1] * 4}
    plot_training_curves(history, tmp_path / "four.png", best_epoch=2)
    plot_training_curves({"loss": [0.3, 0.2]}, tmp_path / "loss_only.png")
    for name in ("r.png", "one.png", "four.png", "loss_only.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    assert plt.get_fignums() == []


# --------------------------------------------------------------------------- baseline
def test_baseline_learns_separable_text_and_keeps_every_class_column():
    train = ["cat purr meow", "dog bark woof", "cat meow", "dog woof bark"] * 5
    labels = np.array([0, 2, 0, 2] * 5)  # class 1 never appears in training
    test = ["meow cat", "bark dog", "purr", "woof woof"]
    probabilities, info = tfidf_baseline(train, labels, test, 3, max_features=100, ngram_max=2, C=10.0, seed=0)
    assert probabilities.shape == (4, 3) and np.all(probabilities[:, 1] == 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    m = classification_metrics(np.array([0, 2, 0, 2]), probabilities, ["cat", "bird", "dog"])
    assert m["accuracy"] == 1.0
    again, _ = tfidf_baseline(train, labels, test, 3, max_features=100, ngram_max=2, C=10.0, seed=0)
    np.testing.assert_array_equal(probabilities, again)
    assert info["features"] > 6 and info["fit_seconds"] >= 0 and info["predict_seconds"] >= 0  # bigrams counted too
    _, unigrams = tfidf_baseline(train, labels, test, 3, max_features=100, ngram_max=1, C=10.0, seed=0)
    assert unigrams["features"] == 6


def test_baseline_keeps_case_and_splits_on_whitespace_only():
    _, info = tfidf_baseline(["Cat cat", "a-b c.d"], np.array([0, 1]), ["cat"], 2, max_features=100, ngram_max=1,
                             C=1.0, seed=0)
    assert info["features"] == 4  # "Cat", "cat", "a-b", "c.d"


def test_baseline_on_full_text_lowercases_and_reads_words_as_scikit_learn_does():
    _, info = tfidf_baseline(["Cat cat, a-b!", "DOG c.d"], np.array([0, 1]), ["cat"], 2, max_features=None,
                             ngram_max=1, C=1.0, seed=0, pretokenized=False)
    assert info["features"] == 2  # "cat" (both cases) and "dog"; words of one character ("a", "b", "c", "d") dropped


def test_baseline_min_df_drops_rare_ngrams_and_falls_back_when_nothing_is_left():
    train = ["red apple", "red apple pie", "blue sky", "blue sky high"]
    _, info = tfidf_baseline(train, np.array([0, 0, 1, 1]), ["red sky"], 2, max_features=None, ngram_max=2, C=1.0,
                             seed=0, min_df=2)
    assert info["features"] == 6 and info["min_df"] == 2  # red, apple, "red apple", blue, sky, "blue sky"
    _, info = tfidf_baseline(["a b", "c d"], np.array([0, 1]), ["a"], 2, max_features=None, ngram_max=1, C=1.0,
                             seed=0, min_df=2)
    assert info["features"] == 4 and info["min_df"] == 1  # no word is in two documents: min_df 1 was used


def test_baseline_with_a_single_training_class_predicts_it():
    probabilities, _ = tfidf_baseline(["a b", "b c"], np.array([1, 1]), ["a", "z"], 3, max_features=10, ngram_max=1,
                                      C=1.0, seed=0)
    np.testing.assert_array_equal(probabilities, [[0, 1, 0], [0, 1, 0]])
    with pytest.raises(ValueError, match="must lie in"):
        tfidf_baseline(["a"], np.array([3]), ["a"], 3, max_features=10, ngram_max=1, C=1.0, seed=0)
