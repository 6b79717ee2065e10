"""Classification metrics, calibration, plots and the TF-IDF baseline that the evaluate and train stages report.

Everything returned is plain Python (floats, ints, lists, dicts) so that it can go straight into
``metrics.json`` and, flattened, into ``mlflow.log_metrics``. scikit-learn and matplotlib are
imported inside the functions that need them, so importing this module stays cheap for the CLI.
"""

from __future__ import annotations

import csv
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

LOG_LOSS_EPSILON = 1e-12
SCALAR_METRICS = ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "macro_precision", "macro_recall", "log_loss", "ece",
                  "micro_precision", "micro_recall", "hamming_loss", "labels_per_document", "predicted_labels_per_document")
PER_CLASS_METRICS = ("f1", "precision", "recall")
# MLflow metric names allow alphanumerics, "_", "-", ".", " " and "/" (ASCII only: a regex "\w" would also let
# accented letters through, which is more than the documented set).
_NOT_ALLOWED_IN_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")


# --------------------------------------------------------------------------- inputs
def _checked(y_true: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Int labels (n,) and float probabilities (n, C), or a ValueError that says what is wrong.

    Fails early so that a shape mistake does not surface as a confusing numpy/sklearn error deep below.
    """
    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (documents, classes), got shape {p.shape}")
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} probability rows")
    if len(y) == 0:
        raise ValueError("no documents to score")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must lie in [0, {p.shape[1]}), got {y.min()}..{y.max()}")
    return y, p


# --------------------------------------------------------------------------- calibration
def reliability_bins(y_true: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> list[dict[str, float]]:
    """Equal-width confidence bins: how often the top prediction is right versus how sure the model was.

    Confidence is the largest probability of a row; a row falls into the bin ``(lower, upper]`` (the
    first bin also takes 0). Every bin is listed, empty ones with count 0 and confidence/accuracy 0.0,
    so that the list always has ``bins`` entries and the plot's x axis stays fixed.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    y, p = _checked(y_true, probabilities)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    result = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        result.append({
            "lower": float(edges[b]),
            "upper": float(edges[b + 1]),
            "count": count,
            "confidence": float(confidence[members].mean()) if count else 0.0,
            "accuracy": float(correct[members].mean()) if count else 0.0,
        })
    return result


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over the reliability bins, weighted by how many documents each holds.

    0 means the model's stated confidence can be taken at face value; an over-confident model scores high.
    """
    table = reliability_bins(y_true, probabilities, bins)
    total = sum(row["count"] for row in table)
    return float(sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in table) / total)


# --------------------------------------------------------------------------- metrics
def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray, labels: list[str],
                           calibration_bins: int = 15) -> dict[str, Any]:
    """Accuracy, F1/precision/recall (macro, micro, weighted, per class), log loss, ECE and the confusion matrix.

    Predictions are the argmax of each row. Every class in ``labels`` is scored (``labels=range(C)``,
    ``zero_division=0``) even when a small test split lacks it, so reports from different splits line up.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    y, p = _checked(y_true, probabilities)
    if p.shape[1] != len(labels):
        raise ValueError(f"{len(labels)} labels but {p.shape[1]} probability columns")
    predicted = p.argmax(axis=1)
    classes = list(range(len(labels)))

    def averaged(average: str) -> tuple[float, float, float]:
        precision, recall, f1, _ = precision_recall_fscore_support(
            y, predicted, labels=classes, average=average, zero_division=0)
        return float(precision), float(recall), float(f1)

    macro_precision, macro_recall, macro_f1 = averaged("macro")
    _, _, micro_f1 = averaged("micro")
    _, _, weighted_f1 = averaged("weighted")
    precision, recall, f1, support = precision_recall_fscore_support(
        y, predicted, labels=classes, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y, predicted)),
        "macro_f1": macro_f1,
        "micro_f1": micro_f1,
        "weighted_f1": weighted_f1,
        "macro_precision": macro_precision,
        "macro_recall": macro_recall,
        "log_loss": _log_loss(y, p),
        "ece": expected_calibration_error(y, p, calibration_bins),
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                    "support": int(support[i])}
            for i, label in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y, predicted, labels=classes).astype(int).tolist(),
        "documents": len(y),
    }


# --------------------------------------------------------------------------- multi-label
def multilabel_decisions(probabilities: np.ndarray, thresholds: np.ndarray | list[float] | float) -> np.ndarray:
    """0/1 ``(documents, labels)``: a label is predicted when its probability reaches its threshold; a document
    with none that does gets its most probable label (every training document has at least one)."""
    p = np.asarray(probabilities, dtype=np.float64)
    decided = (p >= np.asarray(thresholds, dtype=np.float64)).astype(np.int64)
    empty = decided.sum(axis=1) == 0
    if p.shape[1]:
        decided[np.flatnonzero(empty), p[empty].argmax(axis=1)] = 1
    return decided


