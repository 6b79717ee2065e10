"""The evaluate stage: score the trained model on the test split, beside a baseline, and judge it.

Input: the preprocess and train stages' outputs. Output: ``artifacts/<name>/evaluate/``:

- ``metrics.json``: the model's metrics (accuracy, macro/micro F1, per-class precision/recall/F1,
  confusion matrix, expected calibration error, log loss), the TF-IDF + logistic regression
  baseline's on the same split, the registered champion's (when one exists) and the gate verdict
  with its reasons;
- ``predictions.jsonl`` (id, true label, predicted label, probabilities);
- ``confusion_matrix.png/.csv``, ``baseline_confusion_matrix.png/.csv``, ``reliability.png``.

Everything also goes to one MLflow run, and the verdict is tagged on the registered model version.

The baseline reads the same split's documents as a user would give them to TF-IDF: their full text
(``evaluate.baseline.input: full_text``, the default), not cut to the HAN's limits and without its
out-of-vocabulary token, so the HAN is measured against what the plain method reaches on the same
data; ``input: tokens`` gives it exactly the HAN's tokens instead (same vocabulary, same truncation),
to compare the models alone. ``metrics.json`` records which, with its settings. The champion is re-scored through its own raw-text model
on the same test documents, so a champion trained with other preprocessing is judged fairly.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import MANIFEST, atomic_directory, output_hashes, read_json, read_manifest, write_json
from pipeline.config import GateConfig, PipelineConfig
from pipeline.tracking import check_before_commit

STAGE_VERSION = 1


class EvaluateError(RuntimeError):
    """The stage cannot run; the message says what to do."""


@dataclass(frozen=True)
class EvaluateResult:
    output_dir: Path
    metrics: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.metrics["gate"]["passed"])


def _log(message: str) -> None:
    print(f"evaluate: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- predictions
def predict_probabilities(infer, split, batch_size: int) -> np.ndarray:
    """``(documents, classes)`` probabilities over an encoded split, in document order; ``infer`` from
    ``pipeline.model.han.inference_function`` (the bundle's own, in this stage)."""
    from pipeline.model.han import document_outputs

    outputs = document_outputs(infer, split.documents(), batch_size)
    return np.stack([out["probabilities"] for out in outputs])


def token_texts(split, vocab_tokens: list[str]) -> list[str]:
    """Each encoded document as whitespace-joined tokens (what the baseline reads)."""
    table = np.asarray(vocab_tokens, dtype=object)
    bounds = np.concatenate([[0], np.cumsum(split.sentence_lengths)])
    doc_bounds = np.concatenate([[0], np.cumsum(split.document_lengths)])
    texts = []
    for d in range(len(split)):
        start, end = bounds[doc_bounds[d]], bounds[doc_bounds[d + 1]]
        texts.append(" ".join(table[split.tokens[start:end]]))
    return texts


def document_texts(prep_dir: Path, split: str) -> tuple[list[str], list[str]]:
    """``(ids, texts)`` of a split's documents, whole: ``<split>.documents.jsonl`` keeps every sentence of a
    document (not cut to the limits, no out-of-vocabulary token; Unicode-normalized, HTML tags made paragraph
    breaks, as preprocessing reads them), joined here by blank lines."""
    ids, texts = [], []
    with open(prep_dir / f"{split}.documents.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            ids.append(str(row["id"]))
            texts.append("\n\n".join(row["sentences"]))
    return ids, texts


def baseline_settings(config: PipelineConfig) -> dict[str, Any]:
    """What the baseline was run with (``evaluate.baseline`` less ``enabled``), for metrics.json and the logs."""
    return config.evaluate.baseline.model_dump(exclude={"enabled"})


def run_baseline(config: PipelineConfig, prep_dir: Path, test) -> tuple[np.ndarray, dict[str, Any]]:
    """The TF-IDF + logistic regression baseline's test probabilities (``evaluate.baseline``) and what it did.

    It learns from the training split (and the validation split with ``fit_on: train_validation``) and
    reads either the documents' full text or the HAN's encoded tokens (``input``).
    """
    from pipeline.data.shards import load_split
    from pipeline.evaluation.metrics import tfidf_baseline

    settings = config.evaluate.baseline
    vocab_tokens = read_json(prep_dir / "vocab.json")["tokens"] if settings.input == "tokens" else None

    def texts(name: str, split) -> list[str]:
        if vocab_tokens is not None:
            return token_texts(split, vocab_tokens)
        ids, full = document_texts(prep_dir, name)
        if ids != [str(doc_id) for doc_id in split.ids]:
            raise EvaluateError(f"{prep_dir / f'{name}.documents.jsonl'} does not list the {name} split's documents in "
                                f"the shards' order; preprocess again (`{config.command('preprocess', '--force')}`)")
        return full

    fit_on = ["train", "validation"] if settings.fit_on == "train_validation" else ["train"]
    train_texts: list[str] = []
    train_labels = []
    for name in fit_on:
        split = load_split(prep_dir, name)
        train_texts += texts(name, split)
        train_labels.append(np.asarray(split.labels))
    # Multi-label: the baseline's thresholds are chosen as the HAN's are (train.thresholds, on the validation
    # split), so that neither side is compared at a threshold the other was tuned past. Not when it learnt
    # from the validation split: thresholds chosen on documents it has seen would be too low.
    validation = None
    if config.data.multilabel and settings.fit_on == "train":
        validation = load_split(prep_dir, "validation")
        validation = validation if len(validation) else None
    held_out = texts("validation", validation) if validation is not None else []
    test_texts = texts("test", test)
    num_classes = len(read_json(prep_dir / "labels.json"))
    probabilities, fitted = tfidf_baseline(
        train_texts, np.concatenate(train_labels), held_out + test_texts, num_classes,
        max_features=settings.max_features, ngram_max=settings.ngram_max, C=settings.C, seed=config.seed,
        min_df=settings.min_df, sublinear_tf=settings.sublinear_tf, pretokenized=settings.input == "tokens")
    fitted["predicted_documents"] = len(held_out) + len(test_texts)
    described = {"input": settings.input, "settings": baseline_settings(config), "info": fitted}
    if config.data.multilabel:
        described["thresholds"], described["threshold_info"] = baseline_thresholds(
            config, validation, probabilities[:len(held_out)], num_classes)
    return probabilities[len(held_out):], described


def baseline_thresholds(config: PipelineConfig, validation, probabilities: np.ndarray,
                        num_classes: int) -> tuple[list[float], dict[str, Any]]:
    """The multi-label baseline's decision thresholds: chosen on the validation split like the HAN's
    (``train.thresholds``), or 0.5 for every label where there is none to choose them on."""
    from pipeline.config import THRESHOLD_MIN_POSITIVES
    from pipeline.evaluation.metrics import choose_thresholds

    if validation is None:
        return [0.5] * num_classes, {"mode": "fixed", "global": 0.5}
    thresholds, info = choose_thresholds(validation.labels, probabilities, config.train.thresholds,
                                         THRESHOLD_MIN_POSITIVES)
    return [float(t) for t in thresholds], info


# --------------------------------------------------------------------------- champion and gate
def champion_version(registered_model: str):
    """The registered model version holding the ``champion`` alias, or None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        return client.get_model_version_by_alias(registered_model, "champion")
    except MlflowException:
        return None


def score_champion(config: PipelineConfig, version, prep_dir: Path, labels: list[str], y_true: np.ndarray) -> dict[str, Any]:
    """The champion's metrics on the same test documents, read through its own raw-text model
    (loaded only when its files are those recorded at its registration)."""
    import pandas as pd

    from pipeline.evaluation.metrics import classification_metrics, multilabel_metrics
    from pipeline.registry import ModelIntegrityError, verified_model

    # Blank lines are paragraph breaks: each stored sentence stays one sentence when re-read.
    _, texts = document_texts(prep_dir, "test")
    uri = f"models:/{config.tracking.registered_model}/{version.version}"
    started = time.perf_counter()
    try:
        model = verified_model(uri)
    except ModelIntegrityError as err:
        name = config.tracking.registered_model
        raise EvaluateError(
            f"cannot re-score the champion: {err}. To judge without it, point the alias at a version whose files "
            f"check out (MlflowClient().set_registered_model_alias({name!r}, 'champion', '<version>')) or remove it "
            f"(MlflowClient().delete_registered_model_alias({name!r}, 'champion'))") from None
    # The raw-text model refuses requests over its limits (serve.max_texts, serve.max_characters):
    # a test split of any size is scored in requests within them.
    answers = pd.concat([model.predict(pd.DataFrame({"text": chunk})) for chunk in request_batches(texts)],
                        ignore_index=True)
    champion_labels = list(answers["probabilities"].iloc[0].keys()) if len(answers) else []
    if sorted(champion_labels) != sorted(labels):
        return {"version": str(version.version), "comparable": False,
                "reason": f"the champion knows the labels {sorted(champion_labels)}, this model {sorted(labels)}"}
    probabilities = np.asarray([[row[label] for label in labels] for row in answers["probabilities"]])
    if config.data.multilabel:
        # Its own decisions (its thresholds), not this model's.
        chosen = [set(answer) if isinstance(answer, list) else {answer} for answer in answers["label"]]
        predicted = np.asarray([[label in row for label in labels] for row in chosen], dtype=np.int64)
        metrics = multilabel_metrics(y_true, probabilities, labels, predicted=predicted)
    else:
        metrics = classification_metrics(y_true, probabilities, labels, config.evaluate.calibration_bins)
    _log(f"champion (version {version.version}) re-scored on the same {len(texts):,} test documents "
         f"in {time.perf_counter() - started:.1f}s")
    return {"version": str(version.version), "comparable": True, "run_id": version.run_id, "metrics": metrics}


def request_batches(texts: list[str]) -> list[list[str]]:
    """``texts`` in consecutive requests that each stay within the raw-text model's limits
    (``pipeline.serving.bundle.request_limits``: texts and characters per request)."""
    from pipeline.serving.bundle import request_limits

    max_texts, max_characters = request_limits()
    batches: list[list[str]] = []
    current: list[str] = []
    size = 0
    for text in texts:
        if current and (len(current) == max_texts or size + len(text) > max_characters):
            batches.append(current)
            current, size = [], 0
        current.append(text)
        size += len(text)
    if current:
        batches.append(current)
    return batches


def headline(metrics: dict[str, Any]) -> str:
    """The figures a person reads first: accuracy and macro-F1, or for multi-label micro/macro-F1 and exact match."""
    if metrics.get("multilabel"):
        return (f"micro F1 {metrics['micro_f1']:.4f}, macro F1 {metrics['macro_f1']:.4f}, exact match "
                f"{metrics['accuracy']:.4f}, {metrics['predicted_labels_per_document']:.2f} labels per document "
                f"(true {metrics['labels_per_document']:.2f})")
    extra = f", ECE {metrics['ece']:.4f}" if "ece" in metrics else ""
    return f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}{extra}"


def judge(gate: GateConfig, model: dict[str, Any], baseline: dict[str, Any] | None,
          champion: dict[str, Any] | None) -> dict[str, Any]:
    """The gate: every check with its value, threshold and outcome; passed when all pass.

    A gate built outside a pipeline config may still say ``auto``: label-set metrics (they carry a Hamming loss)
    are compared on micro-F1, single labels on macro-F1, as ``PipelineConfig`` resolves it.
    """
    metric = gate.metric if gate.metric != "auto" else ("micro_f1" if "hamming_loss" in model else "macro_f1")
    checks = [
        {"check": "min_accuracy", "value": model["accuracy"], "threshold": gate.min_accuracy,
         "passed": model["accuracy"] >= gate.min_accuracy},
        {"check": "min_macro_f1", "value": model["macro_f1"], "threshold": gate.min_macro_f1,
         "passed": model["macro_f1"] >= gate.min_macro_f1},
    ]
    if gate.must_beat_baseline:
        if baseline is None:
            checks.append({"check": "beat_baseline", "passed": False,
                           "note": "evaluate.baseline.enabled is false, so the baseline cannot be compared"})
        else:
            checks.append({"check": "beat_baseline", "value": model[metric], "threshold": baseline[metric],
                           "passed": model[metric] > baseline[metric]})
    if champion is not None:
        if champion.get("same_version"):
            checks.append({"check": "beat_champion", "passed": True, "note": "this model version is the champion"})
        elif not champion["comparable"]:
            checks.append({"check": "beat_champion", "passed": False, "note": champion["reason"]})
        else:
            needed = champion["metrics"][metric] + gate.champion_margin
            checks.append({"check": "beat_champion", "metric": metric, "value": model[metric],
                           "threshold": needed, "champion_version": champion["version"],
                           "passed": model[metric] >= needed - 1e-12})
    reasons = [_reason(check) for check in checks]
    return {"passed": all(check["passed"] for check in checks), "checks": checks, "reasons": reasons,
            "champion": None if champion is None else champion.get("version")}


def _reason(check: dict[str, Any]) -> str:
    verdict = "passed" if check["passed"] else "FAILED"
    if "value" in check:
        return f"{check['check']} {verdict}: {check['value']:.4f} vs required {check['threshold']:.4f}"
    return f"{check['check']} {verdict}: {check.get('note', '')}"


# --------------------------------------------------------------------------- the stage
def run(config: PipelineConfig) -> EvaluateResult:
    from pipeline.data.shards import load_split
    from pipeline.evaluation.metrics import classification_metrics, multilabel_metrics
    from pipeline.runtime import apply_runtime
    from pipeline.serving.bundle import RawTextClassifier

    apply_runtime(config.resolved().runtime)
    prep_dir = config.stage_dir("preprocess")
    train_dir = config.stage_dir("train")
    train_manifest = read_manifest(train_dir)
    if read_manifest(prep_dir) is None:
        raise EvaluateError(f"no preprocessing outputs in {prep_dir}; run `{config.command('preprocess')}` "
                            f"(or `{config.command('pipeline')}`) first")
    if train_manifest is None or not (train_dir / "bundle").is_dir():
        raise EvaluateError(f"no trained model in {train_dir}; run `{config.command('train')}` "
                            f"(or `{config.command('pipeline')}`) first")
    started = time.perf_counter()
    # The model artifact predict and serve load: its labels, thresholds and weights, not a second reading of them.
    bundle = RawTextClassifier.from_directory(train_dir / "bundle")
    labels = bundle.labels
    test = load_split(prep_dir, "test")
    if len(test) == 0:
        raise EvaluateError("the test split is empty; set preprocess.split.test above 0 and preprocess again")
    settings = config.evaluate

    multilabel = config.data.multilabel
    thresholds = bundle.thresholds

    def scored(truth: np.ndarray, probabilities: np.ndarray, decision_thresholds=0.5) -> dict[str, Any]:
        if multilabel:
            return multilabel_metrics(truth, probabilities, labels, decision_thresholds)
        return classification_metrics(truth, probabilities, labels, settings.calibration_bins)

    probabilities = predict_probabilities(bundle.infer, test, settings.batch_size)
    metrics = scored(test.labels, probabilities, thresholds)
    _log(f"HAN on {len(test):,} test documents: {headline(metrics)}")

    baseline = baseline_probabilities = None
    if settings.baseline.enabled:
        baseline_probabilities, described = run_baseline(config, prep_dir, test)
        baseline = scored(test.labels, baseline_probabilities, described.get("thresholds", 0.5))
        baseline.update(described)
        info = described["info"]
        chosen = described.get("threshold_info")
        decided = "" if chosen is None else (
            ", every label at 0.50" if chosen["mode"] == "fixed" else
            f", thresholds chosen on validation as the HAN's ({chosen['mode']}, {chosen['global']:.2f})")
        _log(f"TF-IDF + logistic regression baseline ({'full text' if described['input'] == 'full_text' else 'HAN tokens'}"
             f"{', one-vs-rest' if multilabel else ''}, learnt from {settings.baseline.fit_on.replace('_', ' + ')}: "
             f"{info['train_documents']:,} documents, {info['features']:,} n-grams{decided}): {headline(baseline)}")

    from pipeline.stages.train import ensure_tracked

    train_manifest, note = ensure_tracked(config, train_dir, train_manifest)
    if note is not None:
        _log(note)
    registered = train_manifest.get("mlflow", {}).get("registered_version")
    champion = None
    current = champion_version(config.tracking.registered_model)
    if current is not None:
        if registered is not None and str(current.version) == str(registered):
            champion = {"version": str(current.version), "same_version": True, "comparable": True}
        else:
            champion = score_champion(config, current, prep_dir, labels, test.labels)
    verdict = judge(settings.gate, metrics, baseline, champion)
    _log(("gate PASSED: " if verdict["passed"] else "gate FAILED: ") + "; ".join(verdict["reasons"]))

    result = {
        "stage": "evaluate",
        "stage_version": STAGE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "labels": labels,
        "test_documents": len(test),
        "model": metrics,
        "baseline": baseline,
        "champion": champion,
        "gate": verdict,
        "train": {"fingerprint": train_manifest.get("fingerprint"), "mlflow": train_manifest.get("mlflow")},
        "seconds": None,
    }
    out_dir = config.stage_dir("evaluate")
    with atomic_directory(out_dir) as staging:
        if multilabel:
            _write_multilabel_outputs(staging, test, labels, probabilities, thresholds, metrics, baseline)
        else:
            _write_outputs(staging, test, labels, probabilities, metrics, baseline, settings.calibration_bins)
        result["seconds"] = round(time.perf_counter() - started, 3)
        write_json(staging / "metrics.json", result)
        manifest = {"stage": "evaluate", "created": result["created"], "train_fingerprint": train_manifest.get("fingerprint"),
                    "gate_passed": verdict["passed"], "outputs": output_hashes(staging)}
        write_json(staging / MANIFEST, manifest)
        check_before_commit()  # a locked or full tracking store: refused now, not after the commit
    _track(config, out_dir, result, registered, started)
    return EvaluateResult(out_dir, result)


def _write_outputs(directory: Path, test, labels, probabilities, metrics, baseline, bins) -> None:
    from pipeline.evaluation.metrics import plot_reliability, write_confusion_matrix

    predicted = probabilities.argmax(axis=1)
    with open(directory / "predictions.jsonl", "w", encoding="utf-8") as handle:
        for doc_id, truth, guess, row in zip(test.ids, test.labels, predicted, probabilities, strict=True):
            handle.write(json.dumps({"id": str(doc_id), "label": labels[truth], "predicted": labels[guess],
                                     "correct": bool(truth == guess),
                                     "probabilities": {label: float(p) for label, p in zip(labels, row, strict=True)}})
                         + "\n")
    write_confusion_matrix(metrics["confusion_matrix"], labels, directory / "confusion_matrix.png",
                           directory / "confusion_matrix.csv", title="HAN: confusion matrix (test split)")
    plot_reliability(test.labels, probabilities, directory / "reliability.png", bins=bins)
    if baseline is not None:
        write_confusion_matrix(baseline["confusion_matrix"], labels, directory / "baseline_confusion_matrix.png",
                               directory / "baseline_confusion_matrix.csv",
                               title="TF-IDF + LR baseline: confusion matrix (test split)")


def _write_multilabel_outputs(directory: Path, test, labels, probabilities, thresholds, metrics, baseline) -> None:
    from pipeline.evaluation.metrics import multilabel_decisions, plot_label_f1

    predicted = multilabel_decisions(probabilities, thresholds)
    with open(directory / "predictions.jsonl", "w", encoding="utf-8") as handle:
        for doc_id, truth, guess, row in zip(test.ids, test.labels, predicted, probabilities, strict=True):
            true_set = [label for label, on in zip(labels, truth, strict=True) if on]
            guessed = [label for label, on in zip(labels, guess, strict=True) if on]
            handle.write(json.dumps({"id": str(doc_id), "label": true_set, "predicted": guessed,
                                     "correct": true_set == guessed,
                                     "probabilities": {label: float(p) for label, p in zip(labels, row, strict=True)}})
                         + "\n")
    plot_label_f1(metrics, directory / "label_f1.png", "F1 per label (test split)", baseline)


def _track(config: PipelineConfig, out_dir: Path, result: dict[str, Any], registered: str | None,
           started: float) -> None:
    """One run from ``started`` (the stage's ``time.perf_counter()`` start): metrics, artifacts, the test
    split as its dataset, the verdict on the registered version."""
    import mlflow

    from pipeline.evaluation.metrics import flat_metrics
    from pipeline.tracking import log_datasets, stage_run

    verdict = result["gate"]
    tags = {"gate.passed": str(verdict["passed"]).lower(), "han.model_version": str(registered)}
    if result["baseline"] is not None:
        tags["baseline.input"] = result["baseline"]["input"]
        tags["baseline.fit_on"] = result["baseline"]["settings"]["fit_on"]
    with stage_run(config, "evaluate", tags, started=started) as run:
        log_datasets(config, config.stage_dir("preprocess"), ("test",))
        values = flat_metrics(result["model"], prefix="test.")
        if result["baseline"] is not None:
            values.update(flat_metrics(result["baseline"], prefix="baseline."))
        champion = result["champion"]
        if champion and champion.get("metrics"):
            values.update(flat_metrics(champion["metrics"], prefix="champion."))
        values["gate.passed"] = float(verdict["passed"])
        mlflow.log_metrics(values)
        mlflow.set_tag("gate.reasons", " | ".join(verdict["reasons"])[:5000])
        for path in sorted(out_dir.iterdir()):
            if path.is_file():
                mlflow.log_artifact(str(path), "evaluate")
        if registered is not None:
            client = mlflow.MlflowClient()
            name = config.tracking.registered_model
            for key, value in {"gate.passed": str(verdict["passed"]).lower(),
                               "gate.reasons": " | ".join(verdict["reasons"])[:5000],
                               "evaluate.run_id": run.info.run_id,
                               f"test.{config.evaluate.gate.metric}": f"{result['model'][config.evaluate.gate.metric]:.6f}",
                               "test.accuracy": f"{result['model']['accuracy']:.6f}"}.items():
                client.set_model_version_tag(name, registered, key, value)