def _checked_multilabel(y_true: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"multi-label targets {y.shape} and probabilities {p.shape} must both be (documents, labels)")
    if len(y) == 0:
        raise ValueError("no documents to score")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("multi-label targets must be 0/1")
    return y, p


def multilabel_metrics(y_true: np.ndarray, probabilities: np.ndarray, labels: list[str],
                       thresholds: np.ndarray | list[float] | float = 0.5,
                       predicted: np.ndarray | None = None) -> dict[str, Any]:
    """Micro/macro F1, precision and recall, exact-match ``accuracy``, Hamming loss and per-label scores of
    multi-label predictions (``multilabel_decisions`` at ``thresholds``).

    ``accuracy`` is the share of documents whose predicted label set is exactly the true one, so the gate's
    ``min_accuracy`` keeps a meaning; micro-F1 (every document-label decision pooled) is the usual headline.
    ``log_loss``: the mean binary cross-entropy per label. Every label is scored, with ``zero_division=0``.
    ``predicted``: 0/1 decisions made elsewhere (a champion's own), instead of deciding at ``thresholds``.
    """
    from sklearn.metrics import precision_recall_fscore_support

    y, p = _checked_multilabel(y_true, probabilities)
    if p.shape[1] != len(labels):
        raise ValueError(f"{len(labels)} labels but {p.shape[1]} probability columns")
    predicted = multilabel_decisions(p, thresholds) if predicted is None else np.asarray(predicted, dtype=np.int64)

    def averaged(average: str) -> tuple[float, float, float]:
        precision, recall, f1, _ = precision_recall_fscore_support(y, predicted, average=average, zero_division=0)
        return float(precision), float(recall), float(f1)

    micro_precision, micro_recall, micro_f1 = averaged("micro")
    macro_precision, macro_recall, macro_f1 = averaged("macro")
    _, _, weighted_f1 = averaged("weighted")
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, average=None, zero_division=0)
    clipped = np.clip(p, LOG_LOSS_EPSILON, 1.0 - LOG_LOSS_EPSILON)
    per_label_thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(labels),))
    return {
        "accuracy": float((predicted == y).all(axis=1).mean()),
        "micro_f1": micro_f1,
        "macro_f1": macro_f1,
        "weighted_f1": weighted_f1,
        "micro_precision": micro_precision,
        "micro_recall": micro_recall,
        "macro_precision": macro_precision,
        "macro_recall": macro_recall,
        "hamming_loss": float((predicted != y).mean()),
        "log_loss": float(-(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)).mean()),
        "labels_per_document": float(y.sum(axis=1).mean()),
        "predicted_labels_per_document": float(predicted.sum(axis=1).mean()),
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                    "support": int(support[i]), "threshold": float(per_label_thresholds[i])}
            for i, label in enumerate(labels)
        },
        "documents": len(y),
        "multilabel": True,
    }


# Candidate thresholds: probabilities from 0.05 to 0.95 in steps of 0.01.
_THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)


def _best_threshold(scores: np.ndarray) -> float:
    """The middle of the grid points where ``scores`` (one per grid point) is highest: ties span a plateau."""
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(_THRESHOLD_GRID[best[len(best) // 2]])


def choose_thresholds(y_true: np.ndarray, probabilities: np.ndarray, mode: str = "per_label",
                      min_positives: int = 5) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-label decision thresholds that maximise F1 on held-out documents (the validation split).

    ``global``: one threshold for every label, the best micro-F1. ``per_label``: each label with at least
    ``min_positives`` documents gets its own (best F1 of that label); the others keep the global one, since a
    threshold fitted to one or two documents is noise. Returns the thresholds and what was chosen how.
    """
    y, p = _checked_multilabel(y_true, probabilities)
    true_positive = np.stack([((p >= t) & (y == 1)).sum(axis=0) for t in _THRESHOLD_GRID])  # (grid, labels)
    predicted = np.stack([(p >= t).sum(axis=0) for t in _THRESHOLD_GRID])
    positives = y.sum(axis=0)
    micro = 2 * true_positive.sum(axis=1) / np.maximum(predicted.sum(axis=1) + positives.sum(), 1)
    overall = _best_threshold(micro)
    thresholds = np.full(p.shape[1], overall)
    own = np.flatnonzero(positives >= min_positives) if mode == "per_label" else np.array([], dtype=int)
    for label in own:
        f1 = 2 * true_positive[:, label] / np.maximum(predicted[:, label] + positives[label], 1)
        thresholds[label] = _best_threshold(f1)
    info = {"mode": mode, "global": overall, "own_thresholds": int(len(own)), "min_positives": min_positives,
            "validation_documents": int(len(y)), "validation_micro_f1_at_global": float(micro.max())}
    return thresholds, info


def plot_label_f1(metrics: dict[str, Any], path: Path, title: str, baseline: dict[str, Any] | None = None) -> None:
    """Multi-label: each label's test F1 (bars, most frequent label first) with its support, beside the baseline's."""
    plt = _pyplot()
    per = metrics["per_class"]
    labels = sorted(per, key=lambda label: (-per[label]["support"], label))
    height = min(max(3.0, 0.22 * len(labels) + 1.5), 40.0)
    fig, ax = plt.subplots(figsize=(8, height))
    rows = np.arange(len(labels))
    width = 0.4 if baseline else 0.8
    ax.barh(rows, [per[label]["f1"] for label in labels], height=width, label="HAN")
    if baseline:
        ax.barh(rows + width, [baseline["per_class"][label]["f1"] for label in labels], height=width,
                label="TF-IDF + LR baseline", color="tab:gray")
        ax.legend(loc="lower right")
    ax.set_yticks(rows + (width / 2 if baseline else 0), [f"{label} ({per[label]['support']})" for label in labels],
                  fontsize=7 if len(labels) > 30 else 9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 on the test split (label (test documents with it))")
    ax.set_title(title)
    _save(plt, fig, Path(path))


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log probability of the true class, clipped so a confident miss costs ~27.6, not infinity."""
    true_probability = np.clip(p[np.arange(len(y)), y], LOG_LOSS_EPSILON, 1.0)
    return float(-np.log(true_probability).mean())


def _metric_name_part(label: str) -> str:
    """A label reduced to a valid MLflow metric-name part: allowed characters only, and a normalised path.

    MLflow rejects names that change under path normalisation ("a//b", "a/", "a/./b", "a/../b"), so
    empty segments are dropped and "." / ".." segments become "_"; "tech/it" stays as it is.
    """
    cleaned = _NOT_ALLOWED_IN_NAME.sub("_", str(label))
    segments = ["_" if segment in (".", "..") else segment for segment in cleaned.split("/") if segment]
    return "/".join(segments) or "_"


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The scalar metrics as ``{name: float}`` for ``mlflow.log_metrics``, per-class ones as ``f1.<label>`` etc.

    Missing keys are skipped (an older champion's metrics may lack some). Labels that sanitise to the
    same name get ``_2``, ``_3``... so that one class never silently overwrites another's metric.
    """
    values = {f"{prefix}{key}": float(metrics[key]) for key in SCALAR_METRICS if key in metrics}
    used: set[str] = set()
    for label, scores in (metrics.get("per_class") or {}).items():
        part = base = _metric_name_part(label)
        suffix = 2
        while part in used:
            part, suffix = f"{base}_{suffix}", suffix + 1
        used.add(part)
        values.update({f"{prefix}{key}.{part}": float(scores[key]) for key in PER_CLASS_METRICS if key in scores})
    return values


# --------------------------------------------------------------------------- plots
def _pyplot():
    """pyplot on the non-interactive Agg backend: stages run headless (CI, Airflow workers, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    """Write the figure and always close it, so that long runs do not accumulate open figures."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def write_confusion_matrix(matrix: list[list[int]] | np.ndarray, labels: list[str], png_path: Path, csv_path: Path,
                           title: str = "Confusion matrix") -> None:
    """The confusion matrix as a CSV (rows true, columns predicted) and as an annotated heatmap.

    Colour is each row's share, so that a rare class's errors are as visible as a frequent one's;
    the cell text is the raw count.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    if counts.shape != (len(labels), len(labels)):
        raise ValueError(f"matrix of shape {counts.shape} does not fit {len(labels)} labels")
    _write_matrix_csv(counts, labels, Path(csv_path))
    _plot_matrix(counts, labels, Path(png_path), title)


def _write_matrix_csv(counts: np.ndarray, labels: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true\\predicted", *labels])
        for label, row in zip(labels, counts, strict=True):
            writer.writerow([label, *(int(v) for v in row)])


def _plot_matrix(counts: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    plt = _pyplot()
    classes = len(labels)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)
    side = min(max(4.0, 0.55 * classes + 2.5), 16.0)
    font = max(7.5, min(11.0, 13.0 - 0.25 * classes))
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    for i in range(classes):
        for j in range(classes):
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=font,
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(classes), labels, rotation=45 if classes > 3 else 0, ha="right" if classes > 3 else "center",
                  fontsize=font)
    ax.set_yticks(range(classes), labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(plt, fig, path)


def plot_reliability(y_true: np.ndarray, probabilities: np.ndarray, path: Path, bins: int = 15) -> None:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with the bin counts below.

    Bars under the diagonal mean over-confidence; the counts show which bins carry the ECE's weight.
    """
    table = reliability_bins(y_true, probabilities, bins)
    ece = expected_calibration_error(y_true, probabilities, bins)
    lowers = [row["lower"] for row in table]
    width = 1.0 / bins
    filled = [row for row in table if row["count"]]
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.bar([row["lower"] for row in filled], [row["accuracy"] for row in filled], width=width, align="edge",
            edgecolor="black", color="tab:blue", label="accuracy")
    top.bar([row["lower"] for row in filled], [row["confidence"] - row["accuracy"] for row in filled], width=width,
            bottom=[row["accuracy"] for row in filled], align="edge", fill=False, edgecolor="tab:red", hatch="//",
            linewidth=0.8, label="gap to confidence")
    top.set_xlim(0.0, 1.0)
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("accuracy")
    top.set_title(f"Reliability (ECE = {ece:.4f}, {sum(row['count'] for row in table):,} documents)")
    top.legend(loc="upper left")
    bottom.bar(lowers, [row["count"] for row in table], width=width, align="edge", color="tab:grey", edgecolor="black")
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("documents")
    _save(plt, fig, Path(path))


def plot_training_curves(history: dict[str, list[float]], path: Path, best_epoch: int | None = None) -> None:
    """Loss and accuracy per epoch, train against validation, with the kept (best) epoch marked.

    Only ``loss``/``val_loss``/``accuracy``/``val_accuracy`` are drawn; other keys (learning rate, extra
    metrics) are ignored. Points are marked so that a single-epoch run still shows something.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        _plot_curve_panel(ax, history, metric, best_epoch)
    _save(plt, fig, Path(path))


def _plot_curve_panel(ax, history: dict[str, list[float]], metric: str, best_epoch: int | None) -> None:
    drawn = False
    for key, name in ((metric, "train"), (f"val_{metric}", "validation")):
        values = [float(v) for v in history.get(key) or []]
        if values:
            ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
            drawn = True
    if best_epoch is not None:
        ax.axvline(best_epoch, color="tab:green", linestyle=":", label=f"best epoch ({best_epoch})")
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, f"no {metric} recorded", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend()
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(metric)


def plot_sweep(points: list[dict[str, Any]], metric: str, path: Path, higher_is_better: bool) -> None:
    """A sweep's points (``pipeline.stages.sweep.rank``), best first: each trial a dot, the mean over seeds a bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.25 * len(points) + 2), 4.5))
    means = [p["mean"] if p["mean"] is not None else float("nan") for p in points]
    ax.bar(range(len(points)), means, color="tab:blue", alpha=0.35, label="mean over seeds")
    for x, p in enumerate(points):
        ax.scatter([x] * len(p["values"]), p["values"], color="tab:blue", s=18, zorder=3)
    ax.set_xticks(range(len(points)), [_short_settings(p["settings"]) for p in points], fontsize=7)
    values = [v for p in points for v in p["values"]]
    if values:
        low, high = min(values), max(values)
        pad = (high - low) * 0.25 or abs(high) * 0.05 or 0.05
        ax.set_ylim(low - pad, high + pad)
    ax.set_ylabel(metric)
    ax.set_title(f"sweep: {metric} at each trial's best epoch ({'higher' if higher_is_better else 'lower'} is better)")
    ax.legend()
    fig.tight_layout()
    _save(plt, fig, Path(path))


def _short_settings(settings: list[str]) -> str:
    """``["train.learning_rate=0.002", "model.dropout=0.3"]`` -> ``"learning_rate=0.002\ndropout=0.3"`` (a tick
    label); keys keep their full path where the last parts would be ambiguous."""
    keys = [item.partition("=")[0] for item in settings]
    lasts = [key.rsplit(".", 1)[-1] for key in keys]
    if len(set(lasts)) < len(lasts):
        return "\n".join(settings)
    return "\n".join(f"{last}={item.partition('=')[2]}" for last, item in zip(lasts, settings, strict=True))


# --------------------------------------------------------------------------- baseline
def tfidf_baseline(train_texts: list[str], train_labels: np.ndarray, test_texts: list[str], num_classes: int, *,
                   max_features: int | None, ngram_max: int, C: float, seed: int, min_df: int = 1,
                   sublinear_tf: bool = True, pretokenized: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """TF-IDF + logistic regression probabilities for the test texts: the bar a HAN has to clear.

    ``pretokenized`` texts are tokens joined by spaces (already lowercased where the tokenizer does it), so
    they are split on whitespace and not lowercased again. Otherwise they are documents as written, read
    the way a person would run scikit-learn on them: lowercased, words of two or more word characters.
    ``info`` has ``fit_seconds`` (vectorizer and classifier learnt) and ``predict_seconds`` (test texts
    vectorized and classified) apart. ``min_df`` drops n-grams found in fewer training documents; when that leaves nothing (a training split
    of one or two documents) it falls back to 1, and ``info["min_df"]`` says which was used. The result always
    has ``num_classes`` columns: classes absent from the training labels get probability 0 (a training split
    with one class predicts it with certainty).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(train_labels).astype(np.int64)
    multilabel = y.ndim == 2
    if not multilabel:
        y = y.reshape(-1)
    if len(y) != len(train_texts) or len(y) == 0:
        raise ValueError(f"{len(train_texts)} training texts but {len(y)} labels (need at least one)")
    if multilabel and y.shape[1] != num_classes:
        raise ValueError(f"multi-label targets have {y.shape[1]} columns, expected {num_classes}")
    if not multilabel and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"training labels must lie in [0, {num_classes}), got {y.min()}..{y.max()}")
    started = time.perf_counter()
    reading = {"lowercase": False, "tokenizer": str.split, "token_pattern": None} if pretokenized else {}

    def vectorizer(documents: int) -> TfidfVectorizer:
        return TfidfVectorizer(sublinear_tf=sublinear_tf, ngram_range=(1, ngram_max), max_features=max_features,
                               min_df=documents, **reading)

    used_min_df = min_df
    try:
        tfidf = vectorizer(min_df)
        train_matrix = tfidf.fit_transform(train_texts)
    except ValueError as err:
        if min_df == 1 or "no terms remain" not in str(err):
            raise
        used_min_df = 1
        tfidf = vectorizer(1)
        train_matrix = tfidf.fit_transform(train_texts)
    if multilabel:
        return _one_vs_rest(tfidf, train_matrix, y, test_texts, C, seed, started, used_min_df)
    present = np.unique(y)
    classifier = None
    if len(present) > 1:
        classifier = LogisticRegression(C=C, max_iter=2000, random_state=seed)
        classifier.fit(train_matrix, y)
    fitted = time.perf_counter()
    probabilities = np.zeros((len(test_texts), num_classes), dtype=np.float64)
    test_matrix = tfidf.transform(test_texts)
    if classifier is None:
        probabilities[:, present[0]] = 1.0
    else:
        probabilities[:, classifier.classes_] = classifier.predict_proba(test_matrix)
    info = {"fit_seconds": round(fitted - started, 3), "predict_seconds": round(time.perf_counter() - fitted, 3),
            "features": len(tfidf.vocabulary_), "train_documents": len(y), "min_df": used_min_df}
    return probabilities, info


def _one_vs_rest(tfidf, train_matrix, y: np.ndarray, test_texts: list[str], C: float, seed: int, started: float,
                 min_df: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Multi-label TF-IDF baseline: one binary logistic regression per label (one-vs-rest, as scikit-learn's
    ``OneVsRestClassifier`` fits it), each label's probability from its own; a label that every or no training
    document has gets that as a constant."""
    from sklearn.linear_model import LogisticRegression

    test_matrix = None
    probabilities = np.zeros((len(test_texts), y.shape[1]), dtype=np.float64)
    models = []
    for label in range(y.shape[1]):
        column = y[:, label]
        if column.min() == column.max():
            models.append(float(column[0]))
            continue
        classifier = LogisticRegression(C=C, max_iter=2000, random_state=seed, solver="liblinear")
        models.append(classifier.fit(train_matrix, column))
    fitted = time.perf_counter()
    test_matrix = tfidf.transform(test_texts)
    for label, model in enumerate(models):
        probabilities[:, label] = model if isinstance(model, float) else model.predict_proba(test_matrix)[:, 1]
    info = {"fit_seconds": round(fitted - started, 3), "predict_seconds": round(time.perf_counter() - fitted, 3),
            "features": len(tfidf.vocabulary_), "train_documents": len(y), "min_df": min_df,
            "one_vs_rest": True}
    return probabilities, info
